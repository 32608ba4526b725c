"""The scrape stage: polite, resumable, distributed crawling of selfie feeds and JavaScript staff pages.

``run(cfg)`` crawls every feed and staff site in ``cfg.scrape`` into ``posts``, ``staff``, ``fetches`` and
``images/`` under the data root and returns a summary dict. Modules: :mod:`.http` (the polite client),
:mod:`.robots`, :mod:`.ratelimit` (per-host politeness shared by all actors), :mod:`.feeds` (feed adapters),
:mod:`.staff` (Selenium), :mod:`.crawl` (frontier, actors, writer; the rerun policy is documented there).
"""

from __future__ import annotations

from pipeline.config import Config


def run(cfg: Config) -> dict:
    """Run the scrape stage on Ray and return its summary (JSON-serialisable counts)."""
    from pipeline.runtime import init_ray, log, stage
    from pipeline.scrape.crawl import crawl

    with stage("scrape"):
        init_ray(cfg)
        summary = crawl(cfg)
        log.info("scrape summary: %s", summary)
    return summary


__all__ = ["run"]
