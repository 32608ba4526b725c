"""The crawl driver, the one there is: the frontier, handing batches to the worker pools, and the bound on a batch.

Shape::

    driver: Frontier ──batches──▶ Workers (workers.py): HTTP workers × num_actors   (pages + images, threads)
                                                        browsers × num_browsers (staff pages, Chromium)
            results ──▶ RowBuilder (rows.py) ──rows──▶ RowWriter (writer.py); follow-up tasks back to the Frontier
            counts in one CrawlCounters (counters.py): the stage summary
                          all workers share one per-host limiter (rate + concurrency)

The pool is pluggable (``crawl(cfg, pool=...)``, :mod:`pipeline.scrape.workers`): ``ray``, the stage's, runs the
workers as Ray actors across the cluster behind one ``HostLimiter`` actor; ``threads`` runs the same work units in
this process (tests and benchmarks, no Ray session). Everything else below is the same for both.

* The frontier starts from every feed's first page and every staff site. A feed page's result adds its next page and
  one image task per post not already done; a staff site's result adds one image task per academic person. Each
  image URL is fetched once per run even when several posts share it; images are stored under their sha256 by the
  worker (``DataRoot.put_image``), so identical bytes from different URLs are stored once (counted as duplicates).
* Rows go to ``posts``, ``staff`` and ``fetches`` in batches of ``scrape.batch_rows`` with ``DataRoot.write_part``
  (temp file, then rename). ``fetches`` is flushed before ``posts``/``staff``, so a written item always has its fetch
  row. Image bytes are stored before their row, so a kill leaves at most unreferenced images, never a row without
  its image.
* Resumable: items are keyed by (site, item_id); a rerun lists the feed pages and staff pages again (that is how it
  finds the items) and fetches only the items with no row yet, so a run killed at any moment and rerun ends with
  exactly the rows of an uninterrupted run. ``fetches`` holds one row per (site, URL) (its first final outcome).
* Reruns and earlier failures: rows with status ``skipped`` (robots, noai, non-academic) and ``error`` are final —
  a rerun does not fetch those items again — unless ``scrape.retry_errors`` is true: then the run first removes
  every ``error`` row from ``posts``, ``staff`` and ``fetches`` (one atomic rewrite per part file) and fetches those
  items again. Feed/staff pages that failed leave only a ``fetches`` row (there is no item to key), and are always
  fetched again on the next run.
* A worker actor that dies (``ray.kill``, OOM, a crash; Ray pool) is replaced; its in-flight tasks go back to the
  frontier; a task that kills three workers becomes an error row ``worker_died``. An unexpected exception inside a task
  becomes an error row ``internal:<Type>``. An HTTP batch still running after ``scrape.batch_timeout()`` (a backstop:
  every fetch has its own deadline) is abandoned: its tasks become error rows ``batch_timeout``, its actor is killed and
  replaced; the same for a browser batch (a staff site) past ``scrape.staff_batch_timeout(site)``. Nothing ends the
  stage early.
* People on the opt-out list (``optout``: kind user/person/image) are skipped without writing any row about them.
* Feeds whose adapter is incremental (ordered ids): walks resume from their last safe cursor and reruns stop at the
  newest stored post (:mod:`pipeline.scrape.feeds.cursors`); posts too young last time are refreshed first where
  the adapter reads counts again (:mod:`pipeline.scrape.feeds.refresh`). Both through the adapter's optional hooks
  (:class:`~pipeline.scrape.feeds.base.FeedAdapter`): this module names no adapter.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from pipeline.config import Config
from pipeline.privacy import OptOut
from pipeline.scrape.counters import CrawlCounters
from pipeline.scrape.feeds.cursors import FeedCursors
from pipeline.scrape.feeds.refresh import refresh_young_posts
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.scrape.net.address import allowed_domains
from pipeline.scrape.rows import RowBuilder
from pipeline.scrape.work import error_result, internal_error
from pipeline.scrape.workers import WorkerDied, WorkerPool, Workers, start_workers
from pipeline.scrape.writer import RowWriter, drop_error_rows
from pipeline.store import FETCHES_DS, POSTS_DS, STAFF_DS, DataRoot

log = logging.getLogger("facerank.scrape")

MAX_DEATHS_PER_TASK = 3

__all__ = ["CrawlProgress", "crawl"]


@dataclasses.dataclass
class CrawlProgress:
    """Passed to ``on_progress`` after each handled result (tests use it to inject faults)."""

    calls_done: int
    http_actors: list
    browser_actors: list
    summary: dict


@dataclasses.dataclass
class Frontier:
    """The tasks not handed out yet: feed pages (handed out first) and images go to HTTP workers, staff sites to
    browsers."""

    pages: collections.deque = dataclasses.field(default_factory=collections.deque)
    images: collections.deque = dataclasses.field(default_factory=collections.deque)
    staff: collections.deque = dataclasses.field(default_factory=collections.deque)

    @classmethod
    def seed(cls, cfg: Config, cursors: FeedCursors | None = None, adapters: dict | None = None) -> Frontier:
        """Every feed's first page per hashtag (or, with ``cursors``, where its walks resume), and every staff
        site. ``adapters``: the feeds' adapters by site name, built from the config when not given."""
        f = cls()
        for site in cfg.scrape.feeds:
            ad = adapters[site.name] if adapters is not None else adapter_for(site)
            for tag in site.hashtags:
                if cursors is not None:
                    f.pages.extend(cursors.seed(site.name, tag, ad.first_url(tag)))
                    continue
                f.pages.append({"kind": "page", "site": site.name, "hashtag": tag, "page": 1, "url": ad.first_url(tag)})
        for i, _site in enumerate(cfg.scrape.staff):
            f.staff.append({"kind": "staff", "index": i})
        return f

    def add(self, task: dict) -> None:
        {"page": self.pages, "image": self.images, "staff": self.staff}[task["kind"]].append(task)

    def has_http(self) -> bool:
        return bool(self.pages or self.images)

    def http_batch(self, n: int) -> list[dict]:
        """Up to ``n`` HTTP tasks, pages before images."""
        batch = []
        while len(batch) < n and self.has_http():
            batch.append(self.pages.popleft() if self.pages else self.images.popleft())
        return batch

    def __bool__(self) -> bool:
        return bool(self.pages or self.images or self.staff)


