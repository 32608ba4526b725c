"""Benchmark: selfie group-ranking labels, ours (lazy polars) vs the obvious pandas implementation.

Default: 1,000,000 synthetic posts from 50,000 users with log-normal follower counts, both implementations on the
same rows in this process (each from its own in-memory frame, conversion not timed), results checked identical
(group, rank in group and label of every post; reason of every excluded post). Ends with one JSON line,
``ratio = pandas seconds / ours`` (> 1: ours is faster).

``--big``: 50,000,000 posts generated chunk by chunk into ``--files`` Parquet files under ``--dir`` (deleted at the
end unless ``--keep``), then each implementation in its own subprocess reading the Parquet files and writing its
labels to Parquet (ours through the stage's own path: ``label_selfies`` + ``DataRoot.replace``); prints seconds
and peak RSS (the child's ru_maxrss, or the watchdog's sampled peak when it failed). pandas runs under an
address-space cap (``--pandas-mem-gib``, at most 70% of the memory available) so that it fails cleanly with a
MemoryError; a watchdog kills either run whose RSS passes ``--rss-cap-gib`` (a shared machine).

    .venv/bin/python benchmarks/bench_labels.py [--posts 1000000] [--users 50000] [--repeat 3]
    .venv/bin/python benchmarks/bench_labels.py --big [--posts 50000000] [--keep]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import LabelsConfig  # noqa: E402
from pipeline.labels.selfie import label_selfies  # noqa: E402

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def synth(n_posts: int, n_users: int, seed: int = 0, offset: int = 0, user_seed: int = 0) -> pa.Table:
    """Synthetic posts: log-normal followers per user, likes ~ followers * rate * noise, 1-8 tags, 10% young.

    ``user_seed`` fixes the users' follower counts (the same in every chunk of a large input); ``seed`` the posts;
    ``offset`` the first post number (ids ``p000000000``...).
    """
    user_followers = np.maximum(np.random.default_rng(user_seed).lognormal(7.0, 1.6, n_users).astype(np.int64), 1)
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n_posts)
    followers = user_followers[user]
    quality = rng.random(n_posts)
    likes = np.rint(followers * 0.05 * (0.3 + quality) * rng.lognormal(0, 0.5, n_posts)).astype(np.int64)
    n_tags = rng.integers(1, 9, n_posts)
    age_days = rng.integers(0, 365, n_posts)
    posted = np.datetime64(NOW.replace(tzinfo=None), "us") - age_days.astype("timedelta64[D]").astype("timedelta64[us]")
    ends = np.cumsum(n_tags)
    within = np.arange(ends[-1]) - np.repeat(ends - n_tags, n_tags)  # 0..k-1 inside each post, vectorised
    tags = pa.array(["selfie", "me", "photo", "face", "style", "day", "fun", "art"])
    tag_offsets = pa.array(np.concatenate([[0], ends]).astype(np.int32))
    ts = pa.timestamp("us", tz="UTC")
    strs = pl.select(
        item_id=pl.lit("p") + pl.int_range(offset, offset + n_posts).cast(pl.String).str.zfill(9),
        user_id=pl.lit("u") + pl.Series(user).cast(pl.String).str.zfill(6),
    ).with_columns(image_sha256=pl.lit("img") + pl.col("item_id"))
    return pa.table(
        {
            "site": pa.array(["demo"] * 1, pa.string()).take(np.zeros(n_posts, np.int8)),
            "item_id": strs["item_id"].to_arrow().cast(pa.string()),
            "user_id": strs["user_id"].to_arrow().cast(pa.string()),
            "followers": pa.array(followers),
            "likes": pa.array(likes),
            "tags": pa.ListArray.from_arrays(tag_offsets, tags.take(within)),
            "posted_at": pa.array(posted).cast(ts),
            "scraped_at": pa.array(np.full(n_posts, np.datetime64(NOW.replace(tzinfo=None), "us"))).cast(ts),
            "too_young": pa.array(age_days < 30),
            "image_sha256": strs["image_sha256"].to_arrow().cast(pa.string()),
            "status": pa.array(["ok", "error"]).take(np.where(rng.random(n_posts) < 0.02, 1, 0)),
        }
    )


def pandas_labels(df: pd.DataFrame, cfg: LabelsConfig) -> pd.DataFrame:
    """The obvious pandas implementation: filter, sort_values, cut into groups, groupby rank."""
    c = cfg.selfie
    df = df.copy()
    df["n_tags"] = df["tags"].str.len().fillna(0).astype("int64")
    age = df["scraped_at"] - df["posted_at"]
    ok = (
        (df["status"] == "ok")
        & df["followers"].notna()
        & (df["followers"] >= 0)
        & (df["likes"] >= 0)
        & (age >= pd.Timedelta(days=c.min_post_age_days))
        & df["followers"].between(c.min_followers, c.max_followers)
        & (df["n_tags"] <= c.max_tags)
    )
    el = df[ok].copy()
    el["audience"] = el["followers"] * (1 + c.tag_bonus * (el["n_tags"] - 1).clip(lower=0))
    el = el.sort_values(["audience", "site", "item_id"], kind="stable").reset_index(drop=True)
    n_full = len(el) // c.group_size * c.group_size
    el = el.iloc[:n_full].copy()
    el["group_id"] = np.arange(n_full) // c.group_size
    el = el.sort_values(["group_id", "likes", "site", "item_id"], ascending=[True, False, True, True])
    el["rank_in_group"] = el.groupby("group_id").cumcount()
    el["label"] = (el["rank_in_group"] < c.group_size // 2).astype("int32")
    el["like_percentile"] = (el.groupby("group_id")["likes"].rank(method="average") - 1) / (c.group_size - 1)
    return el[["item_id", "group_id", "rank_in_group", "label", "like_percentile"]]


def ours_labels(lf: pl.LazyFrame, cfg: LabelsConfig, splits: pl.DataFrame | None = None) -> pl.DataFrame:
    return pl.concat(label_selfies(lf, None, cfg, splits=splits))


def _check_identical(ours: pl.DataFrame, peer: pd.DataFrame) -> int:
    """Group, rank in group, label and like percentile of every labelled post equal; excluded rows have reasons."""
    cols = ["item_id", "group_id", "rank_in_group", "label", "like_percentile"]
    a = ours.filter(pl.col("status") == "ok").select(cols).sort("item_id")
    b = pl.from_pandas(peer[cols]).sort("item_id")
    b = b.with_columns(pl.col("group_id", "rank_in_group", "label").cast(pl.Int32))
    if not a.drop("like_percentile").equals(b.drop("like_percentile")):
        raise SystemExit(f"results differ: ours {a.height} ok rows, pandas {b.height}")
    if (a["like_percentile"] - b["like_percentile"]).abs().max() > 1e-12:
        raise SystemExit("like percentiles differ")
    if ours.filter(pl.col("status") != "ok").get_column("reason").null_count():
        raise SystemExit("an excluded row without a reason")
    return a.height


def bench_in_memory(args: argparse.Namespace) -> None:
    cfg = LabelsConfig()
    table = synth(args.posts, args.users)
    pdf = table.to_pandas()
    pldf = pl.from_arrow(table)
    t_ours, t_pd = [], []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        ours = ours_labels(pldf.lazy(), cfg)
        t_ours.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        peer = pandas_labels(pdf, cfg)
        t_pd.append(time.perf_counter() - t0)
    n_ok = _check_identical(ours, peer)
    o, p = min(t_ours), min(t_pd)
    load = os.getloadavg()[0]
    print(f"{'impl':<10}{'best s':>10}{'runs':>40}")
    print(f"{'ours':<10}{o:>10.3f}{str([round(t, 3) for t in t_ours]):>40}")
    print(f"{'pandas':<10}{p:>10.3f}{str([round(t, 3) for t in t_pd]):>40}")
    print(f"posts={args.posts} users={args.users} labelled={n_ok} identical=yes cpus={os.cpu_count()} load1={load}")
    print(
        json.dumps(
            {
                "bench": "labels_selfie_1m" if args.posts == 1_000_000 else f"labels_selfie_{args.posts}",
                "ours": round(o, 4),
                "peer": round(p, 4),
                "ratio": round(p / o, 3),
                "unit": "s",
                "posts": args.posts,
                "users": args.users,
                "identical": True,
                "load1": load,
            }
        )
    )


# ------------------------------------------------------------------------------------------------ --big
def write_big(d: Path, n_posts: int, n_users: int, files: int, chunk: int = 1_000_000) -> list[Path]:
    """``n_posts`` synthetic posts as ``files`` Parquet files under ``d``, generated and written chunk by chunk.

    Reused when the same files are already there (a ``_complete`` marker is written last).
    """
    marker = d / f"_complete_{n_posts}_{n_users}_{files}"
    paths = [d / f"posts-{i:03d}.parquet" for i in range(files)]
    if marker.exists():
        return paths
    d.mkdir(parents=True, exist_ok=True)
    per_file = -(-n_posts // files)
    start = 0
    for path in paths:
        end = min(n_posts, start + per_file)
        with pq.ParquetWriter(path, synth(1, 1).schema, compression="zstd") as w:
            for c0 in range(start, end, chunk):
                n = min(chunk, end - c0)
                w.write_table(synth(n, n_users, seed=1000 + c0 // chunk, offset=c0), row_group_size=n)
        start = end
    marker.touch()
    return paths


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def _child(impl: str, src: str, dst: str) -> None:
    """One implementation on the Parquet input, its labels written to Parquet; prints one JSON line."""
    cfg = LabelsConfig()
    t0 = time.perf_counter()
    try:
        if impl == "ours":  # the stage's own path: lazy scan, ranking on narrow columns, streamed replace
            from pipeline.labels.io import arrow_batches
            from pipeline.store import DataRoot

            root = DataRoot(dst)
            chunks = label_selfies(pl.scan_parquet(f"{src}/*.parquet"), None, cfg)
            root.replace("labels/selfie", arrow_batches(chunks, root.schema("labels/selfie")))
            n = pl.scan_parquet(root.part_files("labels/selfie")).select(pl.len()).collect().item()
        else:
            df = pd.read_parquet(src)
            out = pandas_labels(df, cfg)
            del df
            out.to_parquet(f"{dst}/pandas.parquet")
            n = len(out)
    except MemoryError as err:
        secs = time.perf_counter() - t0
        print(json.dumps({"impl": impl, "failed": f"MemoryError {err}"[:120], "seconds": round(secs, 1),
                          "peak_rss_gib": round(_peak_rss_gib(), 3)}))  # fmt: skip
        return
    secs = time.perf_counter() - t0
    print(json.dumps({"impl": impl, "seconds": round(secs, 2), "peak_rss_gib": round(_peak_rss_gib(), 3), "rows": n}))


def _run_child(impl: str, src: Path, out_dir: Path, mem_gib: float | None, timeout: float, rss_cap: float) -> dict:
    """Run one implementation in a subprocess: address-space cap ``mem_gib`` (RLIMIT_AS, so that it fails with
    MemoryError) and a watchdog that samples its RSS and kills it above ``rss_cap`` GiB (protecting a shared
    machine); returns the child's JSON (its own ru_maxrss) or the failure with the sampled peak."""
    import psutil

    def cap() -> None:
        if mem_gib:
            b = int(mem_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    out_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, __file__, "--child", impl, "--src", str(src), "--dst", str(out_dir)]
    t0 = time.perf_counter()
    peak, why = 0.0, None
    errf = tempfile.TemporaryFile("w+")  # not a pipe: a chatty child must not block on a full pipe
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf, text=True, preexec_fn=cap) as p:
        proc = psutil.Process(p.pid)
        while p.poll() is None:
            try:
                peak = max(peak, proc.memory_info().rss / 2**30)
            except psutil.Error:
                pass
            if peak > rss_cap or time.perf_counter() - t0 > timeout:
                why = f"killed: RSS over {rss_cap} GiB" if peak > rss_cap else f"killed: timeout {timeout:.0f}s"
                p.kill()
                break
            time.sleep(0.2)
        out, _ = p.communicate()
    errf.seek(0)
    err = errf.read()
    secs = round(time.perf_counter() - t0, 1)
    lines = out.strip().splitlines()
    if why or p.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["?"])[-1][:160]
        why = why or f"exit {p.returncode}: {tail}"
        return {"impl": impl, "failed": why, "seconds": secs, "peak_rss_gib": round(peak, 3)}
    return json.loads(lines[-1])


