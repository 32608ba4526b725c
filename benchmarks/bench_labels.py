"""Benchmark: selfie group-ranking labels, ours (lazy polars) vs the obvious pandas implementation.

Default: 1,000,000 synthetic posts from 50,000 users with log-normal follower counts, both implementations on the
same rows in this process (each from its own in-memory frame, conversion not timed), results checked identical
(group, rank in group and label of every post; reason of every excluded post). Ends with one JSON line,
``ratio = pandas seconds / ours`` (> 1: ours is faster).

``--big``: 50,000,000 posts written to Parquet under ``--dir`` (reused when present), then each implementation in
its own subprocess reading the Parquet file and writing its labels to Parquet; prints seconds and peak RSS.
pandas runs under an address-space cap (``--pandas-mem-gib``) so that it fails cleanly instead of swapping.

    .venv/bin/python benchmarks/bench_labels.py [--posts 1000000] [--users 50000] [--repeat 3]
    .venv/bin/python benchmarks/bench_labels.py --big --dir /tmp/bench_labels [--posts 50000000]
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import resource
import subprocess
import sys
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
from pipeline.labels.splits import assign_splits  # noqa: E402

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)


def synth(n_posts: int, n_users: int, seed: int = 0, offset: int = 0) -> pa.Table:
    """Synthetic posts: log-normal followers per user, likes ~ followers * rate * noise, 1-8 tags, 10% young."""
    rng = np.random.default_rng(seed)
    user_followers = np.maximum(rng.lognormal(7.0, 1.6, n_users).astype(np.int64), 1)
    user = rng.integers(0, n_users, n_posts)
    followers = user_followers[user]
    quality = rng.random(n_posts)
    likes = np.rint(followers * 0.05 * (0.3 + quality) * rng.lognormal(0, 0.5, n_posts)).astype(np.int64)
    n_tags = rng.integers(1, 9, n_posts)
    age_days = rng.integers(0, 365, n_posts)
    posted = np.datetime64(NOW.replace(tzinfo=None), "us") - age_days.astype("timedelta64[D]").astype("timedelta64[us]")
    ends = np.cumsum(n_tags)
    within = np.arange(ends[-1]) - np.repeat(ends - n_tags, n_tags)  # 0..k-1 inside each post, vectorised
    tags = np.array(["selfie", "me", "photo", "face", "style", "day", "fun", "art"])
    tag_values = pa.array(tags[within])
    if isinstance(tag_values, pa.ChunkedArray):
        tag_values = tag_values.combine_chunks()
    tag_offsets = pa.array(np.concatenate([[0], ends]).astype(np.int32))
    ts = pa.timestamp("us", tz="UTC")
    ids = np.char.add("p", np.char.zfill((np.arange(n_posts) + offset).astype(str), 9))
    users = np.char.add("u", np.char.zfill(user.astype(str), 6))
    return pa.table(
        {
            "site": pa.array(np.full(n_posts, "demo")),
            "item_id": pa.array(ids),
            "user_id": pa.array(users),
            "followers": pa.array(followers),
            "likes": pa.array(likes),
            "tags": pa.ListArray.from_arrays(tag_offsets, tag_values),
            "posted_at": pa.array(posted).cast(ts),
            "scraped_at": pa.array(np.full(n_posts, np.datetime64(NOW.replace(tzinfo=None), "us"))).cast(ts),
            "too_young": pa.array(age_days < 30),
            "image_sha256": pa.array(np.char.add("img", ids)),
            "status": pa.array(np.where(rng.random(n_posts) < 0.02, "error", "ok")),
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
    return label_selfies(lf, None, cfg, splits=splits).collect()


def _check_identical(ours: pl.DataFrame, peer: pd.DataFrame) -> int:
    a = ours.filter(pl.col("status") == "ok").select("item_id", "group_id", "rank_in_group", "label").sort("item_id")
    b = pl.from_pandas(peer[["item_id", "group_id", "rank_in_group", "label"]]).sort("item_id")
    b = b.with_columns(pl.col("group_id").cast(pl.Int32), pl.col("rank_in_group").cast(pl.Int32))
    if not a.equals(b):
        raise SystemExit(f"results differ: ours {a.height} ok rows, pandas {b.height}")
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
def _write_big(path: Path, n_posts: int, n_users: int) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    chunk = 2_000_000
    with pq.ParquetWriter(tmp, synth(1, 1).schema, compression="zstd") as w:
        for i, start in enumerate(range(0, n_posts, chunk)):
            t = synth(min(chunk, n_posts - start), n_users, seed=1000 + i, offset=start)
            w.write_table(t, row_group_size=500_000)
    tmp.rename(path)


def _child(impl: str, src: str, dst: str) -> None:
    cfg = LabelsConfig()
    t0 = time.perf_counter()
    if impl == "ours":
        lf = pl.scan_parquet(src)
        users = lf.select("user_id").unique().collect(engine="streaming").get_column("user_id")
        label_selfies(lf, None, cfg, splits=assign_splits(users, cfg.split)).sink_parquet(dst)
        n = pl.scan_parquet(dst).select(pl.len()).collect().item()
    else:
        df = pd.read_parquet(src)
        out = pandas_labels(df, cfg)
        out.to_parquet(dst)
        n = len(out)
    secs = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 / 1024  # KiB → GiB
    print(json.dumps({"impl": impl, "seconds": round(secs, 2), "peak_rss_gib": round(rss, 3), "rows": n}))


def _run_child(impl: str, src: Path, out_dir: Path, mem_gib: float | None, timeout: float) -> dict:
    def cap() -> None:
        if mem_gib:
            b = int(mem_gib * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (b, b))

    cmd = [sys.executable, __file__, "--child", impl, "--src", str(src), "--dst", str(out_dir / f"{impl}.parquet")]
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, preexec_fn=cap)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "failed": f"timeout after {timeout:.0f}s"}
    if p.returncode != 0:
        tail = (p.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"impl": impl, "failed": f"exit {p.returncode}: {tail}", "seconds": round(time.perf_counter() - t0, 1)}
    return json.loads(p.stdout.strip().splitlines()[-1])


def bench_big(args: argparse.Namespace) -> None:
    d = Path(args.dir)
    src = d / f"posts_{args.posts}.parquet"
    t0 = time.perf_counter()
    _write_big(src, args.posts, args.users)
    print(f"input {src} ({src.stat().st_size / 2**30:.2f} GiB, ready in {time.perf_counter() - t0:.0f}s)")
    ours = _run_child("ours", src, d, None, args.timeout)
    peer = _run_child("pandas", src, d, args.pandas_mem_gib, args.timeout)
    for r in (ours, peer):
        print(f"{r['impl']:<8} seconds={r.get('seconds')} peak_rss_gib={r.get('peak_rss_gib')} {r.get('failed', '')}")
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
                "peer_failed": peer.get("failed"),
                "load1": os.getloadavg()[0],
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
