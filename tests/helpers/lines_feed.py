"""A feed adapter written the way a new feed API is added: this one module, plus one registry line (the test sets it).

``adapter: lines``: a made-up API whose hashtag page is plain text, one post a line, newest first:
``<id> <image path> <likes> <followers> <posted_at>``. Its own options (the feed entry's ``lines:`` section) are a
page size; it is incremental (``?since=<id>`` answers only newer posts), so the crawl's cursors resume and stop its
walks without knowing it. Nothing outside this module names it: tests/test_scrape_feeds_registry.py.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from pipeline.scrape.feeds.base import FeedAdapter, FeedPage, FeedParseError, parse_count, parse_time_field


class LinesOptions(BaseModel):
    """The ``lines:`` section of a feed entry."""

    model_config = ConfigDict(extra="forbid")

    per_page: int = Field(5, ge=1, le=50)


class LinesAdapter(FeedAdapter):
    """Pages ``/lines/<hashtag>?n=<per_page>&page=<k>``, each line a post; the next page while a page is full."""

    Options = LinesOptions
    incremental = True

    def first_url(self, hashtag: str) -> str:
        return f"{self.site.base_url.rstrip('/')}/lines/{hashtag}?n={self.opts.per_page}&page=1"

    def incremental_since(self, url: str, since_id: str) -> str:
        return _with(url, since=since_id)

    def parse(self, body: bytes, page_url: str, hashtag: str, page: int, headers: dict | None = None) -> FeedPage:
        try:
            lines = [ln.split() for ln in body.decode("ascii").splitlines() if ln.strip()]
        except UnicodeDecodeError:
            raise FeedParseError("not_ascii") from None
        posts = [self._post(parts, page_url) for parts in lines]
        full = len(lines) == self.opts.per_page
        page_no = int(dict(parse_qsl(urlsplit(page_url).query)).get("page", "1"))
        return FeedPage(posts=posts, next_url=_with(page_url, page=str(page_no + 1)) if full else None)

    @staticmethod
    def _post(parts: list[str], page_url: str) -> dict[str, Any]:
        if len(parts) != 5:
            return {"item_id": parts[0] if parts else None, "error": "bad_post:fields"}
        item, image, likes, followers, at = parts
        try:
            return {"item_id": item, "image_url": urljoin(page_url, image), "user_id": f"u{item}",
                    "likes": parse_count(int(likes), "likes"), "followers": parse_count(int(followers), "followers"),
                    "tags": [], "posted_at": parse_time_field(at)}  # fmt: skip
        except ValueError as e:
            return {"item_id": item, "error": f"bad_post:{str(e).split(':')[0]}"}


def _with(url: str, **params: str) -> str:
    parts = urlsplit(url)
    q = dict(parse_qsl(parts.query))
    q.update(params)
    return urlunsplit(parts._replace(query=urlencode(q)))
