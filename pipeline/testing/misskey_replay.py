"""A local Misskey-family API for tests, written from the Misskey API docs (POST-only, JSON bodies).

:class:`MisskeySim` answers requests without a socket; :class:`MisskeyReplay` serves it on 127.0.0.1 (a free port).

* ``POST /api/notes/search-by-tag`` ``{"tag", "limit" (1..100, default 10; 400 INVALID_PARAM above), "untilId",
  "sinceId", "withFiles", "reply", "renote", "poll"}``: notes newest first (with ``sinceId`` only: the oldest newer
  ones first, as Misskey does); tag ``members`` needs a token (``Authorization: Bearer`` or ``i`` in the body:
  401 CREDENTIAL_REQUIRED otherwise);
* ``POST /api/notes/show`` ``{"noteId"}`` (400 NO_SUCH_NOTE when deleted);
* ``POST /api/users/show`` ``{"userId"}`` (400 NO_SUCH_USER when unknown) or ``{"userIds": [...]}`` (an array; the
  unknown left out): ``UserDetailed`` with ``followersCount``;
* rate limit: ``rate_limit`` calls a window, then 429 RATE_LIMIT_EXCEEDED with ``Retry-After``;
* notes of local (``user.host`` null) and remote users, ``reactions`` maps, ``renoteCount``, ``tags``, files of
  every kind (jpeg, png, video, audio, none; some ``isSensitive``); ids are aids (time, base36, sortable as text);
* files at ``/files/<n>.jpg``. Requests are counted by kind (:attr:`MisskeySim.hits`); notes deleted with
  :meth:`MisskeySim.delete`.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
import threading
import time

from pipeline.testing.replay import Replay, numbered_jpeg

FILES = ("image/jpeg", "image/png", "video/mp4", "none", "image/jpeg", "audio/mpeg", "image/webp")
EPOCH_2000 = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


def aid(t: dt.datetime, n: int) -> str:
    """A Misskey aid: base36 milliseconds since 2000 (8 characters), then 2 characters of counter."""
    ms = int((t - EPOCH_2000).total_seconds() * 1000)
    return _b36(ms).rjust(8, "0") + _b36(n % 1296).rjust(2, "0")


def _b36(v: int) -> str:
    s = ""
    while True:
        v, r = divmod(v, 36)
        s = "0123456789abcdefghijklmnopqrstuvwxyz"[r] + s
        if not v:
            return s


@dataclasses.dataclass
class Note:
    n: int
    created_at: dt.datetime
    user: int
    file: str
    sensitive: bool
    tags: tuple[str, ...]

    @property
    def id(self) -> str:
        return aid(self.created_at, self.n)


def _err(status: int, code: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    doc = {"error": {"message": code.lower().replace("_", " "), "code": code, "id": "00000000"}}
    return status, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()


def _ok(doc: object, headers: dict | None = None) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json", **(headers or {})}, json.dumps(doc).encode()


class MisskeySim:
    """The API's answers (module docstring)."""

    def __init__(
        self,
        n: int = 60,
        *,
        tag: str = "selfie",
        token: str = "mk-token",
        rate_limit: int = 10_000,
        rate_window_s: float = 60.0,
        retry_after_s: int = 1,
        users: int = 12,
        deleted_users: tuple[int, ...] = (5,),
        young_every: int = 5,
        sensitive_every: int = 11,
        remote_every: int = 3,
    ):
        self.tag, self.token = tag, token
        self.rate_limit, self.rate_window_s, self.retry_after_s = rate_limit, rate_window_s, retry_after_s
        self.users, self.deleted = users, {f"u{k:03d}" for k in deleted_users}
        self.young_every, self.sensitive_every, self.remote_every = young_every, sensitive_every, remote_every
        self.base_url = "http://127.0.0.1"
        self.notes: list[Note] = []
        self.reactions_of: dict[int, dict[str, int]] = {}
        self.hits: collections.Counter = collections.Counter()
        self.bodies: list[dict] = []
        self.auth_seen: list[str] = []
        self.lock = threading.Lock()
        self._window = (time.time(), 0)
        self.anchor = dt.datetime.now(dt.UTC).replace(microsecond=0)
        self.add(n)

    def add(self, k: int, young: bool = False) -> list[str]:
        out = []
        with self.lock:
            for _ in range(k):
                i = len(self.notes)
                age = 2.0 if young or (self.young_every and i % self.young_every == 1) else 40.0
                sensitive = bool(self.sensitive_every) and i % self.sensitive_every == 4
                nt = Note(
                    n=i,
                    created_at=self.anchor - dt.timedelta(days=age, seconds=-60 * i),
                    user=i % self.users,
                    file=FILES[i % len(FILES)],
                    sensitive=sensitive,
                    tags=(self.tag, "me") if i % 2 else (self.tag,),
                )
                self.notes.append(nt)
                out.append(nt.id)
        return out

    def delete(self, note_id: str) -> None:
        with self.lock:
            self.notes = [x for x in self.notes if x.id != note_id]

    def remote(self, user: int) -> str | None:
        return f"remote{user % 2}.example" if user % self.remote_every == 0 else None

    def followers(self, user: int) -> int:
        return 10 + user * 41

    def likes(self, nt: Note) -> int:
        return sum(self.reactions(nt).values())

    def reactions(self, nt: Note) -> dict[str, int]:
        if nt.n in self.reactions_of:
            return self.reactions_of[nt.n]
        return {"👍": nt.n % 9, ":heart@.:": (nt.n * 7) % 13, ":blobcat@remote0.example:": nt.n % 2}

    def file_url(self, nt: Note) -> str:
        return f"{self.base_url}/files/{nt.n}.jpg"

    def note_json(self, nt: Note) -> dict:
        uid = f"u{nt.user:03d}"
        host = self.remote(nt.user)
        files = []
        if nt.file != "none":
            files.append({"id": f"f{nt.n}", "createdAt": nt.created_at.isoformat(), "name": f"{nt.n}.bin",
                          "type": nt.file, "md5": "0" * 32, "size": 1000, "isSensitive": nt.sensitive,
                          "blurhash": None, "properties": {}, "url": self.file_url(nt),
                          "thumbnailUrl": self.file_url(nt), "comment": None, "folderId": None, "folder": None,
                          "userId": uid, "user": None})  # fmt: skip
        return {
            "id": nt.id,
            "createdAt": nt.created_at.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "userId": uid,
            "user": {
                "id": uid,
                "name": None,
                "username": f"user{nt.user}",
                "host": host,
                "avatarUrl": None,
                "isBot": False,
                "isCat": False,
                "emojis": {},
                "onlineStatus": "unknown",
            },  # fmt: skip
            "text": " ".join(f"#{t}" for t in nt.tags) + f" note {nt.n}",
            "cw": None,
            "visibility": "public",
            "renoteCount": nt.n % 4,
            "repliesCount": nt.n % 5,
            "reactions": self.reactions(nt),
            "reactionEmojis": {},
            "tags": list(nt.tags),
            "fileIds": [f["id"] for f in files],
            "files": files,
            "replyId": None,
            "renoteId": None,
            "uri": f"https://{host}/notes/{nt.n}" if host else None,
            "url": None,
        }

    def image(self, n: int) -> bytes:
        return numbered_jpeg(n, "misskey")

    def _rate(self) -> tuple[dict[str, str], bool]:
        with self.lock:
            start, used = self._window
            if time.time() - start >= self.rate_window_s:
                start, used = time.time(), 0
            used += 1
            self._window = (start, used)
            if used > self.rate_limit:
                return {"Retry-After": str(self.retry_after_s)}, True
            return {}, False

    def handle(self, method: str, target: str, headers: dict, body: bytes) -> tuple[int, dict, bytes]:
        path = target.split("?")[0]
        if path.startswith("/files/") and method == "GET":
            self.hits["image"] += 1
            return 200, {"Content-Type": "image/jpeg"}, self.image(int(path.rsplit("/", 1)[1].split(".")[0]))
        if path == "/robots.txt":
            return 404, {"Content-Type": "text/plain"}, b""
        if not path.startswith("/api/"):
            return 404, {"Content-Type": "text/plain"}, b""
        if method != "POST":
            return _err(405, "METHOD_NOT_ALLOWED")
        rl, over = self._rate()
        if over:
            self.hits["429"] += 1
            return _err(429, "RATE_LIMIT_EXCEEDED", rl)
        try:
            doc = json.loads(body or b"{}")
        except ValueError:
            return _err(400, "INVALID_PARAM")
        h = {k.lower(): v for k, v in headers.items()}
        tok = h.get("authorization", "").removeprefix("Bearer ") or doc.get("i")
        if tok:
            self.auth_seen.append(tok)
        if path == "/api/notes/search-by-tag":
            return self._search(doc, tok)
        if path == "/api/users/show":
            return self._users(doc)
        if path == "/api/notes/show":
            self.hits["note"] += 1
            with self.lock:
                nt = next((x for x in self.notes if x.id == doc.get("noteId")), None)
            return _ok(self.note_json(nt)) if nt else _err(400, "NO_SUCH_NOTE")
        return _err(404, "NO_SUCH_ENDPOINT")

    def _search(self, doc: dict, tok: str | None) -> tuple[int, dict, bytes]:
        self.hits["search"] += 1
        self.bodies.append(doc)
        limit = doc.get("limit", 10)
        if not isinstance(doc.get("tag"), str) or not isinstance(limit, int) or not 1 <= limit <= 100:
            return _err(400, "INVALID_PARAM")
        if doc["tag"] == "members" and tok != self.token:
            return _err(401, "CREDENTIAL_REQUIRED")
        with self.lock:
            notes = [x for x in self.notes if doc["tag"].lower() in x.tags]
        if doc.get("withFiles"):
            notes = [x for x in notes if x.file != "none"]
        notes.sort(key=lambda x: x.id, reverse=True)
        if doc.get("untilId"):
            notes = [x for x in notes if x.id < doc["untilId"]]
        if doc.get("sinceId"):
            notes = sorted((x for x in notes if x.id > doc["sinceId"]), key=lambda x: x.id)
        return _ok([self.note_json(x) for x in notes[:limit]])

    def _users(self, doc: dict) -> tuple[int, dict, bytes]:
        self.hits["users"] += 1

        def detailed(uid: str) -> dict | None:
            if uid in self.deleted or not uid.startswith("u") or not uid[1:].isdigit():
                return None
            k = int(uid[1:])
            return {"id": uid, "username": f"user{k}", "host": self.remote(k), "followersCount": self.followers(k),
                    "followingCount": 3, "notesCount": 40}  # fmt: skip

        if isinstance(doc.get("userIds"), list):
            return _ok([u for u in (detailed(i) for i in doc["userIds"]) if u])
        u = detailed(str(doc.get("userId")))
        return _ok(u) if u else _err(400, "NO_SUCH_USER")


class MisskeyReplay(Replay):
    """:class:`MisskeySim` served on 127.0.0.1."""

    sim_class = MisskeySim
