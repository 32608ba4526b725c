"""Per-host politeness shared by every crawl actor: a request rate and a concurrency cap per host.

One small async Ray actor (:class:`HostLimiter`) holds, per host, the start time of the last request booked and the
open leases (concurrency). Requests to a host start at least its interval apart (less ``LATE_S``, below):
``1/rate``, or the host's robots.txt Crawl-delay when that is longer (a caller passes it as ``min_interval``, already
capped by ``http.max_crawl_delay_s``; the longest one seen for a host holds from then on, for every caller). Leases
expire after ``lease_ttl_s``, so a killed actor cannot hold a host's slots for ever; the crawl driver also frees a
dead actor's leases at once (``release_owner``).

A lease (:meth:`HostLimiter.acquire_block`) is up to ``want_slots`` of the host's concurrency slots and a *book* of
up to ``want_starts`` request start times, spaced one interval apart and no further ahead than ``BOOK_HORIZON_S`` (at
least one); :meth:`HostLimiter.more_starts` books more for a lease its holder keeps using. The crawl actor's process
(:class:`RayLimiter`) shares one lease per host among its threads, so a busy actor asks the limiter once per book
instead of twice per request: that round trip to the limiter actor was most of the crawl's CPU on a small node
(docs/benchmarks.md, the scrape profile). What keeps it polite:

* every start booked for a host is one interval after the previous one booked for it, whoever booked it, and each is
  used once, never early; when the interval is at least ``LATE_S`` (2 ms: every rate up to 500 requests/s, every
  Crawl-delay), a request also starts within ``LATE_S`` of its booked start (a thread that gets there later takes a
  later start), so requests start at least ``interval - LATE_S`` apart, across every actor. The starts a lease did not
  use go back to the host when it is released, if no later start was booked meanwhile. Above 500 requests/s the
  limiter bounds the average rate and the concurrency (no actor round trip can space requests more finely);
* the slots of all leases never exceed the host's cap; a lease takes at most ``want_slots`` of the free ones and, when
  other owners hold or wait for the host, at most its fair share (``cap // owners``, at least one); a lease is not
  given more starts while another owner waits for the host: its holder releases it and queues again;
* a lease is released once no thread of its process has been in or waiting for a request to the host for
  ``LINGER_S`` (0.1 s), so an idle actor holds nothing for longer; a busy actor's threads, which step out of their
  requests to check and store what they fetched, keep the lease between requests instead of handing it back and
  queueing again (that churn was two limiter calls every few images: docs/benchmarks.md, the scrape profile of
  2026-12-07); one in use books new starts at least every ``RENEW_S``, which renews its expiry. Another owner
  waits at most ``LINGER_S`` longer for a lease's slots than it did when leases were handed back at once.

:meth:`HostLimiter.acquire` (one slot, one start, waits until the start) and :meth:`HostLimiter.release` are the
single-request form of the same. :class:`LocalLimiter` is the same policy for one process (threads), used when no
Ray actor is wanted (tests, the benchmark's single-process mode). All are used through ``slot(host)``, a context
manager.

Example::

    limiter = RayLimiter(HostLimiter.remote(rate=5.0, concurrency=2), want_slots=8)
    with limiter.slot("example.org", min_interval=1.0):  # robots.txt said Crawl-delay: 1
        ...  # one request
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import ray

BOOK_HORIZON_S = 0.25  # a book's starts reach at most this far ahead of the first one
LATE_S = 0.002  # a booked start is used at most this late; one that passed longer ago is dropped
RENEW_S = 30.0  # a lease in use asks for new starts at least this often (which renews its expiry)
MAX_BOOK_STARTS = 64
LINGER_S = 0.1  # a lease no thread of its process needs is released after this long


def _host_interval(base: float, learned: dict[str, float], host: str, min_interval: float) -> float:
    """The host's interval: ``base`` or the longest ``min_interval`` (Crawl-delay) any caller gave for it."""
    if min_interval > learned.get(host, 0.0):
        learned[host] = min_interval
    return max(base, learned.get(host, 0.0))


