"""Scrape throughput against img2dataset: N distinct JPEGs (20-200 KB) from a local server in another process.

Both tools download the same URL list to local disk on this machine with the same thread budget (ours:
``num_actors x threads_per_actor``; img2dataset: ``processes_count x thread_count``), resize off. Ours is the whole
scrape stage (a JSON feed lists the URLs; robots, rate limiter, verification, sha256 store, Parquet rows included).
Then our driver's and workers' peak RSS at N and 10*N URLs (memory must not grow beyond the frontier's own rows).

img2dataset is run from its own environment: ``IMG2DATASET_PYTHON`` (default /tmp/i2d-venv/bin/python), created with
``python -m venv /tmp/i2d-venv && /tmp/i2d-venv/bin/pip install img2dataset`` (it pins packages that do not belong in
the project's venv). Without it the peer column is empty and the JSON line has ``"peer": null``.

    .venv/bin/python benchmarks/bench_scrape.py [--n 2000] [--threads 16] [--large 20000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

REPO = Path(__file__).resolve().parents[1]
PER_PAGE = 500


# ------------------------------------------------------------------------------------------ the image server
def _bases() -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for side in np.linspace(90, 260, 24).astype(int):  # noise JPEGs from ~20 KB to ~200 KB
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def serve(port_file: str, n_distinct: int) -> None:
    bases = _bases()

    def image(i: int) -> bytes:  # distinct bytes per i: a JPEG comment segment after SOI
        b = bases[i % len(bases)]
        com = f"facerank-bench-{i}".encode()
        return b[:2] + b"\xff\xfe" + (len(com) + 2).to_bytes(2, "big") + com + b[2:]

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def _send(self, body: bytes, ctype: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            u = urlsplit(self.path)
            base = f"http://127.0.0.1:{self.server.server_address[1]}"
            if u.path == "/robots.txt":
                return self._send(b"User-agent: *\nAllow: /\n", "text/plain")
            if u.path == "/feed":
                q = parse_qs(u.query)
                n, page = int(q["n"][0]), int(q["page"][0])
                ids = range((page - 1) * PER_PAGE, min(page * PER_PAGE, n))
                posts = [
                    {
                        "id": f"i{i}",
                        "image_url": f"{base}/img/{i}.jpg",
                        "user": {"id": "u", "followers": 1},
                        "likes": 1,
                        "tags": [],
                        "posted_at": "2020-01-01T00:00:00Z",
                    }
                    for i in ids
                ]
                doc = {"posts": posts, "next_page": page + 1 if page * PER_PAGE < n else None}
                return self._send(json.dumps(doc).encode(), "application/json")
            if u.path.startswith("/img/"):
                return self._send(image(int(u.path[5:-4]) % n_distinct), "image/jpeg")
            self.send_error(404)

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    Path(port_file).write_text(str(srv.server_address[1]))
    srv.serve_forever()


# ------------------------------------------------------------------------------------------ the two tools
def run_ours(base: str, n: int, threads: int, out: str) -> dict:
    """Child process: the scrape stage over the feed; reports time, counts and peak RSS (driver, workers)."""
    import psutil
    import ray

    from pipeline.config import parse_config
    from pipeline.scrape.crawl import crawl

    actors = 2
    cfg = parse_config(
        {
            "data_root": out,
            "scrape": {
                "num_actors": actors,
                "threads_per_actor": threads // actors,
                "tasks_per_call": 64,
                "batch_rows": 1000,
                "http": {
                    "allow_private_addresses": True,
                    "requests_per_second_per_host": 100000,
                    "max_concurrency_per_host": threads,
                },
                "feeds": [
                    {
                        "name": "b",
                        "adapter": "json",
                        "base_url": base,
                        "hashtags": ["x"],
                        "max_pages": 10**6,
                        "json": {"page_url": "{base_url}/feed?n=" + str(n) + "&page={page}"},
                    }
                ],
            },
        },
        "bench",
    )
    from pipeline.runtime import start_local_ray

    start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
    peak_workers = 0
    stop = threading.Event()

    def sample() -> None:  # a command line is read until it is known (reading every one twice a second cost the
        nonlocal peak_workers  # timed crawl about 18% of the driver's CPU); an idle Ray worker may become an actor
        kind: dict[int, bool | None] = {}
        while not stop.is_set():
            tot = 0
            for p in psutil.process_iter():
                try:
                    if kind.get(p.pid) is None:
                        cmd = " ".join(p.cmdline())
                        actor = "HttpWorker" in cmd or "HostLimiter" in cmd
                        maybe = not cmd or "ray::IDLE" in cmd or "_worker.py" in cmd  # not named yet
                        kind[p.pid] = True if actor else (None if maybe else False)
                    if kind[p.pid]:
                        tot += p.memory_info().rss
                except psutil.Error:
                    pass
            peak_workers = max(peak_workers, tot)
            time.sleep(0.5)

    threading.Thread(target=sample, daemon=True).start()
    t0 = time.monotonic()
    s = crawl(cfg)
    secs = time.monotonic() - t0
    stop.set()
    ray.shutdown()
    return {
        "seconds": secs,
        "ok": s["images_fetched"],
        "summary": s,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "workers_peak_rss_mb": peak_workers / 2**20,
    }


def run_img2dataset(py: str, base: str, n: int, threads: int, out: str) -> dict:
    lst = Path(out) / "urls.txt"
    Path(out).mkdir(parents=True, exist_ok=True)
    lst.write_text("".join(f"{base}/img/{i}.jpg\n" for i in range(n)))
    procs = 2
    cmd = [
        str(Path(py).parent / "img2dataset"),
        "--url_list",
        str(lst),
        "--input_format",
        "txt",
        "--output_folder",
        str(Path(out) / "o"),
        "--output_format",
        "files",
        "--resize_mode",
        "no",
        "--processes_count",
        str(procs),
        "--thread_count",
        str(threads // procs),
        "--timeout",
        "10",
        "--retries",
        "0",
        "--enable_wandb",
        "False",
        "--number_sample_per_shard",
        "1000",
    ]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    secs = time.monotonic() - t0
    ok = len(list((Path(out) / "o").rglob("*.jpg")))
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
    return {"seconds": secs, "ok": ok}


def _child(args: argparse.Namespace) -> None:
    print(json.dumps(run_ours(args.base, args.n, args.threads, args.out)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--large", type=int, default=20000, help="URLs for the memory check (0: skip)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)

    tmp = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    port_file = tmp / "port"
    import multiprocessing as mp

    server = mp.get_context("spawn").Process(target=serve, args=(str(port_file), args.n), daemon=True)
    server.start()
    try:
        while not port_file.exists():
            time.sleep(0.1)
        time.sleep(0.2)
        base = f"http://127.0.0.1:{port_file.read_text()}"

        def ours(n: int, name: str) -> dict:
            r = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    "--n",
                    str(n),
                    "--threads",
                    str(args.threads),
                    "--base",
                    base,
                    "--out",
                    str(tmp / name),
                ],
                capture_output=True,
                text=True,
                timeout=3600,
                cwd=REPO,
            )
            if r.returncode != 0:
                print(r.stderr[-3000:], file=sys.stderr)
                raise SystemExit(1)
            return json.loads(r.stdout.strip().splitlines()[-1])

        o = ours(args.n, "ours")
        py = os.environ.get("IMG2DATASET_PYTHON", "/tmp/i2d-venv/bin/python")
        peer = run_img2dataset(py, base, args.n, args.threads, str(tmp / "i2d")) if Path(py).exists() else None
        big = ours(args.large, "ours-large") if args.large else None
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    ours_ips = o["ok"] / o["seconds"]
    peer_ips = peer["ok"] / peer["seconds"] if peer else None
    print(f"{'tool':<14}{'urls':>8}{'ok':>8}{'seconds':>10}{'images/s':>10}")
    print(f"{'facerank':<14}{args.n:>8}{o['ok']:>8}{o['seconds']:>10.1f}{ours_ips:>10.1f}")
    if peer:
        print(f"{'img2dataset':<14}{args.n:>8}{peer['ok']:>8}{peer['seconds']:>10.1f}{peer_ips:>10.1f}")
    else:
        print("img2dataset   not installed (set IMG2DATASET_PYTHON)")
    for name, r in (("ours", o), ("ours-large", big)):
        if r and (r["summary"]["errors"] or r["summary"]["pages_failed"]):
            print(f"{name}: errors {r['summary']['errors_by_reason']} pages {r['summary']['page_errors_by_reason']}")
    print(f"\npeak RSS (MB)  {'urls':>8}{'driver':>10}{'workers':>10}")
    print(f"{'':<14} {args.n:>8}{o['driver_peak_rss_mb']:>10.0f}{o['workers_peak_rss_mb']:>10.0f}")
    if big:
        print(f"{'':<14} {args.large:>8}{big['driver_peak_rss_mb']:>10.0f}{big['workers_peak_rss_mb']:>10.0f}")
    print(
        json.dumps(
            {
                "bench": "scrape",
                "ours": round(ours_ips, 1),
                "peer": round(peer_ips, 1) if peer_ips else None,
                "ratio": round(ours_ips / peer_ips, 3) if peer_ips else None,
                "unit": "images/s",
                "n": args.n,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "driver_rss_mb": {
                    str(args.n): round(o["driver_peak_rss_mb"]),
                    **({str(args.large): round(big["driver_peak_rss_mb"])} if big else {}),
                },
                "workers_rss_mb": {
                    str(args.n): round(o["workers_peak_rss_mb"]),
                    **({str(args.large): round(big["workers_peak_rss_mb"])} if big else {}),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
