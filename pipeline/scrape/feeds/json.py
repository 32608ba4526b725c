"""``adapter: json`` and ``adapter: demo``: a generic JSON feed, configured by field paths in YAML.

Options (:class:`JsonFeedOptions`, the feed entry's ``json:`` section, or ``demo:`` for ``adapter: demo``):

* ``json``: the fields are named by field paths (``fields``, the path syntax of
  :mod:`pipeline.scrape.feeds.fieldpath`: ``tags[].name``, ``media_attachments[type=image].0.url``, lists of
  alternatives)::

      fields: {items: posts, next: next_page, id: id, image_url: image_url, user_id: user.id,
               followers: user.followers, likes: likes, tags: tags, posted_at: posted_at}

  ``items`` may be ``""`` (or ``.``): the page is the list itself. The next page (``next_from``): ``body``:
  the ``next`` field holds a page number (filled into ``page_url``), an absolute or relative URL, or null (last
  page); ``link``: the ``Link`` header's ``rel="next"``; ``cursor``: the ``next`` field is a token filled into
  ``page_url``'s ``{cursor}``. Posts that carry only an author id get their follower counts from
  ``followers_lookup`` (:mod:`pipeline.scrape.feeds.followers`).
* ``demo``: the bundled demo feed (docs/demo-sites.md) — the JSON adapter; a field it does not name has the demo's
  path (:data:`DEMO_FIELDS`), as for ``json``.

A post whose image path matches nothing (no image) gets ``skip: no_image`` (a ``skipped`` row). A page that is not
JSON, whose ``items`` path matches nothing or is not a list, raises
:class:`~pipeline.scrape.feeds.base.FeedParseError` (``not_json``, ``items_not_found``, ``items_not_a_list``).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote, urljoin

from pydantic import BaseModel, ConfigDict, model_validator

from pipeline.config import FeedSite
from pipeline.scrape.feeds.base import (
    MAX_INT_DIGITS,
    FeedAdapter,
    FeedPage,
    FeedParseError,
    LongInt,
    link_next,
    load_json,
    page_posts,
    parse_count,
    parse_tags,
    parse_text,
    parse_time_field,
)
from pipeline.scrape.feeds.fieldpath import MISSING, FieldPath, PathSyntaxError, compile_path
from pipeline.scrape.feeds.followers import FollowersLookup, FollowersLookupClient

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


class JsonFeedOptions(BaseModel):
    """The ``json:`` (or ``demo:``) section of a feed entry (docs/feeds.md)."""

    model_config = ConfigDict(extra="forbid")

    # a URL template ({base_url}, {hashtag}, {page}, {cursor}) and field paths into each post / page: one path, or a
    # list of alternatives tried in order
    page_url: str = "{base_url}/api/feed?tag={hashtag}&page={page}"
    fields: dict[str, str | list[str]] = {}
    # where the next page comes from: the body's `next` field (a page number or URL), the Link header's rel="next",
    # or the body's `next` field as a cursor token filled into page_url's {cursor} (empty on the first page)
    next_from: Literal["body", "link", "cursor"] = "body"
    followers_lookup: FollowersLookup | None = None

    @model_validator(mode="after")
    def _paths_compile(self) -> JsonFeedOptions:
        specs = [(f"fields.{k}", v) for k, v in self.fields.items()]
        if self.followers_lookup is not None:
            fl = self.followers_lookup
            specs += [("followers_lookup.items", fl.items), ("followers_lookup.id", fl.id)]
            specs += [("followers_lookup.count", fl.count)]
        for key, spec in specs:
            for p in [spec] if isinstance(spec, str) else spec:
                try:
                    compile_path(p)
                except PathSyntaxError as e:
                    raise ValueError(f"{key}: {e}") from None
        return self


class JsonFeedAdapter(FeedAdapter):
    """A JSON feed whose fields are named by field paths (``fields``; missing keys → demo paths)."""

    Options = JsonFeedOptions

    def __init__(self, site: FeedSite, share: int = 1):
        super().__init__(site, share)
        self.fields = {**DEMO_FIELDS, **self.opts.fields}
        self.paths = {k: FieldPath(v) for k, v in self.fields.items() if v is not None}
        self.lookup = None
        if self.opts.followers_lookup is not None:
            self.lookup = FollowersLookupClient(site.base_url, self.opts.followers_lookup)

    def first_url(self, hashtag: str) -> str:
        return self.page_url(hashtag, 1)

    def page_url(self, hashtag: str, page: int, cursor: str = "") -> str:
        base = self.site.base_url.rstrip("/")
        return self.opts.page_url.format(base_url=base, hashtag=hashtag, page=page, cursor=quote(cursor, safe=""))

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
        posts, bad = page_posts(items, lambda item: self._post(item, page_url))
        nxt = self._next(doc, headers, page_url, hashtag, page) if posts or bad else None
        return FeedPage(posts=posts, next_url=nxt, bad_posts=bad)

    def _next(self, doc: Any, headers: dict | None, page_url: str, hashtag: str, page: int) -> str | None:
        how = self.opts.next_from
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
    """The bundled demo feed: ``/api/feed?tag=T&page=N``, fields as in docs/demo-sites.md (the defaults)."""
