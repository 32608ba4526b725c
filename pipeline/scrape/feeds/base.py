"""Feed adapters: how to list a hashtag's pages on one kind of site and turn a page into posts.

An adapter is one small class per site kind (:class:`FeedAdapter`): ``first_url(hashtag)`` and
``parse(body, page_url, hashtag, page)`` → :class:`FeedPage` (normalised posts plus the next page's URL). Adding a
site kind is one class registered in :data:`ADAPTERS`; adding a site of a known kind is a YAML entry.

* ``json``: a generic JSON feed, configured by field paths in YAML (``FeedSite.fields``, the path syntax of
  :mod:`pipeline.scrape.feeds.fieldpath`: ``tags[].name``, ``media_attachments[type=image].0.url``, lists of
  alternatives)::

      fields: {items: posts, next: next_page, id: id, image_url: image_url, user_id: user.id,
               followers: user.followers, likes: likes, tags: tags, posted_at: posted_at}

  ``items`` may be ``""`` (or ``.``): the page is the list itself. The next page (``FeedSite.next_from``): ``body``:
  the ``next`` field holds a page number (filled into ``page_url``), an absolute or relative URL, or null (last
  page); ``link``: the ``Link`` header's ``rel="next"``; ``cursor``: the ``next`` field is a token filled into
  ``page_url``'s ``{cursor}``. Posts that carry only an author id get their follower counts from
  ``followers_lookup`` (:mod:`pipeline.scrape.feeds.followers`).
* ``demo``: the bundled demo feed (docs/demo-sites.md) — the JSON adapter with the demo's field paths.
* ``mastodon``: :mod:`pipeline.scrape.feeds.mastodon` (registered there).

A post that cannot be parsed becomes a post dict with ``error`` set (``bad_post:<field>``: a missing id, a dict
where text is expected, a string or a float with a fraction where a count is expected, tags that are not a list of
text); a post whose image path matches nothing (no image) gets ``skip: no_image`` (a ``skipped`` row). A page that
is not JSON, whose ``items`` path matches nothing or is not a list, raises :class:`FeedParseError` (``code``: the
page's reason, ``not_json``, ``items_not_found``, ``items_not_a_list``), never a silent "0 posts, ok".

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
from urllib.parse import quote, urljoin

from requests.utils import parse_header_links

from pipeline.config import FeedSite
from pipeline.scrape.feeds.fieldpath import MISSING, FieldPath

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
    """A feed page that is not what the adapter expects; ``code`` is the page's short reason."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


@dataclasses.dataclass
class FeedPage:
    posts: list[dict]  # item_id, image_url, user_id, followers, likes, tags, posted_at; or item_id + error / skip
    next_url: str | None


def dig(obj: Any, path: str) -> Any:
    """Follow a dotted path (``user.id``, ``data.items.0``) into nested dicts/lists; None when absent."""
    v = FieldPath(path).get(obj)
    return None if v is MISSING else v


def link_next(headers: dict | None, page_url: str) -> str | None:
    """The ``Link`` header's ``rel="next"`` URL (resolved against ``page_url``), or None."""
    value = (headers or {}).get("link")
    if not value:
        return None
    for link in parse_header_links(value):
        if "next" in str(link.get("rel", "")).split() and link.get("url"):
            return urljoin(page_url, link["url"])
    return None


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


def parse_time_field(value: Any, field: str = "posted_at") -> dt.datetime:
    """:func:`parse_time`, its error named by ``field`` (``ValueError("posted_at: why")``)."""
    try:
        return parse_time(value)
    except (ValueError, TypeError, OverflowError, OSError) as e:
        raise ValueError(f"{field}: {e}") from None


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


def parse_text(value: Any, field: str, *, required: bool = False) -> str | None:
    """An id or a URL: JSON text or an integer (as text); None when absent; ``ValueError(field)`` for another type
    (an object, a list, a bool, a float) or, when ``required``, for an absent or empty value."""
    if value is MISSING or value is None or value == "":
        if required:
            raise ValueError(f"{field}: missing")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | LongInt) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{field}: not text ({type(value).__name__})")


def parse_tags(value: Any, field: str = "tags") -> list[str]:
    """A list of text (or integers); one text is one tag (``tags.0.name``); absent or null is no tags; anything else
    (objects, a number, a list holding objects) ``ValueError``."""
    if value is MISSING or value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{field}: not a list ({type(value).__name__})")
    out = []
    for t in value:
        if isinstance(t, bool) or not isinstance(t, str | int | LongInt):
            raise ValueError(f"{field}: an element is not text ({type(t).__name__})")
        out.append(str(t))
    return out


def load_json(body: bytes) -> Any:
    """A page's JSON (integers bounded by :func:`_parse_int`); :class:`FeedParseError` ``not_json`` otherwise."""
    try:
        return json.loads(body, parse_int=_parse_int)
    except (ValueError, UnicodeDecodeError) as e:
        raise FeedParseError("not_json", str(e)[:80]) from None
    except RecursionError:  # a nesting bomb such as [[[[...]]]]
        raise FeedParseError("not_json", "nested too deeply") from None


class FeedAdapter:
    """Base class: one subclass per site kind."""

    def __init__(self, site: FeedSite):
        self.site = site

    def first_url(self, hashtag: str) -> str:
        return self.page_url(hashtag, 1)

    def page_url(self, hashtag: str, page: int, cursor: str = "") -> str:
        base = self.site.base_url.rstrip("/")
        return self.site.page_url.format(base_url=base, hashtag=hashtag, page=page, cursor=quote(cursor, safe=""))

    def fetch(self, client: Any, url: str) -> Any:
        """GET one feed page with ``client`` (:class:`~pipeline.scrape.net.http.HttpClient`): a ``FetchResult``."""
        return client.fetch_page(url)

    def parse(
        self, body: bytes, page_url: str, hashtag: str, page: int, headers: dict | None = None
    ) -> FeedPage:  # pragma: no cover
        raise NotImplementedError

    def enrich(self, client: Any, posts: list[dict]) -> None:
        """Complete parsed posts with what needs more requests (follower lookups); nothing by default."""


