"""``adapter: mastodon``: a hashtag timeline of a Mastodon-compatible server, built from the Mastodon API docs.

* Pages: ``GET /api/v1/timelines/tag/:hashtag?limit=40&only_media=true`` (:class:`MastodonOptions`, the feed
  entry's ``mastodon:`` section: ``limit`` ≤ 40,
  ``only_media``, ``local``, ``remote``, ``any[]``, ``all[]``, ``none[]`` passed through), the next page from the
  ``Link`` header's ``rel="next"`` (its ``max_id``); the options and a ``since_id`` of the page are carried into
  the next page's URL when the server's link drops them. The end is an empty page (or no ``rel="next"``). A server
  that sends no ``Link`` header at all (Pixelfed) is paged by ``max_id`` = the oldest id of the page.
* Compatible servers (Pixelfed, GoToSocial, Akkoma, ...): no version checks. Ids are text, ordered by
  :func:`id_key` (numeric ones by value, others as text: GoToSocial's ULIDs, Akkoma's flake ids), never made numbers.
  Only when an answer differs by server (a refused or rejected hashtag timeline) is the software looked up by
  NodeInfo (:mod:`pipeline.scrape.feeds.nodeinfo`, once a run): a rejected ``only_media`` is left out (statuses
  without media are then skipped here), a timeline that wants a token gives ``auth_required:<software>:<setting>``
  (:meth:`MastodonAdapter.dialect_fallbacks`). An absent or null ``followers_count`` / ``favourites_count``, and
  an Akkoma/Pleroma follower count its owner hides (answered as 0), are null (the labels stage excludes such posts
  with its own reason).
* A status (:func:`parse_status`) becomes a post: ``id``, ``account.id`` (``user_id``), ``account.acct`` made
  ``user@instance`` (``user_acct``), ``account.followers_count``, ``favourites_count`` (``likes``),
  ``reblogs_count``, ``replies_count`` (``replies``), ``quotes_count`` (``quotes``, where sent), Akkoma's
  ``pleroma.emoji_reactions`` (``reactions``, a JSON map), tag names, ``created_at``, ``url`` (``post_url``, else
  ``uri``) and ``counts_from``: the host that served the counts (a server's counts of remote statuses and accounts
  are what that server has seen).
  The image is the first attachment of type ``image`` (a type ``unknown`` one through its ``remote_url``);
  ``gifv``/``video``/``audio`` only, no media, or ``sensitive`` (unless ``include_sensitive``) are skipped with
  a reason (``media_video``, ``no_image``, ``sensitive``). A wrong type is ``bad_post:<field>``.
* Incremental (``incremental``, the default): a since_id page (:meth:`MastodonAdapter.incremental_since`, used by
  :mod:`pipeline.scrape.feeds.cursors` for reruns and resumed walks) keeps only statuses newer than it and stops
  there, also when a server ignores ``since_id``.
* Count refresh (:meth:`MastodonAdapter.refresh_counts`, up to ``refresh_max`` a run,
  :mod:`pipeline.scrape.feeds.refresh`): ``GET /api/v1/statuses/:id``, or with ``refresh_batch`` > 1 ``GET
  /api/v1/statuses?id[]=…`` of Mastodon 4.3+, that many ids a request, paced like the pages.
* Politeness (:class:`Pacer`, one per worker process): ``X-RateLimit-Remaining`` / ``X-RateLimit-Reset`` (at
  ``rate_reserve`` requests left, wait for the reset; below half the limit, spread what is left over the window),
  the paging limit (``paging_requests`` per ``paging_window_s``, split between the crawl's actors), ``429`` and
  ``Retry-After`` (retried by the HTTP client; other threads wait too). ``X-RateLimit-Reset`` is an ISO 8601 time,
  epoch seconds, epoch milliseconds (above 10^11) or, below 10^9, seconds from now. No wait is longer than
  ``max_wait_s``: a request that would have to wait longer (a reset or ``Retry-After`` far away, the paging limit) is
  not sent and ends that hashtag with one ``fetches`` error row ``rate_limited``; a count refresh stops there.
  401/403/404/422 end that hashtag with one ``fetches`` error row whose reason says why
  (``http_401_auth_required``, ...); the run goes on.
* The access token: ``mastodon.access_token_env`` names an environment variable; its value is sent as
  ``Authorization: Bearer`` to the site's origin only (scheme, host and port of ``base_url``; a ``Link`` or redirect
  to another port or to plain http gets no token) and is never stored or logged.
"""

