"""The crawl's Ray side: the worker actors, their pools (start, replace, stop) and the shared host limiter.

:class:`HttpWorker` and :class:`BrowserWorker` are the plain work units of :mod:`pipeline.scrape.work` as Ray actors,
taking their per-host slots from one :class:`~pipeline.scrape.net.ratelimit.HostLimiter` actor (one lease per host
and actor, shared by the actor's threads: :class:`~pipeline.scrape.net.ratelimit.RayLimiter`). :class:`Workers` holds
the limiter and both pools; a pool replaces a dead or killed actor (its host slots freed first) up to
``2 × size + 2`` times per run, and :meth:`Workers.start` returns once the HTTP actors answer, so that a batch's
bound (``scrape.batch_timeout()``), which runs from its submission, does not include actor start-up.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable
from typing import Any

import ray

from pipeline.config import Config
from pipeline.placement import remote_args, require_node
from pipeline.privacy import OptOut
from pipeline.runtime import log
from pipeline.scrape.net.ratelimit import HostLimiter, RayLimiter
from pipeline.scrape.work import BrowserWork, HttpWork

INFLIGHT_PER_ACTOR = 2  # HTTP batches one actor runs at once (its max_concurrency)
READY_TIMEOUT_S = 120


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
        """Answers once the actor is constructed (:meth:`Workers.start` waits for it)."""
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

    def replace(self, actor: Any, limiter: Any) -> bool:
        """Drop a dead (or killed) actor and start a replacement within the budget; True when one was started."""
        if actor not in self.actors:
            return False
        try:  # free the host slots the dead actor held, rather than waiting for their leases to expire
            limiter.release_owner.remote(actor._actor_id.hex())
        except Exception:
            pass
        self.actors.remove(actor)
        self.inflight.pop(actor, None)
        if self.replaced >= 2 * self.size + 2:
            return False
        self.replaced += 1
        self.actors.append(self.make())
        log.warning("scrape: a %s worker died; started a replacement", self.name)
        return True


@dataclasses.dataclass
class Workers:
    """The host limiter and the two pools of one crawl."""

    limiter: Any
    http: WorkerPool
    browsers: WorkerPool

    @classmethod
    def start(cls, cfg: Config, domains: list[str], optout: OptOut) -> Workers:
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
        return cls(limiter, http, browsers)

    def stop(self) -> None:
        """Quit every browser (30 s each at most), then kill every actor and the limiter."""
        for a in self.browsers.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:
                pass
        for a in self.http.actors + self.browsers.actors + [self.limiter]:
            kill(a)
