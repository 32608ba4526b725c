"""The feed adapters by name: ``FeedSite.adapter`` → its adapter class (:data:`ADAPTERS`).

``demo`` and ``json``: :mod:`pipeline.scrape.feeds.json`; ``mastodon``: :mod:`pipeline.scrape.feeds.mastodon`
(registered there).
"""

from __future__ import annotations

from pipeline.config import FeedSite
from pipeline.scrape.feeds.base import FeedAdapter
from pipeline.scrape.feeds.json import DemoAdapter, JsonFeedAdapter

ADAPTERS: dict[str, type[FeedAdapter]] = {"demo": DemoAdapter, "json": JsonFeedAdapter}


def adapter_for(site: FeedSite, share: int = 1) -> FeedAdapter:
    """The adapter instance for a configured feed site; ``share``: how many worker processes split its request
    budget (the Mastodon paging limit)."""
    if site.adapter == "mastodon":
        from pipeline.scrape.feeds.mastodon import MastodonAdapter  # registers itself in ADAPTERS

        return MastodonAdapter(site, share)
    return ADAPTERS[site.adapter](site)