from __future__ import annotations

import collections
import email.utils
import os
import threading
import time
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field

from pipeline.config import FeedSite
from pipeline.scrape.feeds.base import (
    REFRESHED,
    FeedAdapter,
    FeedPage,
    FeedParseError,
    link_next,
    load_json,
    page_posts,
    parse_count,
    parse_optional_count,
    parse_reactions,
    parse_tags,
    parse_text,
    parse_time,
    parse_time_field,
)
from pipeline.scrape.feeds.nodeinfo import Software
from pipeline.scrape.net.address import same_origin
from pipeline.scrape.net.http import FetchResult
from pipeline.store import STATUS_ERROR

EXPLAIN = {
    401: "http_401_auth_required",
    403: "http_403_forbidden",
    404: "http_404_unknown_tag",
    410: "http_410_gone",
    422: "http_422_unprocessable",
    429: "http_429_rate_limited",
}
SKIP_MEDIA = ("gifv", "video", "audio")
PASS_KEYS = ("limit", "only_media", "local", "remote", "any[]", "all[]", "none[]", "since_id")


def id_key(status_id: str) -> tuple[int, str]:
    """Order of Mastodon ids (numeric text; a longer id is newer), usable for any text id."""
    return (len(status_id), status_id) if status_id.isdigit() else (0, status_id)


def home_acct(acct: str, host: str) -> str:
    """``user@instance``: a local account's ``acct`` has no domain, so it gets the serving host's."""
    return acct if "@" in acct else f"{acct}@{host}"


def _first_image(media: list, include_unknown: bool = True) -> tuple[str | None, str | None]:
    """(image URL, None) or (None, skip reason) from ``media_attachments``."""
    types = []
    for m in media:
        if not isinstance(m, dict):
            raise ValueError("media_attachments: an element is not an object")
        types.append(m.get("type"))
        if m.get("type") == "image":
            return parse_text(m.get("url"), "media_attachments.url", required=True), None
    if include_unknown:
        for m in media:
            if m.get("type") == "unknown" and m.get("remote_url"):
                return parse_text(m.get("remote_url"), "media_attachments.remote_url"), None
    for t in types:
        if t in SKIP_MEDIA:
            return None, f"media_{t}"
    return None, "no_image"


def _emoji_reactions(value: Any) -> str | None:
    """Akkoma/Pleroma's ``pleroma.emoji_reactions`` (``[{"name", "count", "me"}]``) as the reactions map's JSON."""
    if not isinstance(value, list) or not all(isinstance(r, dict) for r in value):
        raise ValueError("reactions: not a list of objects")
    counts: dict[str, Any] = {}
    for r in value:
        name = parse_text(r.get("name"), "reactions", required=True) or ""
        counts[name] = parse_count(r.get("count"), "reactions") + counts.get(name, 0)
    return parse_reactions(counts)[1]


