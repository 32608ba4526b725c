"""The scrape stage: polite, resumable, distributed crawling of selfie feeds and JavaScript staff pages.

:func:`run` (:mod:`.stage`) crawls every feed and staff site into ``posts``, ``staff``, ``fetches`` and ``images/``
and applies the raw-image retention. Three rooms: :mod:`.net` (the polite client, robots.txt, per-host politeness
shared by all actors, the browser's egress proxy), :mod:`.feeds` (feed adapters), :mod:`.staff` (staff directories);
the crawl itself: :mod:`.crawl` (driver: frontier, scheduling, the batch bound;
the rerun policy is documented there), :mod:`.work` (what a worker does, no Ray), :mod:`.workers` (the Ray actors
and pools), :mod:`.rows` (rows, claims, image dedupe), :mod:`.writer` (batched atomic writes), :mod:`.counters`.
"""

from typing import Any

__all__ = ["run"]


def __getattr__(name: str) -> Any:
    """``run``, imported when first asked for: the package's rooms (``feeds.registry`` for the config's checks) must
    not pull in the stage, and with it Ray."""
    if name == "run":
        from pipeline.scrape.stage import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
