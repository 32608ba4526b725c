"""Per-host politeness shared by every crawl actor: a request rate and a concurrency cap per host.

One small async Ray actor (:class:`HostLimiter`) holds, per host, the time of the next free request slot (requests
are spaced ``1/rate`` apart: a token bucket of depth one) and the set of open leases (concurrency). A caller takes a
lease before a request and hands it back after the response body is read. Leases expire after ``lease_ttl_s``, so
a killed actor cannot hold a host's slots for ever; the crawl driver also frees a dead actor's leases at once
(``release_owner``).

:class:`LocalLimiter` is the same thing for one process (threads), used when no Ray actor is wanted (tests, the
benchmark's single-process mode). Both are used through ``slot(host)``, a context manager.

Example::

    limiter = RayLimiter(HostLimiter.remote(rate=5.0, concurrency=2))
    with limiter.slot("example.org"):
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


@ray.remote(num_cpus=0)
class HostLimiter:
    """Shared per-host rate and concurrency (an async actor: waiting callers do not block each other)."""

    def __init__(self, rate: float, concurrency: int, lease_ttl_s: float = 600.0):
        self.interval = 1.0 / rate
        self.concurrency = concurrency
        self.lease_ttl_s = lease_ttl_s
        self.next_t: dict[str, float] = {}
        self.leases: dict[str, dict[str, float]] = {}
        self.owners: dict[str, tuple[str, str]] = {}  # lease -> (owner, host)
        self.conds: dict[str, asyncio.Condition] = {}

    def _expire(self, host: str) -> None:
        t = time.monotonic()
        held = self.leases.setdefault(host, {})
        for k in [k for k, exp in held.items() if exp < t]:
            del held[k]

    async def acquire(self, host: str, owner: str = "") -> str:
        """Wait for a concurrency slot and the host's next rate slot; return a lease id."""
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
            start = max(t_now, self.next_t.get(host, 0.0))
            self.next_t[host] = start + self.interval
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
    def slot(self, host: str) -> Iterator[None]:
        lease = ray.get(self.handle.acquire.remote(host, self.owner))
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
        self._next: dict[str, float] = {}
        self._sems: dict[str, threading.BoundedSemaphore] = {}

    @contextmanager
    def slot(self, host: str) -> Iterator[None]:
        with self._lock:
            sem = self._sems.setdefault(host, threading.BoundedSemaphore(self.concurrency))
        sem.acquire()
        try:
            with self._lock:
                t = time.monotonic()
                start = max(t, self._next.get(host, 0.0))
                self._next[host] = start + self.interval
            if start > t:
                time.sleep(start - t)
            yield
        finally:
            sem.release()

    __call__ = slot
