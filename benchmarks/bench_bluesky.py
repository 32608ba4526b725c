"""Bluesky crawl throughput: adapter: bluesky against the script a user would write with plain ``requests``.

The local XRPC replay server (pipeline/testing/bluesky_replay.py, in its own process) serves N posts of #selfie
(6 of 9 with images, the rest a video, a link card, text or a labelled image; 30 authors). Both sides run in their
own process with the same work: log in (``createSession``), list the hashtag with ``app.bsky.feed.searchPosts``
(``tag``, ``sort=latest``, ``limit=100``, ``cursor``), the authors' follower counts with ``app.bsky.actor.getProfiles``
(25 a request), and download each image post's first ``fullsize`` image ``--threads`` at a time.

* ours: the crawl driver on its thread pool in one process (``crawl(cfg, pool="threads")``: robots.txt, the rate
  limiter and ``RateLimit-*`` pacing, the session, image verification, the sha256 store and Parquet rows included),
  ``threads_per_actor = --threads``;
* peer: plain ``requests`` (the version installed, named in the output): one ``Session``, the search pages one after
  another, then getProfiles and the images on a ``ThreadPoolExecutor(--threads)``, each image written to disk by
  sha256. (The ``atproto`` SDK would make the same XRPC calls; it is not installed here.)

Figures: posts/s (posts listed / s) and images/s for each, their ratio (ours / peer), and each process's peak RSS.
The server's rate limit is set high (``--rate-limit``) so that neither side waits for it; the tests check the pacing
itself (tests/test_scrape_feeds_bluesky.py::test_rate_limit_headers_paced_and_a_long_wait_is_a_row).

    .venv/bin/python benchmarks/bench_bluesky.py [--n 2000] [--threads 16]

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

HANDLE, PASSWORD = "crawler.bsky.example", "bench-app-pass-0000"
IMAGE_EMBEDS = ("app.bsky.embed.images#view", "app.bsky.embed.recordWithMedia#view")


def child_ours(url: str, n: int, threads: int, out: str) -> dict:
    os.environ.setdefault("FACERANK_OPTOUT_KEY", "facerank-bench-only-not-a-secret-0123456789")
    os.environ["BLUESKY_HANDLE"], os.environ["BLUESKY_APP_PASSWORD"] = HANDLE, PASSWORD
    from pipeline.config import parse_config
    from pipeline.scrape.crawl import crawl

    cfg = parse_config({
        "data_root": out,
        "scrape": {
            "num_actors": 1, "threads_per_actor": threads, "tasks_per_call": 4 * threads, "batch_rows": 1000,
            "http": {"allow_private_addresses": True, "requests_per_second_per_host": 10_000,
                     "max_concurrency_per_host": threads},
            "feeds": [{"name": "bench", "adapter": "bluesky", "base_url": url, "hashtags": ["selfie"],
                       "max_pages": n // 100 + 10,
                       "bluesky": {"identifier_env": "BLUESKY_HANDLE", "password_env": "BLUESKY_APP_PASSWORD",
                                   "refresh_max": 0}}],
        },
    })  # fmt: skip
    t = time.perf_counter()
    s = crawl(cfg, pool="threads")
    sec = time.perf_counter() - t
    return {"seconds": round(sec, 2), "posts": s["posts_written"], "images": s["images_fetched"],
            "posts_per_s": round(s["posts_written"] / sec, 1), "images_per_s": round(s["images_fetched"] / sec, 1),
            "pages": s["pages"], "rss_mb": rss_mb()}  # fmt: skip


def _first_image(post: dict) -> str | None:
    embed = post.get("embed") or {}
    if embed.get("$type") == IMAGE_EMBEDS[1]:
        embed = embed.get("media") or {}
    if embed.get("$type") != IMAGE_EMBEDS[0] or any(lb.get("val") == "porn" for lb in post.get("labels") or []):
        return None
    images = embed.get("images") or []
    return images[0].get("fullsize") if images else None


def child_peer(url: str, n: int, threads: int, out: str) -> dict:
    """The script a user would write: requests, a cursor loop, a thread pool for profiles and images."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    import requests

    local = threading.local()
    t = time.perf_counter()
    s = requests.Session()
    login = s.post(f"{url}/xrpc/com.atproto.server.createSession", json={"identifier": HANDLE, "password": PASSWORD})
    login.raise_for_status()
    auth = {"Authorization": f"Bearer {login.json()['accessJwt']}"}
    posts, cursor = [], None
    while True:
        params = {"q": "#selfie", "tag": "selfie", "sort": "latest", "limit": 100}
        if cursor:
            params["cursor"] = cursor
        r = s.get(f"{url}/xrpc/app.bsky.feed.searchPosts", params=params, headers=auth, timeout=30)
        r.raise_for_status()
        page = r.json()
        posts += page.get("posts", [])
        cursor = page.get("cursor")
        if not cursor or not page.get("posts"):
            break
    listed = time.perf_counter() - t

    def session() -> requests.Session:
        local.s = getattr(local, "s", None) or requests.Session()
        return local.s

    def profiles(dids: list[str]) -> dict[str, int]:
        r = session().get(f"{url}/xrpc/app.bsky.actor.getProfiles", params={"actors": dids}, headers=auth, timeout=30)
        r.raise_for_status()
        return {p["did"]: p.get("followersCount") for p in r.json().get("profiles", [])}

    def download(u: str) -> bool:
        r = session().get(u, timeout=30)
        if r.status_code != 200:
            return False
        sha = hashlib.sha256(r.content).hexdigest()
        Path(out, sha[:2]).mkdir(exist_ok=True)
        Path(out, sha[:2], sha).write_bytes(r.content)
        return True

    dids = sorted({p["author"]["did"] for p in posts})
    urls = [u for u in (_first_image(p) for p in posts) if u]
    with ThreadPoolExecutor(threads) as ex:
        followers: dict[str, int] = {}
        for part in ex.map(profiles, [dids[i : i + 25] for i in range(0, len(dids), 25)]):
            followers.update(part)
        got = sum(ex.map(download, urls))
    sec = time.perf_counter() - t
    return {"seconds": round(sec, 2), "list_seconds": round(listed, 2), "posts": len(posts), "images": got,
            "authors": len(followers), "posts_per_s": round(len(posts) / sec, 1),
            "images_per_s": round(got / sec, 1), "rss_mb": rss_mb(), "requests": requests.__version__}  # fmt: skip


