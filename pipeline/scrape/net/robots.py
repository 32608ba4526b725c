"""robots.txt, parsed with protego and cached per host (scheme + host + port) for the life of a client.

Policy (RFC 9309): a robots.txt answering 4xx means "everything allowed"; 5xx after retries, a timeout or a
connection error means "everything disallowed" for that host during this crawl (the RFC's "unreachable"), reported
with the reason ``robots_unavailable``; a body that is not text is treated as empty.

``Crawl-delay`` (protego ignores values that are not finite positive numbers) is read by
:meth:`pipeline.scrape.net.http.HttpClient.crawl_delay`, which caps it and passes it to the per-host limiter as the
host's minimum interval between requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from protego import Protego


class RobotsCache:
    """Answers "may this user agent fetch this URL?"; fetches each host's robots.txt once (thread-safe).

    ``fetch`` takes the robots.txt URL and returns an object with ``status``, ``http_status`` and ``data``
    (a :class:`pipeline.scrape.net.http.FetchResult`). Every fetched robots result is kept in ``fetched`` so the
    crawler can record it.
    """

    def __init__(self, fetch: Callable[[str], Any], user_agent: str):
        self._fetch = fetch
        self.user_agent = user_agent
        self._rules: dict[str, Protego | None | bool] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()
        self._why: dict[str, str] = {}
        self.fetched: list[Any] = []

    @staticmethod
    def robots_url(url: str) -> str:
        p = urlsplit(url)
        return urlunsplit((p.scheme, p.netloc, "/robots.txt", "", ""))

    def _rules_for(self, url: str) -> Protego | None | bool:
        key = self.robots_url(url)
        with self._guard:
            if key in self._rules:
                return self._rules[key]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key in self._rules:
                return self._rules[key]
            res = self._fetch(key)
            if res.status == "ok":
                text = (res.data or b"").decode("utf-8", errors="replace")
                try:
                    rules: Protego | None | bool = Protego.parse(text)
                except Exception:  # protego is lenient; an odd file must not stop the crawl
                    rules = None
            elif res.http_status is not None and 400 <= res.http_status < 500:
                rules = None  # no robots.txt: everything allowed
            else:
                rules = False  # unreachable: everything disallowed
                # a host we refuse to contact at all is reported as such, not as a robots problem
                why = res.reason if res.reason in ("private_address", "bad_url") else "robots_unavailable"
                self._why[key] = why
            with self._guard:
                self._rules[key] = rules
                self.fetched.append(res)
            return rules

    def allowed(self, url: str) -> tuple[bool, str | None]:
        """(True, None) when allowed; (False, None) when robots.txt disallows; (False, reason) when unreachable."""
        rules = self._rules_for(url)
        if rules is None:
            return True, None
        if rules is False:
            return False, self._why.get(self.robots_url(url), "robots_unavailable")
        return bool(rules.can_fetch(url, self.user_agent)), None

    def drain(self) -> list[Any]:
        """The robots.txt results fetched since the last call (for the ``fetches`` dataset)."""
        with self._guard:
            out, self.fetched = self.fetched, []
        return out

    def crawl_delay(self, url: str) -> float | None:
        """The host's Crawl-delay for our user agent, if it sets one."""
        rules = self._rules_for(url)
        if isinstance(rules, Protego):
            return rules.crawl_delay(self.user_agent)
        return None