@dataclasses.dataclass
class _Lease:
    owner: str
    host: str
    slots: int
    expires: float
    first: float = 0.0  # the lease's latest starts (limiter clock): first, how many, spacing
    starts: int = 0
    interval: float = 0.0
    before: float | None = None  # the host's last start before them (to hand unused starts back)


@ray.remote(num_cpus=0)
class HostLimiter:
    """Shared per-host rate and concurrency (an async actor: waiting callers do not block each other)."""

    def __init__(self, rate: float, concurrency: int, lease_ttl_s: float = 600.0):
        self.interval = 1.0 / rate
        self.concurrency = concurrency
        self.lease_ttl_s = lease_ttl_s
        self.last_t: dict[str, float] = {}
        self.min_interval: dict[str, float] = {}
        self.leases: dict[str, dict[str, _Lease]] = {}
        self.waiting: dict[str, collections.Counter] = {}
        self.conds: dict[str, asyncio.Condition] = {}

    def _held(self, host: str) -> dict[str, _Lease]:
        t = time.monotonic()
        held = self.leases.setdefault(host, {})
        for k in [k for k, lease in held.items() if lease.expires < t]:
            del held[k]
        return held

    def _book(self, lease: _Lease, interval: float, want: int) -> list[float]:
        """Book the host's next ``want`` starts (capped by the horizon) for ``lease``; seconds from now."""
        n = max(1, min(want, MAX_BOOK_STARTS, int(BOOK_HORIZON_S / interval) + 1))
        t_now = time.monotonic()
        before = self.last_t.get(lease.host)
        first = max(t_now, (before if before is not None else -interval) + interval)
        self.last_t[lease.host] = first + (n - 1) * interval
        lease.first, lease.starts, lease.interval, lease.before = first, n, interval, before
        lease.expires = t_now + self.lease_ttl_s
        return [first + i * interval - t_now for i in range(n)]

    async def acquire_block(
        self, host: str, owner: str = "", min_interval: float = 0.0, want_slots: int = 1, want_starts: int = 1
    ) -> tuple[str, int, list[float]]:
        """Wait for a free slot; return (lease id, slots granted, the booked starts as seconds from now)."""
        interval = _host_interval(self.interval, self.min_interval, host, min_interval)
        cond = self.conds.setdefault(host, asyncio.Condition())
        waiting = self.waiting.setdefault(host, collections.Counter())
        async with cond:
            waiting[owner] += 1
            try:
                while True:
                    held = self._held(host)
                    free = self.concurrency - sum(lease.slots for lease in held.values())
                    if free > 0:
                        break
                    try:
                        await asyncio.wait_for(cond.wait(), timeout=1.0)
                    except TimeoutError:
                        pass
            finally:
                waiting[owner] -= 1
                if waiting[owner] <= 0:
                    del waiting[owner]
            others = ({lease.owner for lease in held.values()} | set(waiting)) - {owner}
            fair = max(1, self.concurrency // (len(others) + 1))
            lease = _Lease(owner, host, max(1, min(want_slots, free, fair)), 0.0)
            key = uuid.uuid4().hex
            held[key] = lease
            return key, lease.slots, self._book(lease, interval, want_starts)

    async def more_starts(self, host: str, lease: str, min_interval: float = 0.0, want: int = 1) -> list[float]:
        """More starts for a lease its holder keeps using (its slots kept, its expiry renewed); an empty list when
        the lease is gone or another owner waits for the host: then the holder releases it and asks again."""
        interval = _host_interval(self.interval, self.min_interval, host, min_interval)
        cond = self.conds.setdefault(host, asyncio.Condition())
        async with cond:
            got = self._held(host).get(lease)
            if got is None or any(o != got.owner for o in self.waiting.get(host, ())):
                return []
            return self._book(got, interval, want)

    async def acquire(self, host: str, owner: str = "", min_interval: float = 0.0) -> str:
        """One slot and the host's next start (waited for here); return the lease id."""
        lease, _, starts = await self.acquire_block(host, owner, min_interval)
        if starts[0] > 0:
            await asyncio.sleep(starts[0])
        return lease

    async def release(self, host: str, lease: str, used: int | None = None) -> None:
        """Hand a lease back; ``used``: how many of its latest starts were taken (the rest are handed back when no
        later start was booked for the host meanwhile)."""
        cond = self.conds.setdefault(host, asyncio.Condition())
        async with cond:
            got = self.leases.setdefault(host, {}).pop(lease, None)
            if got is not None and used is not None and used < got.starts:
                if self.last_t.get(host) == got.first + (got.starts - 1) * got.interval:  # still the latest booked
                    if used > 0:
                        self.last_t[host] = got.first + (used - 1) * got.interval
                    elif got.before is None:
                        self.last_t.pop(host, None)
                    else:
                        self.last_t[host] = got.before
            cond.notify_all()

    async def release_owner(self, owner: str) -> int:
        """Free every lease held by ``owner`` (a dead actor); returns how many."""
        mine = [(lease, host) for host, held in self.leases.items() for lease, v in held.items() if v.owner == owner]
        for lease, host in mine:
            await self.release(host, lease)
        return len(mine)

    async def stats(self) -> dict:
        """Slots held per host."""
        return {h: sum(lease.slots for lease in self._held(h).values()) for h in list(self.leases)}


def _gap(delays: list[float]) -> float:
    return delays[1] - delays[0] if len(delays) > 1 else float("inf")


@dataclasses.dataclass
class _Book:
    """A lease as its process uses it: its slots, its booked starts (this process's clock), what is taken."""

    host: str
    lease: str
    slots: int
    starts: collections.deque
    interval: float  # their spacing (inf for a single start)
    booked: float  # when they were booked (this process's clock)
    used: int = 0  # of the latest starts booked
    active: int = 0
    refilling: bool = False
    retired: bool = False
    idle_since: float = 0.0  # when its last request ended (this process's clock)


class RayLimiter:
    """Client side of :class:`HostLimiter` for one process: ``with limiter.slot(host): ...``, thread-safe.

    Threads share one lease per host (``want_slots``: the process's threads), asking for more starts when its starts
    run out (one round trip per book of starts, not two per request); a lease no thread has needed for ``LINGER_S``
    is released by a reaper thread (running while this process holds a lease).
    """

    def __init__(self, handle: ray.actor.ActorHandle, owner: str = "", want_slots: int = 1):
        self.handle = handle
        self.owner = owner
        self.want_slots = max(1, want_slots)
        self._cond = threading.Condition()
        self._books: dict[str, _Book] = {}
        self._interval: dict[str, float] = {}  # the min_interval each host's lease was booked with
        self._fetching: set[str] = set()
        self._wanting: collections.Counter = collections.Counter()  # threads in or waiting for a request, per host
        self._reaper: threading.Thread | None = None

    def _rpc(self, ref: ray.ObjectRef) -> tuple[object, float]:
        """``ray.get`` with ``_cond`` released; (the reply, when it came in this process's clock)."""
        self._cond.release()
        try:
            out = ray.get(ref)
            return out, time.monotonic()
        finally:
            self._cond.acquire()

    def _take(self, host: str, min_interval: float) -> tuple[_Book, float]:
        """A slot and a start (caller holds ``_cond``): from the host's lease, refilled or replaced as needed."""
        while True:
            book = self._books.get(host)
            if book is not None and min_interval > self._interval.get(host, 0.0):
                self._retire(book)  # a longer Crawl-delay: a new lease at the new spacing
                book = None
            if book is None:
                if host in self._fetching:
                    self._cond.wait(timeout=1.0)
                    continue
                self._fetching.add(host)
                try:
                    (lease, slots, delays), t = self._rpc(
                        self.handle.acquire_block.remote(
                            host, self.owner, min_interval, self.want_slots, MAX_BOOK_STARTS
                        )
                    )
                finally:
                    self._fetching.discard(host)
                    self._cond.notify_all()
                starts = collections.deque(t + d for d in delays)
                self._books[host] = _Book(host, lease, slots, starts, _gap(delays), t)
                self._interval[host] = min_interval
                self._start_reaper()
                continue
            now = time.monotonic()
            while book.interval >= LATE_S and book.starts and book.starts[0] < now - LATE_S:  # passed unused: gone
                book.starts.popleft()
                book.used += 1
            fresh = now - book.booked <= RENEW_S  # else renew (the limiter's lease expiry runs from the booking)
            if book.active < book.slots and book.starts and fresh:
                book.active += 1
                book.used += 1
                return book, book.starts.popleft()
            if book.active < book.slots and not book.refilling:
                book.refilling = True
                try:
                    delays, t = self._rpc(
                        self.handle.more_starts.remote(host, book.lease, min_interval, MAX_BOOK_STARTS)
                    )
                finally:
                    book.refilling = False
                    self._cond.notify_all()
                if not delays:
                    self._retire(book)  # gone, or another owner waits: release and queue again
                elif not book.retired:
                    book.starts, book.interval, book.used = collections.deque(t + d for d in delays), _gap(delays), 0
                    book.booked = t
                continue
            self._cond.wait(timeout=1.0)

    def _retire(self, book: _Book) -> None:
        """No new request from ``book``; it is released once its requests end (caller holds ``_cond``)."""
        if self._books.get(book.host) is book:
            del self._books[book.host]
        if not book.retired:
            book.retired = True
            self._release_if_done(book)

    def _leave(self, book: _Book) -> None:
        """A request of ``book`` ends, or gives up a start it woke too late for (caller holds ``_cond``): a retired
        book's lease is handed back when its last request leaves, on either path (else its slots stay held until the
        lease expires, ``lease_ttl_s``). Its idle time counts from here (the reaper releases a book nobody needed for
        ``LINGER_S``)."""
        book.active -= 1
        book.idle_since = time.monotonic()
        self._release_if_done(book)

    def _release_if_done(self, book: _Book) -> None:
        """Hand a retired book's lease back once no request of it is left (fire and forget; caller holds ``_cond``)."""
        if book.retired and book.active == 0:
            self.handle.release.remote(book.host, book.lease, book.used)

    @contextmanager
    def slot(self, host: str, min_interval: float = 0.0) -> Iterator[None]:
        with self._cond:
            self._wanting[host] += 1
            try:
                book, start = self._take(host, min_interval)
            except BaseException:
                self._wanting[host] -= 1
                raise
        held: _Book | None = book  # the book whose start this thread holds (None while it asks for another)
        try:
            while True:
                wait = start - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                if book.interval < LATE_S or time.monotonic() - start <= LATE_S:
                    break
                with self._cond:  # woke too late for this start (a busy machine): take the next one
                    self._leave(book)
                    held = None
                    book, start = self._take(host, min_interval)
                    held = book
            yield
        finally:
            with self._cond:
                if held is not None:
                    self._leave(held)
                self._wanting[host] -= 1
                self._cond.notify_all()

    __call__ = slot

    def _start_reaper(self) -> None:
        """Start the thread that releases idle leases, unless it runs (caller holds ``_cond``)."""
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="lease-reaper", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        """Release every lease that no thread has needed for ``LINGER_S``; ends when this process holds none."""
        while True:
            time.sleep(LINGER_S / 2)
            with self._cond:
                t = time.monotonic()
                for host, book in list(self._books.items()):
                    if self._wanting[host] == 0 and t - book.idle_since >= LINGER_S:
                        self._wanting.pop(host, None)
                        self._retire(book)
                if not self._books:
                    self._reaper = None
                    return


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