class JsonFeedAdapter(FeedAdapter):
    """A JSON feed whose fields are named by field paths (``FeedSite.fields``; missing keys → demo paths)."""

    def __init__(self, site: FeedSite):
        super().__init__(site)
        self.fields = {**DEMO_FIELDS, **site.fields}
        self.paths = {k: FieldPath(v) for k, v in self.fields.items() if v is not None}
        self.lookup = None
        if site.followers_lookup is not None:
            from pipeline.scrape.feeds.followers import FollowersLookupClient

            self.lookup = FollowersLookupClient(site)

    def _get(self, obj: Any, key: str) -> Any:
        path = self.paths.get(key)
        return MISSING if path is None else path.get(obj)

    def parse(self, body: bytes, page_url: str, hashtag: str, page: int, headers: dict | None = None) -> FeedPage:
        doc = load_json(body)
        items = self._get(doc, "items")
        if items is MISSING:
            raise FeedParseError("items_not_found", f"the items path {self.fields['items']!r} matches nothing")
        if not isinstance(items, list):
            raise FeedParseError("items_not_a_list", f"{self.fields['items']!r} is a {type(items).__name__}")
        posts = [self._post(item, page_url) for item in items]
        return FeedPage(posts=posts, next_url=self._next(doc, headers, page_url, hashtag, page) if posts else None)

    def _next(self, doc: Any, headers: dict | None, page_url: str, hashtag: str, page: int) -> str | None:
        how = self.site.next_from
        if how == "link":
            return link_next(headers, page_url)
        nxt = self._get(doc, "next") if self.fields.get("next") else None
        if nxt is MISSING or nxt is None or nxt is False or nxt == "":
            return None
        if how == "cursor":
            if isinstance(nxt, str) or (isinstance(nxt, int | LongInt) and not isinstance(nxt, bool)):
                return self.page_url(hashtag, page + 1, cursor=str(nxt))
            return None
        if isinstance(nxt, int) and not isinstance(nxt, bool):
            return self.page_url(hashtag, nxt)
        if isinstance(nxt, str) and nxt.isascii() and nxt.isdigit():  # a page number (none, past int64's digits)
            return self.page_url(hashtag, int(nxt)) if len(nxt) <= MAX_INT_DIGITS else None
        if isinstance(nxt, str):
            return urljoin(page_url, nxt)
        return None

    def _post(self, item: Any, page_url: str) -> dict:
        raw_id = self._get(item, "id") if isinstance(item, dict) else None
        item_id = str(raw_id) if isinstance(raw_id, str | int) and not isinstance(raw_id, bool) else None
        if not item_id:
            return {"item_id": None, "error": "bad_post:id"}
        out: dict[str, Any] = {"item_id": item_id}
        try:
            url = self._get(item, "image_url")
            no_image = url is MISSING or url is None or url == [] or url == ""
            if not no_image:
                if not isinstance(url, str):
                    raise ValueError(f"image_url: not text ({type(url).__name__})")
                out["image_url"] = urljoin(page_url, url)
            out["user_id"] = parse_text(self._get(item, "user_id"), "user_id")
            if "user_acct" in self.paths:
                out["user_acct"] = parse_text(self._get(item, "user_acct"), "user_acct")
            if "post_url" in self.paths:
                out["post_url"] = parse_text(self._get(item, "post_url"), "post_url")
            followers = self._get(item, "followers")
            if self.lookup is not None and (followers is MISSING or followers is None):
                out["followers"], out["lookup_followers"] = None, True
            else:
                out["followers"] = parse_count(None if followers is MISSING else followers, "followers")
            out["likes"] = parse_count(_none(self._get(item, "likes")), "likes")
            if "reblogs" in self.paths:
                reblogs = self._get(item, "reblogs")
                out["reblogs"] = None if reblogs is MISSING or reblogs is None else parse_count(reblogs, "reblogs")
            out["tags"] = parse_tags(self._get(item, "tags"))
            out["posted_at"] = parse_time_field(_none(self._get(item, "posted_at")))
        except (ValueError, TypeError, OverflowError, OSError) as e:
            field = str(e).split(":")[0][:40] or type(e).__name__
            return {"item_id": item_id, "error": f"bad_post:{field}", "image_url": out.get("image_url")}
        if no_image:
            out["skip"] = "no_image"
        return out

    def enrich(self, client: Any, posts: list[dict]) -> None:
        if self.lookup is not None:
            self.lookup.fill(client, posts)


def _none(v: Any) -> Any:
    return None if v is MISSING else v


class DemoAdapter(JsonFeedAdapter):
    """The bundled demo feed: ``/api/feed?tag=T&page=N``, fields as in docs/demo-sites.md."""

    def __init__(self, site: FeedSite):
        site = site.model_copy(update={"fields": {**DEMO_FIELDS, **site.fields}})
        super().__init__(site)


ADAPTERS: dict[str, type[FeedAdapter]] = {"demo": DemoAdapter, "json": JsonFeedAdapter}


def adapter_for(site: FeedSite, share: int = 1) -> FeedAdapter:
    """The adapter instance for a configured feed site; ``share``: how many worker processes split its request
    budget (the Mastodon paging limit)."""
    if site.adapter == "mastodon":
        from pipeline.scrape.feeds.mastodon import MastodonAdapter  # registers itself in ADAPTERS

        return MastodonAdapter(site, share)
    return ADAPTERS[site.adapter](site)
