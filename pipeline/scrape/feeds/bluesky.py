"""``adapter: bluesky``: hashtag search on Bluesky (AT Protocol, XRPC over HTTP), built from the lexicons.

* Pages: ``GET /xrpc/app.bsky.feed.searchPosts?q=%23<tag>&tag=<tag>&sort=latest&limit=100`` (:class:`BlueskyOptions`,
  the feed entry's ``bluesky:`` section: ``limit`` ≤ 100, ``all_tags`` (more ``tag`` values: the lexicon ANDs them),
  ``since`` / ``until``, ``lang``); the next page from the answer's ``cursor``. The lexicon says the cursor "may not
  necessarily allow scrolling through entire result set": the fetch row of a search's last page says so (reason
  ``search_end_unverified``, status ok).
* A post (:func:`parse_post`, a ``postView``) becomes a post: ``uri`` (the ``at://`` URI, ``item_id``),
  ``author.did`` (``user_id``: the stable identity), ``author.handle`` (``user_acct``, for display only),
  ``likeCount`` (``likes``: the AppView's count over the whole network), ``repostCount`` (``reblogs``),
  ``replyCount`` (``replies``), ``quoteCount`` (``quotes``),
  ``record.createdAt`` (``posted_at``; ``indexedAt`` when it has none), tags from ``record.tags`` and the record's
  ``#tag`` facets, ``post_url`` (``https://bsky.app/profile/<did>/post/<rkey>``); ``counts_from`` stays empty:
  the AppView's counts are the whole network's, not one server's view (the labels stage keeps such posts under
  ``counts_from: home``). The image is the first of ``embed.images`` (``app.bsky.embed.images#view``, or the
  ``media`` of an
  ``app.bsky.embed.recordWithMedia#view``), its ``fullsize`` URL; a video (``media_video``), a link card or no embed
  (``no_image``) is skipped; so is a post labelled ``porn``/``sexual``/``nudity``/``graphic-media`` (by a labeller
  or the author's self-labels: ``sensitive``) unless ``include_sensitive``. Reply and quote counts have no column.
* Followers: ``app.bsky.actor.getProfiles?actors=…`` (25 a request, cached per process:
  :mod:`pipeline.scrape.feeds.followers`); an author the answer leaves out (deleted, deactivated) makes the post an
  error row ``followers_lookup:not_found``.
* Authentication (search may need it): ``identifier_env`` and ``password_env`` name environment variables
  (``BLUESKY_…`` / ``FACERANK_…``) with the account's handle (or DID, or email) and an app password.
  ``com.atproto.server.createSession`` at ``base_url`` (the account's PDS, which proxies the app.bsky calls to the
  AppView) once per process; an expired access token (400/401) is renewed with ``com.atproto.server.refreshSession``
  (a new session when that fails too) and the call tried again. createSession has a low rate limit of its own:
  a failed login is not retried in that process; every hashtag gets one error row (``auth_failed:<reason>``). The
  password and the tokens are sent to ``base_url``'s host only and are never stored or logged.
* Politeness: ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (epoch seconds) paced as Mastodon's
  (:class:`~pipeline.scrape.feeds.mastodon.Pacer`); a wait longer than ``max_wait_s`` is not waited: that hashtag
  ends with an error row ``rate_limited``. 401/403/404/410/429 end a hashtag with one fetch error row whose reason
  says why (``http_401_auth_required``, ``http_410_gone``, ``http_429_rate_limited``...).
* Incremental reruns (``incremental``): ids are ordered by their record key, a TID (time-based); a rerun searches
  with ``since`` = the newest stored post's TID time less ``incremental_overlap_s`` (already stored posts are skipped
  by the crawl).
* Count refresh (``refresh_max`` a run, :mod:`pipeline.scrape.feeds.refresh`): posts too young when scraped are
  read again with ``app.bsky.feed.getPosts`` (25 a request) once old enough; a deleted post keeps its row.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import threading
import time
from typing import Any
from urllib.parse import quote, urlsplit

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
    parse_tags,
    parse_text,
    parse_time_field,
)
from pipeline.scrape.feeds.followers import FollowersLookup, FollowersLookupClient, ThroughAdapter
from pipeline.scrape.feeds.mastodon import Pacer, query_value, with_params
from pipeline.store import STATUS_ERROR

EXPLAIN = API_ERRORS  # feeds/base.py
SENSITIVE_LABELS = frozenset({"porn", "sexual", "nudity", "graphic-media", "gore"})
TID_CHARS = "234567abcdefghijklmnopqrstuvwxyz"  # base32-sortable
SEARCH = "/xrpc/app.bsky.feed.searchPosts"
PROFILES = "/xrpc/app.bsky.actor.getProfiles"
GET_POSTS = "/xrpc/app.bsky.feed.getPosts"  # up to 25 uris a request
MAX_POSTS_PAGE = 100  # the lexicon's limit: a longer page is cut there


def is_tid(rkey: str) -> bool:
    return len(rkey) == 13 and all(c in TID_CHARS for c in rkey) and rkey[0] in TID_CHARS[:16]


def tid_time(rkey: str) -> dt.datetime | None:
    """The time a TID record key encodes (53 bits of microseconds since the epoch, then 10 bits of clock id)."""
    if not is_tid(rkey):
        return None
    n = 0
    for c in rkey:
        n = n * 32 + TID_CHARS.index(c)
    try:
        return dt.datetime.fromtimestamp((n >> 10) / 1e6, dt.UTC)
    except (OverflowError, OSError, ValueError):
        return None


def id_key(uri: str) -> tuple[int, str]:
    """Order of post URIs: by the record key when it is a TID (time-ordered), other keys below every TID."""
    rkey = uri.rsplit("/", 1)[-1]
    return (1, rkey) if is_tid(rkey) else (0, uri)


def _labels(obj: Any) -> set[str]:
    """The label values in force (a label with ``neg: true`` takes its value back)."""
    vals, negated = set(), set()
    for lab in obj if isinstance(obj, list) else []:
        if isinstance(lab, dict) and isinstance(lab.get("val"), str):
            (negated if lab.get("neg") is True else vals).add(lab["val"])
    return vals - negated


def jwt_expired(token: str | None, margin_s: float = 30.0) -> bool:
    """Whether an access JWT's ``exp`` is past (within ``margin_s``); True when it cannot be read (an opaque token):
    then a 400/401 is taken as expiry. Read only to tell expiry from another 400, never verified or logged."""
    try:
        payload = (token or "").split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return float(claims["exp"]) <= time.time() + margin_s
    except (IndexError, ValueError, KeyError, TypeError):
        return True


def _facet_tags(facets: Any) -> list[str]:
    out = []
    for f in facets if isinstance(facets, list) else []:
        for feat in (f.get("features") if isinstance(f, dict) else None) or []:
            if isinstance(feat, dict) and feat.get("$type") == "app.bsky.richtext.facet#tag":
                out.append(feat.get("tag"))
    return out


def _embed_image(embed: Any) -> tuple[str | None, str | None]:
    """(fullsize URL, None) or (None, skip reason) from a post view's ``embed``."""
    if embed is None:
        return None, "no_image"
    if not isinstance(embed, dict):
        raise ValueError("embed: not an object")
    kind = embed.get("$type")
    if kind == "app.bsky.embed.recordWithMedia#view":
        return _embed_image(embed.get("media"))
    if kind == "app.bsky.embed.images#view":
        images = embed.get("images")
        if not isinstance(images, list) or not all(isinstance(i, dict) for i in images):
            raise ValueError("embed: images not a list of objects")
        if images:
            return parse_text(images[0].get("fullsize"), "embed", required=True), None
        return None, "no_image"
    if kind == "app.bsky.embed.video#view":
        return None, "media_video"
    return None, "no_image"