def parse_status(st: Any, host: str, include_sensitive: bool = False) -> dict:
    """One Status entity → a post dict (module docstring); ``error`` or ``skip`` set when it has no usable image."""
    raw_id = st.get("id") if isinstance(st, dict) else None
    if isinstance(raw_id, bool) or not isinstance(raw_id, str | int) or raw_id == "":
        return {"item_id": None, "error": "bad_post:id"}
    out: dict[str, Any] = {"item_id": str(raw_id), "counts_from": host}
    try:
        acc = st.get("account")
        if not isinstance(acc, dict):
            raise ValueError("account: not an object")
        out["user_id"] = parse_text(acc.get("id"), "user_id", required=True)
        acct = parse_text(acc.get("acct"), "user_acct", required=True)
        out["user_acct"] = home_acct(acct or "", host)
        out["followers"] = parse_optional_count(acc.get("followers_count"), "followers")
        pleroma = acc.get("pleroma")
        if isinstance(pleroma, dict) and pleroma.get("hide_followers_count") is True:
            out["followers"] = None  # Akkoma/Pleroma answer 0 for a count its owner hides: unknown, not 0
        out["likes"] = parse_optional_count(st.get("favourites_count"), "likes")
        out["reblogs"] = parse_count(st.get("reblogs_count", 0), "reblogs")
        out["replies"] = parse_optional_count(st.get("replies_count"), "replies")
        out["quotes"] = parse_optional_count(st.get("quotes_count"), "quotes")  # servers with quote posts
        if isinstance(st.get("pleroma"), dict) and "emoji_reactions" in st["pleroma"]:
            out["reactions"] = _emoji_reactions(st["pleroma"]["emoji_reactions"])
        tags = st.get("tags")
        if tags is not None and (not isinstance(tags, list) or not all(isinstance(t, dict) for t in tags)):
            raise ValueError("tags: not a list of Tag objects")
        out["tags"] = parse_tags([t.get("name") for t in tags or []])
        out["posted_at"] = parse_time_field(st.get("created_at"))
        out["post_url"] = parse_text(st.get("url"), "post_url") or parse_text(st.get("uri"), "post_url")
        media = st.get("media_attachments")
        if media is None:
            media = []
        if not isinstance(media, list):
            raise ValueError("media_attachments: not a list")
        url, skip = _first_image(media)
        sensitive = st.get("sensitive", False)
        if not isinstance(sensitive, bool):
            raise ValueError("sensitive: not a bool")
    except (ValueError, TypeError, OverflowError, OSError) as e:
        field = str(e).split(":")[0][:40] or type(e).__name__
        return {"item_id": out["item_id"], "error": f"bad_post:{field}"}
    if url:
        out["image_url"] = url
    if skip is None and sensitive and not include_sensitive:
        skip = "sensitive"
    if skip:
        out["skip"] = skip
    return out


class RateLimited(Exception):
    """A request would have to wait longer than the pacer's cap (or past a deadline): it is not sent."""


class Pacer:
    """Request pacing of one process: the paging window and the server's rate-limit headers (thread-safe); no wait
    is longer than ``max_wait_s`` (:class:`RateLimited` instead)."""

    def __init__(self, paging_requests: int, window_s: float, reserve: int, share: int = 1, max_wait_s: float = 300.0):
        self.max_wait_s = max_wait_s
        self.budget = max(1, paging_requests // max(1, share))
        self.window_s = window_s
        self.reserve = reserve
        self.starts: collections.deque[float] = collections.deque()
        self.not_before = 0.0  # monotonic: no request before this (rate limit exhausted, Retry-After)
        self.spread_s = 0.0  # the interval while the server's remaining count is low
        self.last = -1e18
        self.lock = threading.Lock()
        self.waited_s = 0.0

    def wait(self, paging: bool, deadline: float | None = None) -> float:
        """Block until this request may start; returns the seconds waited. Raises :class:`RateLimited` (at once,
        without waiting) when that is more than ``max_wait_s`` away or after ``deadline`` (monotonic)."""
        with self.lock:
            t = time.monotonic()
            start = max(t, self.not_before, self.last + self.spread_s)
            if paging:
                while self.starts and self.starts[0] <= start - self.window_s:
                    self.starts.popleft()
                if len(self.starts) >= self.budget:
                    start = max(start, self.starts[-self.budget] + self.window_s)
            if start - t > self.max_wait_s or (deadline is not None and start > deadline):
                raise RateLimited(f"the next request may start in {start - t:.0f} s")
            if paging:
                self.starts.append(start)
            self.last = start
            self.waited_s += start - t
        if start > t:
            time.sleep(start - t)
        return start - t

    def try_wait(self) -> bool:
        """:meth:`wait` for a request outside the paging budget; False at once (no wait) when it could start only
        more than ``max_wait_s`` from now."""
        try:
            self.wait(False)
        except RateLimited:
            return False
        return True

    def observe(self, headers: dict | None, http_status: int | None) -> None:
        """Learn from a response's headers: the rate-limit window, and ``Retry-After`` on a 429."""
        h = headers or {}
        with self.lock:
            t, wall = time.monotonic(), time.time()
            reset = _reset_epoch(h.get("x-ratelimit-reset"), wall)
            remaining, limit = _int(h.get("x-ratelimit-remaining")), _int(h.get("x-ratelimit-limit"))
            if reset is not None and remaining is not None:
                left_s = max(0.0, reset - wall)
                if remaining <= self.reserve:
                    self.not_before = max(self.not_before, t + left_s)
                    self.spread_s = 0.0
                elif limit and remaining < limit / 2:
                    self.spread_s = left_s / (remaining - self.reserve)
                else:
                    self.spread_s = 0.0
            if http_status == 429:
                ra = _retry_after(h.get("retry-after"), wall)
                if ra is not None:
                    self.not_before = max(self.not_before, t + ra)


def _int(v: Any) -> int | None:
    try:
        return int(str(v).strip())
    except (TypeError, ValueError):
        return None


def _reset_epoch(v: Any, wall: float | None = None) -> float | None:
    """``X-RateLimit-Reset`` as epoch seconds: an ISO 8601 time (Mastodon), epoch seconds, epoch milliseconds (a
    number above 10^11, as some compatible servers send) or a number of seconds from now (below 10^9)."""
    if not v:
        return None
    try:
        return parse_time(v).timestamp()
    except (ValueError, OverflowError, OSError):
        f = _int(v)
        if f is None:
            return None
        if f > 10**11:
            return f / 1000.0
        if f < 10**9:
            return (time.time() if wall is None else wall) + max(f, 0)
        return float(f)


def _retry_after(v: Any, wall: float) -> float | None:
    if not v:
        return None
    secs = _int(v)
    if secs is not None:
        return float(max(secs, 0))
    try:
        when = email.utils.parsedate_to_datetime(str(v))
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - wall)


