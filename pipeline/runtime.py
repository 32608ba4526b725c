"""How a stage is entered: its lock, its log lines, and Ray (connected to or started once per process).

``init_ray(cfg)`` connects to the cluster named by ``cfg.ray.address`` or ``RAY_ADDRESS`` (set by ``ray job
submit``), or starts a local Ray with token authentication, bound to 127.0.0.1 and without Ray's cloud-metadata
probe (:mod:`pipeline.ray_env`); it does nothing when Ray is already up (tests share one instance).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import Any

import ray

from pipeline import ray_env
from pipeline.config import Config

log = logging.getLogger("facerank")

# Ray's core worker logs, at ERROR, for each Ray Data actor it starts: "Actor with class name: 'MapWorker(...)' ...
# has constructor arguments in the object store and max_restarts > 0". Ray Data passes every pool actor its
# context and function as object refs and restarts actors without limit (what lets a stage survive a lost node);
# the operator holds those refs until the pool ends, so a restarted actor finds them. Said once per pool, so that
# a user reading the job's log knows the line is not a failure (ray-project/ray#53727).
ACTOR_ARGS_NOTE = (
    "%s: Ray may log 'core_worker.cc: ... has constructor arguments in the object store and max_restarts > 0' at "
    "ERROR for these actors: harmless here, Ray Data keeps those arguments for the whole run (ray-project/ray#53727)"
)


def setup_logging(level: int = logging.INFO) -> None:
    if not log.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s [%(name)s] %(message)s", "%H:%M:%S"))
        log.addHandler(h)
    log.setLevel(level)


def init_ray(cfg: Config) -> None:
    """Connect to (or start) Ray once per process."""
    if ray.is_initialized():
        return
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    kwargs: dict = {"ignore_reinit_error": True, "log_to_driver": True}
    if address:
        ray.init(address=address, **kwargs)
    else:
        start_local_ray(num_cpus=cfg.ray.num_cpus, include_dashboard=True, **kwargs)
    try:  # quieter progress output in logs; bars stay on in a terminal
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = sys.stderr.isatty()
    except Exception:  # pragma: no cover - older Ray
        pass


def start_local_ray(*, num_cpus: int | None = None, include_dashboard: bool = False, **kwargs) -> None:
    """Start a local, single-node Ray: token authentication, every port on 127.0.0.1, no metadata probe.

    ``include_dashboard`` adds the dashboard's HTTP API (on 127.0.0.1, token required): the state API that Ray
    Train's controller polls and the job API. Without it Ray still runs a minimal dashboard process.
    """
    ray_env.apply(loopback=True)
    ray.init(num_cpus=num_cpus, include_dashboard=include_dashboard, dashboard_host="127.0.0.1", **kwargs)


def stage_entry(name: str, *, uses_ray: bool = True) -> Callable:
    """Decorate a stage's ``run(cfg, **opts)``: the one place a stage is entered.

    The wrapped ``run`` holds the stage's lock on the data root (:func:`pipeline.locks.stage_lock`; re-entered
    silently when the CLI took it first), logs its start, end and duration, and connects to or starts Ray
    (:func:`init_ray`, unless ``uses_ray`` is false: labels is one polars process) before the body runs, whoever
    calls it: the CLI, a job, a test or a user's own code. The body runs inside a
    :class:`pipeline.placement.NodeWatch`: a placement it uses that loses every node mid-stage for ``node_wait_s``
    ends it with one line.
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(cfg: Config, **opts: Any) -> Any:
            from pipeline.locks import stage_lock
            from pipeline.placement import NodeWatch

            with stage_lock(cfg, name), _logged(name), NodeWatch(name):
                if uses_ray:
                    init_ray(cfg)
                return fn(cfg, **opts)

        run.stage_name = name  # type: ignore[attr-defined]
        return run

    return wrap


@contextmanager
def _logged(name: str):
    setup_logging()
    t0 = time.monotonic()
    log.info("stage %s: start", name)
    try:
        yield
    except Exception:
        log.error("stage %s: failed after %.1fs", name, time.monotonic() - t0)
        raise
    log.info("stage %s: done in %.1fs", name, time.monotonic() - t0)