def bench_big(args: argparse.Namespace) -> None:
    import shutil

    import psutil

    d = Path(args.dir)
    src = d / "posts"
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    write_big(src, args.posts, args.users, args.files)
    size = sum(p.stat().st_size for p in src.glob("*.parquet")) / 2**30
    print(f"input {src}: {args.posts:,} posts in {args.files} files, {size:.2f} GiB ({time.perf_counter() - t0:.0f}s)")
    avail = psutil.virtual_memory().available / 2**30
    cap = min(args.pandas_mem_gib, round(avail * 0.7, 1))
    try:
        ours = _run_child("ours", src, d / "out_ours", None, args.timeout, args.rss_cap_gib)
        load1 = os.getloadavg()
        peer = (
            {"impl": "pandas", "failed": "skipped (--skip-pandas)"}
            if args.skip_pandas
            else _run_child("pandas", src, d / "out_pandas", cap, args.timeout, args.rss_cap_gib)
        )
    finally:
        if not args.keep:
            shutil.rmtree(d, ignore_errors=True)
    print(f"{'impl':<8}{'seconds':>10}{'peak RSS GiB':>14}  note")
    for r in (ours, peer):
        note = r.get("failed", f"{r.get('rows', 0):,} rows written")
        if r["impl"] == "pandas" and not args.skip_pandas:
            note += f" (address-space cap {cap} GiB)"
        print(f"{r['impl']:<8}{r.get('seconds', '-'):>10}{r.get('peak_rss_gib', '-'):>14}  {note}")
    end = os.getloadavg()[0]
    print(f"load1 before {load0[0]:.1f}, after ours {load1[0]:.1f}, at end {end:.1f}; cpus={os.cpu_count()}")
    ratio = None
    if "failed" not in peer and "failed" not in ours:
        ratio = round(peer["peak_rss_gib"] / ours["peak_rss_gib"], 3)
    print(
        json.dumps(
            {
                "bench": f"labels_selfie_big_{args.posts}",
                "ours": ours.get("peak_rss_gib"),
                "peer": peer.get("peak_rss_gib"),
                "ratio": ratio,
                "unit": "peak_rss_gib",
                "ours_seconds": ours.get("seconds"),
                "peer_seconds": peer.get("seconds"),
                "ours_failed": ours.get("failed"),
                "peer_failed": peer.get("failed"),
                "peer_mem_cap_gib": cap,
                "posts": args.posts,
                "load1_before": load0[0],
                "load1_after": os.getloadavg()[0],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--posts", type=int, default=None)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--big", action="store_true")
    ap.add_argument("--dir", default="/tmp/facerank_bench_labels")
    ap.add_argument("--files", type=int, default=10)
    ap.add_argument("--keep", action="store_true", help="--big: keep the generated input and outputs")
    ap.add_argument("--skip-pandas", action="store_true")
    ap.add_argument("--rss-cap-gib", type=float, default=14.0, help="--big: kill a run whose RSS passes this")
    ap.add_argument("--pandas-mem-gib", type=float, default=16.0)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--child", choices=["ours", "pandas"])
    ap.add_argument("--src")
    ap.add_argument("--dst")
    args = ap.parse_args()
    if args.child:
        _child(args.child, args.src, args.dst)
        return
    if args.big:
        args.posts = args.posts or 50_000_000
        bench_big(args)
    else:
        args.posts = args.posts or 1_000_000
        bench_in_memory(args)


if __name__ == "__main__":
    main()
