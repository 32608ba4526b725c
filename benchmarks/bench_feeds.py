"""Feed crawl throughput: adapter: mastodon against the script a user would write with Mastodon.py.

The local replay server (pipeline/testing/mastodon_replay.py, in its own process) serves N statuses of #selfie
(3 of 4 with an image, 1 of 4 a video; local and remote accounts). Both sides run in their own process, with the
same politeness: API pages one at a time (limit=40, only_media=true), images ``--threads`` at a time to one host.

* ours: the crawl driver on its thread pool in one process (``crawl(cfg, pool="threads")``: the stage's driver, work
  unit, row builder, writer and feed cursors; robots.txt, the rate limiter, the Mastodon pacer, image verification,
  the sha256 store and Parquet rows included), ``threads_per_actor = --threads``;
* peer: ``Mastodon.timeline_hashtag`` + ``fetch_remaining`` (Mastodon.py, ``ratelimit_method="wait"``), then the
  first image attachment of each status downloaded with a ``ThreadPoolExecutor(--threads)`` and written to disk by
  sha256 (Mastodon.py: ``pip install -e '.[bench]'``; without it ``"peer": null``).

Figures: posts/s (statuses listed / s) and images/s for each, their ratios (ours / peer), and each process's peak
RSS. ``--large M`` runs ours once more at M statuses: its peak RSS at N and M shows whether memory grows with the
crawl. The server's rate limits are set high (``--rate-limit``) so that neither side waits for them; the tests
check the pacing itself (tests/test_scrape_feeds_mastodon.py::test_rate_limit_headers_paging_throttle_and_429).

    .venv/bin/python benchmarks/bench_feeds.py [--n 2000] [--threads 16] [--large 20000]

Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from replay_bench import rss_mb, run_child, start_replay  # noqa: E402

MEDIA = "image,image,image,video"


def child_ours(url: str, n: int, threads: int, out: str) -> dict:
    os.environ.setdefault("FACERANK_OPTOUT_KEY", "facerank-bench-only-not-a-secret-0123456789")
    from pipeline.config import parse_config
    from pipeline.scrape.crawl import crawl

    cfg = parse_config({
        "data_root": out,
        "scrape": {
            "num_actors": 1, "threads_per_actor": threads, "tasks_per_call": 4 * threads, "batch_rows": 1000,
            "http": {"allow_private_addresses": True, "requests_per_second_per_host": 10_000,
                     "max_concurrency_per_host": threads},
            "feeds": [{"name": "bench", "adapter": "mastodon", "base_url": url, "hashtags": ["selfie"],
                       "max_pages": n // 40 + 10,
                       "mastodon": {"paging_requests": 1_000_000, "refresh_max": 0}}],
        },
    })  # fmt: skip
    t = time.perf_counter()
    s = crawl(cfg, pool="threads")
    sec = time.perf_counter() - t
    return {"seconds": round(sec, 2), "posts": s["posts_written"], "images": s["images_fetched"],
            "posts_per_s": round(s["posts_written"] / sec, 1), "images_per_s": round(s["images_fetched"] / sec, 1),
            "pages": s["pages"], "rss_mb": rss_mb()}  # fmt: skip


def child_peer(url: str, n: int, threads: int, out: str) -> dict | None:
    try:
        from mastodon import Mastodon
    except ImportError:
        return None
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    local = threading.local()

    def download(u: str) -> bool:
        s = getattr(local, "s", None) or requests.Session()
        local.s = s
        r = s.get(u, timeout=30)
        if r.status_code != 200:
            return False
        sha = hashlib.sha256(r.content).hexdigest()
        Path(out, sha[:2]).mkdir(exist_ok=True)
        Path(out, sha[:2], sha).write_bytes(r.content)
        return True

    t = time.perf_counter()
    m = Mastodon(api_base_url=url, ratelimit_method="wait", version_check_mode="none")
    statuses = m.fetch_remaining(m.timeline_hashtag("selfie", limit=40, only_media=True))
    listed = time.perf_counter() - t
    urls = []
    for st in statuses:
        imgs = [a for a in st.media_attachments if a.type == "image"]
        if imgs:
            urls.append(imgs[0].url)
    with ThreadPoolExecutor(threads) as ex:
        got = sum(ex.map(download, urls))
    sec = time.perf_counter() - t
    rates = {"posts_per_s": round(len(statuses) / sec, 1), "images_per_s": round(got / sec, 1)}
    return {"seconds": round(sec, 2), "list_seconds": round(listed, 2), "posts": len(statuses), "images": got, **rates,
            "rss_mb": rss_mb()}  # fmt: skip


def _server(n: int, tmp: str, rate_limit: int) -> tuple[subprocess.Popen, str]:
    return start_replay(
        "pipeline.testing.mastodon_replay",
        ["--n", str(n), "--rate-limit", str(rate_limit), "--paging-limit", str(rate_limit), "--media", MEDIA],
        tmp,
        str(n),
    )


def _child(kind: str, url: str, n: int, threads: int, out: str) -> dict:
    return run_child(__file__, kind, url, n, threads, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--large", type=int, default=0, help="also run ours at this many statuses (peak RSS)")
    ap.add_argument("--rate-limit", type=int, default=1_000_000)
    ap.add_argument("--child", choices=["ours", "peer"])
    ap.add_argument("--url")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        fn = child_ours if a.child == "ours" else child_peer
        print(json.dumps(fn(a.url, a.n, a.threads, a.out)))
        return 0
    out: dict = {"bench": "feeds", "n": a.n, "threads": a.threads, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        for size in [a.n] + ([a.large] if a.large else []):
            proc, url = _server(size, tmp, a.rate_limit)
            try:
                ours = _child("ours", url, size, a.threads, os.path.join(tmp, f"ours-{size}"))
                if size == a.n:
                    os.makedirs(os.path.join(tmp, "peer"))
                    out["ours"], out["peer"] = ours, _child("peer", url, size, a.threads, os.path.join(tmp, "peer"))
                else:
                    out[f"ours_at_{size}"] = ours
            finally:
                proc.kill()
                proc.wait()
    peer = out.get("peer")
    if peer:
        out["ratio_posts_per_s"] = round(out["ours"]["posts_per_s"] / peer["posts_per_s"], 2)
        out["ratio_images_per_s"] = round(out["ours"]["images_per_s"] / peer["images_per_s"], 2)
    if a.large:
        out["rss_mb_growth"] = round(out[f"ours_at_{a.large}"]["rss_mb"] - out["ours"]["rss_mb"], 1)
    rows = [("ours", out["ours"])] + ([("Mastodon.py + thread pool", peer)] if peer else [])
    rows += [(f"ours at {k[len('ours_at_') :]}", v) for k, v in out.items() if k.startswith("ours_at_")]
    print(f"{'crawler':<28} {'statuses':>9} {'images':>7} {'seconds':>8} {'posts/s':>8} {'images/s':>9} {'RSS MB':>7}")
    for name, r in rows:
        print(
            f"{name:<28} {r['posts']:>9} {r['images']:>7} {r['seconds']:>8.2f} {r['posts_per_s']:>8.1f}"
            f" {r['images_per_s']:>9.1f} {r['rss_mb']:>7.0f}"
        )
    print(f"load average {out['load']:.2f}; details: {json.dumps(out)}")
    summary = {"bench": "feeds", "ours": out["ours"]["images_per_s"], "peer": peer["images_per_s"] if peer else None}
    summary.update(ratio=out.get("ratio_images_per_s"), unit="images/s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
