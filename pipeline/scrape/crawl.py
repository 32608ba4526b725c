"""The crawl: a frontier on the driver, a pool of Ray actors fetching, rows written in atomic batches.

Shape::

    driver (frontier, dedup, row buffers, writer)  ──tasks──▶  HttpWorker × num_actors   (pages + images, threads)
                                                   ──tasks──▶  BrowserWorker × num_browsers (staff pages, Chromium)
                          all workers share one HostLimiter actor (per-host rate + concurrency)

* The frontier starts from every feed's first page and every staff site. A feed page's result adds its next page and
  one image task per post not already done; a staff site's result adds one image task per academic person. Each
  image URL is fetched once per run even when several posts share it; images are stored under their sha256 by the
  worker (``DataRoot.put_image``), so identical bytes from different URLs are stored once (counted as duplicates).
* Rows go to ``posts``, ``staff`` and ``fetches`` in batches of ``scrape.batch_rows`` with ``DataRoot.write_part``
  (temp file, then rename). ``fetches`` is flushed before ``posts``/``staff``, so a written item always has its fetch
  row. Image bytes are stored before their row, so a kill leaves at most unreferenced images, never a row without
  its image.
* Resumable: items are keyed by (site, item_id); a rerun lists the feed pages and staff pages again (that is how it
  finds the items) and fetches only the items with no row yet, so a run killed at any moment and rerun ends with
  exactly the rows of an uninterrupted run. ``fetches`` holds one row per URL (its first final outcome).
* Reruns and earlier failures: rows with status ``skipped`` (robots, noai, non-academic) and ``error`` are final —
  a rerun does not fetch those items again — unless ``scrape.retry_errors`` is true: then the run first removes
  every ``error`` row from ``posts``, ``staff`` and ``fetches`` (one atomic rewrite per part file) and fetches those
  items again. Feed/staff pages that failed leave only a ``fetches`` row (there is no item to key), and are always
  fetched again on the next run.
* A worker actor that dies (``ray.kill``, OOM, a crash) is replaced; its in-flight tasks go back to the frontier; a
  task that kills three workers becomes an error row ``worker_died``. An unexpected exception inside a task becomes
  an error row ``internal:<Type>``. An HTTP batch still running after ``scrape.batch_timeout()`` (a backstop: every
  fetch has its own deadline) is abandoned: its tasks become error rows ``batch_timeout``, its actor is killed and
  replaced. Nothing ends the stage early.
* People on the opt-out list (``optout``: kind user/person/image) are skipped without writing any row about them.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlsplit

import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from pipeline.config import Config
from pipeline.privacy import OptOut
from pipeline.runtime import log
from pipeline.scrape.egress import policy_for
from pipeline.scrape.feeds import FeedParseError, adapter_for
from pipeline.scrape.http import FetchResult, HttpClient, resolves_public
from pipeline.scrape.ratelimit import HostLimiter, LocalLimiter, RayLimiter
from pipeline.scrape.staff import Browser, is_academic
from pipeline.store import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, DataRoot, now

MAX_DEATHS_PER_TASK = 3
INFLIGHT_PER_ACTOR = 2


class CrawlInterrupted(RuntimeError):
    """Raised by :func:`crawl` when ``stop_after_flushes`` is reached (fault injection for tests)."""


def allowed_domains(cfg: Config) -> list[str]:
    """``scrape.allowed_domains`` or, when empty, the hosts of every configured feed and staff site."""
    if cfg.scrape.allowed_domains:
        return list(cfg.scrape.allowed_domains)
    urls = [f.base_url for f in cfg.scrape.feeds] + [u for s in cfg.scrape.staff for u in s.start_urls]
    return sorted({h for h in (urlsplit(u).hostname for u in urls) if h})


def _internal(task: dict, e: BaseException) -> dict:
    return {"task": task, "status": STATUS_ERROR, "reason": f"internal:{type(e).__name__}", "fetch": None}


def _limiter(cfg: Config, handle: Any) -> Callable:
    if handle is not None:
        try:
            owner = ray.get_runtime_context().get_actor_id() or ""
        except Exception:
            owner = ""
        return RayLimiter(handle, owner).slot
    h = cfg.scrape.http
    return LocalLimiter(h.requests_per_second_per_host, h.max_concurrency_per_host).slot


class _HttpWork:
    """The body of an HTTP worker (plain class: usable without Ray in tests and the benchmark)."""

    def __init__(self, cfg: Config, domains: list[str], limiter: Any = None, optout_images: OptOut | None = None):
        self.cfg = cfg
        self.root = DataRoot(cfg.data_root)
        self.client = HttpClient(cfg.scrape.http, domains, _limiter(cfg, limiter))
        self.pool = ThreadPoolExecutor(cfg.scrape.threads_per_actor, thread_name_prefix="fetch")
        self.adapters = {s.name: adapter_for(s) for s in cfg.scrape.feeds}
        self.optout_images = optout_images

    def run(self, tasks: list[dict]) -> tuple[list[dict], list[dict]]:
        """Fetch a batch of page/image tasks concurrently; returns (results, robots fetch rows)."""
        results = list(self.pool.map(self._safe, tasks))
        robots = [r.fetch_row(urlsplit(r.url).hostname or "") for r in self.client.robots.drain()]
        return results, robots

    def _safe(self, task: dict) -> dict:
        try:
            return self._page(task) if task["kind"] == "page" else self._image(task)
        except Exception as e:  # one bad task must never take the batch down
            return _internal(task, e)

    def _page(self, task: dict) -> dict:
        res = self.client.fetch_page(task["url"])
        out: dict[str, Any] = {"task": task, "posts": [], "next_url": None}
        if res.ok:
            try:
                page = self.adapters[task["site"]].parse(res.data or b"", task["url"], task["hashtag"], task["page"])
                out["posts"], out["next_url"] = page.posts, page.next_url
            except FeedParseError:
                res.status, res.reason = STATUS_ERROR, "parse_error"
        out["status"], out["reason"] = res.status, res.reason
        out["fetch"] = res.fetch_row(task["site"])
        return out

    def _image(self, task: dict) -> dict:
        res: FetchResult = self.client.fetch_image(task["url"])
        sha, new = None, False
        if res.ok:
            from pipeline.store import sha256_bytes

            sha = sha256_bytes(res.data or b"")
            if self.optout_images is not None and self.optout_images.blocks("image", sha):
                res.status, res.reason, sha = STATUS_SKIPPED, "opted_out", None
            else:
                new = not self.root.has_image(sha)
                if new:
                    self.root.put_image(res.data or b"")
        return {
            "task": task,
            "status": res.status,
            "reason": res.reason,
            "sha": sha,
            "width": res.width,
            "height": res.height,
            "new": new,
            "fetch": res.fetch_row(task["site"], sha),
        }


@ray.remote
class HttpWorker(_HttpWork):
    """A Ray actor fetching feed pages and images with ``scrape.threads_per_actor`` threads."""

    def ping(self) -> bool:
        return True


@ray.remote
class BrowserWorker:
    """A Ray actor owning one headless Chromium, rendering staff sites."""

    def __init__(self, cfg: Config, domains: list[str], limiter: Any = None):
        self.cfg = cfg
        self.limit = _limiter(cfg, limiter)
        self.client = HttpClient(cfg.scrape.http, domains, self.limit)
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
        out = []
        for task in tasks:
            site = self.cfg.scrape.staff[task["index"]]
            try:
                pages = self.browser.scrape_site(site, self._may_fetch)
                out.append({"task": task, "pages": [dataclasses.asdict(p) for p in pages]})
            except Exception as e:
                out.append(_internal(task, e))
        robots = [r.fetch_row(urlsplit(r.url).hostname or "") for r in self.client.robots.drain()]
        return out, robots

    def shutdown(self) -> bool:
        self.browser.quit()
        return True


# ---------------------------------------------------------------------------------------------------- driver
def drop_error_rows(root: DataRoot, dataset: str) -> int:
    """Remove rows with status ``error`` from ``dataset`` (each part file rewritten atomically); returns how many."""
    removed = 0
    for path in root.part_files(dataset):
        t = pq.read_table(path, filesystem=root.fs)
        bad = pc.fill_null(pc.equal(t.column("status"), STATUS_ERROR), False)
        n = pc.sum(bad).as_py() or 0
        if n:
            root.rewrite_part(path, t.filter(pc.invert(bad)))
            removed += n
    return removed


@dataclasses.dataclass
class _Pool:
    name: str
    make: Callable[[], Any]
    size: int
    actors: list = dataclasses.field(default_factory=list)
    inflight: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    replaced: int = 0

    def start(self) -> None:
        self.actors = [self.make() for _ in range(self.size)]


@dataclasses.dataclass
class CrawlProgress:
    """Passed to ``on_progress`` after each handled result (tests use it to inject faults)."""

    calls_done: int
    http_actors: list
    browser_actors: list
    summary: dict


class _Crawl:
    def __init__(self, cfg: Config, stop_after_flushes: int | None, on_progress: Callable | None):
        self.cfg = cfg
        self.sc = cfg.scrape
        self.root = DataRoot(cfg.data_root)
        self.stop_after_flushes = stop_after_flushes
        self.on_progress = on_progress
        self.t0 = time.monotonic()
        self.sum: dict[str, Any] = {
            "pages": 0,
            "pages_failed": 0,
            "posts_written": 0,
            "staff_written": 0,
            "images_fetched": 0,
            "images_stored": 0,
            "duplicates": 0,
            "skipped_robots": 0,
            "skipped_noai": 0,
            "skipped_done": 0,
            "opted_out": 0,
            "non_academic": 0,
            "too_young": 0,
            "errors": 0,
            "errors_by_reason": collections.Counter(),
            "page_errors_by_reason": collections.Counter(),
            "workers_replaced": 0,
            "retried_error_rows": 0,
        }
        self.pages_q: collections.deque = collections.deque()
        self.images_q: collections.deque = collections.deque()
        self.staff_q: collections.deque = collections.deque()
        self.waiting: dict[str, list[tuple[str, dict]]] = {}
        self.url_done: dict[str, dict] = {}
        self.sha_new: dict[str, bool] = {}
        self.bufs: dict[str, list[dict]] = {"fetches": [], "posts": [], "staff": []}
        self.flushes = 0
        self.calls_done = 0
        self.inflight: dict[Any, tuple[_Pool, Any, list[dict]]] = {}
        self.submitted_at: dict[Any, float] = {}  # ref -> when its batch was handed out (the HTTP batches' bound)
        self.bar = None

    # ---------------------------------------------------------------- setup
    def prepare(self) -> None:
        root = self.root  # the stage's lock cleaned posts/staff/fetches _tmp/ before (DataRoot.stage_lock)
        if self.sc.retry_errors:
            self.sum["retried_error_rows"] = sum(drop_error_rows(root, ds) for ds in ("posts", "staff"))
            drop_error_rows(root, "fetches")
        self.done = {("posts", s, i) for s, i in root.done_keys("posts")}
        self.done |= {("staff", s, i) for s, i in root.done_keys("staff")}
        self.seen_items: set[tuple[str, str, str]] = set()
        self.fetch_done: set[str] = set(root.done_keys("fetches"))
        self.optout = OptOut(root, self.cfg.privacy)
        for site in self.sc.feeds:
            ad = adapter_for(site)
            for tag in site.hashtags:
                self.pages_q.append(
                    {"kind": "page", "site": site.name, "hashtag": tag, "page": 1, "url": ad.first_url(tag)}
                )
        for i, _site in enumerate(self.sc.staff):
            self.staff_q.append({"kind": "staff", "index": i})

    def start_actors(self) -> None:
        h = self.sc.http
        domains = allowed_domains(self.cfg)
        lease_ttl = h.total_timeout_s * h.retry.attempts + h.retry.backoff_max_s * h.retry.attempts + 60
        self.limiter = HostLimiter.remote(h.requests_per_second_per_host, h.max_concurrency_per_host, lease_ttl)
        cpus = self.sc.cpus_per_actor
        opt_img = self.optout
        self.http = _Pool(
            "http",
            lambda: HttpWorker.options(num_cpus=cpus, max_concurrency=INFLIGHT_PER_ACTOR).remote(
                self.cfg, domains, self.limiter, opt_img
            ),
            self.sc.num_actors,
        )
        n_browsers = min(self.sc.selenium.num_browsers, len(self.sc.staff))
        self.browsers = _Pool(
            "browser",
            lambda: BrowserWorker.options(num_cpus=cpus).remote(self.cfg, domains, self.limiter),
            n_browsers,
        )
        self.http.start()
        self.browsers.start()
        # a batch's bound (scrape.batch_timeout()) runs from its submission: hand out the first ones once workers are up
        ray.wait([a.ping.remote() for a in self.http.actors], num_returns=len(self.http.actors), timeout=120)

    # ---------------------------------------------------------------- dispatch
    def _dispatch(self) -> None:
        per = self.sc.tasks_per_call
        for actor in list(self.http.actors):
            while self.http.inflight[actor] < INFLIGHT_PER_ACTOR and (self.pages_q or self.images_q):
                batch = []
                while len(batch) < per and (self.pages_q or self.images_q):
                    batch.append(self.pages_q.popleft() if self.pages_q else self.images_q.popleft())
                self._submit(self.http, actor, batch)
        for actor in list(self.browsers.actors):
            while self.browsers.inflight[actor] < 1 and self.staff_q:
                self._submit(self.browsers, actor, [self.staff_q.popleft()])

    def _submit(self, pool: _Pool, actor: Any, batch: list[dict]) -> None:
        ref = actor.run.remote(batch)
        self.inflight[ref] = (pool, actor, batch)
        self.submitted_at[ref] = time.monotonic()
        pool.inflight[actor] += 1

    def _replace(self, pool: _Pool, actor: Any) -> None:
        if actor in pool.actors:
            try:  # free the host slots the dead actor held, rather than waiting for their leases to expire
                self.limiter.release_owner.remote(actor._actor_id.hex())
            except Exception:
                pass
            pool.actors.remove(actor)
            pool.inflight.pop(actor, None)
            if pool.replaced < 2 * pool.size + 2:
                pool.replaced += 1
                self.sum["workers_replaced"] += 1
                pool.actors.append(pool.make())
                log.warning("scrape: a %s worker died; started a replacement", pool.name)

    def _requeue(self, batch: list[dict]) -> None:
        for task in batch:
            task["deaths"] = task.get("deaths", 0) + 1
            if task["deaths"] >= MAX_DEATHS_PER_TASK:
                self._handle_result({"task": task, "status": STATUS_ERROR, "reason": "worker_died", "fetch": None})
                continue
            {"page": self.pages_q, "image": self.images_q, "staff": self.staff_q}[task["kind"]].append(task)

    # ---------------------------------------------------------------- results
    def _fetch_row(self, row: dict | None) -> None:
        if row and row["url"] not in self.fetch_done:
            self.fetch_done.add(row["url"])
            self.bufs["fetches"].append(row)

    def _handle_result(self, r: dict) -> None:
        kind = r["task"]["kind"]
        self._fetch_row(r.get("fetch"))
        if kind == "page":
            self._page_result(r)
        elif kind == "image":
            self._image_result(r)
        else:
            self._staff_result(r)

    def _page_failed(self, reason: str | None) -> None:
        self.sum["pages_failed"] += 1
        self.sum["page_errors_by_reason"][reason or "unknown"] += 1

    def _page_result(self, r: dict) -> None:
        task = r["task"]
        if r["status"] != STATUS_OK:
            self._page_failed(r["reason"])
            return
        self.sum["pages"] += 1
        site = next(s for s in self.sc.feeds if s.name == task["site"])
        scraped = now()
        min_age = self.sc.min_post_age_days * 86400
        for p in r["posts"]:
            item = p.get("item_id")
            if not item:
                self.sum["page_errors_by_reason"][p.get("error") or "bad_post"] += 1
                continue
            if not self._claim(("posts", site.name, item), "user", p.get("user_id")):
                continue
            row = {
                "site": site.name,
                "item_id": item,
                "hashtag": task["hashtag"],
                "user_id": p.get("user_id"),
                "followers": p.get("followers"),
                "likes": p.get("likes"),
                "tags": p.get("tags"),
                "posted_at": p.get("posted_at"),
                "scraped_at": scraped,
                "too_young": None,
                "image_url": p.get("image_url"),
            }
            if p.get("posted_at") is not None:
                row["too_young"] = (scraped - p["posted_at"]).total_seconds() < min_age
            if p.get("error"):
                self._emit("posts", row, STATUS_ERROR, p["error"])
                continue
            self._want_image("posts", row)
        if r.get("next_url") and task["page"] < site.max_pages:
            self.pages_q.append({**task, "page": task["page"] + 1, "url": r["next_url"], "deaths": 0})

    def _claim(self, key: tuple[str, str, str], optout_kind: str, person: str | None) -> bool:
        """True when an item is new: not written before, not seen in this run, its person not opted out."""
        if key in self.done:
            self.sum["skipped_done"] += 1
            return False
        if key in self.seen_items:
            return False
        self.seen_items.add(key)
        if self.optout.blocks(optout_kind, person, site=key[1]):
            self.sum["opted_out"] += 1
            return False
        return True

    def _staff_result(self, r: dict) -> None:
        site = self.sc.staff[r["task"]["index"]]
        if "pages" not in r:  # the task itself failed (internal error / worker died)
            self._page_failed(r.get("reason"))
            return
        scraped = now()
        for page in r["pages"]:
            self._fetch_row(
                {
                    "url": page["url"],
                    "site": site.name,
                    "kind": "page",
                    "host": urlsplit(page["url"]).hostname,
                    "status": page["status"],
                    "http_status": None,
                    "reason": page["reason"],
                    "attempts": 1,
                    "bytes": None,
                    "image_sha256": None,
                    "fetched_at": scraped,
                }
            )
            if page["status"] != STATUS_OK:
                self._page_failed(page["reason"])
                continue
            self.sum["pages"] += 1
            for p in page["people"]:
                if not self._claim(("staff", site.name, p["item_id"]), "person", p["item_id"]):
                    continue
                academic = is_academic(p.get("role"), self.sc.non_academic_roles)
                row = {
                    "site": site.name,
                    "item_id": p["item_id"],
                    "department": site.department,
                    "name": p.get("name"),
                    "role": p.get("role"),
                    "is_academic": academic,
                    "page_url": p.get("page_url"),
                    "image_url": p.get("image_url"),
                    "scraped_at": scraped,
                }
                if not academic:
                    self.sum["non_academic"] += 1
                    row["image_url"] = None  # not fetched: we keep no photo of non-academic staff
                    self._emit("staff", row, STATUS_SKIPPED, "non_academic")
                elif not p.get("image_url"):
                    self._emit("staff", row, STATUS_ERROR, "no_photo")
                else:
                    self._want_image("staff", row)

    def _want_image(self, ds: str, row: dict) -> None:
        url = row["image_url"]
        if url in self.url_done:
            self.sum["duplicates"] += 1 if self.url_done[url]["status"] == STATUS_OK else 0
            self._complete(ds, row, self.url_done[url])
        elif url in self.waiting:
            self.waiting[url].append((ds, row))
        else:
            self.waiting[url] = [(ds, row)]
            self.images_q.append({"kind": "image", "url": url, "site": row["site"]})

    def _image_result(self, r: dict) -> None:
        url = r["task"]["url"]
        res = {k: r.get(k) for k in ("status", "reason", "sha", "width", "height")}
        self.url_done[url] = res
        if r["status"] == STATUS_OK:
            self.sum["images_fetched"] += 1
            # stored = distinct new bytes this run; workers may race on the same bytes, so decide per sha here
            new, prev = bool(r.get("new")), self.sha_new.get(r["sha"])
            if prev is None:
                self.sha_new[r["sha"]] = new
                self.sum["images_stored" if new else "duplicates"] += 1
            else:
                self.sum["duplicates"] += 1
                if new and not prev:  # the first report came from the worker that lost the race
                    self.sha_new[r["sha"]] = True
                    self.sum["images_stored"] += 1
                    self.sum["duplicates"] -= 1
        waiting = self.waiting.pop(url, [])
        for i, (ds, row) in enumerate(waiting):
            if i and r["status"] == STATUS_OK:
                self.sum["duplicates"] += 1
            self._complete(ds, row, res)

    def _complete(self, ds: str, row: dict, res: dict) -> None:
        if res["reason"] == "opted_out":
            self.sum["opted_out"] += 1
            return
        if res["status"] == STATUS_OK:
            row.update(image_sha256=res["sha"], width=res["width"], height=res["height"])
        self._emit(ds, row, res["status"], res["reason"])

    def _emit(self, ds: str, row: dict, status: str, reason: str | None) -> None:
        row["status"], row["reason"] = status, reason
        if status == STATUS_SKIPPED and reason == "robots":
            self.sum["skipped_robots"] += 1
        elif status == STATUS_SKIPPED and reason == "noai":
            self.sum["skipped_noai"] += 1
        elif status == STATUS_ERROR:
            self.sum["errors"] += 1
            self.sum["errors_by_reason"][reason or "unknown"] += 1
        if ds == "posts" and row.get("too_young"):
            self.sum["too_young"] += 1
        self.bufs[ds].append(row)
        if self.bar is not None:
            self.bar.update(1)
        if len(self.bufs["posts"]) + len(self.bufs["staff"]) >= self.sc.batch_rows:
            self.flush()

    def flush(self) -> None:
        """Write the buffered rows: fetches first, then posts and staff (each part atomic)."""
        if not any(self.bufs.values()):
            return
        for ds in ("fetches", "posts", "staff"):
            rows, self.bufs[ds] = self.bufs[ds], []
            if rows:
                self.root.write_part(ds, rows)
                if ds in ("posts", "staff"):
                    self.sum[f"{ds}_written"] += len(rows)
        self.flushes += 1
        if self.stop_after_flushes is not None and self.flushes >= self.stop_after_flushes:
            raise CrawlInterrupted(f"stopped after {self.flushes} flushes (fault injection)")

    # ---------------------------------------------------------------- loop
    def loop(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(desc="scrape", unit="row", disable=None, mininterval=1.0)
        try:
            while True:
                self._dispatch()
                if not self.inflight:
                    if self.pages_q or self.images_q or self.staff_q:
                        if not self.http.actors and (self.pages_q or self.images_q):
                            self._fail_all([self.pages_q, self.images_q], "no_workers")
                        if not self.browsers.actors and self.staff_q:
                            self._fail_all([self.staff_q], "no_workers")
                        continue
                    break
                ready, _ = ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
                self._abandon_overdue(set(ready))
                for ref in ready:
                    pool, actor, batch = self.inflight.pop(ref)
                    self.submitted_at.pop(ref, None)
                    pool.inflight[actor] -= 1
                    try:
                        results, robots = ray.get(ref)
                    except ray.exceptions.RayActorError:
                        self._replace(pool, actor)
                        self._requeue(batch)
                        continue
                    except Exception as e:  # a bug in a worker: every task of the batch becomes an error row
                        log.warning("scrape: a %s batch failed: %r", pool.name, e)
                        results, robots = [_internal(t, e) for t in batch], []
                    for row in robots:
                        self._fetch_row(row)
                    for r in results:
                        self._handle_result(r)
                    self.calls_done += 1
                    if self.on_progress is not None:
                        self.on_progress(
                            CrawlProgress(self.calls_done, list(self.http.actors), list(self.browsers.actors), self.sum)
                        )
            self.flush()
        finally:
            self.bar.close()

    def _abandon_overdue(self, ready: set) -> None:
        """HTTP batches still running after ``scrape.batch_timeout()``: each task an error row ``batch_timeout``, the
        actor killed (its other batch goes back to the frontier, as for a dead actor) and replaced within the same
        budget as a dead one. A backstop: every fetch has its own deadline, so a healthy batch never gets here."""
        bound, t = self.sc.batch_timeout(), time.monotonic()
        for ref in [r for r, t0 in self.submitted_at.items() if t - t0 > bound and r not in ready]:
            pool, actor, batch = self.inflight[ref]
            if pool is not self.http:
                continue  # browser batches: bounded by Selenium's page-load and wait timeouts
            del self.inflight[ref], self.submitted_at[ref]
            log.warning("scrape: an http batch ran past %.0f s; its %d tasks fail, its worker is replaced", bound,
                        len(batch))  # fmt: skip
            try:
                ray.kill(actor)
            except Exception:
                pass
            self._replace(pool, actor)
            for task in batch:
                self._handle_result({"task": task, "status": STATUS_ERROR, "reason": "batch_timeout", "fetch": None})

    def _fail_all(self, queues: list[collections.deque], reason: str) -> None:
        for q in queues:
            while q:
                self._handle_result({"task": q.popleft(), "status": STATUS_ERROR, "reason": reason, "fetch": None})

    def stop_actors(self) -> None:
        for a in self.browsers.actors:
            try:
                ray.get(a.shutdown.remote(), timeout=30)
            except Exception:
                pass
        for a in self.http.actors + self.browsers.actors + [self.limiter]:
            try:
                ray.kill(a)
            except Exception:
                pass

    def summary(self) -> dict:
        s = dict(self.sum)
        secs = time.monotonic() - self.t0
        s["errors_by_reason"] = dict(sorted(s["errors_by_reason"].items()))
        s["page_errors_by_reason"] = dict(sorted(s["page_errors_by_reason"].items()))
        s["seconds"] = round(secs, 2)
        s["images_per_s"] = round(s["images_fetched"] / secs, 2) if secs > 0 else 0.0
        return s


def crawl(
    cfg: Config,
    *,
    stop_after_flushes: int | None = None,
    on_progress: Callable[[CrawlProgress], None] | None = None,
) -> dict:
    """Crawl every configured feed and staff site into the data root; returns the summary dict.

    ``stop_after_flushes`` stops abruptly (buffers dropped, actors killed, :class:`CrawlInterrupted` raised) after
    that many batch writes, as a kill would; ``on_progress`` is called after every finished actor call. Both exist
    for fault-injection tests. Ray must be initialised.
    """
    c = _Crawl(cfg, stop_after_flushes, on_progress)
    c.prepare()
    c.start_actors()
    try:
        c.loop()
    finally:
        c.stop_actors()
    return c.summary()