def with_params(url: str, params: list[tuple[str, str]], replace: bool = False, drop: tuple[str, ...] = ()) -> str:
    """``url`` with ``params`` added (kept when ``url`` has the key already, unless ``replace``) and the keys
    ``drop`` removed."""
    parts = urlsplit(url)
    q = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in drop]
    have = {k for k, _ in q}
    new_keys = {k for k, _ in params}
    if replace:
        q = [(k, v) for k, v in q if k not in new_keys]
        have = set()
    q += [(k, v) for k, v in params if k not in have]
    return urlunsplit(parts._replace(query=urlencode(q, safe="[]")))


def query_value(url: str, key: str) -> str | None:
    """The value of ``key`` in ``url``'s query (the last one), or None."""
    vals = [v for k, v in parse_qsl(urlsplit(url).query) if k == key]
    return vals[-1] if vals else None


class MastodonOptions(BaseModel):
    """The ``mastodon:`` section of a feed entry (GET /api/v1/timelines/tag/:hashtag; docs/feeds.md)."""

    model_config = ConfigDict(extra="forbid")

    # the NAME of an environment variable holding a bearer token (never the token): FACERANK_…TOKEN or MASTODON_…TOKEN
    access_token_env: str | None = Field(None, pattern=r"^(FACERANK|MASTODON)_[A-Z0-9_]*TOKEN$")
    limit: int = Field(40, ge=1, le=40)
    only_media: bool = True
    local: bool | None = None
    remote: bool | None = None
    any: list[str] = []
    all: list[str] = []
    none: list[str] = []
    include_sensitive: bool = False  # statuses whose media is marked sensitive are skipped unless True
    incremental: bool = True  # a rerun walks from the newest stored status down to it (since_id), not every page
    # the undocumented paging limit (300 paging requests per 15 min per IP or user), shared by the crawl's actors
    paging_requests: int = Field(300, ge=1)
    paging_window_s: float = Field(900.0, gt=0)
    # pace by X-RateLimit-Remaining/Reset: keep this many requests of the window in reserve
    rate_reserve: int = Field(5, ge=0)
    # the longest the pacer waits before a request; a longer wait (a server's reset or Retry-After far away, the
    # paging limit) ends that hashtag with a `rate_limited` fetches row instead
    max_wait_s: float = Field(300.0, gt=0)
    # young posts refreshed on a later run: GET /api/v1/statuses/:id (1) or GET /api/v1/statuses?id[]= (Mastodon
    # 4.3+, up to 20 ids a request); at most refresh_max statuses a run
    refresh_batch: int = Field(1, ge=1, le=20)
    refresh_max: int = Field(10_000, ge=0)


