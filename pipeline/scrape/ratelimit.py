"""Per-host politeness shared by every crawl actor: a request rate and a concurrency cap per host.

One small async Ray actor (:class:`HostLimiter`) holds, per host, the start time of the last request and the set of
open leases (concurrency). Requests to a host start at least its interval apart: ``1/rate``, or the host's
robots.txt Crawl-delay when that is longer (a caller passes it as ``min_interval``, already capped by
``http.max_crawl_delay_s``; the longest one seen for a host holds from then on, for every caller). A caller takes a
lease before a request and hands it back after the response body is read. Leases expire after ``lease_ttl_s``, so
a killed actor cannot hold a host's slots for ever; the crawl driver also frees a dead actor's leases at once
(``release_owner``).

:class:`LocalLimiter` is the same thing for one process (threads), used when no Ray actor is wanted (tests, the
benchmark's single-process mode). Both are used through ``slot(host)``, a context manager.

Example::

    limiter = RayLimiter(HostLimiter.remote(rate=5.0, concurrency=2))
    with limiter.slot("example.org", min_interval=1.0):  # robots.txt said Crawl-delay: 1
        ...  # one request
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import ray


def _host_interval(base: float, learned: dict[str, float], host: str, min_interval: float) -> float:
    """The host's interval: ``base`` or the longest ``min_interval`` (Crawl-delay) any caller gave for it."""
    if min_interval > learned.get(host, 0.0):
        learned[host] = min_interval
    return max(base, learned.get(host, 0.0))


@ray.remote(num_cpus=0)
class HostLimiter:
    """Shared per-host rate and concurrency (an async actor: waiting callers do not block each other)."""

    def __init__(self, rate: float, concurrency: int, lease_ttl_s: float = 600.0):
        self.interval = 1.0 / rate
        self.concurrency = concurrency
        self.lease_ttl_s = lease_ttl_s
        self.last_t: dict[str, float] = {}
        self.min_interval: dict[str, float] = {}
        self.leases: dict[str, dict[str, float]] = {}
        self.owners: dict[str, tuple[str, str]] = {}  # lease -> (owner, host)
        self.conds: dict[str, asyncio.Condition] = {}

    def _expire(self, host: str) -> None:
        t = time.monotonic()
        held = self.leases.setdefault(host, {})
        for k in [k for k, exp in held.items() if exp < t]:
            del held[k]

    async def acquire(self, host: str, owner: str = "", min_interval: float = 0.0) -> str:
        """Wait for a concurrency slot and the host's next rate slot; return a lease id."""
        interval = _host_interval(self.interval, self.min_interval, host, min_interval)
        cond = self.conds.setdefault(host, asyncio.Condition())
        async with cond:
            while True:
                self._expire(host)
                if len(self.leases[host]) < self.concurrency:
                    break
                try:
                    await asyncio.wait_for(cond.wait(), timeout=1.0)
                except TimeoutError:
                    pass
            lease = uuid.uuid4().hex
            t_now = time.monotonic()
            self.leases[host][lease] = t_now + self.lease_ttl_s
            self.owners[lease] = (owner, host)
            start = max(t_now, self.last_t.get(host, -interval) + interval)
            self.last_t[host] = start
        if start > t_now:
            await asyncio.sleep(start - t_now)
        return lease

    async def release(self, host: str, lease: str) -> None:
        cond = self.conds.setdefault(host, asyncio.Condition())
        async with cond:
            self.leases.setdefault(host, {}).pop(lease, None)
            self.owners.pop(lease, None)
            cond.notify()

    async def release_owner(self, owner: str) -> int:
        """Free every lease held by ``owner`` (a dead actor); returns how many."""
        mine = [(lease, host) for lease, (o, host) in self.owners.items() if o == owner]
        for lease, host in mine:
            await self.release(host, lease)
        return len(mine)

    async def stats(self) -> dict:
        return {h: len(v) for h, v in self.leases.items()}


class RayLimiter:
    """Client side of :class:`HostLimiter`: ``with limiter.slot(host): ...``."""

    def __init__(self, handle: ray.actor.ActorHandle, owner: str = ""):
        self.handle = handle
        self.owner = owner

    @contextmanager
    def slot(self, host: str, min_interval: float = 0.0) -> Iterator[None]:
        lease = ray.get(self.handle.acquire.remote(host, self.owner, min_interval))
        try:
            yield
        finally:
            self.handle.release.remote(host, lease)  # fire and forget

    __call__ = slot


class LocalLimiter:
    """The same policy for threads in one process."""

    def __init__(self, rate: float, concurrency: int):
        self.interval = 1.0 / rate
        self.concurrency = concurrency
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._min: dict[str, float] = {}
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    @contextmanager
    def slot(self, host: str, min_interval: float = 0.0) -> Iterator[None]:
        with self._lock:
            sem = self._sems.setdefault(host, threading.BoundedSemaphore(self.concurrency))
        sem.acquire()
        try:
            with self._lock:
                interval = _host_interval(self.interval, self._min, host, min_interval)
                t = time.monotonic()
                start = max(t, self._last.get(host, -interval) + interval)
                self._last[host] = start
            if start > t:
                time.sleep(start - t)
            yield
        finally:
            sem.release()

    __call__ = slot
