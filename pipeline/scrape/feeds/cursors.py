"""Feed walks that resume where a killed crawl stopped and, on a rerun, stop at what the data root already holds.

For feeds whose adapter is incremental (:attr:`~pipeline.scrape.feeds.base.FeedAdapter.incremental`: ordered ids,
a walk that stops at a ``since`` id; Mastodon's unless ``mastodon.incremental`` is false), one small JSON state file
per (site, hashtag) under ``<data_root>/feed_cursors/`` records the walks of the timeline:
``{"watermark": newest id of the last finished walk, "walks": [{"id", "start", "since_id", "top", "done",
"pages": [{"url", "next", "ids"}]}]}``. The driver's row builder reports every feed page it handles
(:meth:`FeedCursors.page_done`); the state is written at most every ``save_every_s``, whenever the crawl writes a
batch of rows, and at the end of a run.

At the start of a run (:meth:`FeedCursors.seed`) each recorded walk is checked against the ``posts`` rows that are
actually stored (written rows are durable; a kill drops only unwritten ones):

* a walk with a page whose statuses do not all have a row resumes from that page's URL (a killed crawl: its images
  and rows after that page may be lost, so the walk goes on from there, not from its last page);
* a walk whose pages all have rows but that did not reach its end (killed, or ``max_pages``) resumes from its last
  page's next URL;
* a finished walk whose pages all have rows is dropped and its newest id becomes the ``watermark``;
* then a new walk from the newest status down to ``since_id`` = the newest id any walk saw (the adapter's
  :meth:`~pipeline.scrape.feeds.base.FeedAdapter.incremental_since`: its parser keeps only newer statuses and stops at
  the first older one): an incremental rerun fetches
  the new statuses and a page or so, not every page again. Without any state: one walk of the whole timeline.

A lost or unreadable state file only costs re-listing (the crawl skips items that have rows); it never loses items.
People on the opt-out list have no rows, so their statuses are not counted as missing.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any
from urllib.parse import quote

import pyarrow.compute as pc
from pyarrow.fs import FileType

from pipeline.config import Config
from pipeline.scrape.feeds.base import FeedAdapter
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.store import FEED_CURSORS_DIR, POSTS_DS, DataRoot

log = logging.getLogger("facerank.scrape")

STATE_DIR = FEED_CURSORS_DIR  # the store names it (forget erases it too)


class FeedCursors:
    """The walk state of every incremental feed of one crawl (module docstring)."""

    def __init__(
        self,
        cfg: Config,
        root: DataRoot,
        optout: Any = None,
        save_every_s: float = 1.0,
        adapters: dict[str, FeedAdapter] | None = None,
    ):
        self.root = root
        self.optout = optout
        self.save_every_s = save_every_s
        adapters = adapters if adapters is not None else {s.name: adapter_for(s) for s in cfg.scrape.feeds}
        self.adapters = {name: ad for name, ad in adapters.items() if ad.incremental}
        self.sites = set(self.adapters)
        self.state: dict[tuple[str, str], dict] = {}
        self.walks: dict[str, dict] = {}  # walk id -> the walk (inside self.state)
        self.dirty: set[tuple[str, str]] = set()
        self.last_save = time.monotonic()
        self._done_ids: dict[str, set[str]] = {}

    def _max_id(self, site: str, ids: list[str | None]) -> str | None:
        """The newest of ``ids`` in ``site``'s order of ids."""
        ids = [i for i in ids if i]
        return max(ids, key=self.adapters[site].id_key) if ids else None

    def path(self, site: str, hashtag: str) -> str:
        return self.root.path(STATE_DIR, quote(site, safe=""), quote(hashtag, safe="") + ".json")

    # ---------------------------------------------------------------- start of a run
    def done_ids(self, site: str) -> set[str]:
        """The item ids of ``site`` with a ``posts`` row (any status: rows are final)."""
        if site not in self._done_ids:
            ids: set[str] = set()
            if self.root.has(POSTS_DS):
                t = self.root.read(POSTS_DS, columns=["site", "item_id"], filter=pc.field("site") == site)
                ids = {i for i in t.column("item_id").to_pylist() if i}
            self._done_ids[site] = ids
        return self._done_ids[site]

    def _load(self, site: str, hashtag: str) -> dict:
        path = self.path(site, hashtag)
        try:
            st = self.root.read_json(path) if self.root.fs.get_file_info(path).type != FileType.NotFound else None
        except Exception as e:  # unreadable: re-list (costs requests, loses nothing)
            log.warning("scrape: feed cursor %s unreadable (%s); walking the timeline again", path, type(e).__name__)
            st = None
        if not isinstance(st, dict) or not isinstance(st.get("walks"), list):
            st = {"watermark": None, "walks": []}
        return st

    def seed(self, site: str, hashtag: str, first_url: str) -> list[dict]:
        """The first page tasks of ``site``'s ``hashtag`` for this run."""
        base = {"kind": "page", "site": site, "hashtag": hashtag, "page": 1}
        if site not in self.sites:
            return [{**base, "url": first_url}]
        old = self._load(site, hashtag)
        done = self.done_ids(site)
        watermark, walks, tasks = old.get("watermark"), [], []
        tops = [watermark]
        for w in old["walks"]:
            tops.append(w.get("top"))
            resume = self._resume_url(w, done)
            if resume is None:
                if w.get("done"):
                    watermark = self._max_id(site, [watermark, w.get("top")])
                continue
            walk = self._walk(resume, w.get("since_id"), w.get("top"))
            walks.append(walk)
            tasks.append({**base, "url": resume, "walk": walk["id"]})
        newest = self._max_id(site, tops)
        if newest is not None or not walks:
            start = self.adapters[site].incremental_since(first_url, newest) if newest else first_url
            walk = self._walk(start, newest, None)
            walks.insert(0, walk)
            tasks.insert(0, {**base, "url": start, "walk": walk["id"]})
        self.state[(site, hashtag)] = {"watermark": watermark, "walks": walks}
        for w in walks:
            self.walks[w["id"]] = w
        self.dirty.add((site, hashtag))
        return tasks

    def _resume_url(self, w: dict, done: set[str]) -> str | None:
        """Where walk ``w`` goes on (module docstring), or None when it is finished."""
        pages = w.get("pages") or []
        for pg in pages:
            if not set(pg.get("ids") or []) <= done:
                return pg["url"]
        if not pages:
            return None if w.get("done") else w.get("start")
        return None if w.get("done") else pages[-1].get("next")

    @staticmethod
    def _walk(start: str, since_id: str | None, top: str | None) -> dict:
        return {"id": uuid.uuid4().hex[:12], "start": start, "since_id": since_id, "top": top, "done": False,
                "pages": []}  # fmt: skip

    # ---------------------------------------------------------------- during a run
    def page_done(self, task: dict, posts: list[dict], next_url: str | None) -> None:
        """A feed page was handled: its statuses, where the walk goes next (None: the walk reached its end)."""
        walk = self.walks.get(task.get("walk") or "")
        if walk is None:
            return
        site = task["site"]
        ids = []
        for p in posts:
            if not p.get("item_id"):
                continue
            if self.optout is not None and (
                self.optout.blocks("user", p.get("user_id"), site=site)
                or self.optout.blocks("acct", p.get("user_acct"))
            ):
                continue  # no row will be written: not missing
            ids.append(p["item_id"])
        walk["pages"].append({"url": task["url"], "next": next_url, "ids": ids})
        walk["top"] = self._max_id(site, [walk.get("top")] + [p["item_id"] for p in posts if p.get("item_id")])
        if next_url is None:
            walk["done"] = True
        self.dirty.add((site, task["hashtag"]))
        if time.monotonic() - self.last_save >= self.save_every_s:
            self.save()

    def save(self) -> None:
        """Write the state files that changed (each atomically)."""
        for key in sorted(self.dirty):
            self.root.write_json(self.path(*key), self.state[key])
        self.dirty.clear()
        self.last_save = time.monotonic()
