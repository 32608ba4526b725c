"""The scheduler: tick decisions with a fake job client (fast), and a real Ray head on 127.0.0.1 (slow).

The slow test starts its own head with :func:`pipeline.testing.ray_head` (``ray start --head --block`` in a new
process session, token authentication on, its own ports and temp dir; the token is also written to a file for the
scheduler to find). It never runs ``ray stop``: that command kills every Ray process on the machine, the test
session's own Ray included; the teardown ends exactly the processes of that session, in bounded time.
"""

from __future__ import annotations

import subprocess
import sys
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers.jobs import running_scheduler, score_jobs
from helpers.score_model import add_posts, face_images, write_model
from pipeline.config import load_config
from pipeline.score.scheduler import Scheduler, auth_headers
from pipeline.store import DataRoot

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


# ------------------------------------------------------------------------------------------------ fast: fake client
class FakeClient:
    def __init__(self):
        self.jobs: list[types.SimpleNamespace] = []
        self.submitted: list[dict] = []

    def list_jobs(self):
        return list(self.jobs)

    def submit_job(self, **kw):
        self.submitted.append(kw)
        self.jobs.append(
            types.SimpleNamespace(
                submission_id=kw["submission_id"], status="PENDING", metadata=kw["metadata"], end_time=None
            )
        )
        return kw["submission_id"]

    def get_job_status(self, sid):
        return next(j.status for j in self.jobs if j.submission_id == sid)


def _sched(tmp_path, clock=time.time, **over):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "data"), **over})
    client = FakeClient()
    return Scheduler(cfg, "configs/demo.yaml", interval_s=1.0, client=client, clock=clock), client


def test_tick_submits_then_refuses_while_running(tmp_path):
    s, client = _sched(tmp_path)
    assert s.tick()["action"] == "submitted"
    sub = client.submitted[0]
    assert sub["entrypoint"] == "python jobs/score.py --config configs/demo.yaml"
    assert sub["runtime_env"]["working_dir"] == str(REPO) and ".venv" in sub["runtime_env"]["excludes"]
    for status in ("PENDING", "RUNNING"):
        client.jobs[0].status = status
        r = s.tick()
        assert r["action"] == "skipped" and status in r["reason"]
    client.jobs[0].status = "FAILED"
    assert s.tick()["action"] == "submitted" and len(client.submitted) == 2
    # jobs of another data root do not block
    client.jobs[1].metadata = {"facerank_job": "score", "data_root": "/elsewhere"}
    client.jobs[1].status = "RUNNING"
    assert s.tick()["action"] == "submitted"


def test_min_gap_after_previous_run(tmp_path):
    now = [1000.0]
    s, client = _sched(tmp_path, clock=lambda: now[0], **{"score.min_gap_s": 30})
    s.tick()
    client.jobs[0].status, client.jobs[0].end_time = "SUCCEEDED", 1010.0 * 1000
    now[0] = 1020.0
    assert s.tick()["action"] == "skipped"
    now[0] = 1041.0
    assert s.tick()["action"] == "submitted"


def test_loop_is_bounded_and_cron_is_read(tmp_path):
    s, client = _sched(tmp_path)
    s.interval_s = 0.05
    t0 = time.monotonic()
    out = s.loop(max_runs=2, max_seconds=0.5)  # the first job never ends: later ticks skip, time bounds the loop
    assert time.monotonic() - t0 < 5
    assert len(out["submitted"]) == 1 and out["skipped"] >= 3
    client.jobs[0].status = "SUCCEEDED"
    assert len(s.loop(max_runs=2)["submitted"]) == 2  # the run count bounds it
    cfg = load_config(None, overrides={"score.schedule": "*/5 * * * *"})
    cron = Scheduler(cfg, "c.yaml", client=FakeClient())
    t = cron.next_fire(1_700_000_000.0)  # 2023-11-14 22:13:20 UTC → 22:15:00
    assert t == 1_700_000_100.0
    bad = load_config(None, overrides={"score.schedule": "every day"})
    from pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="cron"):
        Scheduler(bad, "c.yaml", client=FakeClient())