def parse_post(pv: Any, host: str, include_sensitive: bool = False) -> dict:
    """One ``app.bsky.feed.defs#postView`` → a post dict (module docstring); ``error`` or ``skip`` when it has no
    usable image; ``lookup_followers`` set (the count comes from getProfiles)."""
    uri = pv.get("uri") if isinstance(pv, dict) else None
    if not isinstance(uri, str) or not uri.startswith("at://") or uri.count("/") < 4:
        return {"item_id": None, "error": "bad_post:id"}
    out: dict[str, Any] = {"item_id": uri, "counts_from": None}  # global counts: no one server's view
    try:
        author = pv.get("author")
        if not isinstance(author, dict):
            raise ValueError("author: not an object")
        did = parse_text(author.get("did"), "user_id", required=True) or ""
        if not did.startswith("did:"):
            raise ValueError("user_id: not a DID")
        out["user_id"] = did
        out["user_acct"] = parse_text(author.get("handle"), "user_acct")
        out["likes"] = parse_count(pv.get("likeCount", 0), "likes")
        out["reblogs"] = parse_count(pv.get("repostCount", 0), "reblogs")
        out["replies"] = parse_optional_count(pv.get("replyCount"), "replies")
        out["quotes"] = parse_optional_count(pv.get("quoteCount"), "quotes")
        record = pv.get("record")
        if not isinstance(record, dict):
            raise ValueError("record: not an object")
        tags = parse_tags(record.get("tags"), "tags") + parse_tags(_facet_tags(record.get("facets")), "tags")
        out["tags"] = list(dict.fromkeys(tags))
        when = record.get("createdAt") or pv.get("indexedAt")
        out["posted_at"] = parse_time_field(when)
        rkey = uri.rsplit("/", 1)[-1]
        out["post_url"] = f"https://bsky.app/profile/{did}/post/{quote(rkey, safe='')}"
        url, skip = _embed_image(pv.get("embed"))
        self_labels = record.get("labels")
        labels = _labels(pv.get("labels")) | _labels(self_labels.get("values") if isinstance(self_labels, dict) else [])
    except (ValueError, TypeError, OverflowError, OSError) as e:
        field = str(e).split(":")[0][:40] or type(e).__name__
        return {"item_id": uri, "error": f"bad_post:{field}"}
    if url:
        out["image_url"] = url
    if skip is None and labels & SENSITIVE_LABELS and not include_sensitive:
        skip = "sensitive"
    if skip:
        out["skip"] = skip
    out["lookup_followers"] = True  # skipped rows get their author's count too
    return out


