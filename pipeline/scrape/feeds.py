"""Feed adapters: how to list a hashtag's pages on one kind of site and turn a page into posts.

An adapter is one small class per site kind (:class:`FeedAdapter`): ``first_url(hashtag)`` and
``parse(body, page_url, hashtag, page)`` → :class:`FeedPage` (normalised posts plus the next page's URL). Adding a
site kind is one class registered in :data:`ADAPTERS`; adding a site of a known kind is a YAML entry.

* ``json``: a generic JSON feed, configured by dotted field paths in YAML (``FeedSite.fields``)::

      fields: {items: posts, next: next_page, id: id, image_url: image_url, user_id: user.id,
               followers: user.followers, likes: likes, tags: tags, posted_at: posted_at}

  ``next`` may hold a page number (filled into ``page_url``), an absolute or relative URL, or null (last page).
* ``demo``: the bundled demo feed (docs/demo-sites.md) — the JSON adapter with the demo's field paths.

A post that cannot be parsed becomes a post dict with ``error`` set (so it turns into an error row); a page that
is not JSON raises :class:`FeedParseError`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any
from urllib.parse import urljoin

from pipeline.config import FeedSite

DEMO_FIELDS = {
    "items": "posts",
    "next": "next_page",
    "id": "id",
    "image_url": "image_url",
    "user_id": "user.id",
    "followers": "user.followers",
    "likes": "likes",
    "tags": "tags",
    "posted_at": "posted_at",
}


INT64_MAX = 2**63 - 1


class FeedParseError(ValueError):
    """A feed page that is not what the adapter expects."""


@dataclasses.dataclass
class FeedPage:
    posts: list[dict]  # item_id, image_url, user_id, followers, likes, tags, posted_at; or item_id + error
    next_url: str | None


def dig(obj: Any, path: str) -> Any:
    """Follow a dotted path (``user.id``, ``data.items.0``) into nested dicts/lists; None when absent."""
    for part in path.split(".") if path else []:
        if isinstance(obj, dict):
            obj = obj.get(part)
        elif isinstance(obj, list) and part.lstrip("-").isdigit() and -len(obj) <= int(part) < len(obj):
            obj = obj[int(part)]
        else:
            return None
    return obj


def parse_time(value: Any) -> dt.datetime:
    """ISO-8601 text (``Z`` allowed) or epoch seconds → an aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError("bool is not a time")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    if isinstance(value, str):
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
    raise ValueError(f"not a time: {type(value).__name__}")


def _int(value: Any) -> int:
    if isinstance(value, bool) or value is None:
        raise ValueError("not an integer")
    v = int(value)
    if v < 0:
        raise ValueError("negative")
    if v > INT64_MAX:  # the posts schema is int64: a larger count would fail the whole batch write
        raise ValueError("too large")
    return v


class FeedAdapter:
    """Base class: one subclass per site kind."""

    def __init__(self, site: FeedSite):
        self.site = site

    def first_url(self, hashtag: str) -> str:
        return self.page_url(hashtag, 1)

    def page_url(self, hashtag: str, page: int) -> str:
        return self.site.page_url.format(base_url=self.site.base_url.rstrip("/"), hashtag=hashtag, page=page)

    def parse(self, body: bytes, page_url: str, hashtag: str, page: int) -> FeedPage:  # pragma: no cover
        raise NotImplementedError


class JsonFeedAdapter(FeedAdapter):
    """A JSON feed whose fields are named by dotted paths (``FeedSite.fields``; missing keys → demo paths)."""

    def __init__(self, site: FeedSite):
        super().__init__(site)
        self.fields = {**DEMO_FIELDS, **site.fields}

    def parse(self, body: bytes, page_url: str, hashtag: str, page: int) -> FeedPage:
        try:
            doc = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise FeedParseError(f"not JSON: {e}") from None
        except RecursionError:  # a nesting bomb such as [[[[...]]]]
            raise FeedParseError("not JSON: nested too deeply") from None
        items = dig(doc, self.fields["items"])
        if items is None:
            items = []
        if not isinstance(items, list):
            raise FeedParseError("items is not a list")
        posts = [self._post(item, page_url) for item in items]
        nxt = dig(doc, self.fields["next"]) if self.fields.get("next") else None
        if nxt is None or nxt is False or nxt == "" or not posts:
            next_url = None
        elif isinstance(nxt, int) and not isinstance(nxt, bool):
            next_url = self.page_url(hashtag, nxt)
        elif isinstance(nxt, str) and nxt.isdigit():
            next_url = self.page_url(hashtag, int(nxt))
        elif isinstance(nxt, str):
            next_url = urljoin(page_url, nxt)
        else:
            next_url = None
        return FeedPage(posts=posts, next_url=next_url)

    def _post(self, item: Any, page_url: str) -> dict:
        f = self.fields
        raw_id = dig(item, f["id"]) if isinstance(item, dict) else None
        item_id = str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
        if not item_id:
            return {"item_id": None, "error": "bad_post:id"}
        out: dict[str, Any] = {"item_id": item_id}
        try:
            url = dig(item, f["image_url"])
            if not isinstance(url, str) or not url:
                raise ValueError("image_url")
            out["image_url"] = urljoin(page_url, url)
            uid = dig(item, f["user_id"])
            out["user_id"] = str(uid) if uid is not None else None
            out["followers"] = _int(dig(item, f["followers"]))
            out["likes"] = _int(dig(item, f["likes"]))
            tags = dig(item, f["tags"]) or []
            if not isinstance(tags, list):
                raise ValueError("tags")
            out["tags"] = [str(t) for t in tags]
            out["posted_at"] = parse_time(dig(item, f["posted_at"]))
        except (ValueError, TypeError, OverflowError, OSError) as e:
            field = str(e).split(":")[0][:40] or type(e).__name__
            return {"item_id": item_id, "error": f"bad_post:{field}", "image_url": out.get("image_url")}
        return out


class DemoAdapter(JsonFeedAdapter):
    """The bundled demo feed: ``/api/feed?tag=T&page=N``, fields as in docs/demo-sites.md."""

    def __init__(self, site: FeedSite):
        site = site.model_copy(update={"fields": {**DEMO_FIELDS, **site.fields}})
        super().__init__(site)


ADAPTERS: dict[str, type[FeedAdapter]] = {"demo": DemoAdapter, "json": JsonFeedAdapter}


def adapter_for(site: FeedSite) -> FeedAdapter:
    """The adapter instance for a configured feed site."""
    return ADAPTERS[site.adapter](site)