def test_auth_headers_read_the_token_like_ray(tmp_path, monkeypatch):
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert auth_headers() == {}
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home-token\n")
    assert auth_headers() == {"Authorization": "Bearer home-token"}
    f = tmp_path / "tok"
    f.write_text("file-token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(f))
    assert auth_headers() == {"Authorization": "Bearer file-token"}
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env-token")
    assert auth_headers() == {"Authorization": "Bearer env-token"}
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert auth_headers() == {}


def test_bad_config_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("score: {num_actors: many}\n")
    r = subprocess.run(
        [PY, "-m", "pipeline", "scheduler", "--config", str(bad), "--once"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and "score.num_actors" in r.stderr


# ------------------------------------------------------------------------------------------------ slow: real Ray head
def _wait(pred, timeout: float, every: float = 0.25, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


@pytest.fixture
def ray_head(cluster_head, tmp_path):
    """The session's separate Ray head (token auth on, 127.0.0.1: conftest ``cluster_head``): its address and
    token, and the token in a file (where the scheduler finds it). The test tells its jobs from others on that
    head by their ``facerank_job`` metadata."""
    tok = tmp_path / "auth_token"
    tok.write_text(cluster_head.token)
    return types.SimpleNamespace(address=cluster_head.dashboard_url, token=cluster_head.token, token_path=str(tok))


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_scheduler_submits_twice_to_a_real_ray_head(ray_head, tmp_path):
    from ray.job_submission import JobSubmissionClient

    # token auth is on: no token, no jobs API
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{ray_head.address}/api/jobs/", timeout=10)
    assert err.value.code == 401

    root = DataRoot(str(tmp_path / "data"))
    write_model(root)
    first = add_posts(root, face_images(2))
    cfg_file = tmp_path / "score.yaml"
    cfg_file.write_text(
        yaml.safe_dump(
            {
                "data_root": str(tmp_path / "data"),
                "faces": {"num_actors": 1, "batch_size": 4, "max_side": 320},
                "score": {"num_actors": 1, "batch_size": 4, "min_gap_s": 8, "ray_address": ray_head.address},
            }
        )
    )
    client = JobSubmissionClient(ray_head.address, headers={"Authorization": f"Bearer {ray_head.token}"})

    def ours():
        return score_jobs(client, str(tmp_path / "data"))

    def status(j):
        return str(getattr(j.status, "value", j.status))

    log = tmp_path / "sched" / "scheduler.log"
    log.parent.mkdir()
    with running_scheduler(cfg_file, ray_head.token, log, interval_s=3, max_seconds=480, python=PY) as sched:
        jobs = _wait(lambda: ours() or None, 120, what="the first submission")
        j1 = _wait(
            lambda: next((j for j in ours() if status(j) not in ("PENDING", "RUNNING")), None),
            300,
            what="the first job to end",
        )
        assert status(j1) == "SUCCEEDED", client.get_job_logs(j1.submission_id)[-3000:]
        second = add_posts(root, face_images(4)[2:], start=50)  # new images arrive between the runs
        _wait(lambda: len(ours()) >= 2, 120, what="the second submission")
        jobs = ours()
        j2 = _wait(
            lambda: next((j for j in ours()[1:] if status(j) not in ("PENDING", "RUNNING")), None),
            300,
            what="the second job to end",
        )
        assert status(j2) == "SUCCEEDED", client.get_job_logs(j2.submission_id)[-3000:]
        assert sched.wait(60) == 0
    jobs = ours()
    assert len(jobs) == 2 and all(status(j) == "SUCCEEDED" for j in jobs)
    text = log.read_text()
    assert text.count("submitted facerank-score-") == 2
    assert "skipping this tick: previous run" in text  # refused to start while the first one ran

    df = root.read("scores").to_pandas()
    assert df.image_sha256.is_unique and sorted(df.image_sha256) == sorted(first + second)
    runs = df.sort_values("scored_at").groupby("run_id", sort=False).image_sha256.apply(sorted).tolist()
    assert runs == [sorted(first), sorted(second)]  # the second run scored only the new images
    assert (df.status == "ok").all()
