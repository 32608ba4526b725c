"""The crawl's writer: rows buffered and written in atomic batches, and the ``retry_errors`` rewrite before a run.

Rows go to ``posts``, ``staff`` and ``fetches`` in batches of ``scrape.batch_rows`` (posts + staff rows) with
``DataRoot.write_part`` (temp file, then rename). ``fetches`` is flushed before ``posts``/``staff``, so a written
item always has its fetch row; ``fetches`` holds one row per (site entry, URL) (its first final outcome, across
runs): two entries that share a page URL get a page row each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.scrape.counters import CrawlCounters
from pipeline.store import FETCHES_DS, POSTS_DS, STAFF_DS, STATUS_ERROR, DataRoot

DATASETS = (FETCHES_DS, POSTS_DS, STAFF_DS)  # the write order of one flush


class CrawlInterrupted(RuntimeError):
    """Raised by :func:`pipeline.scrape.crawl.crawl` when ``stop_after_flushes`` is reached (fault injection)."""


def drop_error_rows(root: DataRoot, dataset: str) -> int:
    """Remove rows with status ``error`` from ``dataset`` (each part file rewritten atomically); returns how many."""
    removed = 0
    for path in root.part_files(dataset):
        t = pq.read_table(path, filesystem=root.fs)
        bad = pc.fill_null(pc.equal(t.column("status"), STATUS_ERROR), False)
        n = pc.sum(bad).as_py() or 0
        if n:
            root.rewrite_part(path, t.filter(pc.invert(bad)))
            removed += n
    return removed


class RowWriter:
    """Buffers rows per dataset and writes them every ``batch_rows`` item rows (and at :meth:`flush`).

    ``fetch_done``: the (site, URL) pairs with a ``fetches`` row already; ``bar``: an optional progress bar (one
    tick per item row); ``on_flush``: called after each write (the driver saves the feed cursors then, so that they
    describe what is stored); ``stop_after_flushes``: raise :class:`CrawlInterrupted` after that many writes, buffers
    dropped, as a kill would.
    """

    def __init__(
        self,
        root: DataRoot,
        batch_rows: int,
        counters: CrawlCounters,
        fetch_done: set[tuple[str, str]],
        stop_after_flushes: int | None = None,
    ):
        self.root = root
        self.batch_rows = batch_rows
        self.n = counters
        self.fetch_done = fetch_done
        self.stop_after_flushes = stop_after_flushes
        self.bufs: dict[str, list[dict]] = {ds: [] for ds in DATASETS}
        self.flushes = 0
        self.bar: Any = None
        self.on_flush: Callable[[], None] | None = None

    def fetch(self, row: dict | None) -> None:
        """Buffer a ``fetches`` row unless its (site, URL) has one (None: the result had no fetch)."""
        if row and (key := (row["site"], row["url"])) not in self.fetch_done:
            self.fetch_done.add(key)
            self.bufs[FETCHES_DS].append(row)

    def add(self, ds: str, row: dict) -> None:
        """Buffer a finished ``posts``/``staff`` row; writes the batch when it is full."""
        self.bufs[ds].append(row)
        if self.bar is not None:
            self.bar.update(1)
        if len(self.bufs[POSTS_DS]) + len(self.bufs[STAFF_DS]) >= self.batch_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows: fetches first, then posts and staff (each part atomic)."""
        if not any(self.bufs.values()):
            return
        for ds in DATASETS:
            rows, self.bufs[ds] = self.bufs[ds], []
            if rows:
                self.root.write_part(ds, rows)
                if ds == POSTS_DS:
                    self.n.posts_written += len(rows)
                elif ds == STAFF_DS:
                    self.n.staff_written += len(rows)
        self.flushes += 1
        if self.on_flush is not None:
            self.on_flush()
        if self.stop_after_flushes is not None and self.flushes >= self.stop_after_flushes:
            raise CrawlInterrupted(f"stopped after {self.flushes} flushes (fault injection)")
