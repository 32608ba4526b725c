"""The scrape stage's entry: ``run(cfg, **opts)`` crawls on Ray, then applies the raw-image retention.

``run`` crawls every feed and staff site in ``cfg.scrape`` into ``posts``, ``staff``, ``fetches`` and ``images/``
under the data root (:func:`pipeline.scrape.crawl.crawl`; ``opts`` are its keyword options), then applies
``privacy.raw_image_retention_days`` (:func:`pipeline.privacy.apply_retention`), and returns the summary dict.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.config import Config
from pipeline.runtime import stage_entry

log = logging.getLogger("facerank.scrape")


@stage_entry("scrape")  # its lock, its log lines, Ray: pipeline/runtime.py
def run(cfg: Config, **opts: Any) -> dict:
    """Run the scrape stage on Ray and return its summary (JSON-serialisable counts)."""
    from pipeline.privacy import apply_retention
    from pipeline.scrape.crawl import crawl

    summary = crawl(cfg, **opts)
    summary["retention"] = apply_retention(cfg)  # privacy.raw_image_retention_days (logged there)
    log.info("scrape summary: %s", summary)
    return summary
