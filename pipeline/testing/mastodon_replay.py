"""A local Mastodon-compatible API for tests and benchmarks, written from the Mastodon API documentation.

:class:`MastodonSim` answers requests without a socket; :class:`MastodonReplay` serves it on 127.0.0.1 (a free
port) in a daemon thread. What it does, as the docs describe a real server:

* ``GET /api/v1/timelines/tag/:hashtag``: statuses newest first; ``limit`` (default 20, at most 40), ``max_id``
  (older than), ``since_id`` (newer than, newest first), ``min_id`` (immediately newer than: the oldest ones
  first, returned newest first), ``only_media``, ``local`` / ``remote``, ``any[]``/``all[]``/``none[]`` (extra tags);
  a ``Link`` header with ``rel="next"`` (``max_id`` = the page's oldest id) and ``rel="prev"`` (``min_id`` = its
  newest) carrying ``limit``, ``only_media``, ``local`` (not ``since_id``, as Mastodon's links do not); an empty
  page at the end, without a ``Link`` header;
* ``GET /api/v1/statuses/:id`` and ``GET /api/v1/statuses?id[]=…`` (Mastodon 4.3+);
* rate limits: ``X-RateLimit-Limit`` / ``-Remaining`` (counting down) / ``-Reset`` (ISO 8601) on every API answer,
  ``429`` with ``Retry-After`` once the window is used up; a separate paging throttle (requests with ``max_id``),
  also answered ``429`` when used up;
* tag ``private`` needs ``Authorization: Bearer <token>`` (401 otherwise), ``preview`` answers 422 (timeline
  preview disabled), unknown tags 404 (this server's choice: Mastodon answers an empty list for a tag it has never
  seen, so tests cover both);
* statuses of local and remote accounts (``acct`` with and without a domain), every media type (image, gifv,
  video, audio, unknown with ``remote_url``, none), sensitive media, tags as ``{name, url}`` objects;
* media at ``/media/<n>.jpg``: small distinct JPEGs (one noise base per size, a comment segment makes each unique);
* ``/.well-known/nodeinfo`` and the NodeInfo 2.x document it links (``software.name`` = the dialect).

``dialect`` answers as another Mastodon-compatible server does, from its own source and documentation:

* ``pixelfed`` (``ApiV1Controller::timelineHashtag``): the hashtag timeline needs a user token (403 without one, any
  tag); ids are numeric; no ``Link`` header (clients page by ``max_id``); ``only_media`` defaults to true; with
  ``strict_only_media`` (older Pixelfed releases, which validated it with Laravel's ``boolean`` rule)
  ``only_media=true`` is answered 422 (only ``1``/``0`` pass); ``max_id``/``min_id`` must be integers (422);
  ``X-RateLimit-Limit`` and ``-Remaining`` without a reset; NodeInfo at ``/api/nodeinfo/2.0.json``;
* ``gotosocial`` (``TagTimelineGETHandler``, swagger ``/api/v1/timelines/tag/{tag_name}``): needs a token (401 without
  one); ids are ULIDs (26 characters of Crockford base32, sorted as text); ``limit`` 1..40; ``only_media``, ``local``
  and the other filters are not read (every status comes back); a ``Link`` header whose links carry only ``limit``;
  NodeInfo at ``/nodeinfo/2.0``;
* ``akkoma`` (Pleroma's ``TimelineController.hashtag``): public unless ``restrict_unauthenticated`` (401
  "authorization required for timeline view"); ids are flake ids (18 characters of base62, sorted as text);
  ``only_media``/``local`` honoured, ``Link`` headers; an account whose owner hides its follower count
  (``pleroma.hide_followers_count``) is answered with ``followers_count: 0``; no rate-limit headers (a 429
  ``Throttled`` once over); NodeInfo at ``/nodeinfo/2.0.json`` and ``/nodeinfo/2.1.json``.

Counts can be changed (:meth:`MastodonSim.set_likes`), statuses added (:meth:`MastodonSim.add`), requests are
counted by kind (:attr:`MastodonSim.hits`). Example::

    with MastodonReplay(n=120) as srv:
        url = f"{srv.base_url}/api/v1/timelines/tag/selfie?limit=40"
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime as dt
import json
import sys
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

from pipeline.testing.replay import Replay, numbered_jpeg, serve

ID_BASE = 110_000_000_000_000_000
MEDIA_CYCLE = ("image", "image", "image", "gifv", "image", "video", "image", "unknown", "image", "audio", "image",
               "none")  # fmt: skip


@dataclasses.dataclass
class Status:
    n: int
    tags: tuple[str, ...]
    created_at: dt.datetime
    likes: int
    reblogs: int
    followers: int
    acct: str  # "user" (local) or "user@remote.example"
    media: str  # image | gifv | video | audio | unknown | none
    sensitive: bool
    ident: str = ""  # the dialect's id (ULID, flake id); empty: a Mastodon snowflake

    @property
    def id(self) -> str:
        return self.ident or str(ID_BASE + self.n * 1000)


DIALECTS = ("mastodon", "pixelfed", "gotosocial", "akkoma")
NODEINFO_PATHS = {
    "mastodon": ("/nodeinfo/2.0",),
    "pixelfed": ("/api/nodeinfo/2.0.json",),
    "gotosocial": ("/nodeinfo/2.0",),
    "akkoma": ("/nodeinfo/2.0.json", "/nodeinfo/2.1.json"),
}
CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
T0_MS = 1_700_000_000_000


def _encode(value: int, alphabet: str, width: int) -> str:
    out = ""
    for _ in range(width):
        value, r = divmod(value, len(alphabet))
        out = alphabet[r] + out
    return out


def dialect_id(dialect: str, n: int) -> str:
    """Status ``n``'s id as ``dialect`` writes ids (newer ``n``, larger id)."""
    if dialect == "gotosocial":  # ULID: 48-bit milliseconds, 80 random bits
        return _encode(T0_MS + n * 1000, CROCKFORD, 10) + _encode((n * 2654435761) % 2**80, CROCKFORD, 16)
    if dialect == "akkoma":  # flake id: 64-bit milliseconds, 48-bit worker, 16-bit sequence, in base62
        return _encode(((T0_MS + n * 1000) << 64) | (0xBEEF << 16) | (n % 65536), BASE62, 18)
    if dialect == "pixelfed":
        return str(780_000_000_000_000_000 + n * 4096)
    return ""


