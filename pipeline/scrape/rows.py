"""The crawl's row builder: worker results (:mod:`pipeline.scrape.work`) into ``posts``/``staff``/``fetches`` rows.

:meth:`RowBuilder.handle` takes one result, hands its rows to the writer (:mod:`pipeline.scrape.writer`), counts
them (:mod:`pipeline.scrape.counters`) and returns the follow-up tasks (a feed's next page, images to fetch) for the
driver's frontier. It owns the per-run decisions:

* an item (site, item_id) is claimed once: not if it has a row from an earlier run (``skipped_done``), not twice in
  this run, not if its person is on the opt-out list (``opted_out``, and no row at all), for a post also not if its
  account (``user_acct``, ``kind=acct``: the same person through any server) is;
* non-academic staff get a ``skipped: non_academic`` row and no image fetch; academic staff without a photo an
  ``error: no_photo`` row;
* placeholders (:mod:`pipeline.scrape.staff.placeholders`): a person whose photo URL is a placeholder (pattern, SVG) or
  whose fetched photo is one (tiny, blank, SVG) gets ``no_photo: placeholder``; the rows of a staff site with a
  fetched photo wait until every photo of the site is fetched, then an image shared by ``placeholder_min_people``
  or more of its people is ``no_photo: placeholder`` for all of them (they keep ``image_sha256``);
* posts the adapter marks ``skip`` (a Mastodon video, no image, sensitive media) get a ``skipped`` row with that
  reason and no fetch (:func:`post_verdict`, which ``scrape check-feed`` asks too); with ``cursors``
  (:mod:`pipeline.scrape.feeds.cursors`) each feed page handled is recorded there;
* image dedupe: each image URL is fetched once per run; rows sharing a URL wait for its one fetch and count as
  duplicates; identical bytes from different URLs are stored once by the worker, and are decided per sha256 here
  (workers may race on the same bytes).
"""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import Config, FeedSite, StaffSite
from pipeline.privacy import OptOut
from pipeline.scrape.counters import CrawlCounters
from pipeline.scrape.feeds.cursors import FeedCursors
from pipeline.scrape.staff.people import is_academic
from pipeline.scrape.staff.placeholders import STATUS_NO_PHOTO, SharedImages
from pipeline.scrape.writer import RowWriter
from pipeline.store import POSTS_DS, STAFF_DS, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, now

_IMAGE_KEYS = ("status", "reason", "sha", "width", "height", "placeholder")
OPTED_OUT, FETCH = "opted_out", "fetch"  # post_verdict's outcomes besides a row's status


def post_verdict(p: dict, optout: OptOut | None, site: str) -> tuple[str, str | None]:
    """What the crawl does with a parsed feed post (one not stored before), before any image is fetched:
    (``opted_out``, ``user`` or ``acct``): no row at all; (``error``, reason) or (``skipped``, reason): a row with
    that status and no fetch; (``fetch``, None): its image is fetched. A post without an id is (``error``, reason)
    and gets no row (it is counted). ``optout`` None: no opt-out list is consulted (``scrape check-feed`` without
    one)."""
    if not p.get("item_id"):
        return STATUS_ERROR, p.get("error") or "bad_post"
    if optout is not None and optout.blocks("user", p.get("user_id"), site=site):
        return OPTED_OUT, "user"
    if optout is not None and optout.blocks("acct", p.get("user_acct")):  # the account, on whichever server
        return OPTED_OUT, "acct"
    if p.get("error"):
        return STATUS_ERROR, p["error"]
    if p.get("skip"):  # no image to fetch (a video, no media, sensitive): a skipped row with the reason
        return STATUS_SKIPPED, p["skip"]
    return FETCH, None


