"""Ray jobs from tests: submit one as a user would (``ray job submit``), poll one to its end, find its upload.

Example::

    sid, proc = submit_cli(head, ["python", "jobs/labels.py", "--config", "configs/test.yaml"])
    assert wait_for(client, sid) == "SUCCEEDED"
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
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
