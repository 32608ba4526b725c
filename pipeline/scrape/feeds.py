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

Counts (``likes``, ``followers``) must be JSON integers in 0..2^63-1, as a real API sends them; an integral float
(``12.0``, ``1e3``) is taken too. A count that is a string (``"12"``), a bool, null, a float with a fraction or
infinity, negative, or out of the int64 range makes that post an error row ``bad_post:<field>`` (``bad_post:likes``);
the other posts of the page are kept. The page is parsed with a ``parse_int`` hook: an integer literal longer than
:data:`MAX_INT_DIGITS` digits is never converted (Python refuses int() of 4300+ digits, which used to fail the whole
page) and stays a :class:`LongInt`, which no field accepts as a number.
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
MAX_INT_DIGITS = 19  # as many as INT64_MAX has: a longer integer literal is out of range whatever its digits


class LongInt:
    """A JSON integer literal of more than :data:`MAX_INT_DIGITS` digits, kept as its text and never converted."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"LongInt({len(self.text)} characters)"

    def __str__(self) -> str:
        return self.text


def _parse_int(text: str) -> int | LongInt:
    """json's ``parse_int`` hook: bounded work per literal, whatever its length."""
    return LongInt(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


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


def parse_count(value: Any, field: str) -> int:
    """A like/follower count as the module docstring says; ``ValueError("<field>: why")`` otherwise."""
    if isinstance(value, LongInt):
        raise ValueError(f"{field}: too many digits")
    if isinstance(value, bool) or not isinstance(value, int | float):  # "12", null, lists, objects
        raise ValueError(f"{field}: not a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():  # 1.9, inf, nan
            raise ValueError(f"{field}: not an integer")
        if not -INT64_MAX <= value <= INT64_MAX:
            raise ValueError(f"{field}: too large")
        value = int(value)
    if value < 0:
        raise ValueError(f"{field}: negative")
    if value > INT64_MAX:  # the posts schema is int64: a larger count would fail the whole batch write
        raise ValueError(f"{field}: too large")
    return value


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
            doc = json.loads(body, parse_int=_parse_int)
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
        elif isinstance(nxt, str) and nxt.isascii() and nxt.isdigit():  # a page number (none, past int64's digits)
            next_url = self.page_url(hashtag, int(nxt)) if len(nxt) <= MAX_INT_DIGITS else None
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
            out["followers"] = parse_count(dig(item, f["followers"]), "followers")
            out["likes"] = parse_count(dig(item, f["likes"]), "likes")
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
