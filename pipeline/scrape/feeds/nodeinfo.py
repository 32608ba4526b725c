"""Which server software answers at a feed's ``base_url``: NodeInfo discovery, bounded and cached.

NodeInfo (https://nodeinfo.diaspora.software/protocol): ``GET /.well-known/nodeinfo`` lists documents as
``{"links": [{"rel": "http://nodeinfo.diaspora.software/ns/schema/2.<n>", "href": ...}]}``; the 2.x document's
``software.name`` names the server (``mastodon``, ``pixelfed``, ``gotosocial``, ``akkoma``, ``pleroma``, ...).
Mastodon serves it at ``/nodeinfo/2.0``, Pixelfed at ``/api/nodeinfo/2.0.json``, GoToSocial at ``/nodeinfo/2.0``
(2.1 in later versions), Akkoma/Pleroma at ``/nodeinfo/2.0.json`` and ``/nodeinfo/2.1.json``.

:class:`Software` asks at most twice per host (the well-known list, then the newest 2.x document it links on the
same origin: a link to another host, port or scheme is not followed) and only when an adapter needs to know (a
request refused or rejected in a way that differs by server); the answer, or ``""`` when it cannot be told, is kept
for the run (one instance per adapter, one adapter per worker process). The requests go through the adapter's own
fetch: the same HTTP client, robots.txt, address guard and pacing as its pages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any
from urllib.parse import urljoin

from pipeline.scrape.feeds.base import FeedParseError, load_json
from pipeline.scrape.net.address import same_origin

WELL_KNOWN = "/.well-known/nodeinfo"
SCHEMA_2 = "http://nodeinfo.diaspora.software/ns/schema/2."
MAX_NAME = 40


def document_href(doc: Any, base_url: str) -> str | None:
    """The newest NodeInfo 2.x document that ``doc`` (the well-known list) links on ``base_url``'s origin."""
    links = doc.get("links") if isinstance(doc, dict) else None
    best: tuple[str, str] | None = None
    for link in links if isinstance(links, list) else []:
        if not isinstance(link, dict):
            continue
        rel, href = link.get("rel"), link.get("href")
        if not (isinstance(rel, str) and rel.startswith(SCHEMA_2) and isinstance(href, str) and href):
            continue
        url = urljoin(base_url, href)
        if same_origin(url, base_url) and (best is None or rel > best[0]):
            best = (rel, url)
    return best[1] if best else None


def software_name(doc: Any) -> str:
    """``software.name`` of a NodeInfo document, lower case; ``""`` when it has none."""
    sw = doc.get("software") if isinstance(doc, dict) else None
    name = sw.get("name") if isinstance(sw, dict) else None
    return name.strip().lower()[:MAX_NAME] if isinstance(name, str) else ""


class Software:
    """The software behind one ``base_url``, looked up once (module docstring); thread-safe."""

    def __init__(self, base_url: str):
        self.base_url = base_url.rstrip("/")
        self.lock = threading.Lock()
        self.name: str | None = None  # None: not asked yet; "": could not be told
        self.requests = 0

    def get(self, fetch: Callable[[str], Any]) -> str:
        """The software's name (``""`` when unknown); ``fetch(url)`` → a ``FetchResult`` (the adapter's fetch)."""
        with self.lock:
            if self.name is None:
                self.name = self._detect(fetch)
            return self.name

    def _detect(self, fetch: Callable[[str], Any]) -> str:
        doc = self._json(fetch, self.base_url + WELL_KNOWN)
        href = document_href(doc, self.base_url + "/")
        if href is None:
            return ""
        return software_name(self._json(fetch, href))

    def _json(self, fetch: Callable[[str], Any], url: str) -> Any:
        self.requests += 1
        res = fetch(url)
        if not res.ok:
            return None
        try:
            return load_json(res.data or b"")
        except FeedParseError:
            return None


__all__ = ["Software", "document_href", "software_name"]