class MastodonAdapter(FeedAdapter):
    """The hashtag timeline API (module docstring)."""

    Options = MastodonOptions

    def __init__(self, site: FeedSite, share: int = 1):
        super().__init__(site, share)
        m = self.opts
        self.host = (urlsplit(site.base_url).hostname or "").lower()
        self.pacer = Pacer(m.paging_requests, m.paging_window_s, m.rate_reserve, share, m.max_wait_s)
        self.incremental = m.incremental
        self.nodeinfo = Software(site.base_url)
        self.no_only_media = False  # the server rejected only_media (dialect_fallbacks): it is not sent again

    def params(self) -> list[tuple[str, str]]:
        """The timeline's query parameters from config."""
        m = self.opts
        p = [("limit", str(m.limit))]
        if m.only_media:
            p.append(("only_media", "true"))
        for key in ("local", "remote"):
            v = getattr(m, key)
            if v is not None:
                p.append((key, "true" if v else "false"))
        for key in ("any", "all", "none"):
            p += [(f"{key}[]", t) for t in getattr(m, key)]
        return p

    def first_url(self, hashtag: str) -> str:
        base = self.site.base_url.rstrip("/")
        return with_params(f"{base}/api/v1/timelines/tag/{quote(hashtag.lstrip('#'), safe='')}", self.params())

    def page_url(self, hashtag: str, page: int, cursor: str = "") -> str:
        return self.first_url(hashtag) if not cursor else with_params(self.first_url(hashtag), [("max_id", cursor)])

    def auth_headers(self, url: str) -> dict[str, str]:
        """``Authorization: Bearer`` from the configured environment variable, for this site's origin only (its
        ``base_url``'s scheme, host and port: not plain http or another port of the same host)."""
        name = self.opts.access_token_env
        token = os.environ.get(name, "") if name else ""
        if not token or not same_origin(url, self.site.base_url):  # scheme, host and port: not another service
            return {}
        return {"Authorization": f"Bearer {token}"}

    def fetch(self, client: Any, url: str, paging: bool | None = None, deadline: float | None = None) -> Any:
        """One API request, paced (``paging``: counted against the paging limit; by default when the URL pages
        with ``max_id``); a 401/403/404/410/422/429 gets a reason that says what it means. A request the pacer would
        hold past ``max_wait_s`` (or ``deadline``) is not sent: error ``rate_limited``. Where the answer differs by
        server (:meth:`dialect_fallbacks`), the server's software is looked up once and the request degraded."""
        if self.no_only_media:
            url = with_params(url, [], drop=("only_media",))
        res = self._request(client, url, paging, deadline)
        if not res.ok and "/timelines/tag/" in url:
            res = self.dialect_fallbacks(client, url, res, paging, deadline)
        return res

    def _request(
        self, client: Any, url: str, paging: bool | None, deadline: float | None, auth: bool = True
    ) -> FetchResult:
        try:
            self.pacer.wait(query_value(url, "max_id") is not None if paging is None else paging, deadline)
        except RateLimited:
            return FetchResult(url=url, kind="page", status=STATUS_ERROR, reason="rate_limited")
        res = client.fetch_feed_page(url, headers=self.auth_headers(url) if auth else None)
        self.pacer.observe(res.headers, res.http_status)
        if res.http_status in EXPLAIN and not res.ok:
            res.reason = EXPLAIN[res.http_status]
        return res

    def software(self, client: Any) -> str:
        """The server's software by NodeInfo (:mod:`pipeline.scrape.feeds.nodeinfo`: two requests at most, once a
        run), ``""`` when it cannot be told."""
        return self.nodeinfo.get(lambda u: self._request(client, u, paging=False, deadline=None, auth=False))

    def dialect_fallbacks(
        self, client: Any, url: str, res: FetchResult, paging: bool | None, deadline: float | None
    ) -> FetchResult:
        """A refused hashtag timeline, by the server's software (looked up only here):

        * a 400/422 to a request with ``only_media`` from a server that is not Mastodon (older Pixelfed releases
          validate it with Laravel's ``boolean`` rule, which rejects ``true``): asked again without it (and, when
          that answers, for the rest of the run); statuses without media are then skipped here (``no_image``)
          instead of by the server;
        * a 401/403 without a token from a server that wants one for its hashtag timeline (Pixelfed answers 403,
          GoToSocial 401, Akkoma 401 when unauthenticated timelines are restricted): the reason
          ``auth_required:<software>:<what to set>`` names the option (``mastodon.access_token_env``) or the
          empty variable. Mastodon's own answers keep their reasons."""
        status = res.http_status
        if status in (400, 422) and query_value(url, "only_media") is not None:
            if self.software(client) != "mastodon":
                again = self._request(client, with_params(url, [], drop=("only_media",)), paging, deadline)
                self.no_only_media = self.no_only_media or again.ok  # left out for the run once that answers
                return again
        if status in (401, 403) and not self.auth_headers(url):
            name = self.software(client)
            if name and name != "mastodon":
                env = self.opts.access_token_env
                res.reason = f"auth_required:{name}:" + (f"{env}_unset" if env else "mastodon.access_token_env")
        return res

    def parse(self, body: bytes, page_url: str, hashtag: str, page: int, headers: dict | None = None) -> FeedPage:
        doc = load_json(body)
        if isinstance(doc, dict) and "error" in doc:
            raise FeedParseError("api_error", str(doc.get("error"))[:80])
        if not isinstance(doc, list):
            raise FeedParseError("items_not_a_list", f"the timeline is a {type(doc).__name__}, not a list")
        posts, bad = page_posts(doc, lambda st: parse_status(st, self.host, self.opts.include_sensitive))
        since = query_value(page_url, "since_id")
        stop = False
        if since:
            newer = [p for p in posts if id_key(p["item_id"]) > id_key(since)]
            stop = len(newer) < len(posts)  # reached what an earlier run has: stop here
            posts = newer
        if not doc or stop:
            return FeedPage(posts=posts, next_url=None, bad_posts=bad)
        if headers is None or "link" not in headers:  # a server without Link headers (Pixelfed): page by id
            nxt = self.next_by_id(doc, page_url)
        else:
            nxt = link_next(headers, page_url)
        if nxt is None:
            return FeedPage(posts=posts, next_url=None, bad_posts=bad)
        carried = [(k, v) for k, v in parse_qsl(urlsplit(page_url).query) if k in PASS_KEYS]
        return FeedPage(posts=posts, next_url=with_params(nxt, carried), bad_posts=bad)

    def next_by_id(self, doc: list, page_url: str) -> str | None:
        """The next page of a server that sends no ``Link`` header: ``max_id`` = the oldest id of this page (ids
        compared by :func:`id_key`, as text when they are not numeric: GoToSocial's ULIDs, Akkoma's flake ids; never
        as numbers), None when the page has none older than its own ``max_id`` (a server that ignores it)."""
        raw = [st.get("id") for st in doc if isinstance(st, dict)]
        ids = [str(i) for i in raw if isinstance(i, str | int) and not isinstance(i, bool) and i != ""]
        if not ids:
            return None
        oldest = min(ids, key=id_key)
        current = query_value(page_url, "max_id")
        if current is not None and id_key(oldest) >= id_key(current):
            return None
        return with_params(page_url, [("max_id", oldest)], replace=True)

    # ---------------------------------------------------------------- incremental reruns (feeds/cursors.py)
    def id_key(self, item_id: str) -> tuple[int, str]:
        return id_key(item_id)

    def incremental_since(self, url: str, since_id: str) -> str:
        """``url`` with ``since_id``: :meth:`parse` keeps only newer statuses and stops at the first older one."""
        return with_params(url, [("since_id", since_id)], replace=True)

    # ---------------------------------------------------------------- count refresh (feeds/refresh.py)
    @property
    def refresh_max(self) -> int:
        return self.opts.refresh_max

    def refresh_counts(self, client: Any, ids: list[str], deadline: float | None = None) -> dict[str, dict]:
        """id -> fresh counts for the statuses that could be read, ``refresh_batch`` ids a request, paced; no
        request starts after ``deadline`` (monotonic) and none once the server rate-limits past ``max_wait_s``."""
        base = self.site.base_url.rstrip("/")
        n = self.opts.refresh_batch
        out: dict[str, dict] = {}
        for i in range(0, len(ids), n):
            chunk = ids[i : i + n]
            url = (
                f"{base}/api/v1/statuses/{chunk[0]}"
                if n == 1
                else f"{base}/api/v1/statuses?" + "&".join(f"id[]={x}" for x in chunk)
            )
            res = self.fetch(client, url, paging=False, deadline=deadline)
            if res.reason == "rate_limited":
                break
            if not res.ok:
                continue
            try:
                doc = load_json(res.data or b"")
            except FeedParseError:
                continue
            for st in doc if isinstance(doc, list) else [doc]:
                p = parse_status(st, self.host, include_sensitive=True)
                if p.get("item_id") in chunk and not p.get("error"):
                    out[p["item_id"]] = {k: p.get(k) for k in REFRESHED}
        return out


__all__ = ["MastodonAdapter", "MastodonOptions", "Pacer", "RateLimited", "home_acct", "id_key", "parse_status"]