class _Crawl:
    """One crawl: prepare the resume state, run the dispatch loop over the worker pools, summarise."""

    def __init__(self, cfg: Config, stop_after_flushes: int | None, on_progress: Callable | None, pool: str = "ray"):
        self.cfg = cfg
        self.pool = pool
        self.sc = cfg.scrape
        self.root = DataRoot(cfg.data_root)
        self.stop_after_flushes = stop_after_flushes
        self.on_progress = on_progress
        self.t0 = time.monotonic()
        self.n = CrawlCounters()
        self.inflight: dict[Any, tuple[WorkerPool, Any, list[dict]]] = {}
        self.submitted_at: dict[Any, float] = {}  # ref -> when its batch was handed out (the HTTP batches' bound)
        self.calls_done = 0

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        root = self.root  # the stage's lock cleaned posts/staff/fetches _tmp/ before (locks.hold)
        if self.sc.retry_errors:
            self.n.retried_error_rows = sum(drop_error_rows(root, ds) for ds in (POSTS_DS, STAFF_DS))
            drop_error_rows(root, FETCHES_DS)
        done = {(POSTS_DS, s, i) for s, i in root.done_keys(POSTS_DS)}
        done |= {(STAFF_DS, s, i) for s, i in root.done_keys(STAFF_DS)}
        fetch_done = set(root.done_keys(FETCHES_DS))
        self.optout = OptOut(root, self.cfg.privacy)
        adapters = {s.name: adapter_for(s) for s in self.sc.feeds}
        self.n.refreshed = refresh_young_posts(self.cfg, root, adapters=adapters)  # posts too young last time
        self.writer = RowWriter(root, self.sc.batch_rows, self.n, fetch_done, self.stop_after_flushes)
        self.cursors = FeedCursors(self.cfg, root, self.optout, adapters=adapters)  # incremental / resumable walks
        self.writer.on_flush = self.cursors.save  # the walks' state written with the rows it describes
        self.rows = RowBuilder(self.cfg, self.n, self.writer, done, self.optout, self.cursors)
        self.frontier = Frontier.seed(self.cfg, self.cursors, adapters)

    def start(self) -> None:
        self.workers: Workers = start_workers(self.cfg, allowed_domains(self.cfg), self.optout, self.pool)

    # ---------------------------------------------------------------- loop
    def loop(self) -> None:
        from tqdm.auto import tqdm

        with tqdm(desc="scrape", unit="row", disable=None, mininterval=1.0) as bar:
            self.writer.bar = bar
            while self._step():
                pass
            self.writer.flush()
            self.cursors.save()

    def _step(self) -> bool:
        """Hand out what the workers can take, then handle the batches that finished; False when all is done."""
        self._dispatch()
        if not self.inflight:
            return self._without_workers()
        ready = self.workers.wait(list(self.inflight), timeout=1.0)
        self._abandon_overdue(set(ready))
        for ref in ready:
            self._collect(ref)
        return True

    def _without_workers(self) -> bool:
        """Nothing in flight: done when the frontier is empty, else tasks no pool can run become ``no_workers``."""
        f, w = self.frontier, self.workers
        if not f:
            return False
        if not w.http.actors and f.has_http():
            self._fail_all([f.pages, f.images], "no_workers")
        if not w.browsers.actors and f.staff:
            self._fail_all([f.staff], "no_workers")
        return True

    def _dispatch(self) -> None:
        w, f = self.workers, self.frontier
        http, browsers = w.http, w.browsers
        for actor in list(http.actors):
            while http.inflight[actor] < w.inflight_per_actor and f.has_http():
                self._submit(http, actor, f.http_batch(w.batch_size))
        for actor in list(browsers.actors):
            while browsers.inflight[actor] < 1 and f.staff:
                self._submit(browsers, actor, [f.staff.popleft()])

    def _submit(self, pool: WorkerPool, actor: Any, batch: list[dict]) -> None:
        ref = self.workers.submit(actor, batch)
        self.inflight[ref] = (pool, actor, batch)
        self.submitted_at[ref] = time.monotonic()
        pool.inflight[actor] += 1

    def _collect(self, ref: Any) -> None:
        """Handle one finished batch: its robots rows and results, or its actor's death."""
        pool, actor, batch = self.inflight.pop(ref)
        self.submitted_at.pop(ref, None)
        pool.inflight[actor] -= 1
        try:
            results, robots = self.workers.result(ref)
        except WorkerDied:
            self._replace(pool, actor)
            self._requeue(batch)
            return
        except Exception as e:  # a bug in a worker: every task of the batch becomes an error row
            log.warning("scrape: a %s batch failed: %r", pool.name, e)
            results, robots = [internal_error(t, e) for t in batch], []
        for row in robots:
            self.writer.fetch(row)
        for r in results:
            self._handle(r)
        self.calls_done += 1
        if self.on_progress is not None:
            w = self.workers
            self.on_progress(
                CrawlProgress(self.calls_done, list(w.http.actors), list(w.browsers.actors), self.n.as_dict())
            )

    def _handle(self, r: dict) -> None:
        for task in self.rows.handle(r):
            self.frontier.add(task)

    # ---------------------------------------------------------------- faults
    def _replace(self, pool: WorkerPool, actor: Any) -> None:
        if self.workers.replace(pool, actor):
            self.n.workers_replaced += 1

    def _requeue(self, batch: list[dict]) -> None:
        for task in batch:
            task["deaths"] = task.get("deaths", 0) + 1
            if task["deaths"] >= MAX_DEATHS_PER_TASK:
                self._handle(error_result(task, "worker_died"))
                continue
            self.frontier.add(task)

    def _abandon_overdue(self, ready: set) -> None:
        """Batches still running past their bound (:meth:`_bound_of`): each task an error row ``batch_timeout``, the
        actor killed (its other batch goes back to the frontier, as for a dead actor) and replaced within the same
        budget as a dead one. A backstop: every fetch has its own deadline, so a healthy batch never gets here."""
        t = time.monotonic()
        for ref in [r for r, t0 in self.submitted_at.items() if r not in ready and t - t0 > self._bound(r)]:
            pool, actor, batch = self.inflight[ref]
            del self.inflight[ref], self.submitted_at[ref]
            log.warning("scrape: a %s batch ran past %.0f s; its %d tasks fail, its worker is replaced", pool.name,
                        self._bound_of(pool, batch), len(batch))  # fmt: skip
            self.workers.kill(actor)
            self._replace(pool, actor)
            for task in batch:
                self._handle(error_result(task, "batch_timeout"))

    def _bound(self, ref: Any) -> float:
        pool, _, batch = self.inflight[ref]
        return self._bound_of(pool, batch)

    def _bound_of(self, pool: WorkerPool, batch: list[dict]) -> float:
        """How long a batch may run: ``scrape.batch_timeout()`` for HTTP batches; for browser batches the sum of
        their staff sites' ``scrape.staff_batch_timeout(site)`` (pages × (load + wait + parse budget))."""
        if pool is self.workers.http:
            return self.sc.batch_timeout()
        return sum(self.sc.staff_batch_timeout(self.sc.staff[t["index"]]) for t in batch)

    def _fail_all(self, queues: list[collections.deque], reason: str) -> None:
        for q in queues:
            while q:
                self._handle(error_result(q.popleft(), reason))

    def summary(self) -> dict:
        return self.n.summary(time.monotonic() - self.t0)


def crawl(
    cfg: Config,
    *,
    pool: str = "ray",
    stop_after_flushes: int | None = None,
    on_progress: Callable[[CrawlProgress], None] | None = None,
) -> dict:
    """Crawl every configured feed and staff site into the data root; returns the summary dict.

    ``pool``: ``ray`` (Ray actors; Ray must be initialised) or ``threads`` (this process, no Ray session):
    :mod:`pipeline.scrape.workers`. ``stop_after_flushes`` stops abruptly (buffers dropped, workers stopped,
    :class:`~pipeline.scrape.writer.CrawlInterrupted` raised) after that many batch writes, as a kill would;
    ``on_progress`` is called after every finished worker call (an exception it raises ends the crawl as a kill
    would). Both exist for fault-injection tests.
    """
    c = _Crawl(cfg, stop_after_flushes, on_progress, pool)
    c.prepare()
    c.start()
    try:
        c.loop()
    finally:
        c.workers.stop()
    return c.summary()
