"""Scrape throughput against img2dataset: N distinct JPEGs (7-52 KB) from a local server in another process.

Both tools download the same N URLs (20,000 by default: a run long enough to be stable, about a minute each on the
2-core development machine) to local disk on this machine with the same thread budget (ours: ``num_actors x
threads_per_actor``; img2dataset: ``processes_count x thread_count``), resize off. Ours is the whole scrape stage
(a JSON feed lists the URLs; robots, rate limiter, verification, sha256 store, Parquet rows included). The table
names both versions (ours: the git commit of the ``pipeline`` package that ran, ``+changes`` when its tracked files
differ from it; img2dataset: its installed version, ``peer_version`` in the JSON line) and the CPU seconds of each
tool's processes during its timed run (ours: the driver, the HTTP actors, the limiter actor and Ray's own processes;
img2dataset: all its processes; and the image server's, which serves both). Then our second run at ``--small`` URLs
(N/10 by default) for the peak RSS of our driver and workers at N/10 and N URLs: memory must not grow beyond the
frontier's own rows.

img2dataset is run from its own environment: ``IMG2DATASET_PYTHON`` (default /tmp/i2d-venv/bin/python), created with
``python -m venv /tmp/i2d-venv && /tmp/i2d-venv/bin/pip install img2dataset`` (it pins packages that do not belong in
the project's venv). Without it the peer column is empty and the JSON line has ``"peer": null``.

    .venv/bin/python benchmarks/bench_scrape.py [--n 20000] [--threads 16] [--small 2000]
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

import psutil

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from replay_bench import rss_mb  # noqa: E402

from pipeline.testing.replay import with_comment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PER_PAGE = 500


# ------------------------------------------------------------------------------------------ the image server
def _bases() -> list[bytes]:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = []
    for side in np.linspace(90, 260, 24).astype(int):  # noise JPEGs from ~7 KB to ~52 KB
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
        out.append(buf.getvalue())
    return out


def serve(port_file: str, n_distinct: int) -> None:
    bases = _bases()

    def image(i: int) -> bytes:  # distinct bytes per i: a JPEG comment segment after SOI
        return with_comment(bases[i % len(bases)], f"facerank-bench-{i}")

    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # TCP_NODELAY on the served sockets, as image servers set it (nginx's tcp_nodelay, on by default for kept-alive
        # connections): http.server sends the headers and the body in two writes, and with Nagle's algorithm the
        # body's last segment waits for the client's delayed ACK (about 40 ms on Linux) on every response of a
        # kept-alive connection, a stall that a client opening a new connection per image does not see
        disable_nagle_algorithm = True

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
    """Child process: the scrape stage over the feed; reports time, counts, peak RSS (driver, workers) and CPU
    seconds per process."""
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
    me = psutil.Process()
    roles: dict[int, str | None] = {}  # pid -> role; None: not named yet (an idle Ray worker may become an actor)
    last: dict[int, tuple[str, float, int]] = {}  # pid -> (role, CPU seconds, RSS) when last read
    peak_workers = 0
    stop = threading.Event()

    def role(p: psutil.Process) -> str | None:
        cmd = " ".join(p.cmdline())
        if "HttpWorker" in cmd:
            return "http actors"
        if "HostLimiter" in cmd:
            return "limiter"
        if not cmd or "ray::IDLE" in cmd or "_worker.py" in cmd:
            return None
        return "ray system"  # raylet, gcs_server, the dashboard's and the log monitor's processes

    def sample() -> None:
        # Only this driver's descendants; a command line is read until its role is known (reading every one twice a
        # second cost the timed crawl about 18% of the driver's CPU), then only its CPU times and RSS.
        nonlocal peak_workers
        for p in me.children(recursive=True):
            try:
                if roles.get(p.pid) is None:
                    roles[p.pid] = role(p)
                r = roles[p.pid]
                if r is None:
                    continue
                with p.oneshot():
                    t = p.cpu_times()
                    last[p.pid] = (r, t.user + t.system, p.memory_info().rss if r != "ray system" else 0)
            except psutil.Error:
                pass
        peak_workers = max(peak_workers, sum(rss for r, _, rss in last.values() if r != "ray system"))

    def sampler() -> None:
        while not stop.wait(0.5):
            sample()

    base: dict[int, float] = {}  # CPU seconds of each process before the crawl (Ray's start, idle workers)
    for p in me.children(recursive=True):
        try:
            t = p.cpu_times()
            base[p.pid] = t.user + t.system
        except psutil.Error:
            pass
    threading.Thread(target=sampler, daemon=True).start()
    c0 = me.cpu_times()
    t0 = time.monotonic()
    s = crawl(cfg)
    secs = time.monotonic() - t0
    c1 = me.cpu_times()
    stop.set()
    sample()  # the actors' last CPU times, before they are stopped
    ray.shutdown()
    cpu: dict[str, float] = {"driver": c1.user + c1.system - c0.user - c0.system}
    for pid, (r, c, _) in last.items():
        cpu[r] = cpu.get(r, 0.0) + c - base.get(pid, 0.0)
    return {
        "seconds": secs,
        "ok": s["images_fetched"],
        "summary": s,
        "driver_peak_rss_mb": rss_mb(),  # the child's own high-water mark (ru_maxrss would carry the parent's)
        "workers_peak_rss_mb": peak_workers / 2**20,
        "cpu_s": cpu,
        "version": _git_version(Path(__import__("pipeline").__file__).parent),
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
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # its processes, each waited for by its parent
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    secs = time.monotonic() - t0
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok = len(list((Path(out) / "o").rglob("*.jpg")))
    if r.returncode != 0:
        print(r.stderr[-2000:], file=sys.stderr)
    cpu = c1.ru_utime + c1.ru_stime - c0.ru_utime - c0.ru_stime
    return {"seconds": secs, "ok": ok, "cpu_s": {"img2dataset": cpu}}


def peer_version(py: str) -> str:
    """The img2dataset version installed beside ``py`` (its own venv)."""
    code = "import importlib.metadata as m; print(m.version('img2dataset'))"
    r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=120)
    return r.stdout.strip() or "unknown"


def _git_version(where: Path) -> str:
    """The commit of the checkout holding ``where`` (``+changes`` when tracked files differ from it)."""
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=30).stdout.strip()  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "-uno"], capture_output=True,
                               text=True, timeout=30).stdout.strip()  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{'+changes' if dirty else ''}" if head else "unknown"


def _child(args: argparse.Namespace) -> None:
    print(json.dumps(run_ours(args.base, args.n, args.threads, args.out)))


def _cpu(proc: psutil.Process) -> float:
    t = proc.cpu_times()
    return t.user + t.system


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000, help="URLs of the timed runs (both tools)")
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--small", type=int, default=-1,
                    help="URLs of our second run, for the RSS comparison (default n/10; 0: skip)")  # fmt: skip
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--base", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return _child(args)
    small = args.n // 10 if args.small < 0 else args.small

    tmp = Path(tempfile.mkdtemp(prefix="bench-scrape-"))
    port_file = tmp / "port"
    import multiprocessing as mp

    server = mp.get_context("spawn").Process(target=serve, args=(str(port_file), args.n), daemon=True)
    server.start()
    srv = psutil.Process(server.pid)
    try:
        while not port_file.exists():
            time.sleep(0.1)
        time.sleep(0.2)
        base = f"http://127.0.0.1:{port_file.read_text()}"

        def ours(n: int, name: str) -> dict:
            s0 = _cpu(srv)
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
            out = json.loads(r.stdout.strip().splitlines()[-1])
            out["cpu_s"]["image server"] = _cpu(srv) - s0  # feed pages and robots.txt included
            return out

        o = ours(args.n, "ours")
        py = os.environ.get("IMG2DATASET_PYTHON", "/tmp/i2d-venv/bin/python")
        peer = None
        if Path(py).exists():
            s0 = _cpu(srv)
            peer = run_img2dataset(py, base, args.n, args.threads, str(tmp / "i2d"))
            peer["cpu_s"]["image server"] = _cpu(srv) - s0
            peer["version"] = peer_version(py)
        sm = ours(small, "ours-small") if small else None
    finally:
        server.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    ours_ips = o["ok"] / o["seconds"]
    peer_ips = peer["ok"] / peer["seconds"] if peer else None
    print(f"{'tool':<14}{'version':<18}{'urls':>8}{'ok':>8}{'seconds':>10}{'images/s':>10}{'CPU s':>8}")
    print(f"{'facerank':<14}{o['version']:<18}{args.n:>8}{o['ok']:>8}{o['seconds']:>10.1f}{ours_ips:>10.1f}"
          f"{sum(o['cpu_s'].values()):>8.1f}")  # fmt: skip
    if peer:
        print(f"{'img2dataset':<14}{peer['version']:<18}{args.n:>8}{peer['ok']:>8}{peer['seconds']:>10.1f}"
              f"{peer_ips:>10.1f}{sum(peer['cpu_s'].values()):>8.1f}")  # fmt: skip
    else:
        print("img2dataset   not installed (set IMG2DATASET_PYTHON)")
    for name, r in (("ours", o), ("ours-small", sm)):
        if r and (r["summary"]["errors"] or r["summary"]["pages_failed"]):
            print(f"{name}: errors {r['summary']['errors_by_reason']} pages {r['summary']['page_errors_by_reason']}")
    print("\nCPU seconds of the timed runs, per process (the image server's shared by both tools)")
    for name, r in (("facerank", o), ("img2dataset", peer)):
        if r:
            print(f"  {name:<12}" + "  ".join(f"{k} {v:.1f}" for k, v in sorted(r["cpu_s"].items())))
    print(f"\npeak RSS (MB)  {'urls':>8}{'driver':>10}{'workers':>10}")
    for n, r in ((small, sm), (args.n, o)):
        if r:
            print(f"{'':<14} {n:>8}{r['driver_peak_rss_mb']:>10.0f}{r['workers_peak_rss_mb']:>10.0f}")
    runs = [(n, r) for n, r in ((small, sm), (args.n, o)) if r]
    print(
        json.dumps(
            {
                "bench": "scrape",
                "ours": round(ours_ips, 1),
                "peer": round(peer_ips, 1) if peer_ips else None,
                "ratio": round(ours_ips / peer_ips, 3) if peer_ips else None,
                "unit": "images/s",
                "ours_version": o["version"],
                "peer_version": peer["version"] if peer else None,
                "n": args.n,
                "threads": args.threads,
                "cpus": os.cpu_count(),
                "cpu_s": {
                    "ours": {k: round(v, 2) for k, v in o["cpu_s"].items()},
                    "peer": {k: round(v, 2) for k, v in peer["cpu_s"].items()} if peer else None,
                },
                "driver_rss_mb": {str(n): round(r["driver_peak_rss_mb"]) for n, r in runs},
                "workers_rss_mb": {str(n): round(r["workers_peak_rss_mb"]) for n, r in runs},
            }
        )
    )


if __name__ == "__main__":
    main()
