"""HttpClient.fetch_page with a JSON body: a POST (Misskey's API, XRPC logins) with the client's checks, never
retried, never sent on to a redirect's URL; the RateLimit-* headers kept."""

from __future__ import annotations

import json

from helpers.http import Handler, serve
from pipeline.config import HttpConfig, RetryConfig
from pipeline.scrape.net.http import HttpClient


class _Api(Handler):
    seen: list = []

    def do_GET(self) -> None:  # noqa: N802
        self.send(404, b"", "text/plain")  # robots.txt: none

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Api.seen.append((self.path, self.headers.get("Content-Type"), self.headers.get("Authorization"), body))
        if self.path == "/busy":
            self.send(429, b"{}", "application/json", {"Retry-After": "0"})
        elif self.path == "/moved":
            self.send(307, b"", "text/plain", {"Location": "/api"})
        else:
            rl = {"RateLimit-Limit": "10", "RateLimit-Remaining": "9", "RateLimit-Reset": "1700000000"}
            self.send(200, json.dumps({"got": json.loads(body or b"null")}).encode(), "application/json", rl)


def _client() -> HttpClient:
    retry = RetryConfig(attempts=3, backoff_s=0.01, backoff_max_s=0.1, jitter_s=0.0)
    return HttpClient(HttpConfig(allow_private_addresses=True, retry=retry), allowed_domains=["127.0.0.1"])


def test_post_json_body_headers_no_retry_no_redirect():
    _Api.seen = []
    with serve(_Api) as srv:
        c = _client()
        r = c.fetch_page(f"{srv.base}/api", headers={"Authorization": "Bearer t"}, json_body=b'{"tag": "x"}')
        assert r.ok and json.loads(r.data) == {"got": {"tag": "x"}}
        assert r.headers["ratelimit-remaining"] == "9" and r.headers["ratelimit-reset"] == "1700000000"
        assert _Api.seen[-1] == ("/api", "application/json", "Bearer t", b'{"tag": "x"}')
        r = c.fetch_page(f"{srv.base}/api", json_body=b"")  # a procedure without input: no type, no body
        assert r.ok and _Api.seen[-1][1:] == (None, None, b"")
        n = len(_Api.seen)
        r = c.fetch_page(f"{srv.base}/busy", json_body=b"{}")
        assert (r.status, r.reason, r.http_status) == ("error", "http_429", 429) and len(_Api.seen) == n + 1
        r = c.fetch_page(f"{srv.base}/moved", json_body=b"{}")
        assert (r.status, r.reason) == ("error", "redirect_on_post") and len(_Api.seen) == n + 2
        r = c.fetch_page("http://elsewhere.example/api", json_body=b"{}")
        assert r.reason == "outside_allowed_domains" and len(_Api.seen) == n + 2
