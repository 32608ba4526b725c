"""The crawl's counters: one dataclass the row builder, the writer and the driver add to, and the stage summary.

:meth:`CrawlCounters.summary` is the ``scrape`` stage's summary dict (the keys in field order, then ``seconds`` and
``images_per_s``); :meth:`CrawlCounters.as_dict` is the live view passed to ``on_progress``.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any


@dataclasses.dataclass
class CrawlCounters:
    """What one crawl did. ``duplicates``: image rows whose bytes were already stored (same URL or same sha256)."""

    pages: int = 0
    pages_failed: int = 0
    posts_written: int = 0
    staff_written: int = 0
    images_fetched: int = 0
    images_stored: int = 0
    duplicates: int = 0
    skipped_robots: int = 0
    skipped_noai: int = 0
    skipped_done: int = 0
    opted_out: int = 0
    non_academic: int = 0
    too_young: int = 0
    errors: int = 0
    errors_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    page_errors_by_reason: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    workers_replaced: int = 0
    retried_error_rows: int = 0
    refreshed: int = (
        0  # posts too young on an earlier run whose counts were read again (pipeline/scrape/feeds/refresh.py)
    )

    def page_failed(self, reason: str | None) -> None:
        """A feed or staff page (or a whole staff-site task) that gave no items."""
        self.pages_failed += 1
        self.page_errors_by_reason[reason or "unknown"] += 1

    def as_dict(self) -> dict[str, Any]:
        """Every counter by name (the reason counters are the live ``Counter`` objects)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def summary(self, seconds: float) -> dict[str, Any]:
        """The stage summary: every counter (reasons sorted), ``seconds`` and ``images_per_s``."""
        s = self.as_dict()
        s["errors_by_reason"] = dict(sorted(self.errors_by_reason.items()))
        s["page_errors_by_reason"] = dict(sorted(self.page_errors_by_reason.items()))
        s["seconds"] = round(seconds, 2)
        s["images_per_s"] = round(self.images_fetched / seconds, 2) if seconds > 0 else 0.0
        return s
