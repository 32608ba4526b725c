"""The crawl's worker pools, one interface over two kinds: Ray actors across a cluster, or threads in one process.

The driver (:mod:`pipeline.scrape.crawl`) runs the same loop over either (as img2dataset's distributors share one
signature); ``crawl(cfg, pool=...)`` picks one:

* ``ray`` (:class:`RayWorkers`): :class:`HttpWorker` and :class:`BrowserWorker` are the plain work units of
  :mod:`pipeline.scrape.work` as Ray actors, taking their per-host slots from one
  :class:`~pipeline.scrape.net.ratelimit.HostLimiter` actor (one lease per host and actor, shared by the actor's
  threads: :class:`~pipeline.scrape.net.ratelimit.RayLimiter`). A pool replaces a dead or killed actor (its host
  slots freed first) up to ``2 × size + 2`` times per run, and :meth:`RayWorkers.start` returns once the HTTP actors
  answer, so that a batch's bound (``scrape.batch_timeout()``), which runs from its submission, does not include
  actor start-up. Ray must be initialised.
* ``threads`` (:class:`ThreadWorkers`): the same work units in this process, their per-host slots from one
  :class:`~pipeline.scrape.net.ratelimit.LocalLimiter` shared by all of them; each HTTP worker takes one task a call
  and ``2 × threads_per_actor`` calls at once, so results are handled as they finish (a feed's next page never
  waits for the images of the last one). No Ray session: tests and benchmarks. A thread cannot be killed: a batch
  past its bound is abandoned (its tasks fail, its worker is replaced, its thread left to end on its own deadlines).

A worker is a handle the pool owns; :meth:`Workers.submit` hands it a batch and returns a handle of the call,
:meth:`Workers.wait` returns the calls that finished, :meth:`Workers.result` their (results, robots fetch rows) or
:class:`WorkerDied`.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import ray

from pipeline.config import Config
from pipeline.placement import remote_args, require_node
from pipeline.privacy import OptOut
from pipeline.scrape.net.ratelimit import HostLimiter, LocalLimiter, RayLimiter
from pipeline.scrape.work import BrowserWork, HttpWork

log = logging.getLogger("facerank.scrape")

INFLIGHT_PER_ACTOR = 2  # HTTP batches one Ray actor runs at once (its max_concurrency)
READY_TIMEOUT_S = 120
POOLS = ("ray", "threads")


class WorkerDied(Exception):
    """The worker that ran a call is gone (a Ray actor killed, out of memory, crashed): its batch is not done."""


def _ray_slot(handle: Any, threads: int = 1) -> Callable | None:
    """The limiter slot of this actor on the shared HostLimiter (None without one: the client's local limiter);
    ``threads``: how many of a host's slots the actor's lease asks for (its threads that fetch)."""
    if handle is None:
        return None
    try:
        owner = ray.get_runtime_context().get_actor_id() or ""
    except Exception:
        owner = ""
    return RayLimiter(handle, owner, want_slots=threads).slot


@ray.remote
class HttpWorker(HttpWork):
    """A Ray actor fetching feed pages and images with ``scrape.threads_per_actor`` threads."""

    def __init__(self, cfg: Config, domains: list[str], limiter: Any = None, optout_images: OptOut | None = None):
        super().__init__(cfg, domains, _ray_slot(limiter, cfg.scrape.threads_per_actor), optout_images)

    def ready(self) -> bool:
        """Answers once the actor is constructed (:meth:`RayWorkers.start` waits for it)."""
        return True


@ray.remote
class BrowserWorker(BrowserWork):
    """A Ray actor owning one headless Chromium, rendering staff sites."""

    def __init__(self, cfg: Config, domains: list[str], limiter: Any = None):
        super().__init__(cfg, domains, _ray_slot(limiter))


def kill(actor: Any) -> None:
    """``ray.kill`` that ignores an actor already gone."""
    try:
        ray.kill(actor)
    except Exception:
        pass


@dataclasses.dataclass
class WorkerPool:
    """Actors of one kind and how many batches each runs now."""

    name: str
    make: Callable[[], Any]
    size: int
    actors: list = dataclasses.field(default_factory=list)
    inflight: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    replaced: int = 0

    def start(self) -> None:
        self.actors = [self.make() for _ in range(self.size)]

    def replace(self, actor: Any) -> bool:
        """Drop a dead (or killed) worker and start a replacement within the budget; True when one was started."""
        if actor not in self.actors:
            return False
        self.actors.remove(actor)
        self.inflight.pop(actor, None)
        if self.replaced >= 2 * self.size + 2:
            return False
        self.replaced += 1
        self.actors.append(self.make())
        log.warning("scrape: a %s worker died; started a replacement", self.name)
        return True


class Workers:
    """The two pools of one crawl (HTTP workers, browsers) and how calls are made to them: the interface the driver
    uses, whatever runs the work."""

    http: WorkerPool
    browsers: WorkerPool
    batch_size: int  # tasks handed to an HTTP worker a call
    inflight_per_actor: int  # calls one HTTP worker runs at once

    def submit(self, actor: Any, batch: list[dict]) -> Any:
        """Start ``actor`` on ``batch``; returns the call's handle."""
        raise NotImplementedError

    def wait(self, calls: list, timeout: float) -> list:
        """The calls among ``calls`` that finished, waiting up to ``timeout`` seconds for at least one."""
        raise NotImplementedError

    def result(self, call: Any) -> tuple[list[dict], list[dict]]:
        """A finished call's (results, robots fetch rows); :class:`WorkerDied` when its worker died."""
        raise NotImplementedError

    def replace(self, pool: WorkerPool, actor: Any) -> bool:
        """A dead or stuck worker out, a new one in (within the pool's budget); True when one was started."""
        return pool.replace(actor)

    def kill(self, actor: Any) -> None:
        """Stop a worker now (its running calls are lost)."""

    def stop(self) -> None:
        """Quit every browser, stop every worker."""


class RayWorkers(Workers):
    """Ray actors (module docstring) and the shared host limiter actor."""

    batch_size = 0  # scrape.tasks_per_call, set in start
    inflight_per_actor = INFLIGHT_PER_ACTOR

    def __init__(self, limiter: Any, http: WorkerPool, browsers: WorkerPool, batch_size: int):
        self.limiter, self.http, self.browsers, self.batch_size = limiter, http, browsers, batch_size

    @classmethod
    def start(cls, cfg: Config, domains: list[str], optout: OptOut) -> RayWorkers:
        """Start the limiter, ``scrape.num_actors`` HTTP actors and up to ``selenium.num_browsers`` browsers."""
        sc, h = cfg.scrape, cfg.scrape.http
        require_node("scrape", cfg.ray.placement.scrape)  # bounded: Ray would wait for such a node without end
        lease_ttl = h.total_timeout_s * h.retry.attempts + h.retry.backoff_max_s * h.retry.attempts + 60
        limiter = HostLimiter.remote(h.requests_per_second_per_host, h.max_concurrency_per_host, lease_ttl)
        where = remote_args(cfg.ray.placement.scrape)  # ray.placement.scrape: which nodes the crawl actors run on
        http_opts = {"num_cpus": sc.cpus_per_actor, "max_concurrency": INFLIGHT_PER_ACTOR, **where}
        http = WorkerPool(
            "http", lambda: HttpWorker.options(**http_opts).remote(cfg, domains, limiter, optout), sc.num_actors
        )
        browsers = WorkerPool(
            "browser",
            lambda: BrowserWorker.options(num_cpus=sc.cpus_per_actor, **where).remote(cfg, domains, limiter),
            min(sc.selenium.num_browsers, len(sc.staff)),
        )
        http.start()
        browsers.start()
        ray.wait([a.ready.remote() for a in http.actors], num_returns=len(http.actors), timeout=READY_TIMEOUT_S)
        return cls(limiter, http, browsers, sc.tasks_per_call)

    def submit(self, actor: Any, batch: list[dict]) -> Any:
        return actor.run.remote(batch)

    def wait(self, calls: list, timeout: float) -> list:
        ready, _ = ray.wait(calls, num_returns=1, timeout=timeout)
        return ready

    def result(self, call: Any) -> tuple[list[dict], list[dict]]:
        try:
            return ray.get(call)
        except ray.exceptions.RayActorError as e:
            raise WorkerDied(str(e)) from None

    def replace(self, pool: WorkerPool, actor: Any) -> bool:
        if actor in pool.actors:
            try:  # free the host slots the dead actor held, rather than waiting for their leases to expire
                self.limiter.release_owner.remote(actor._actor_id.hex())
            except Exception:
                pass
        return pool.replace(actor)

    def kill(self, actor: Any) -> None:
        kill(actor)

    def stop(self) -> None:
        """Quit every browser (30 s each at most), then kill every actor and the limiter."""
        for a in self.browsers.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:
                pass
        for a in self.http.actors + self.browsers.actors + [self.limiter]:
            kill(a)


class _ThreadWorker:
    """One work unit (:class:`~pipeline.scrape.work.HttpWork` or ``BrowserWork``) and the threads that call it."""

    def __init__(self, work: Any, calls: int, name: str):
        self.work = work
        self.calls = cf.ThreadPoolExecutor(calls, thread_name_prefix=name)

    def stop(self) -> None:
        self.calls.shutdown(wait=False, cancel_futures=True)
        pool = getattr(self.work, "pool", None)  # HttpWork's fetch threads
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)
        if hasattr(self.work, "shutdown"):
            try:
                self.work.shutdown()  # BrowserWork: quit Chromium and its egress proxy
            except Exception:
                pass


