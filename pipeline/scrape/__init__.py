"""The scrape stage: polite, resumable, distributed crawling of selfie feeds and JavaScript staff pages.

:func:`run` (:mod:`.stage`) crawls every feed and staff site into ``posts``, ``staff``, ``fetches`` and ``images/``
and applies the raw-image retention. Three rooms: :mod:`.net` (the polite client, robots.txt, per-host politeness
shared by all actors, the browser's egress proxy), :mod:`.feeds` (feed adapters), :mod:`.staff` (staff directories);
the crawl itself: :mod:`.crawl` (driver: frontier, scheduling, the batch bound;
the rerun policy is documented there), :mod:`.work` (what a worker does, no Ray), :mod:`.workers` (the Ray actors
and pools), :mod:`.rows` (rows, claims, image dedupe), :mod:`.writer` (batched atomic writes), :mod:`.counters`.
"""

from pipeline.scrape.stage import run

__all__ = ["run"]
