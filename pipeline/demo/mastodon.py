"""The demo's small Mastodon-compatible hashtag timeline (``/mastodon/api/v1/timelines/tag/selfie``).

A few dozen statuses (:data:`N_STATUSES`) made from the demo feed's first posts (the same people and pictures, so
``make demo`` runs ``adapter: mastodon`` end to end without rendering anything new): Status entities with an
``account`` (every third one a remote ``user@elsewhere.example``), ``favourites_count``, ``reblogs_count``, tags as
``{name, url}`` objects and one image attachment; every seventh status carries a video instead (skipped by the
adapter with ``media_video``). Paged newest first with ``limit`` (≤ 40), ``max_id``, ``since_id``, a ``Link``
header (``rel="next"``) and an empty last page; rate-limit headers as a real server sends them. The full simulated
API (limits that run out, 429, auth) is :mod:`pipeline.testing.mastodon_replay`.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

N_STATUSES = 36
ID_BASE = 109_000_000_000_000_000
PREFIX = "/mastodon/api/v1/timelines/tag/"


class DemoMastodon:
    """Answers the timeline from a :class:`~pipeline.demo.server.DemoSite`'s content."""

    def __init__(self, site: Any):
        self.site = site
        posts = [p for p in site.content.posts if p.kind == "person"][:N_STATUSES]
        self.statuses = [self._status(i, p) for i, p in enumerate(posts)][::-1]  # newest first

    def _status(self, i: int, post: Any) -> dict:
        remote = i % 3 == 0
        acct = f"{post.user_id}@elsewhere.example" if remote else post.user_id
        host = "elsewhere.example" if remote else "127.0.0.1"
        sid = str(ID_BASE + i * 1000)
        kind = "video" if i % 7 == 3 else "image"
        return {
            "id": sid,
            "created_at": post.posted_at(self.site.anchor),
            "url": f"https://{host}/@{post.user_id}/{sid}",
            "uri": f"https://{host}/users/{post.user_id}/statuses/{sid}",
            "sensitive": False,
            "account": {"id": post.user_id, "acct": acct, "followers_count": post.followers},
            "favourites_count": post.likes,
            "reblogs_count": post.likes // 10,
            "tags": [{"name": t, "url": f"https://{host}/tags/{t}"} for t in post.tags],
            "media_attachments": [{"id": sid, "type": kind, "url": self.site.image_url(post), "remote_url": None}],
        }

    def handle(self, target: str) -> tuple[int, dict[str, str], bytes]:
        u = urlsplit(target)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        tag = u.path[len(PREFIX) :] if u.path.startswith(PREFIX) else None
        if tag != "selfie":
            return 404, {"Content-Type": "application/json"}, b'{"error":"Record not found"}'
        try:
            limit = max(1, min(40, int(q.get("limit", "20"))))
            rows = [s for s in self.statuses if not q.get("max_id") or int(s["id"]) < int(q["max_id"])]
            rows = [s for s in rows if not q.get("since_id") or int(s["id"]) > int(q["since_id"])]
        except ValueError:
            return 422, {"Content-Type": "application/json"}, b'{"error":"bad parameter"}'
        page = rows[:limit]
        reset = (dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
        h = {"Content-Type": "application/json", "X-RateLimit-Limit": "300", "X-RateLimit-Remaining": "299",
             "X-RateLimit-Reset": reset}  # fmt: skip
        if page:
            keep = {k: v for k, v in q.items() if k in ("limit", "only_media")}
            base = f"{self.site.base_url}{PREFIX}{tag}"
            h["Link"] = f'<{base}?{urlencode({**keep, "max_id": page[-1]["id"]})}>; rel="next"'
        return 200, h, json.dumps(page).encode()