class ThreadWorkers(Workers):
    """The work units in this process (module docstring); one :class:`LocalLimiter` for every host slot."""

    batch_size = 1

    def __init__(self, http: WorkerPool, browsers: WorkerPool, inflight_per_actor: int):
        self.http, self.browsers, self.inflight_per_actor = http, browsers, inflight_per_actor

    @classmethod
    def start(cls, cfg: Config, domains: list[str], optout: OptOut) -> ThreadWorkers:
        sc, h = cfg.scrape, cfg.scrape.http
        slot = LocalLimiter(h.requests_per_second_per_host, h.max_concurrency_per_host).slot
        calls = 2 * sc.threads_per_actor
        http = WorkerPool("http", lambda: _ThreadWorker(HttpWork(cfg, domains, slot, optout), calls, "crawl"),
                          sc.num_actors)  # fmt: skip
        browsers = WorkerPool(
            "browser",
            lambda: _ThreadWorker(BrowserWork(cfg, domains, slot), 1, "browser"),
            min(sc.selenium.num_browsers, len(sc.staff)),
        )
        http.start()
        browsers.start()
        return cls(http, browsers, calls)

    def submit(self, actor: _ThreadWorker, batch: list[dict]) -> cf.Future:
        return actor.calls.submit(actor.work.run, batch)

    def wait(self, calls: list, timeout: float) -> list:
        done, _ = cf.wait(calls, timeout=timeout, return_when=cf.FIRST_COMPLETED)
        return list(done)

    def result(self, call: cf.Future) -> tuple[list[dict], list[dict]]:
        try:
            return call.result()
        except cf.CancelledError:  # queued on a worker that was stopped (abandoned): not run, so not done
            raise WorkerDied("the call was cancelled with its worker") from None

    def kill(self, actor: _ThreadWorker) -> None:
        actor.stop()

    def stop(self) -> None:
        for a in self.http.actors + self.browsers.actors:
            a.stop()


def start_workers(cfg: Config, domains: list[str], optout: OptOut, pool: str = "ray") -> Workers:
    """The worker pools of one crawl: ``pool`` is ``ray`` or ``threads`` (module docstring)."""
    if pool == "ray":
        return RayWorkers.start(cfg, domains, optout)
    if pool == "threads":
        return ThreadWorkers.start(cfg, domains, optout)
    raise ValueError(f"pool: {pool!r} is not one of {', '.join(POOLS)}")
