"""A local Bluesky (AT Protocol XRPC) API for tests, written from the lexicons and the PDS/AppView docs.

:class:`BlueskySim` answers requests without a socket; :class:`BlueskyReplay` serves it on 127.0.0.1 (a free port).
What it does, as the lexicons and docs describe the services (one host plays the PDS that proxies to the AppView):

* ``POST /xrpc/com.atproto.server.createSession`` (``identifier``, ``password``) → ``accessJwt``, ``refreshJwt``,
  ``did``, ``handle``; a wrong password 401 ``AuthenticationRequired``; its own low rate limit (``login_limit`` a
  window, then 429);
* ``POST /xrpc/com.atproto.server.refreshSession`` with ``Authorization: Bearer <refreshJwt>`` → a new pair (a
  refresh token is single-use); an access token expires after ``access_uses`` requests (400 ``ExpiredToken``);
* ``GET /xrpc/app.bsky.feed.searchPosts``: ``q`` required (400 ``InvalidRequest`` otherwise), ``tag`` (repeated:
  AND), ``sort`` (latest: newest first), ``limit`` 1..100 (default 25; 400 above), ``cursor`` (opaque), ``since`` /
  ``until``; ``require_auth``: 401 ``AuthMissing`` without a valid access token; the result set is cut at
  ``max_hits`` (the cursor "may not necessarily allow scrolling through entire result set"): no ``cursor`` after it;
* ``GET /xrpc/app.bsky.feed.getPosts?uris=…`` (at most 25; deleted posts left out);
* ``GET /xrpc/app.bsky.actor.getProfiles?actors=…`` (at most 25; 400 above): ``profileViewDetailed`` with
  ``followersCount``; deleted accounts are left out of the answer;
* ``RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` (epoch seconds) / ``-Policy`` on every XRPC answer, 429 once
  ``rate_limit`` requests of the window are used;
* posts of every embed kind: ``images#view``, ``recordWithMedia#view`` with images, ``video#view``,
  ``external#view``, none, and images labelled ``porn``; tags in ``record.tags`` and as ``#tag`` facets;
* images at ``/img/<n>.jpg`` (small distinct JPEGs).

Requests are counted by kind (:attr:`BlueskySim.hits`); posts added (:meth:`BlueskySim.add`) or deleted
(:meth:`BlueskySim.delete`).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import threading
import time
from urllib.parse import parse_qs, urlsplit

from pipeline.testing.replay import Replay, numbered_jpeg, serve

TID_CHARS = "234567abcdefghijklmnopqrstuvwxyz"
EMBEDS = ("images", "images", "record_with_media", "video", "images", "external", "none", "images", "labelled")


def make_tid(t: dt.datetime, clock: int = 0) -> str:
    """A TID record key: 53 bits of microseconds since the epoch, 10 bits of clock id, base32-sortable."""
    n = (int(t.timestamp() * 1_000_000) << 10) | (clock & 1023)
    out = ""
    for _ in range(13):
        out = TID_CHARS[n & 31] + out
        n >>= 5
    return out


@dataclasses.dataclass
class Post:
    n: int
    created_at: dt.datetime
    author: int
    embed: str
    tags: tuple[str, ...]
    likes: int
    reposts: int

    @property
    def did(self) -> str:
        return f"did:plc:user{self.author:02d}"

    @property
    def rkey(self) -> str:
        return make_tid(self.created_at, self.n % 1024)

    @property
    def uri(self) -> str:
        return f"at://{self.did}/app.bsky.feed.post/{self.rkey}"


def _err(status: int, error: str, message: str = "", headers: dict | None = None) -> tuple[int, dict, bytes]:
    h = {"Content-Type": "application/json", **(headers or {})}
    return status, h, json.dumps({"error": error, "message": message or error}).encode()


def _ok(doc: object, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()


class BlueskySim:
    """The services' answers (module docstring)."""

    def __init__(
        self,
        n: int = 60,
        *,
        tag: str = "selfie",
        identifier: str = "crawler.bsky.example",
        password: str = "app-pass-1234",
        require_auth: bool = True,
        access_uses: int = 1000,
        login_limit: int = 30,
        rate_limit: int = 3000,
        rate_window_s: float = 300.0,
        max_hits: int = 10_000,
        authors: int = 30,
        young_every: int = 5,
        deleted_authors: tuple[int, ...] = (7,),
    ):
        self.tag, self.identifier, self.password = tag, identifier, password
        self.require_auth, self.access_uses, self.login_limit = require_auth, access_uses, login_limit
        self.rate_limit, self.rate_window_s, self.max_hits = rate_limit, rate_window_s, max_hits
        self.authors, self.young_every = authors, young_every
        self.deleted = {f"did:plc:user{a:02d}" for a in deleted_authors}
        self.base_url = "http://127.0.0.1"
        self.posts: list[Post] = []
        self.followers_of: dict[int, int] = {}
        self.hits: collections.Counter = collections.Counter()
        self.queries: list[dict] = []  # the searchPosts parameters seen
        self.auth_seen: list[str] = []
        self.access: dict[str, int] = {}  # live access token -> uses left
        self.refresh: set[str] = set()
        self.gen = 0
        self.lock = threading.Lock()
        self._window = (time.time(), 0)
        self._logins = (time.time(), 0)
        self.anchor = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.add(n)

    # ---------------------------------------------------------------- content
    def add(self, k: int, young: bool = False) -> list[str]:
        out = []
        with self.lock:
            for _ in range(k):
                i = len(self.posts)
                age = 2.0 if young or (self.young_every and i % self.young_every == 1) else 40.0
                p = Post(
                    n=i,
                    created_at=self.anchor - dt.timedelta(days=age, seconds=-60 * i),
                    author=i % self.authors,
                    embed=EMBEDS[i % len(EMBEDS)],
                    tags=(self.tag, "me") if i % 2 else (self.tag,),
                    likes=(i * 37) % 500,
                    reposts=i % 7,
                )
                self.posts.append(p)
                out.append(p.uri)
        return out

    def set_counts(self, uri: str, likes: int, followers: int | None = None) -> None:
        p = next(p for p in self.posts if p.uri == uri)
        p.likes = likes
        if followers is not None:
            self.followers_of[p.author] = followers

    def delete(self, uri: str) -> None:
        with self.lock:
            self.posts = [p for p in self.posts if p.uri != uri]

    def followers(self, author: int) -> int:
        return self.followers_of.get(author, 100 + author * 53)

    def image_url(self, p: Post) -> str:
        return f"{self.base_url}/img/{p.n}.jpg"

    def post_view(self, p: Post) -> dict:
        """An ``app.bsky.feed.defs#postView``."""
        text = f"#{p.tags[0]} number {p.n}"
        record: dict = {
            "$type": "app.bsky.feed.post",
            "text": text,
            "createdAt": p.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "langs": ["en"],
            # the first tag as a facet (in the text), the others in the record's tags field
            "facets": [{"index": {"byteStart": 0, "byteEnd": len(p.tags[0]) + 1},
                        "features": [{"$type": "app.bsky.richtext.facet#tag", "tag": p.tags[0]}]}],
        }  # fmt: skip
        if len(p.tags) > 1:
            record["tags"] = list(p.tags[1:])
        img = {"thumb": self.image_url(p).replace("/img/", "/thumb/"), "fullsize": self.image_url(p), "alt": ""}
        images = {"$type": "app.bsky.embed.images#view", "images": [img]}
        embed: dict | None = None
        if p.embed in ("images", "labelled"):
            embed = images
        elif p.embed == "record_with_media":
            gone = {"$type": "app.bsky.embed.record#viewNotFound", "uri": "at://x/y/z"}  # a deleted quoted post
            embed = {"$type": "app.bsky.embed.recordWithMedia#view", "media": images, "record": {"record": gone}}
        elif p.embed == "video":
            embed = {"$type": "app.bsky.embed.video#view", "cid": "bafy", "playlist": f"{self.base_url}/v.m3u8"}
        elif p.embed == "external":
            card = {"uri": "https://example.org", "title": "t", "description": ""}
            embed = {"$type": "app.bsky.embed.external#view", "external": card}
        pv = {
            "uri": p.uri,
            "cid": f"bafyrei{p.n:08d}",
            "author": {"did": p.did, "handle": f"user{p.author}.bsky.example", "displayName": f"User {p.author}"},
            "record": record,
            "replyCount": p.n % 3,
            "repostCount": p.reposts,
            "likeCount": p.likes,
            "quoteCount": p.n % 2,
            "indexedAt": (p.created_at + dt.timedelta(seconds=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "labels": [{"src": "did:plc:labeler", "uri": p.uri, "val": "porn", "cts": "2024-01-01T00:00:00Z"}]
            if p.embed == "labelled"
            else [],
        }
        if embed is not None:
            pv["embed"] = embed
        return pv

    def image(self, n: int) -> bytes:
        return numbered_jpeg(n, "bluesky")

    # ---------------------------------------------------------------- limits and sessions
    def _rate(self) -> tuple[dict[str, str], bool]:
        with self.lock:
            start, used = self._window
            t = time.time()
            if t - start >= self.rate_window_s:
                start, used = t, 0
            used += 1
            self._window = (start, used)
            h = {
                "RateLimit-Limit": str(self.rate_limit),
                "RateLimit-Remaining": str(max(0, self.rate_limit - used)),
                "RateLimit-Reset": str(int(start + self.rate_window_s)),
                "RateLimit-Policy": f"{self.rate_limit};w={int(self.rate_window_s)}",
            }
            return h, used > self.rate_limit

    def _new_session(self) -> dict:
        self.gen += 1
        acc, ref = f"acc-{self.gen}-x9", f"ref-{self.gen}-y7"
        self.access[acc] = self.access_uses
        self.refresh.add(ref)
        return {"accessJwt": acc, "refreshJwt": ref, "handle": self.identifier, "did": "did:plc:crawler",
                "active": True}  # fmt: skip

    def _bearer(self, headers: dict) -> str | None:
        v = {k.lower(): val for k, val in headers.items()}.get("authorization", "")
        return v[7:] if v.startswith("Bearer ") else None

    def _check_access(self, headers: dict) -> tuple[int, dict, bytes] | None:
        """None when the request may go on; else the error answer."""
        tok = self._bearer(headers)
        if tok is None:
            return _err(401, "AuthMissing", "Authentication Required") if self.require_auth else None
        self.auth_seen.append(tok)
        with self.lock:
            left = self.access.get(tok)
            if left is None:
                return _err(401, "InvalidToken", "Token could not be verified")
            if left <= 0:
                return _err(400, "ExpiredToken", "Token has expired")
            self.access[tok] = left - 1
        return None

    # ---------------------------------------------------------------- requests
    def handle(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        parts = urlsplit(target)
        path, q = parts.path, parse_qs(parts.query)
        if path.startswith("/img/") or path.startswith("/thumb/"):
            self.hits["image"] += 1
            n = int(path.rsplit("/", 1)[1].split(".")[0])
            return 200, {"Content-Type": "image/jpeg"}, self.image(n)
        if path == "/robots.txt":
            return 404, {"Content-Type": "text/plain"}, b""
        if path == "/xrpc/com.atproto.server.createSession" and method == "POST":
            return self._create_session(body)
        if path == "/xrpc/com.atproto.server.refreshSession" and method == "POST":
            self.hits["refresh"] += 1
            tok = self._bearer(headers)
            with self.lock:
                if tok not in self.refresh:
                    return _err(400, "ExpiredToken", "Token has expired")
                self.refresh.discard(tok)
                return _ok(self._new_session())
        rl, over = self._rate()
        if over:
            return _err(429, "RateLimitExceeded", "Rate Limit Exceeded", rl)
        if method != "GET":
            return _err(405, "MethodNotImplemented", headers=rl)
        bad = self._check_access(headers)
        if bad is not None:
            st, h, b = bad
            return st, {**h, **rl}, b
        if path == "/xrpc/app.bsky.feed.searchPosts":
            return self._search(q, rl)
        if path == "/xrpc/app.bsky.actor.getProfiles":
            return self._profiles(q, rl)
        if path == "/xrpc/app.bsky.feed.getPosts":
            self.hits["get_posts"] += 1
            uris = q.get("uris", [])
            if not 1 <= len(uris) <= 25:
                return _err(400, "InvalidRequest", "uris: 1..25", rl)
            with self.lock:
                by_uri = {p.uri: p for p in self.posts}
            return _ok({"posts": [self.post_view(by_uri[u]) for u in uris if u in by_uri]}, rl)
        return _err(501, "MethodNotImplemented", headers=rl)

    def _create_session(self, body: bytes) -> tuple[int, dict, bytes]:
        self.hits["login"] += 1
        with self.lock:
            start, used = self._logins
            if time.time() - start >= 300:
                start, used = time.time(), 0
            used += 1
            self._logins = (start, used)
            rl = {"RateLimit-Limit": str(self.login_limit), "RateLimit-Remaining": str(max(0, self.login_limit - used)),
                  "RateLimit-Reset": str(int(start + 300))}  # fmt: skip
            if used > self.login_limit:
                return _err(429, "RateLimitExceeded", headers=rl)
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return _err(400, "InvalidRequest", "Input must be JSON", rl)
        if doc.get("identifier") != self.identifier or doc.get("password") != self.password:
            return _err(401, "AuthenticationRequired", "Invalid identifier or password", rl)
        with self.lock:
            return _ok(self._new_session(), rl)

    def _search(self, q: dict, rl: dict) -> tuple[int, dict, bytes]:
        self.hits["search"] += 1
        self.queries.append(q)
        if not q.get("q"):
            return _err(400, "InvalidRequest", 'Error: Params must have the property "q"', rl)
        try:
            limit = int(q.get("limit", ["25"])[0])
            offset = int(q.get("cursor", ["0"])[0])
        except ValueError:
            return _err(400, "InvalidRequest", "bad limit or cursor", rl)
        if not 1 <= limit <= 100:
            return _err(400, "InvalidRequest", "limit must be 1..100", rl)
        want = {t.lower() for t in q.get("tag", [])}
        since = q.get("since", [None])[0]
        until = q.get("until", [None])[0]
        with self.lock:
            posts = sorted(self.posts, key=lambda p: p.created_at, reverse=True)
        hits = []
        for p in posts:
            if not want <= {t.lower() for t in p.tags}:
                continue
            if since and p.created_at < _time(since):
                continue
            if until and p.created_at >= _time(until):
                continue
            hits.append(p)
        hits = hits[: self.max_hits]
        page = hits[offset : offset + limit]
        doc: dict = {"posts": [self.post_view(p) for p in page], "hitsTotal": len(hits)}
        if offset + limit < len(hits):
            doc["cursor"] = str(offset + limit)
        return _ok(doc, rl)

    def _profiles(self, q: dict, rl: dict) -> tuple[int, dict, bytes]:
        self.hits["profiles"] += 1
        actors = q.get("actors", [])
        if not 1 <= len(actors) <= 25:
            return _err(400, "InvalidRequest", "actors: 1..25", rl)
        out = []
        for a in actors:
            if a in self.deleted or not a.startswith("did:plc:user"):
                continue
            k = int(a.removeprefix("did:plc:user"))
            out.append({"did": a, "handle": f"user{k}.bsky.example", "followersCount": self.followers(k),
                        "followsCount": 5, "postsCount": 50})  # fmt: skip
        return _ok({"profiles": out}, rl)


def _time(v: str) -> dt.datetime:
    t = dt.datetime.fromisoformat(v.replace("Z", "+00:00")) if "T" in v else dt.datetime.fromisoformat(v)
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


class BlueskyReplay(Replay):
    """:class:`BlueskySim` served on 127.0.0.1."""

    sim_class = BlueskySim


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.testing.bluesky_replay --n 2000 --port-file F``: serve until killed (benchmarks); the
    login is ``crawler.bsky.example`` with ``--password``."""
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--port-file", required=True)
    ap.add_argument("--password", default="app-pass-1234")
    ap.add_argument("--rate-limit", type=int, default=3000)
    a = ap.parse_args(argv)
    srv = BlueskyReplay(n=a.n, password=a.password, rate_limit=a.rate_limit, max_hits=10 * a.n + 100,
                        access_uses=10**9, young_every=0, deleted_authors=())  # fmt: skip
    return serve(srv, a.port_file)


if __name__ == "__main__":
    import sys

    sys.exit(main())