def post_row(site: str, hashtag: str, p: dict, scraped: dt.datetime, min_age_s: float) -> dict[str, Any]:
    """A ``posts`` row (without status/reason and image columns) for post ``p`` of a feed page."""
    row = {
        "site": site,
        "item_id": p["item_id"],
        "hashtag": hashtag,
        "user_id": p.get("user_id"),
        "followers": p.get("followers"),
        "likes": p.get("likes"),
        "tags": p.get("tags"),
        "posted_at": p.get("posted_at"),
        "scraped_at": scraped,
        "too_young": None,
        "image_url": p.get("image_url"),
        "user_acct": p.get("user_acct"),
        "reblogs": p.get("reblogs"),
        "post_url": p.get("post_url"),
        "counts_from": p.get("counts_from"),
        "replies": p.get("replies"),
        "quotes": p.get("quotes"),
        "reactions": p.get("reactions"),
    }
    if p.get("posted_at") is not None:
        row["too_young"] = (scraped - p["posted_at"]).total_seconds() < min_age_s
    return row


def staff_row(
    site: StaffSite, p: dict, academic: bool, scraped: dt.datetime, profile_url: str | None = None
) -> dict[str, Any]:
    """A ``staff`` row (without status/reason and image columns) for person ``p`` of a staff page; ``profile_url``:
    their own page, when the listing links one."""
    return {
        "site": site.name,
        "item_id": p["item_id"],
        "department": site.department,
        "name": p.get("name"),
        "role": p.get("role"),
        "is_academic": academic,
        "page_url": p.get("page_url"),
        "profile_url": profile_url,
        "image_url": p.get("image_url"),
        "scraped_at": scraped,
    }


def staff_page_fetch_row(site: str, page: dict, scraped: dt.datetime) -> dict[str, Any]:
    """The ``fetches`` row of one staff page, static or rendered (HTTP status and size when known)."""
    return {
        "url": page["url"],
        "site": site,
        "kind": "page",
        "host": urlsplit(page["url"]).hostname,
        "status": page["status"],
        "http_status": page.get("http_status"),
        "reason": page["reason"],
        "attempts": page.get("attempts") or 1,
        "bytes": page.get("bytes"),
        "image_sha256": None,
        "fetched_at": scraped,
    }


