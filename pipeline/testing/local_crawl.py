"""A Ray-free crawl loop over the scrape work unit, for tests and the feed benchmark (one process, threads).

:func:`local_crawl` runs what the Ray driver (:mod:`pipeline.scrape.crawl`) runs, in one process: the young-post
refresh, the frontier seeded through the feed cursors, :class:`~pipeline.scrape.work.HttpWork` (its
``threads_per_actor`` threads, the client's local per-host limiter) for pages and images, one task at a time and ``2 ×
threads_per_actor`` in flight (results handled as they finish, so a feed's next page never waits for the images of the
last one), the row builder and the batched writer, and the cursor state saved after every page. Only feeds (no staff
sites: they need Chromium). ``stop_after_results`` ends it like a kill: after that many results, unwritten rows dropped,
nothing saved at the end (the cursor state keeps what was saved after each page).

Example::

    summary = local_crawl(load_config("configs/demo.yaml"))
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from pipeline.config import Config
from pipeline.privacy import OptOut
from pipeline.scrape.counters import CrawlCounters
from pipeline.scrape.crawl import Frontier
from pipeline.scrape.feeds.cursors import FeedCursors
from pipeline.scrape.feeds.refresh import refresh_young_posts
from pipeline.scrape.net.address import allowed_domains
from pipeline.scrape.rows import RowBuilder
from pipeline.scrape.work import HttpWork
from pipeline.scrape.writer import CrawlInterrupted, RowWriter
from pipeline.store import DataRoot


def local_crawl(cfg: Config, *, stop_after_results: int | None = None) -> dict:
    """Crawl ``cfg``'s feeds in this process; returns the stage's summary dict (module docstring)."""
    t0 = time.monotonic()
    root = DataRoot(cfg.data_root)
    n = CrawlCounters()
    done = {("posts", s, i) for s, i in root.done_keys("posts")}
    optout = OptOut(root, cfg.privacy)
    n.refreshed = refresh_young_posts(cfg, root)
    writer = RowWriter(root, cfg.scrape.batch_rows, n, set(root.done_keys("fetches")))
    cursors = FeedCursors(cfg, root, optout, save_every_s=0.0)
    rows = RowBuilder(cfg, n, writer, done, optout, cursors)
    frontier = Frontier.seed(cfg, cursors)
    frontier.staff.clear()
    work = HttpWork(cfg, allowed_domains(cfg), None, optout)
    handled = 0
    inflight: set = set()
    limit = 2 * cfg.scrape.threads_per_actor
    with ThreadPoolExecutor(limit, thread_name_prefix="local-crawl") as ex:
        try:
            while frontier.has_http() or inflight:
                while frontier.has_http() and len(inflight) < limit:  # pages first, as the driver hands them out
                    inflight.add(ex.submit(work.run, frontier.http_batch(1)))
                finished, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in finished:
                    results, robots = fut.result()
                    for row in robots:
                        writer.fetch(row)
                    for r in results:
                        for task in rows.handle(r):
                            frontier.add(task)
                        handled += 1
                        if stop_after_results is not None and handled >= stop_after_results:
                            raise CrawlInterrupted(f"stopped after {handled} results (a kill)")
            writer.flush()
            cursors.save()
        finally:
            for fut in inflight:
                fut.cancel()
            work.pool.shutdown(wait=False, cancel_futures=True)
    return n.summary(time.monotonic() - t0)