class BlueskyOptions(BaseModel):
    """The ``bluesky:`` section of a feed entry (app.bsky.feed.searchPosts; docs/feeds.md)."""

    model_config = ConfigDict(extra="forbid")

    # the NAMES of environment variables (never the values): the account (handle, DID or email) and an app password
    identifier_env: str | None = Field(None, pattern=r"^(FACERANK|BLUESKY)_[A-Z0-9_]*(HANDLE|IDENTIFIER)$")
    password_env: str | None = Field(None, pattern=r"^(FACERANK|BLUESKY)_[A-Z0-9_]*PASSWORD$")
    limit: int = Field(100, ge=1, le=100)
    all_tags: list[str] = []  # more tags every post must carry (searchPosts ANDs its tag values)
    since: str | None = None  # ISO 8601 datetime or YYYY-MM-DD (the search's own filter)
    until: str | None = None
    lang: str | None = None
    include_sensitive: bool = False  # posts labelled porn/sexual/nudity/graphic-media are skipped unless True
    incremental: bool = True  # a rerun searches only since the newest stored post (less the overlap)
    incremental_overlap_s: float = Field(3600.0, ge=0)
    rate_reserve: int = Field(5, ge=0)  # pace by RateLimit-Remaining/Reset, keeping this many requests in reserve
    max_wait_s: float = Field(120.0, ge=0)  # a longer rate-limit wait is not waited: the hashtag ends rate_limited
    # young posts refreshed on a later run (app.bsky.feed.getPosts, 25 a request): at most refresh_max a run
    refresh_max: int = Field(10_000, ge=0)