class RowBuilder:
    """Results in, rows out (to ``writer``), follow-up tasks returned. ``done``: (dataset, site, item_id) written
    before this run."""

    def __init__(
        self,
        cfg: Config,
        counters: CrawlCounters,
        writer: RowWriter,
        done: set,
        optout: OptOut,
        cursors: FeedCursors | None = None,
    ):
        self.sc = cfg.scrape
        self.cursors = cursors  # FeedCursors (pipeline/scrape/feeds/cursors.py): feed walks that resume and stop
        self.n = counters
        self.writer = writer
        self.done = done
        self.optout = optout
        self.seen: set[tuple[str, str, str]] = set()
        self.url_done: dict[str, dict] = {}  # image URL -> its fetch outcome (status, reason, sha, width, height)
        self.waiting: dict[str, list[tuple[str, dict]]] = {}  # image URL being fetched -> rows waiting for it
        self.sha_new: dict[str, bool] = {}  # sha256 fetched this run -> stored by this run
        self.shared = SharedImages()  # (site, sha256) -> people of the site with that photo
        self.site_pending: dict[str, int] = {}  # staff site -> its rows still waiting for a photo
        self.site_held: dict[str, list[dict]] = {}  # staff site -> its rows with a fetched photo, not written yet

    def handle(self, r: dict) -> list[dict]:
        """Turn one task result into rows; returns the new tasks it leads to."""
        self.writer.fetch(r.get("fetch"))
        kind = r["task"]["kind"]
        if kind == "page":
            return self._page(r)
        if kind == "image":
            return self._image(r)
        return self._staff(r)

    # ---------------------------------------------------------------- feeds
    def _site(self, name: str) -> FeedSite:
        return next(s for s in self.sc.feeds if s.name == name)

    def _page(self, r: dict) -> list[dict]:
        task = r["task"]
        if r["status"] != STATUS_OK:
            self.n.page_failed(r["reason"])
            return []
        self.n.pages += 1
        site, scraped = self._site(task["site"]), now()
        tasks = []
        for reason, n in (r.get("bad_posts") or {}).items():  # posts without an id: no row, a count
            self.n.page_errors_by_reason[reason] += n
        for p in r["posts"]:
            tasks += self._post(site, task["hashtag"], p, scraped)
        if r.get("next_url") and task["page"] < site.max_pages:
            tasks.append({**task, "page": task["page"] + 1, "url": r["next_url"], "deaths": 0})
        if self.cursors is not None:
            self.cursors.page_done(task, r["posts"], r.get("next_url"))
        return tasks

    def _post(self, site: FeedSite, hashtag: str, p: dict, scraped: dt.datetime) -> list[dict]:
        item = p.get("item_id")
        if not item:
            self.n.page_errors_by_reason[p.get("error") or "bad_post"] += 1
            return []
        if not self._claim((POSTS_DS, site.name, item)):
            return []
        verdict, reason = post_verdict(p, self.optout, site.name)
        if verdict == OPTED_OUT:  # the user on this site, or the account on whichever server it was seen
            self.n.opted_out += 1
            return []
        row = post_row(site.name, hashtag, p, scraped, self.sc.min_post_age_days * 86400)
        if verdict != FETCH:  # an error row, or skipped with the adapter's reason (a video, no image, sensitive)
            self._emit(POSTS_DS, row, verdict, reason)
            return []
        return self._want_image(POSTS_DS, row)

    # ---------------------------------------------------------------- staff
    def _staff(self, r: dict) -> list[dict]:
        site = self.sc.staff[r["task"]["index"]]
        if "pages" not in r:  # the task itself failed (internal error / worker died)
            self.n.page_failed(r.get("reason"))
            return []
        scraped = now()
        tasks = []
        # a token held while this listing is read: a photo known at once must not release the site's rows early
        self.site_pending[site.name] = self.site_pending.get(site.name, 0) + 1
        for page in r["pages"]:
            self.writer.fetch(staff_page_fetch_row(site.name, page, scraped))
            if page["status"] != STATUS_OK:
                self.n.page_failed(page["reason"])
                continue
            self.n.pages += 1
            extras = page.get("extras") or {}
            for p in page["people"]:
                tasks += self._person(site, p, scraped, extras.get(p["item_id"]) or {})
        for row in r.get("fetches") or []:  # the profile pages followed
            self.writer.fetch(row)
        self.site_pending[site.name] -= 1
        self._release_site(site.name)
        return tasks

    def _person(self, site: StaffSite, p: dict, scraped: dt.datetime, extra: dict | None = None) -> list[dict]:
        if not self._claim((STAFF_DS, site.name, p["item_id"]), "person", p["item_id"]):
            return []
        academic = is_academic(p.get("role"), self.sc.non_academic_roles)
        row = staff_row(site, p, academic, scraped, (extra or {}).get("profile_url"))
        if not academic:
            self.n.non_academic += 1
            row["image_url"] = None  # not fetched: we keep no photo of non-academic staff
            self._emit(STAFF_DS, row, STATUS_SKIPPED, "non_academic")
            return []
        if not p.get("image_url"):
            self._emit(STAFF_DS, row, STATUS_ERROR, "no_photo")
            return []
        if (extra or {}).get("placeholder"):  # the URL says so: not fetched
            self._emit(STAFF_DS, row, STATUS_NO_PHOTO, "placeholder")
            return []
        self.site_pending[site.name] = self.site_pending.get(site.name, 0) + 1
        return self._want_image(STAFF_DS, row)

    def _claim(self, key: tuple[str, str, str], optout_kind: str | None = None, person: str | None = None) -> bool:
        """True when an item is new: not written before, not seen in this run, its person (``optout_kind``, when
        given) not opted out."""
        if key in self.done:
            self.n.skipped_done += 1
            return False
        if key in self.seen:
            return False
        self.seen.add(key)
        if optout_kind is not None and self.optout.blocks(optout_kind, person, site=key[1]):
            self.n.opted_out += 1
            return False
        return True

    # ---------------------------------------------------------------- images
    def _want_image(self, ds: str, row: dict) -> list[dict]:
        """Complete ``row`` now if its image URL was fetched, else wait for it; an image task when it is new."""
        url = row["image_url"]
        if url in self.url_done:
            self.n.duplicates += 1 if self.url_done[url]["status"] == STATUS_OK else 0
            self._complete(ds, row, self.url_done[url])
            return []
        if url in self.waiting:
            self.waiting[url].append((ds, row))
            return []
        self.waiting[url] = [(ds, row)]
        task = {"kind": "image", "url": url, "site": row["site"]}
        if ds == STAFF_DS:
            task["staff"] = True
        return [task]

    def _image(self, r: dict) -> list[dict]:
        url = r["task"]["url"]
        res = {k: r.get(k) for k in _IMAGE_KEYS}
        self.url_done[url] = res
        if r["status"] == STATUS_OK:
            self._count_fetched(r["sha"], bool(r.get("new")))
        for i, (ds, row) in enumerate(self.waiting.pop(url, [])):
            if i and r["status"] == STATUS_OK:
                self.n.duplicates += 1
            self._complete(ds, row, res)
        return []

    def _count_fetched(self, sha: str, new: bool) -> None:
        """Stored = distinct new bytes this run; the first report of a sha may come from the worker that lost the
        race to store it, so a later ``new`` report turns that duplicate into the stored one."""
        self.n.images_fetched += 1
        prev = self.sha_new.get(sha)
        if prev is None:
            self.sha_new[sha] = new
            if new:
                self.n.images_stored += 1
            else:
                self.n.duplicates += 1
        elif new and not prev:
            self.sha_new[sha] = True
            self.n.images_stored += 1
        else:
            self.n.duplicates += 1

    def _complete(self, ds: str, row: dict, res: dict) -> None:
        if ds == STAFF_DS:
            self._complete_staff(row, res)
            return
        if res["reason"] == "opted_out":
            self.n.opted_out += 1
            return
        if res["status"] == STATUS_OK:
            row.update(image_sha256=res["sha"], width=res["width"], height=res["height"])
        self._emit(ds, row, res["status"], res["reason"])

    def _complete_staff(self, row: dict, res: dict) -> None:
        """A staff row's photo is known: placeholders and failures are written now, good photos held for the site."""
        site = row["site"]
        self.site_pending[site] = self.site_pending.get(site, 1) - 1
        if res["reason"] == "opted_out":
            self.n.opted_out += 1
        elif res.get("placeholder"):
            if res["status"] == STATUS_OK:
                row.update(image_sha256=res["sha"], width=res["width"], height=res["height"])
            self._emit(STAFF_DS, row, STATUS_NO_PHOTO, "placeholder")
        elif res["status"] != STATUS_OK:
            self._emit(STAFF_DS, row, res["status"], res["reason"])
        else:
            row.update(image_sha256=res["sha"], width=res["width"], height=res["height"])
            self.shared.add(site, res["sha"])
            self.site_held.setdefault(site, []).append(row)
        self._release_site(site)

    def _release_site(self, site: str) -> None:
        """Once no row of ``site`` waits for a photo: its held rows, a photo shared by enough people a placeholder."""
        if self.site_pending.get(site, 0) > 0:
            return
        cfg = next((s for s in self.sc.staff if s.name == site), None)
        min_people = cfg.placeholder_min_people if cfg is not None else 0
        for row in self.site_held.pop(site, []):
            if self.shared.placeholder(site, row["image_sha256"], min_people):
                self._emit(STAFF_DS, row, STATUS_NO_PHOTO, "placeholder")
            else:
                self._emit(STAFF_DS, row, STATUS_OK, None)

    def _emit(self, ds: str, row: dict, status: str, reason: str | None) -> None:
        row["status"], row["reason"] = status, reason
        if status == STATUS_SKIPPED and reason == "robots":
            self.n.skipped_robots += 1
        elif status == STATUS_SKIPPED and reason == "noai":
            self.n.skipped_noai += 1
        elif status == STATUS_ERROR:
            self.n.errors += 1
            self.n.errors_by_reason[reason or "unknown"] += 1
        if ds == POSTS_DS and row.get("too_young"):
            self.n.too_young += 1
        self.writer.add(ds, row)
