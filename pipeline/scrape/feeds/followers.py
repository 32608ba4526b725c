"""Follower counts for JSON feeds whose posts carry only an author id (the ``json`` options' ``followers_lookup``).

An Instagram-style post has ``owner.id``, a Bluesky post ``author.did``; the follower count lives in a profile
answer. :class:`FollowersLookupClient` fetches it once per user per worker process (a cache; a user another thread
is fetching is waited for, not fetched twice), ``batch`` ids a request when the API takes several
(``app.bsky.actor.getProfiles?actors=a&actors=b``, up to 25), through the same polite HTTP client as every request
(robots, per-host rate, retries). A lookup that fails makes its posts error rows ``followers_lookup:<reason>``
(``followers_lookup:http_404``, ``followers_lookup:not_found`` for an id the batch answer left out,
``followers_lookup:bad_count``).
"""

from __future__ import annotations

import threading
from typing import Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field

from pipeline.scrape.feeds.base import FeedParseError, load_json, parse_count, parse_text
from pipeline.scrape.feeds.fieldpath import MISSING, FieldPath


class FollowersLookup(BaseModel):
    """Where a JSON feed whose posts carry only an author id finds the author's follower count (docs/feeds.md).

    ``url``: a template with ``{base_url}`` and ``{id}`` (one id a request) or ``{ids}`` (``batch`` ids a request,
    each as ``id_param=<id>`` joined by ``&``, as ``app.bsky.actor.getProfiles?actors=...&actors=...`` wants).
    ``items``: the path to the list of profiles in a batched answer, ``id``: the path to a profile's id in it;
    ``count``: the path to the follower count (in the answer, or in each profile when batched)."""

    model_config = ConfigDict(extra="forbid")

    url: str
    batch: int = Field(1, ge=1, le=100)
    id_param: str = "id"
    items: str = ""
    id: str = "id"
    count: str


class FollowersLookupClient:
    """Lookups of one feed site (module docstring), its ``base_url`` and ``followers_lookup`` options. Thread-safe."""

    def __init__(self, base_url: str, cfg: FollowersLookup):
        self.base_url = base_url
        self.cfg = cfg
        self.batched = "{ids}" in self.cfg.url
        self.items = FieldPath(self.cfg.items)
        self.id = FieldPath(self.cfg.id)
        self.count = FieldPath(self.cfg.count)
        self.cache: dict[str, int | str] = {}  # id -> count, or the error reason
        self.pending: dict[str, threading.Event] = {}
        self.lock = threading.Lock()
        self.requests = 0

    def url(self, ids: list[str]) -> str:
        base = self.base_url.rstrip("/")
        joined = "&".join(f"{self.cfg.id_param}={quote(i, safe='')}" for i in ids)
        return self.cfg.url.format(base_url=base, id=quote(ids[0], safe=""), ids=joined)

    def fill(self, client: Any, posts: list[dict]) -> None:
        """Set ``followers`` (or ``error``) on every post marked ``lookup_followers``."""
        need = [p for p in posts if p.pop("lookup_followers", False)]
        ids = list(dict.fromkeys(str(p["user_id"]) for p in need if p.get("user_id")))
        mine, wait = [], []
        with self.lock:
            for i in ids:
                if i in self.cache:
                    continue
                if i in self.pending:
                    wait.append(self.pending[i])
                else:
                    self.pending[i] = threading.Event()
                    mine.append(i)
        size = self.cfg.batch if self.batched else 1
        for k in range(0, len(mine), size):
            self._fetch(client, mine[k : k + size])
        for ev in wait:
            ev.wait(timeout=600)
        for p in need:
            if not p.get("user_id"):
                p["error"] = "bad_post:user_id"
                continue
            v = self.cache.get(str(p["user_id"]), "followers_lookup:not_found")
            if isinstance(v, str):
                p["error"] = v
            else:
                p["followers"] = v

    def _fetch(self, client: Any, ids: list[str]) -> None:
        got: dict[str, int | str] = {}
        self.requests += 1
        res = client.fetch_feed_page(self.url(ids))
        if not res.ok:
            got = {i: f"followers_lookup:{res.reason}" for i in ids}
        else:
            try:
                doc = load_json(res.data or b"")
                profiles = self.items.get(doc) if self.batched else [doc]
                if not isinstance(profiles, list):
                    profiles = []
                for prof in profiles:
                    pid = parse_text(self.id.get(prof), "id") if self.batched else ids[0]
                    if pid is None:
                        continue
                    c = self.count.get(prof)
                    try:
                        got[pid] = parse_count(None if c is MISSING else c, "followers")
                    except ValueError:
                        got[pid] = "followers_lookup:bad_count"
            except (FeedParseError, ValueError, TypeError):
                got = {i: "followers_lookup:parse_error" for i in ids}
        with self.lock:
            for i in ids:
                self.cache[i] = got.get(i, "followers_lookup:not_found")
                ev = self.pending.pop(i, None)
                if ev is not None:
                    ev.set()


class ThroughAdapter:
    """A client for :meth:`FollowersLookupClient.fill` whose every request goes through an adapter's own ``fetch``
    (its authentication, POST bodies and pacing: Bluesky's, Misskey's), under the feed-page cap that fetch applies."""

    def __init__(self, adapter: Any, client: Any):
        self.adapter, self.client = adapter, client

    def fetch_feed_page(self, url: str, headers: dict | None = None) -> Any:
        return self.adapter.fetch(self.client, url)

    fetch_page = fetch_feed_page
