"""The scrape stage: polite, resumable, distributed crawling of selfie feeds and JavaScript staff pages.

``run(cfg)`` crawls every feed and staff site in ``cfg.scrape`` into ``posts``, ``staff``, ``fetches`` and
``images/`` under the data root, then applies the raw-image retention (``privacy.raw_image_retention_days``,
:func:`pipeline.privacy.apply_retention`), and returns a summary dict. Modules: :mod:`.http` (the polite client),
:mod:`.robots`, :mod:`.ratelimit` (per-host politeness shared by all actors), :mod:`.feeds` (feed adapters),
:mod:`.staff` (Selenium), :mod:`.crawl` (frontier, actors, writer; the rerun policy is documented there).
"""

from __future__ import annotations

from pipeline.config import Config
from pipeline.locks import locked_stage


@locked_stage("scrape")  # one run per data root; cleans its own _tmp/ leftovers first
def run(cfg: Config) -> dict:
    """Run the scrape stage on Ray and return its summary (JSON-serialisable counts)."""
    from pipeline.privacy import apply_retention
    from pipeline.runtime import init_ray, log, stage
    from pipeline.scrape.crawl import crawl

    with stage("scrape"):
        init_ray(cfg)
        summary = crawl(cfg)
        summary["retention"] = apply_retention(cfg)  # privacy.raw_image_retention_days (logged there)
        log.info("scrape summary: %s", summary)
    return summary


__all__ = ["run"]