class _Session:
    """The account's session (tokens in memory only), shared by the threads of one process."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.access: str | None = None
        self.refresh: str | None = None
        self.generation = 0
        self.failed: str | None = None  # why a login failed: not tried again in this process
        self.logins = 0
        self.refreshes = 0


class BlueskyAdapter(FeedAdapter):
    """Hashtag search through app.bsky.feed.searchPosts (module docstring)."""

    Options = BlueskyOptions

    def __init__(self, site: FeedSite, share: int = 1):
        super().__init__(site, share)
        self.base = site.base_url.rstrip("/")
        self.host = (urlsplit(site.base_url).hostname or "").lower()
        # paging budget unused: the server's headers
        self.pacer = Pacer(1, 1.0, self.opts.rate_reserve, share, max_wait_s=self.opts.max_wait_s)
        self.session = _Session()
        self.incremental = self.opts.incremental
        self.followers = FollowersLookupClient(
            site.base_url,
            FollowersLookup(
                url="{base_url}" + PROFILES + "?{ids}",
                batch=25,
                id_param="actors",
                items="profiles",
                id="did",
                count="followersCount",
            ),
        )

    # ---------------------------------------------------------------- pages
    def first_url(self, hashtag: str) -> str:
        tag = hashtag.lstrip("#")
        m = self.opts
        p = [("q", f"#{tag}"), ("tag", tag)] + [("tag", t.lstrip("#")) for t in m.all_tags]
        p += [("sort", "latest"), ("limit", str(m.limit))]
        p += [(k, v) for k, v in (("since", m.since), ("until", m.until), ("lang", m.lang)) if v]
        return with_params(f"{self.base}{SEARCH}", p)

    def parse(self, body: bytes, page_url: str, hashtag: str, page: int, headers: dict | None = None) -> FeedPage:
        doc = load_json(body)
        if not isinstance(doc, dict):
            raise FeedParseError("not_an_object", f"the answer is a {type(doc).__name__}")
        if "error" in doc and "posts" not in doc:
            raise FeedParseError("api_error", str(doc.get("error"))[:80])
        items = doc.get("posts")
        if not isinstance(items, list):
            raise FeedParseError("items_not_a_list", "posts is not a list")
        posts = [parse_post(pv, self.host, self.opts.include_sensitive) for pv in items[:MAX_POSTS_PAGE]]
        cursor = doc.get("cursor")
        if not items or not isinstance(cursor, str) or not cursor or cursor == query_value(page_url, "cursor"):
            return FeedPage(posts=posts, next_url=None)
        return FeedPage(posts=posts, next_url=with_params(page_url, [("cursor", cursor)], replace=True))

    def enrich(self, client: Any, posts: list[dict]) -> None:
        self.followers.fill(ThroughAdapter(self, client), posts)

    # ---------------------------------------------------------------- requests
    def _credentials(self) -> tuple[str, str] | None:
        ident = os.environ.get(self.opts.identifier_env or "", "") if self.opts.identifier_env else ""
        pw = os.environ.get(self.opts.password_env or "", "") if self.opts.password_env else ""
        return (ident, pw) if ident and pw else None

    def _post(self, client: Any, method: str, payload: dict | None, bearer: str | None = None) -> tuple[Any, Any]:
        """(FetchResult, parsed JSON or None) of one XRPC procedure at ``base_url``."""
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
        body = json.dumps(payload).encode() if payload is not None else b""
        res = client.fetch_page(f"{self.base}/xrpc/{method}", headers=headers, json_body=body)
        self.pacer.observe(_xrpc_headers(res.headers), res.http_status)
        doc = None
        if res.ok:
            try:
                doc = load_json(res.data or b"")
            except FeedParseError:
                doc = None
        return res, doc

    def _login(self, client: Any, creds: tuple[str, str]) -> None:
        """createSession (the session's lock held)."""
        s = self.session
        s.logins += 1
        res, doc = self._post(client, "com.atproto.server.createSession", {"identifier": creds[0],
                                                                            "password": creds[1]})  # fmt: skip
        if not res.ok:
            s.failed = f"auth_failed:{EXPLAIN.get(res.http_status or 0, res.reason)}"
            return
        if not isinstance(doc, dict) or not isinstance(doc.get("accessJwt"), str):
            s.failed = "auth_failed:bad_session"
            return
        s.access, s.refresh = doc["accessJwt"], doc.get("refreshJwt")
        s.generation += 1

    def _renew(self, client: Any, creds: tuple[str, str], seen: int) -> None:
        """The access token of generation ``seen`` expired: refreshSession (a new login when that fails)."""
        s = self.session
        with s.lock:
            if s.generation != seen or s.failed:  # another thread renewed it already (or gave up)
                return
            if s.refresh:
                s.refreshes += 1
                res, doc = self._post(client, "com.atproto.server.refreshSession", None, bearer=s.refresh)
                if res.ok and isinstance(doc, dict) and isinstance(doc.get("accessJwt"), str):
                    s.access, s.refresh = doc["accessJwt"], doc.get("refreshJwt") or s.refresh
                    s.generation += 1
                    return
            s.access = s.refresh = None
            self._login(client, creds)

    def _auth(self, client: Any) -> tuple[dict[str, str], int, str | None]:
        """(headers, session generation, None) or ({}, 0, why no request is possible)."""
        creds = self._credentials()
        if creds is None:
            return {}, 0, None
        s = self.session
        with s.lock:
            if s.access is None and not s.failed:
                self._login(client, creds)
            if s.failed:
                return {}, 0, s.failed
            return {"Authorization": f"Bearer {s.access}"}, s.generation, None

    def fetch(self, client: Any, url: str) -> Any:
        """One XRPC query (search page or profiles), authenticated when credentials are configured, paced by the
        server's RateLimit headers; an expired token is renewed once and the call tried again."""
        from pipeline.scrape.net.http import FetchResult

        res = None
        for attempt in range(2):
            headers, gen, why = self._auth(client)
            if why:
                return FetchResult(url=url, kind="page", status=STATUS_ERROR, reason=why)
            if not self.pacer.try_wait():
                return FetchResult(url=url, kind="page", status=STATUS_ERROR, reason="rate_limited")
            same_host = (urlsplit(url).hostname or "").lower() == self.host
            res = client.fetch_feed_page(url, headers=headers if same_host else None)
            self.pacer.observe(_xrpc_headers(res.headers), res.http_status)
            expired = res.http_status == 401 or jwt_expired(self.session.access)  # a 400 of a live token: no
            if headers and res.http_status in (400, 401) and expired and attempt == 0:
                creds = self._credentials()
                if creds:
                    self._renew(client, creds, gen)
                    continue
            break
        if res.http_status in EXPLAIN and not res.ok:
            res.reason = EXPLAIN[res.http_status]
        elif res.ok and urlsplit(url).path.endswith(SEARCH) and _no_cursor(res.data):
            res.reason = "search_end_unverified"  # the lexicon: the cursor may not reach the whole result set
        return res

    # ---------------------------------------------------------------- count refresh (feeds/refresh.py)
    @property
    def refresh_max(self) -> int:
        return self.opts.refresh_max

    def refresh_counts(self, client: Any, ids: list[str], deadline: float | None = None) -> dict[str, dict]:
        """uri -> fresh counts (getPosts, 25 a request; followers by getProfiles) for the posts still there; no
        request starts after ``deadline`` (``time.monotonic()``)."""
        out: dict[str, dict] = {}
        for i in range(0, len(ids), 25):
            if deadline is not None and time.monotonic() > deadline:
                break
            chunk = ids[i : i + 25]
            res = self.fetch(client, with_params(f"{self.base}{GET_POSTS}", [("uris", u) for u in chunk]))
            if not res.ok:
                continue
            try:
                doc = load_json(res.data or b"")
            except FeedParseError:
                continue
            views = doc.get("posts") if isinstance(doc, dict) else None
            posts = [
                parse_post(pv, self.host, include_sensitive=True) for pv in (views if isinstance(views, list) else [])
            ]
            posts = [p for p in posts if p.get("item_id") in chunk and not p.get("error")]
            self.enrich(client, posts)
            out.update({p["item_id"]: {k: p.get(k) for k in REFRESHED} for p in posts if not p.get("error")})
        return out

    # ---------------------------------------------------------------- incremental reruns (feeds/cursors.py)
    def id_key(self, item_id: str) -> tuple[int, str]:
        return id_key(item_id)

    def incremental_since(self, url: str, since_id: str) -> str:
        """``url`` searching only since ``since_id``'s TID time less the overlap (the later of that and the
        configured ``since``)."""
        t = tid_time(since_id.rsplit("/", 1)[-1])
        if t is None:
            return url
        t -= dt.timedelta(seconds=self.opts.incremental_overlap_s)
        since = t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        old = query_value(url, "since")
        if old:
            try:
                if parse_time_field(old) >= t:
                    return url
            except ValueError:
                pass
        return with_params(url, [("since", since)], replace=True)


def _xrpc_headers(headers: dict | None) -> dict:
    """``RateLimit-*`` (the XRPC servers' names, reset in epoch seconds) as the pacer reads them."""
    h = dict(headers or {})
    for k in ("limit", "remaining", "reset"):
        if f"ratelimit-{k}" in h:
            h[f"x-ratelimit-{k}"] = h[f"ratelimit-{k}"]
    return h


def _no_cursor(body: bytes | None) -> bool:
    try:
        doc = load_json(body or b"")
    except FeedParseError:
        return False
    return isinstance(doc, dict) and not doc.get("cursor")


__all__ = ["BlueskyAdapter", "BlueskyOptions", "id_key", "parse_post", "tid_time"]
