"""Ray jobs from tests: submit one as a user would (``ray job submit``), poll one to its end, find its upload.

Example::

    sid, proc = submit_cli(head, ["python", "jobs/labels.py", "--config", "configs/test.yaml"])
    assert wait_for(client, sid) == "SUCCEEDED"
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

import pytest

from pipeline.testing import RayHead, ray_executable

REPO = Path(__file__).resolve().parents[2]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def wait_for(client, job_id: str, timeout_s: float = 300.0) -> str:
    """Poll a job until it ends (bounded); a job still running at the deadline is stopped and the test fails."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        time.sleep(1.0)
    client.stop_job(job_id)
    pytest.fail(f"job {job_id} still running after {timeout_s:.0f}s:\n{client.get_job_logs(job_id)[-3000:]}")


def submit_cli(head: RayHead, entrypoint: list[str], *, runtime_env: dict | None = None, timeout_s: float = 300):
    """``ray job submit --working-dir . -- <entrypoint>`` from the repository root, as a user would type it;
    returns (submission id, the finished ``subprocess.CompletedProcess``)."""
    sid = f"facerank-test-{uuid.uuid4().hex[:8]}"
    cmd = [ray_executable(), "job", "submit", "--submission-id", sid, "--working-dir", "."]
    if runtime_env:
        cmd += ["--runtime-env-json", json.dumps(runtime_env)]
    proc = subprocess.run(
        cmd + ["--", *entrypoint], cwd=REPO, env=head.client_env, capture_output=True, text=True, timeout=timeout_s
    )
    return sid, proc


def working_dir_copies(head: RayHead) -> list[Path]:
    """The working-dir uploads the head unpacked, oldest first."""
    found = Path(head.temp_dir).glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*")
    return sorted({p.resolve() for p in found if p.is_dir()}, key=lambda p: p.stat().st_mtime)


@contextmanager
def running_scheduler(cfg_file: Path, token: str, log_path: Path, *, interval_s: float, max_seconds: float,
                      python: str = "python"):  # fmt: skip
    """``python -m pipeline scheduler --max-runs 2`` on ``cfg_file``, finding the head's token in a file beside the
    log as a user's ``~/.ray/auth_token`` (no ``RAY_AUTH_MODE``/``RAY_ADDRESS`` from the test's environment); yields
    the process and always ends it (bounded)."""
    tok = log_path.parent / "auth_token"
    tok.write_text(token)
    env = dict(os.environ, RAY_AUTH_TOKEN_PATH=str(tok))
    env.pop("RAY_AUTH_MODE", None)  # the scheduler finds the token by itself
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipeline", "scheduler", "--config", str(cfg_file), "--interval-s", str(interval_s)]
    cmd += ["--max-runs", "2", "--max-seconds", str(max_seconds), "--python", python]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def score_jobs(client, data_root: str) -> list:
    """The scheduler's score jobs on ``data_root`` (job metadata), oldest first."""
    jobs = [j for j in client.list_jobs() if (j.metadata or {}).get("facerank_job") == "score"]
    return sorted((j for j in jobs if j.metadata.get("data_root") == data_root), key=lambda j: j.start_time or 0)
