"""The plumbing the feed benchmarks share: a replay server in its own process, each crawler in a child process of
the benchmark script (so each side's peak RSS is its own), and that peak RSS.

Used by ``bench_feeds.py`` (Mastodon) and ``bench_bluesky.py`` (Bluesky); nothing here is timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def rss_mb() -> float:
    """This process's peak resident set, MB: ``VmHWM`` of /proc/self/status, the high-water mark of this program's
    own memory. Not ``ru_maxrss``: Linux carries it over fork and exec, so a child started by a parent that had grown
    reports at least the parent's size."""
    with open("/proc/self/status") as f:
        return round(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024, 1)


def start_replay(module: str, args: list[str], tmp: str, tag: str) -> tuple[subprocess.Popen, str]:
    """``python -m module --port-file F *args`` on 127.0.0.1; its process and base URL once it listens (30 s)."""
    port_file = os.path.join(tmp, f"port-{tag}")
    proc = subprocess.Popen([sys.executable, "-m", module, "--port-file", port_file, *args], cwd=REPO)
    for _ in range(600):
        if os.path.exists(port_file):
            return proc, Path(port_file).read_text()
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"the replay server {module} did not start")


def run_child(script: str, kind: str, url: str, n: int, threads: int, out: str) -> dict:
    """``script --child KIND ...`` in its own process; the JSON of its last output line."""
    cmd = [sys.executable, script, "--child", kind, "--url", url, "--n", str(n), "--threads", str(threads),
           "--out", out]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"{kind} failed: {res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])
