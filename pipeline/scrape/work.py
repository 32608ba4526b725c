"""What one crawl worker does with a batch of tasks, in plain Python (no Ray: tests and the benchmark use it as is).

Tasks and results are plain dicts (they cross process boundaries):

* ``{"kind": "page", "site", "hashtag", "page", "url"}`` → :meth:`HttpWork.run` fetches (``adapter.fetch``: its
  headers and pacing), parses and completes (``adapter.enrich``: follower lookups) one feed page:
  ``{"task", "status", "reason", "posts", "next_url", "fetch"}`` (a page the adapter cannot read: error
  ``parse_error:<code>``);
* ``{"kind": "image", "site", "url"}`` → fetches (from the site's photo hosts:
  :func:`~pipeline.scrape.net.address.photo_hosts`), checks and stores one image (``DataRoot.put_image``, by sha256):
  ``{"task", "status", "reason", "sha", "width", "height", "new", "fetch"}``;
* ``{"kind": "image", "site", "url", "staff": true}``: a staff photo, also checked for being a placeholder
  (:func:`~pipeline.scrape.staff.placeholders.by_content`: ``"placeholder"`` in the result);
* ``{"kind": "staff", "index"}`` → :meth:`BrowserWork.run` scrapes one staff site
  (:class:`~pipeline.scrape.staff.site.StaffScraper`: static pages by HTTP, Chromium only when needed, every browser
  connection through the egress proxy; profile pages): ``{"task", "pages": [StaffPage as dict], "fetches"}``.

``fetch`` is the URL's ``fetches`` row. A task that fails unexpectedly becomes :func:`error_result`
(``internal:<Type>``); the crawl driver uses the same shape for ``worker_died``, ``batch_timeout``, ``no_workers``.
Both ``run`` methods also return the robots.txt fetch rows gathered meanwhile. ``slot(host)`` is the per-host
limiter (:mod:`pipeline.scrape.net.ratelimit`); without one, the HTTP client's local limiter from the config.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import Config
from pipeline.privacy import OptOut
from pipeline.scrape.feeds.base import FeedParseError
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.scrape.net.address import photo_hosts, resolves_public
from pipeline.scrape.net.egress import policy_for
from pipeline.scrape.net.http import FetchResult, HttpClient
from pipeline.scrape.staff.browser import Browser
from pipeline.scrape.staff.placeholders import by_content
from pipeline.scrape.staff.site import StaffScraper
from pipeline.store import STAFF_DS, STATUS_ERROR, STATUS_SKIPPED, DataRoot, sha256_bytes


def error_result(task: dict, reason: str) -> dict:
    """The result of a task that produced nothing but an error (no fetch row)."""
    return {"task": task, "status": STATUS_ERROR, "reason": reason, "fetch": None}


def internal_error(task: dict, e: BaseException) -> dict:
    """An unexpected exception while running ``task``: error ``internal:<Type>``."""
    return error_result(task, f"internal:{type(e).__name__}")


def _robots_rows(client: HttpClient) -> list[dict]:
    return [r.fetch_row(urlsplit(r.url).hostname or "") for r in client.robots.drain()]


class HttpWork:
    """Feed pages and images, ``scrape.threads_per_actor`` at a time."""

    def __init__(
        self, cfg: Config, domains: list[str], slot: Callable | None = None, optout_images: OptOut | None = None
    ):
        self.cfg = cfg
        self.root = DataRoot(cfg.data_root)
        self.client = HttpClient(cfg.scrape.http, domains, slot)
        self.pool = ThreadPoolExecutor(cfg.scrape.threads_per_actor, thread_name_prefix="fetch")
        self.adapters = {s.name: adapter_for(s, cfg.scrape.num_actors) for s in cfg.scrape.feeds}
        sites = [s.name for s in [*cfg.scrape.feeds, *cfg.scrape.staff]]
        # where each site's photos may come from (no domains: every host, as for pages)
        self.photo_hosts = {name: photo_hosts(cfg, name, domains) for name in sites} if domains else {}
        self.optout_images = optout_images

    def run(self, tasks: list[dict]) -> tuple[list[dict], list[dict]]:
        """Fetch a batch of page/image tasks concurrently; returns (results, robots fetch rows)."""
        results = list(self.pool.map(self._safe, tasks))
        return results, _robots_rows(self.client)

    def _safe(self, task: dict) -> dict:
        try:
            return self._page(task) if task["kind"] == "page" else self._image(task)
        except Exception as e:  # one bad task must never take the batch down
            return internal_error(task, e)

    def _page(self, task: dict) -> dict:
        adapter = self.adapters[task["site"]]
        res = adapter.fetch(self.client, task["url"])  # the adapter's headers and pacing (Mastodon)
        out: dict[str, Any] = {"task": task, "posts": [], "next_url": None}
        if res.ok:
            try:
                page = adapter.parse(res.data or b"", task["url"], task["hashtag"], task["page"], res.headers)
                adapter.enrich(self.client, page.posts)  # follower lookups
                out["posts"], out["next_url"] = page.posts, page.next_url
                out["bad_posts"] = page.bad_posts  # posts without an id: counted, not one dict each
            except FeedParseError as e:  # a page error with its reason: parse_error:items_not_found, ...
                res.status, res.reason = STATUS_ERROR, f"parse_error:{e.code}"
        out["status"], out["reason"] = res.status, res.reason
        out["fetch"] = res.fetch_row(task["site"])
        return out

    def _image(self, task: dict) -> dict:
        res: FetchResult = self.client.fetch_image(task["url"], self.photo_hosts.get(task["site"]))
        sha, new = None, False
        if res.ok:
            sha = sha256_bytes(res.data or b"")
            if self.optout_images is not None and self.optout_images.blocks("image", sha):
                res.status, res.reason, sha = STATUS_SKIPPED, "opted_out", None
            else:
                new = self.root.put_image_new(res.data or b"", sha)
        placeholder = None
        if task.get("staff") and (res.ok or res.reason == "content_type"):
            placeholder = by_content(res.data, res.width, res.height, res.content_type)
        return {
            "task": task,
            "status": res.status,
            "reason": res.reason,
            "placeholder": placeholder,
            "sha": sha,
            "width": res.width,
            "height": res.height,
            "new": new,
            "fetch": res.fetch_row(task["site"], sha),
        }


class BrowserWork:
    """Staff sites in one headless Chromium; every page load checked like the HTTP client's fetches."""

    def __init__(self, cfg: Config, domains: list[str], slot: Callable | None = None):
        self.cfg = cfg
        self.client = HttpClient(cfg.scrape.http, domains, slot)
        self.limit = self.client.limiter  # ``slot``, or the client's local limiter
        # every connection Chromium opens goes through the egress proxy, checked like the HTTP client's
        self.browser = Browser(cfg.scrape.selenium, cfg.scrape.http.user_agent, policy_for(cfg, domains))

    def _may_fetch(self, url: str) -> tuple[str, str] | None:
        bad = self.client.check_url(url)
        if bad:
            return bad
        host = urlsplit(url).hostname or ""
        if not self.cfg.scrape.http.allow_private_addresses and not resolves_public(host):
            return STATUS_ERROR, "private_address"
        allowed, why = self.client.robots_allowed(url)
        if not allowed:
            return (STATUS_SKIPPED, "robots") if why is None else (STATUS_ERROR, why)
        with self.limit(host):  # take the host's rate slot for the page load
            pass
        return None

    def run(self, tasks: list[dict]) -> tuple[list[dict], list[dict]]:
        """Render each staff-site task; returns (results, robots fetch rows)."""
        out = []
        for task in tasks:
            site = self.cfg.scrape.staff[task["index"]]
            try:
                scraper = StaffScraper(self.client, self.browser, self._may_fetch)
                pages = scraper.scrape(site, self._done_people(site.name))
                out.append({"task": task, "pages": [dataclasses.asdict(p) for p in pages], "fetches": scraper.fetches})
            except Exception as e:
                out.append(internal_error(task, e))
        return out, _robots_rows(self.client)

    def _done_people(self, site: str) -> set[str]:
        """The item ids of ``site`` with a staff row already (their profile pages are not fetched again)."""
        return {i for s, i in DataRoot(self.cfg.data_root).done_keys(STAFF_DS) if s == site}

    def shutdown(self) -> bool:
        """Quit Chromium (and its egress proxy)."""
        self.browser.quit()
        return True
