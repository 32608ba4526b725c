"""``adapter: misskey``: notes by hashtag on a Misskey-family server (Misskey, Sharkey, ...), built from the API docs.

* Pages: ``POST /api/notes/search-by-tag`` with a JSON body ``{"tag", "limit": 100, "withFiles": true}``
  (:class:`MisskeyOptions`, the feed entry's ``misskey:`` section: ``limit`` ≤ 100, ``reply`` / ``renote`` /
  ``poll`` passed through), the next page with ``untilId`` = the page's oldest note id; the end is an empty page.
  Misskey's API is POST-only, so a page is named by a URL whose query holds the body's fields
  (``/api/notes/search-by-tag?tag=selfie&limit=100&withFiles=true&untilId=…``): :meth:`MisskeyAdapter.fetch` sends
  them as JSON (the crawl's cursors and resumes work on these URLs as on Mastodon's).
* A note (:func:`parse_note`) becomes a post: ``id``, ``user.id`` (``user_id``), ``@username@host`` (``user_acct``;
  ``user.host`` null means the serving server's own user), ``likes`` = the sum of the ``reactions`` map (every emoji;
  the map itself as JSON text: ``reactions``), ``renoteCount`` (``reblogs``), ``repliesCount`` (``replies``),
  ``tags``, ``createdAt``, ``url`` / ``uri`` (remote notes) or ``https://<host>/notes/<id>`` (``post_url``),
  ``counts_from`` = the serving host (one server's view, as on Mastodon). The image is the first of ``files`` whose
  ``type`` is ``image/*``; a file marked ``isSensitive`` is skipped (``sensitive``) unless ``include_sensitive``; only
  video/audio files ``media_video`` / ``media_audio``; none ``no_image``.
* Followers: ``POST /api/users/show`` with ``userIds`` (100 a request, cached per process:
  :mod:`pipeline.scrape.feeds.followers`); a user the answer leaves out (deleted, suspended) makes the post an error
  row ``followers_lookup:not_found``.
* Incremental (``incremental``): note ids (aid, aidx, meid, ulid) sort by time as text; a rerun walks from the newest
  note down to the newest stored one and stops there (not ``sinceId``, which Misskey answers oldest first).
* Count refresh (``refresh_max`` a run, :mod:`pipeline.scrape.feeds.refresh`): notes too young when scraped are read
  again with ``POST /api/notes/show`` once old enough; a deleted note keeps its row.
* Politeness: ``X-RateLimit-*`` headers and ``Retry-After`` as Mastodon's (:class:`~pipeline.scrape.feeds.mastodon
  .Pacer`); a 429 (POSTs are not retried by the HTTP client) is waited for and tried again when its ``Retry-After``
  is within ``max_wait_s``, else the hashtag ends with a row ``http_429_rate_limited`` (``rate_limited`` when the
  pacer's own wait is too long). 400/401/403/404/410 end a hashtag with one error row
  (``http_401_auth_required``...). ``access_token_env`` names a ``FACERANK_…TOKEN`` / ``MISSKEY_…TOKEN`` variable
  sent as ``Authorization: Bearer`` to the site's host only, never stored or logged.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import FeedSite
from pipeline.scrape.feeds.base import (
    API_ERRORS,
    REFRESHED,
    FeedAdapter,
    FeedPage,
    FeedParseError,
    load_json,
    parse_count,
    parse_optional_count,
    parse_reactions,
    parse_tags,
    parse_text,
    parse_time_field,
)
from pipeline.scrape.feeds.followers import FollowersLookup, FollowersLookupClient, ThroughAdapter
from pipeline.scrape.feeds.mastodon import Pacer, query_value, with_params
from pipeline.store import STATUS_ERROR

EXPLAIN = API_ERRORS  # feeds/base.py
SEARCH = "/api/notes/search-by-tag"
USERS = "/api/users/show"
NOTE = "/api/notes/show"
SINCE = "_since"  # the walk's stop id: kept in the page URL, never sent
BOOL_KEYS = ("withFiles", "reply", "renote", "poll")
INT_KEYS = ("limit",)
LIST_KEYS = ("userIds",)
MAX_NOTES_PAGE = 100


def body_of(url: str) -> dict:
    """The JSON body a page URL stands for (its query; :data:`SINCE` left out)."""
    out: dict[str, Any] = {}
    for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True):
        if k == SINCE:
            continue
        if k in LIST_KEYS:
            out.setdefault(k, []).append(v)
        elif k in BOOL_KEYS:
            out[k] = v == "true"
        elif k in INT_KEYS:
            out[k] = int(v) if v.isdigit() else v
        else:
            out[k] = v
    return out


def _first_image(files: list, include_sensitive: bool) -> tuple[str | None, str | None]:
    kinds = []
    for f in files:
        if not isinstance(f, dict):
            raise ValueError("files: an element is not an object")
        mime = f.get("type")
        if not isinstance(mime, str):
            raise ValueError("files: type is not text")
        kinds.append(mime.split("/")[0])
        if mime.startswith("image/"):
            sensitive = f.get("isSensitive", False)
            if not isinstance(sensitive, bool):
                raise ValueError("files: isSensitive not a bool")
            if sensitive and not include_sensitive:
                return None, "sensitive"
            return parse_text(f.get("url"), "files", required=True), None
    for k in ("video", "audio"):
        if k in kinds:
            return None, f"media_{k}"
    return None, "no_image"


def parse_note(note: Any, host: str, include_sensitive: bool = False) -> dict:
    """One Note → a post dict (module docstring); ``error`` or ``skip`` set when it has no usable image;
    ``lookup_followers`` set (the count comes from users/show)."""
    raw_id = note.get("id") if isinstance(note, dict) else None
    if not isinstance(raw_id, str) or not raw_id:
        return {"item_id": None, "error": "bad_post:id"}
    out: dict[str, Any] = {"item_id": raw_id, "counts_from": host}
    try:
        user = note.get("user")
        if not isinstance(user, dict):
            raise ValueError("user: not an object")
        out["user_id"] = parse_text(user.get("id"), "user_id", required=True)
        name = parse_text(user.get("username"), "user_acct", required=True)
        home = parse_text(user.get("host"), "user_acct") or host
        out["user_acct"] = f"@{name}@{home}"
        out["likes"], out["reactions"] = parse_reactions(note.get("reactions") or {}, "likes")  # sum ≤ int64
        out["reblogs"] = parse_count(note.get("renoteCount", 0), "reblogs")
        out["replies"] = parse_optional_count(note.get("repliesCount"), "replies")
        out["tags"] = parse_tags(note.get("tags"))
        out["posted_at"] = parse_time_field(note.get("createdAt"))
        url = parse_text(note.get("url"), "post_url") or parse_text(note.get("uri"), "post_url")
        out["post_url"] = url or f"https://{host}/notes/{raw_id}"
        files = note.get("files")
        if files is None:
            files = []
        if not isinstance(files, list):
            raise ValueError("files: not a list")
        image, skip = _first_image(files, include_sensitive)
    except (ValueError, TypeError, OverflowError, OSError) as e:
        field = str(e).split(":")[0][:40] or type(e).__name__
        return {"item_id": raw_id, "error": f"bad_post:{field}"}
    if image:
        out["image_url"] = image
    if skip:
        out["skip"] = skip
    out["lookup_followers"] = True
    return out


class MisskeyOptions(BaseModel):
    """The ``misskey:`` section of a feed entry (POST /api/notes/search-by-tag; docs/feeds.md)."""

    model_config = ConfigDict(extra="forbid")

    # the NAME of an environment variable holding an access token (never the token)
    access_token_env: str | None = Field(None, pattern=r"^(FACERANK|MISSKEY)_[A-Z0-9_]*TOKEN$")
    limit: int = Field(100, ge=1, le=100)
    reply: bool | None = None  # passed through: only replies (true), no replies (false), both (unset)
    renote: bool | None = None
    poll: bool | None = None
    include_sensitive: bool = False  # images marked isSensitive are skipped unless True
    incremental: bool = True
    users_batch: int = Field(100, ge=1, le=100)  # users/show userIds a request
    rate_reserve: int = Field(5, ge=0)
    max_wait_s: float = Field(120.0, ge=0)  # a longer rate-limit wait is not waited: the hashtag ends with a row
    refresh_max: int = Field(10_000, ge=0)  # young notes read again on a later run (notes/show), at most this many


class MisskeyAdapter(FeedAdapter):
    """Notes by hashtag (module docstring)."""

    Options = MisskeyOptions

    def __init__(self, site: FeedSite, share: int = 1):
        super().__init__(site, share)
        self.base = site.base_url.rstrip("/")
        self.host = (urlsplit(site.base_url).hostname or "").lower()
        # paging budget unused: the server's headers
        self.pacer = Pacer(1, 1.0, self.opts.rate_reserve, share, max_wait_s=self.opts.max_wait_s)
        self.incremental = self.opts.incremental
        self.followers = FollowersLookupClient(
            site.base_url,
            FollowersLookup(url="{base_url}" + USERS + "?{ids}", batch=self.opts.users_batch, id_param="userIds",
                            items="", id="id", count="followersCount"),
        )  # fmt: skip

    def first_url(self, hashtag: str) -> str:
        m = self.opts
        p = [("tag", hashtag.lstrip("#")), ("limit", str(m.limit)), ("withFiles", "true")]
        p += [(k, "true" if v else "false") for k, v in (("reply", m.reply), ("renote", m.renote),
                                                          ("poll", m.poll)) if v is not None]  # fmt: skip
        return with_params(f"{self.base}{SEARCH}", p)

    def parse(self, body: bytes, page_url: str, hashtag: str, page: int, headers: dict | None = None) -> FeedPage:
        doc = load_json(body)
        if isinstance(doc, dict) and "error" in doc:
            err = doc.get("error")
            raise FeedParseError("api_error", str(err.get("code") if isinstance(err, dict) else err)[:80])
        if not isinstance(doc, list):
            raise FeedParseError("items_not_a_list", f"the answer is a {type(doc).__name__}, not a list")
        doc = doc[:MAX_NOTES_PAGE]
        posts = [parse_note(n, self.host, self.opts.include_sensitive) for n in doc]
        since = query_value(page_url, SINCE)
        stop = False
        if since:
            newer = [p for p in posts if p.get("item_id") is None or self.id_key(p["item_id"]) > self.id_key(since)]
            stop = len(newer) < len(posts)
            posts = newer
        oldest = next(
            (n.get("id") for n in reversed(doc) if isinstance(n, dict) and isinstance(n.get("id"), str)), None
        )
        if not doc or stop or oldest is None or oldest == query_value(page_url, "untilId"):
            return FeedPage(posts=posts, next_url=None)
        return FeedPage(posts=posts, next_url=with_params(page_url, [("untilId", oldest)], replace=True))

    def enrich(self, client: Any, posts: list[dict]) -> None:
        self.followers.fill(ThroughAdapter(self, client), posts)

    # ---------------------------------------------------------------- requests
    def auth_headers(self, url: str) -> dict[str, str]:
        name = self.opts.access_token_env
        token = os.environ.get(name, "") if name else ""
        if not token or (urlsplit(url).hostname or "").lower() != self.host:
            return {}
        return {"Authorization": f"Bearer {token}"}

    def fetch(self, client: Any, url: str) -> Any:
        """One API call: the URL's query sent as the JSON body of a POST to its path, paced; a 429 waited for (up to
        ``max_wait_s``) and tried again."""
        from pipeline.scrape.net.http import FetchResult

        parts = urlsplit(url)
        target = urlunsplit(parts._replace(query=""))
        body = json.dumps(body_of(url)).encode()
        res = None
        for _ in range(3):
            if not self.pacer.try_wait():
                return FetchResult(url=url, kind="page", status=STATUS_ERROR, reason="rate_limited")
            res = client.fetch_feed_page(target, headers=self.auth_headers(target), json_body=body)
            res.url = url  # the fetch row names the page (its body's fields), as the crawl's cursors do
            self.pacer.observe(res.headers, res.http_status)
            if res.http_status != 429:
                break
        if res.http_status in EXPLAIN and not res.ok:
            res.reason = EXPLAIN[res.http_status]
        return res

    # ---------------------------------------------------------------- count refresh (feeds/refresh.py)
    @property
    def refresh_max(self) -> int:
        return self.opts.refresh_max

    def refresh_counts(self, client: Any, ids: list[str], deadline: float | None = None) -> dict[str, dict]:
        """id -> fresh counts (``POST /api/notes/show``, one note a request; followers by users/show) for the notes
        still there; no request starts after ``deadline`` (``time.monotonic()``)."""
        posts = []
        for note_id in ids:
            if deadline is not None and time.monotonic() > deadline:
                break
            res = self.fetch(client, with_params(f"{self.base}{NOTE}", [("noteId", note_id)]))
            if not res.ok:
                continue  # deleted (400 NO_SUCH_NOTE) or unreadable: the row stays as it was
            try:
                p = parse_note(load_json(res.data or b""), self.host, include_sensitive=True)
            except FeedParseError:
                continue
            if p.get("item_id") == note_id and not p.get("error"):
                posts.append(p)
        self.enrich(client, posts)
        return {p["item_id"]: {k: p.get(k) for k in REFRESHED} for p in posts if not p.get("error")}

    # ---------------------------------------------------------------- incremental reruns (feeds/cursors.py)
    def incremental_since(self, url: str, since_id: str) -> str:
        """``url`` with the walk's stop id: :meth:`parse` keeps only newer notes and stops at the first older one."""
        return with_params(url, [(SINCE, since_id)], replace=True)


__all__ = ["MisskeyAdapter", "MisskeyOptions", "body_of", "parse_note"]