def _id_order(value: str) -> tuple[int, int | str]:
    return (0, int(value)) if value.isdigit() else (1, value)


class MastodonSim:
    """The API's answers (module docstring). ``rate_limit`` requests per ``rate_window_s``; ``paging_limit`` paging
    requests per ``paging_window_s``; ``young_every``: every k-th status is 2 days old (the rest 40+ days)."""

    def __init__(
        self,
        n: int = 120,
        *,
        tag: str = "selfie",
        token: str = "sekrit",
        rate_limit: int = 300,
        rate_window_s: float = 300.0,
        paging_limit: int = 300,
        paging_window_s: float = 900.0,
        young_every: int = 5,
        sensitive_every: int = 13,
        remote_every: int = 3,
        host: str = "127.0.0.1",
        media_base: str | None = None,
        media_cycle: tuple[str, ...] = MEDIA_CYCLE,
        dialect: str = "mastodon",
        restrict_unauthenticated: bool | None = None,
        strict_only_media: bool = False,
        hide_followers_every: int = 7,
    ):
        if dialect not in DIALECTS:
            raise ValueError(f"dialect {dialect!r}: one of {DIALECTS}")
        self.dialect = dialect
        # the hashtag timeline needs a token: Pixelfed and GoToSocial always, Akkoma when configured so
        self.restricted = dialect in ("pixelfed", "gotosocial") if restrict_unauthenticated is None else (
            restrict_unauthenticated)  # fmt: skip
        self.strict_only_media = strict_only_media
        self.hide_followers_every = hide_followers_every
        self.tag = tag
        self.token = token
        self.rate_limit, self.rate_window_s = rate_limit, rate_window_s
        self.paging_limit, self.paging_window_s = paging_limit, paging_window_s
        self.young_every, self.sensitive_every, self.remote_every = young_every, sensitive_every, remote_every
        self.host = host
        self.base_url = f"http://{host}"
        self.media_base = media_base
        self.media_cycle = media_cycle
        self.statuses: list[Status] = []  # oldest first
        self.by_id: dict[str, Status] = {}
        self.hits: collections.Counter = collections.Counter()
        self.auth_seen: list[str] = []
        self.lock = threading.Lock()
        self._window = (time.time(), 0)  # (start, used)
        self._paging = (time.monotonic(), 0)
        self.anchor = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.add(n)

    # ---------------------------------------------------------------- content
    def add(self, k: int, young: bool = False) -> list[str]:
        """Add ``k`` newer statuses (``young``: all two days old); returns their ids."""
        out = []
        with self.lock:
            for _ in range(k):
                i = len(self.statuses)
                age_days = 2.0 if young or (self.young_every and i % self.young_every == 1) else 40.0 + (i % 300)
                st = Status(
                    n=i,
                    tags=(self.tag, "me") if i % 2 else (self.tag,),
                    created_at=self.anchor - dt.timedelta(days=age_days, seconds=-i),
                    likes=(i * 37) % 500,
                    reblogs=i % 7,
                    followers=100 + (i * 53) % 5000,
                    acct=f"user{i % 50}@remote{i % 4}.example" if i % self.remote_every == 0 else f"user{i % 50}",
                    media=self.media_cycle[i % len(self.media_cycle)],
                    sensitive=bool(self.sensitive_every) and i % self.sensitive_every == 7,
                    ident=dialect_id(self.dialect, i),
                )
                self.statuses.append(st)
                self.by_id[st.id] = st
                out.append(st.id)
        return out

    def set_likes(self, status_id: str, likes: int, followers: int | None = None) -> None:
        st = self.by_id[status_id]
        st.likes = likes
        if followers is not None:
            st.followers = followers

    def media_url(self, st: Status) -> str:
        return f"{self.media_base or self.base_url}/media/{st.n}.jpg"

    def status_json(self, st: Status) -> dict:
        """A Status entity (the fields the docs list that a crawler reads, plus a few more)."""
        user, _, domain = st.acct.partition("@")
        home = domain or self.host
        media = []
        if st.media != "none":
            url = self.media_url(st)
            media.append({
                "id": str(st.n), "type": st.media, "url": None if st.media == "unknown" else url,
                "preview_url": url, "remote_url": url if st.media == "unknown" else None,
                "meta": {}, "description": None, "blurhash": None,
            })  # fmt: skip
        account = {
            "id": str(1000 + st.n % 50 + (0 if not domain else 100 * (1 + st.n % 4))),
            "username": user,
            "acct": st.acct,
            "url": f"https://{home}/@{user}",
            "followers_count": st.followers,
            "following_count": 10,
            "statuses_count": 100,
        }
        extra = {}
        if self.dialect == "akkoma":  # Pleroma's StatusView: emoji reactions under "pleroma"
            extra["pleroma"] = {"emoji_reactions": self.emoji_reactions(st), "local": not domain}
            hidden = self.hidden_followers(st)
            account["pleroma"] = {"hide_followers_count": hidden, "hide_follows_count": False, "is_admin": False}
            if hidden:
                account["followers_count"] = 0  # Pleroma's AccountView: a hidden count is answered as 0
        return {
            "id": st.id,
            "created_at": st.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "uri": f"https://{home}/users/{user}/statuses/{st.id}",
            "url": f"https://{home}/@{user}/{st.id}",
            "visibility": "public",
            "sensitive": st.sensitive,
            "spoiler_text": "",
            "content": f"<p>#{st.tags[0]} number {st.n}</p>",
            "account": account,
            "media_attachments": media,
            "tags": [{"name": t, "url": f"https://{self.host}/tags/{t}"} for t in st.tags],
            "favourites_count": st.likes,
            "reblogs_count": st.reblogs,
            "replies_count": st.n % 6,
            **extra,
        }

    def hidden_followers(self, st: Status) -> bool:
        """Whether the author hides their follower count (Akkoma's ``hide_followers_count``), per account."""
        return bool(self.hide_followers_every) and (st.n % 50) % self.hide_followers_every == 3

    def emoji_reactions(self, st: Status) -> list[dict]:
        """Akkoma's ``pleroma.emoji_reactions`` of a status: ``[{"name", "count", "me"}]``."""
        return [{"name": "👍", "count": st.n % 4, "me": False}, {"name": "blobcat", "count": 1, "me": False}][
            : 1 + st.n % 2
        ]

    def nodeinfo(self, path: str) -> tuple[int, dict[str, str], bytes] | None:
        """The NodeInfo answers of this dialect (None: not a NodeInfo path)."""
        paths = NODEINFO_PATHS[self.dialect]
        if path == "/.well-known/nodeinfo":
            links = [{"rel": f"http://nodeinfo.diaspora.software/ns/schema/{p.split('/')[-1].removesuffix('.json')}",
                      "href": f"{self.base_url}{p}"} for p in paths]  # fmt: skip
            return 200, {"Content-Type": "application/json"}, json.dumps({"links": links}).encode()
        if path in paths:
            version = {"mastodon": "4.3.2", "pixelfed": "0.12.4", "gotosocial": "0.18.1", "akkoma": "3.15.2"}
            doc = {"version": path.split("/")[-1].removesuffix(".json"),
                   "software": {"name": self.dialect, "version": version[self.dialect]},
                   "protocols": ["activitypub"], "openRegistrations": False,
                   "usage": {"users": {"total": 50}, "localPosts": len(self.statuses)}, "metadata": {}}  # fmt: skip
            return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()
        return None

    def image(self, n: int) -> bytes:
        return numbered_jpeg(n, "mastodon")

    # ---------------------------------------------------------------- limits
    def _rate(self) -> tuple[dict[str, str], bool]:
        """Rate-limit headers for this request, and whether it is over the limit."""
        with self.lock:
            start, used = self._window
            t = time.time()
            if t - start >= self.rate_window_s:
                start, used = t, 0
            used += 1
            self._window = (start, used)
        reset = dt.datetime.fromtimestamp(start + self.rate_window_s, dt.UTC)
        h = {
            "X-RateLimit-Limit": str(self.rate_limit),
            "X-RateLimit-Remaining": str(max(0, self.rate_limit - used)),
            "X-RateLimit-Reset": reset.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        }
        if used > self.rate_limit:
            h["Retry-After"] = str(max(1, int(start + self.rate_window_s - t + 0.999)))
            return h, True
        return h, False

    def _paging_over(self) -> float | None:
        """Seconds until the paging throttle lets a paging request through, or None when it does now."""
        with self.lock:
            start, used = self._paging
            t = time.monotonic()
            if t - start >= self.paging_window_s:
                start, used = t, 0
            if used >= self.paging_limit:
                self._paging = (start, used)
                return start + self.paging_window_s - t
            self._paging = (start, used + 1)
        return None

    # ---------------------------------------------------------------- routing
    def handle(self, target: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """Answer a GET of ``target`` (path and query) with ``(status, headers, body)``."""
        headers = {k.lower(): v for k, v in (headers or {}).items()}
        u = urlsplit(target)
        q = parse_qs(u.query, keep_blank_values=True)
        if u.path == "/robots.txt":
            return 200, {"Content-Type": "text/plain"}, b"User-agent: *\nAllow: /\n"
        if u.path.startswith("/media/"):
            self.hits["media"] += 1
            try:
                n = int(u.path.rsplit("/", 1)[1].split(".")[0])
            except ValueError:
                return _err(404, "Record not found")
            return 200, {"Content-Type": "image/jpeg"}, self.image(n)
        info = self.nodeinfo(u.path)
        if info is not None:
            self.hits["nodeinfo"] += 1
            return info
        if not u.path.startswith("/api/v1/"):
            return _err(404, "Not found")
        if "authorization" in headers:
            self.auth_seen.append(headers["authorization"])
        rate_h, over = self._rate()
        if self.dialect == "pixelfed":  # Laravel's throttle: limit and remaining, the reset only on a 429
            rate_h = {k: v for k, v in rate_h.items() if k != "X-RateLimit-Reset" or over}
        elif self.dialect == "akkoma":  # Pleroma's RateLimiter sends no headers until it throttles
            rate_h = {k: v for k, v in rate_h.items() if k == "Retry-After"}
        if over:
            self.hits["429"] += 1
            msg = b'{"error":"Throttled"}' if self.dialect == "akkoma" else b'{"error":"Too many requests"}'
            return 429, {**rate_h, "Content-Type": "application/json"}, msg
        if u.path.startswith("/api/v1/timelines/tag/"):
            status, h, body = self._timeline(u.path.rsplit("/", 1)[1], q, headers)
        elif u.path.startswith("/api/v1/statuses"):
            status, h, body = self._statuses(u.path, q)
        else:
            status, h, body = _err(404, "Not found")
        return status, {**rate_h, **h}, body

    def _statuses(self, path: str, q: dict) -> tuple[int, dict[str, str], bytes]:
        self.hits["statuses"] += 1
        if path == "/api/v1/statuses":
            ids = q.get("id[]", [])
            found = [self.status_json(self.by_id[i]) for i in ids if i in self.by_id]
            return 200, {"Content-Type": "application/json"}, json.dumps(found).encode()
        st = self.by_id.get(path.rsplit("/", 1)[1])
        if st is None:
            return _err(404, "Record not found")
        return 200, {"Content-Type": "application/json"}, json.dumps(self.status_json(st)).encode()

    def _timeline(self, tag: str, q: dict, headers: dict) -> tuple[int, dict[str, str], bytes]:
        self.hits["timeline"] += 1
        authed = headers.get("authorization") == f"Bearer {self.token}"
        if self.restricted and not authed:
            if self.dialect == "pixelfed":
                return _err(403, "This action is unauthorized.")
            if self.dialect == "akkoma":
                return _err(401, "authorization required for timeline view")
            return _err(401, "Unauthorized: token not supplied")
        if tag == "private" and not authed:
            return _err(401, "The access token is invalid")
        if tag == "preview":
            return _err(422, "Timeline preview is disabled")
        if tag not in (self.tag, "private"):
            if self.dialect in ("pixelfed", "gotosocial"):  # an unknown tag is an empty timeline there
                return 200, {"Content-Type": "application/json"}, b"[]"
            return _err(404, "Record not found")
        one = lambda k: q.get(k, [None])[0]  # noqa: E731
        if self.dialect == "pixelfed":
            if self.strict_only_media and one("only_media") not in (None, "1", "0"):
                return _err(422, "The only media field must be true or false.")
            for k in ("max_id", "min_id"):
                if one(k) is not None and not str(one(k)).isdigit():
                    return _err(422, f"The {k} must be an integer.")
        if "max_id" in q:
            wait = self._paging_over()
            if wait is not None:
                self.hits["429_paging"] += 1
                return (
                    429,
                    {"Retry-After": str(max(1, int(wait + 0.999))), "Content-Type": "application/json"},
                    (b'{"error":"Too many requests"}'),
                )
            self.hits["paging"] += 1
        try:
            limit = max(1, min(40, int(q.get("limit", ["20"])[0])))
        except ValueError:
            return _err(422 if self.dialect != "gotosocial" else 400, "limit is not a number")
        rows = [s for s in reversed(self.statuses)]  # newest first
        media_default = "1" if self.dialect == "pixelfed" else None  # Pixelfed: only_media unless told otherwise
        if self.dialect != "gotosocial":  # GoToSocial reads none of these filters
            if (one("only_media") or media_default) in ("true", "1"):
                rows = [s for s in rows if s.media != "none"]
            if one("local") in ("true", "1"):
                rows = [s for s in rows if "@" not in s.acct]
            if one("remote") in ("true", "1"):
                rows = [s for s in rows if "@" in s.acct]
            if q.get("all[]"):  # any[] widens to other tags; every status here has the timeline's tag already
                rows = [s for s in rows if all(t in s.tags for t in q["all[]"])]
            if q.get("none[]"):
                rows = [s for s in rows if not any(t in s.tags for t in q["none[]"])]
        key = lambda s: _id_order(s.id)  # noqa: E731
        if one("max_id"):
            rows = [s for s in rows if key(s) < _id_order(one("max_id"))]
        if one("since_id"):
            rows = [s for s in rows if key(s) > _id_order(one("since_id"))]
        if one("min_id"):
            rows = [s for s in rows if key(s) > _id_order(one("min_id"))][-limit:]
        page = rows[:limit]
        h = {"Content-Type": "application/json"}
        if page and self.dialect != "pixelfed":  # Pixelfed's hashtag timeline sends no Link header
            kept = ("limit",) if self.dialect == "gotosocial" else ("limit", "only_media", "local", "remote")
            keep = {k: v[0] for k, v in q.items() if k in kept}
            base = f"{self.base_url}/api/v1/timelines/tag/{tag}"
            nxt = f"{base}?{urlencode({**keep, 'max_id': page[-1].id})}"
            prev = f"{base}?{urlencode({**keep, 'min_id': page[0].id})}"
            h["Link"] = f'<{nxt}>; rel="next", <{prev}>; rel="prev"'
        return 200, h, json.dumps([self.status_json(s) for s in page]).encode()


def _err(status: int, msg: str) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps({"error": msg}).encode()


class MastodonReplay(Replay):
    """:class:`MastodonSim` served on 127.0.0.1 (keyword options are the sim's); a context manager."""

    sim_class = MastodonSim

    def answer(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        if method != "GET":  # the endpoints it plays are all GETs
            return 405, {"Content-Type": "application/json"}, b'{"error": "Method Not Allowed"}'
        return self.sim.handle(target, headers)


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.testing.mastodon_replay --n 20000 --port-file F``: serve until killed (benchmarks)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--rate-limit", type=int, default=300)
    ap.add_argument("--rate-window-s", type=float, default=300.0)
    ap.add_argument("--paging-limit", type=int, default=300)
    ap.add_argument("--paging-window-s", type=float, default=900.0)
    ap.add_argument("--media", default=",".join(MEDIA_CYCLE), help="the media type cycle, comma-separated")
    a = ap.parse_args(argv)
    srv = MastodonReplay(n=a.n, rate_limit=a.rate_limit, rate_window_s=a.rate_window_s, paging_limit=a.paging_limit,
                         paging_window_s=a.paging_window_s, media_cycle=tuple(a.media.split(",")), young_every=0,
                         sensitive_every=0)  # fmt: skip
    return serve(srv, a.port_file)


if __name__ == "__main__":
    sys.exit(main())
