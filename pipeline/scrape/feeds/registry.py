"""The feed adapters by name: ``FeedSite.adapter`` → the dotted path of its adapter class (:data:`ADAPTERS`).

Lazy, as Scrapy's ``DOWNLOAD_HANDLERS_BASE``: an adapter's module is imported the first time its name is used (when
a config naming it is validated, or a crawl builds it), so the registry imports nothing and is cheap for the config
to ask. Adding a feed API is its module under ``pipeline/scrape/feeds/`` and one line here.
"""

from __future__ import annotations

import functools
import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.config import FeedSite
    from pipeline.scrape.feeds.base import FeedAdapter

ADAPTERS: dict[str, str] = {
    "bluesky": "pipeline.scrape.feeds.bluesky:BlueskyAdapter",
    "demo": "pipeline.scrape.feeds.json:DemoAdapter",
    "json": "pipeline.scrape.feeds.json:JsonFeedAdapter",
    "mastodon": "pipeline.scrape.feeds.mastodon:MastodonAdapter",
    "misskey": "pipeline.scrape.feeds.misskey:MisskeyAdapter",
}


@functools.cache
def adapter_class(name: str) -> type[FeedAdapter]:
    """The adapter class registered as ``name`` (its module imported now); ``KeyError`` for an unknown name."""
    module, _, attr = ADAPTERS[name].partition(":")
    return getattr(importlib.import_module(module), attr)


def options_model(name: str) -> Any:
    """The pydantic model of adapter ``name``'s own config section (``FeedSite.<name>``)."""
    return adapter_class(name).Options


def adapter_for(site: FeedSite, share: int = 1) -> FeedAdapter:
    """The adapter instance for a configured feed site; ``share``: how many worker processes split its request
    budget (the Mastodon paging limit)."""
    return adapter_class(site.adapter)(site, share)
