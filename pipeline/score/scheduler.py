"""The scheduler service: submits the score job to a Ray cluster on a cron schedule, one run at a time.

    python -m pipeline scheduler --config configs/demo.yaml [--data-root DIR] [--interval-s 30]
                                 [--once [--wait]] [--max-runs N] [--max-seconds S] [--address URL]

Every tick of ``score.schedule`` (a cron expression, read with croniter; ``--interval-s`` replaces it, for tests)
submits ``python jobs/score.py --config …`` through Ray's job submission API (``JobSubmissionClient`` at
``score.ray_address``) with the repository as the runtime_env ``working_dir``. A tick that finds an earlier score
job for the same data root still PENDING or RUNNING submits nothing and logs why: runs never overlap, also across
scheduler restarts (jobs are found by their metadata, not by memory).

Token authentication (Ray ≥ 2.5x ``ray start --head`` turns it on): the job API then wants
``Authorization: Bearer <token>``. :func:`auth_headers` reads the token the way Ray does — ``RAY_AUTH_TOKEN``,
else the file named by ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token`` — and sends it unless
``RAY_AUTH_MODE=disabled``; a cluster without auth ignores the header.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, ConfigError, load_config
from pipeline.runtime import log, setup_logging

REPO = Path(__file__).resolve().parents[2]  # the repository: pipeline/score/scheduler.py
ACTIVE = ("PENDING", "RUNNING")
JOB_KIND = "score"


def auth_headers() -> dict[str, str]:
    """``{"Authorization": "Bearer <token>"}`` when a Ray auth token is configured, else ``{}``."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return {}
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
        try:
            token = Path(path).read_text(encoding="utf-8").strip()
        except OSError:
            token = ""
    return {"Authorization": f"Bearer {token}"} if token else {}