def _server(n: int, tmp: str, rate_limit: int) -> tuple[subprocess.Popen, str]:
    return start_replay(
        "pipeline.testing.bluesky_replay",
        ["--n", str(n), "--password", PASSWORD, "--rate-limit", str(rate_limit)],
        tmp,
        str(n),
    )


def _child(kind: str, url: str, n: int, threads: int, out: str) -> dict:
    return run_child(__file__, kind, url, n, threads, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--rate-limit", type=int, default=1_000_000)
    ap.add_argument("--child", choices=["ours", "peer"])
    ap.add_argument("--url")
    ap.add_argument("--out")
    a = ap.parse_args()
    if a.child:
        fn = child_ours if a.child == "ours" else child_peer
        print(json.dumps(fn(a.url, a.n, a.threads, a.out)))
        return 0
    out: dict = {"bench": "bluesky", "n": a.n, "threads": a.threads, "load": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = _server(a.n, tmp, a.rate_limit)
        try:
            out["ours"] = _child("ours", url, a.n, a.threads, os.path.join(tmp, "ours"))
            os.makedirs(os.path.join(tmp, "peer"))
            out["peer"] = _child("peer", url, a.n, a.threads, os.path.join(tmp, "peer"))
        finally:
            proc.kill()
            proc.wait()
    ours, peer = out["ours"], out["peer"]
    out["ratio_posts_per_s"] = round(ours["posts_per_s"] / peer["posts_per_s"], 2) if peer["posts_per_s"] else None
    out["ratio_images_per_s"] = round(ours["images_per_s"] / peer["images_per_s"], 2) if peer["images_per_s"] else None
    print(f"{'crawler':<28} {'posts':>7} {'images':>7} {'seconds':>8} {'posts/s':>8} {'images/s':>9} {'RSS MB':>7}")
    for name, r in [("ours", ours), (f"requests {peer['requests']} + pool", peer)]:
        print(
            f"{name:<28} {r['posts']:>7} {r['images']:>7} {r['seconds']:>8.2f} {r['posts_per_s']:>8.1f}"
            f" {r['images_per_s']:>9.1f} {r['rss_mb']:>7.0f}"
        )
    print(f"load average {out['load']:.2f}; details: {json.dumps(out)}")
    summary = {"bench": "bluesky", "ours": ours["images_per_s"], "peer": peer["images_per_s"]}
    summary.update(ratio=out["ratio_images_per_s"], unit="images/s")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