def make_client(address: str) -> Any:
    """A ``JobSubmissionClient`` for ``address`` that authenticates when a token is configured."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address, headers=auth_headers() or None)


class Scheduler:
    """Decides, tick by tick, whether to submit a score job; the clock and client are injectable for tests."""

    def __init__(
        self,
        cfg: Config,
        config_path: str,
        *,
        data_root: str | None = None,
        interval_s: float | None = None,
        address: str | None = None,
        python: str = "python",
        client: Any = None,
        clock: Callable[[], float] = time.time,
    ):
        self.cfg = cfg
        self.config_path = config_path
        self.data_root = data_root
        self.interval_s = interval_s
        self.address = address or cfg.score.ray_address
        self.python = python
        self.client = client if client is not None else make_client(self.address)
        self.clock = clock
        self.submitted: list[str] = []
        self.skipped = 0
        if interval_s is None:
            from croniter import croniter

            if not croniter.is_valid(cfg.score.schedule):
                raise ConfigError(f"score.schedule: not a cron expression: {cfg.score.schedule!r}")

    # ---------------------------------------------------------------- timing
    def next_fire(self, after: float) -> float:
        """The next tick strictly after ``after`` (epoch seconds)."""
        if self.interval_s is not None:
            return after + self.interval_s
        from croniter import croniter

        start = dt.datetime.fromtimestamp(after, dt.UTC)
        return croniter(self.cfg.score.schedule, start).get_next(float)

    # ---------------------------------------------------------------- job bookkeeping
    def _ours(self, job: Any) -> bool:
        meta = getattr(job, "metadata", None) or {}
        return meta.get("facerank_job") == JOB_KIND and meta.get("data_root") == self.cfg.data_root

    def jobs(self) -> list[Any]:
        """Score jobs for this data root known to the cluster (any status)."""
        return [j for j in self.client.list_jobs() if self._ours(j)]

    def blocking_job(self) -> tuple[Any, str] | None:
        """(job, why) when a run must not start now: an earlier one is active, or ended under min_gap_s ago."""
        jobs = self.jobs()
        for j in jobs:
            if str(getattr(j.status, "value", j.status)) in ACTIVE:
                return j, f"previous run {j.submission_id} is still {getattr(j.status, 'value', j.status)}"
        gap = self.cfg.score.min_gap_s
        if gap > 0:
            ends = [j.end_time / 1000.0 for j in jobs if getattr(j, "end_time", None)]
            if ends and self.clock() - max(ends) < gap:
                return jobs[0], f"previous run ended {self.clock() - max(ends):.1f}s ago (< min_gap_s {gap})"
        return None

    def entrypoint(self) -> str:
        cfg_path = self.config_path
        p = Path(cfg_path)
        if p.is_absolute():
            try:  # inside the repository: relative, so it also resolves in the uploaded working_dir
                cfg_path = str(p.resolve().relative_to(self._working_dir()))
            except ValueError:
                pass
        cmd = [self.python, "jobs/score.py", "--config", cfg_path]
        if self.data_root:
            cmd += ["--data-root", self.data_root]
        import shlex

        return " ".join(shlex.quote(c) for c in cmd)

    def _working_dir(self) -> Path:
        return Path(self.cfg.score.job_working_dir or REPO).resolve()

    def runtime_env(self) -> dict[str, Any]:
        return {"working_dir": str(self._working_dir()), "excludes": list(self.cfg.score.job_excludes)}

    def submit(self) -> str:
        sid = f"facerank-score-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
        self.client.submit_job(
            entrypoint=self.entrypoint(),
            submission_id=sid,
            runtime_env=self.runtime_env(),
            metadata={"facerank_job": JOB_KIND, "data_root": self.cfg.data_root},
        )
        self.submitted.append(sid)
        log.info("scheduler: submitted %s: %s", sid, self.entrypoint())
        return sid

    def tick(self) -> dict[str, Any]:
        """One scheduling decision: submit, or skip (and say why)."""
        blocked = self.blocking_job()
        if blocked:
            self.skipped += 1
            log.info("scheduler: skipping this tick: %s", blocked[1])
            return {"action": "skipped", "reason": blocked[1]}
        return {"action": "submitted", "submission_id": self.submit()}

    def wait(self, submission_id: str, timeout_s: float = 3600.0, poll_s: float = 1.0) -> str:
        """Wait until a job is no longer PENDING/RUNNING; returns its final status (or the last seen one)."""
        deadline = time.monotonic() + timeout_s
        status = "PENDING"
        while time.monotonic() < deadline:
            status = str(getattr(s := self.client.get_job_status(submission_id), "value", s))
            if status not in ACTIVE:
                break
            time.sleep(poll_s)
        log.info("scheduler: %s ended %s", submission_id, status)
        return status

    def loop(self, max_runs: int | None = None, max_seconds: float | None = None, stop: Callable[[], bool] = bool):
        """Tick on schedule until ``max_runs`` submissions, ``max_seconds`` or ``stop()``; returns a summary."""
        t_end = None if max_seconds is None else self.clock() + max_seconds
        fire = self.next_fire(self.clock()) if self.interval_s is None else self.clock()
        while not stop():
            if max_runs is not None and len(self.submitted) >= max_runs:
                break
            if t_end is not None and fire > t_end:
                break
            while (delay := fire - self.clock()) > 0 and not stop():
                time.sleep(min(delay, 1.0))
            if stop():
                break
            self.tick()
            fire = self.next_fire(max(fire, self.clock() - 1e-3))
        return {"submitted": list(self.submitted), "skipped": self.skipped}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The scheduler's options (``--config`` and ``--data-root`` included) on ``p``."""
    p.add_argument("--config", required=True)
    p.add_argument("--data-root", help="passed on to the job (and used to find earlier runs)")
    p.add_argument("--interval-s", type=float, help="tick every S seconds instead of score.schedule")
    p.add_argument("--address", help="job API address (default score.ray_address)")
    p.add_argument("--python", default="python", help="the interpreter the job runs with on the cluster")
    p.add_argument("--once", action="store_true", help="one tick now, then exit")
    p.add_argument("--wait", action="store_true", help="with --once: wait for the job and exit 1 unless it succeeded")
    p.add_argument("--max-runs", type=int, help="stop after this many submissions")
    p.add_argument("--max-seconds", type=float, help="stop after this long")


def _scheduler(args: argparse.Namespace) -> Scheduler:
    """The scheduler the parsed options describe (raises :class:`ConfigError` on a bad config)."""
    overrides = {"data_root": args.data_root} if args.data_root else None
    cfg = load_config(args.config, overrides=overrides)
    return Scheduler(
        cfg, args.config, data_root=args.data_root, interval_s=args.interval_s, address=args.address, python=args.python
    )


def serve(args: argparse.Namespace) -> int:
    """Run the scheduler from parsed options (:func:`add_arguments`): one tick (``--once``), or tick on schedule
    until a bound or SIGTERM/SIGINT. Exit 2 on a bad config, 1 when ``--once --wait`` saw the job fail."""
    setup_logging()
    try:
        sched = _scheduler(args)
    except ConfigError as err:
        print(f"config error: {err}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())
    if args.once:
        result = sched.tick()
        if args.wait and result["action"] == "submitted":
            return 0 if sched.wait(result["submission_id"]) == "SUCCEEDED" else 1
        return 0
    summary = sched.loop(max_runs=args.max_runs, max_seconds=args.max_seconds, stop=stopping.is_set)
    log.info("scheduler: done: %s", summary)
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m pipeline scheduler") -> int:
    """Command-line entry: parse ``argv`` (default ``sys.argv[1:]``) and :func:`serve`."""
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    add_arguments(p)
    return serve(p.parse_args(argv))
