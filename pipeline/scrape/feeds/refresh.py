"""Likes mature: posts that were younger than ``min_post_age_days`` when scraped get their counts read again on a later
run, once they are old enough.

:func:`refresh_young_posts` runs at the start of a crawl (before any worker starts). For each feed site whose adapter
refreshes counts (:attr:`~pipeline.scrape.feeds.base.FeedAdapter.refresh_max` > 0: Mastodon's,
``mastodon.refresh_max`` a run) it finds the ``posts`` rows with status ok, ``too_young`` true and ``posted_at`` at
least ``scrape.min_post_age_days`` ago (at most ``refresh_max`` a run), reads their counts again through the polite
HTTP client (the adapter's :meth:`~pipeline.scrape.feeds.base.FeedAdapter.refresh_counts`, paced as its pages) and
rewrites those rows in place (each part file atomically): ``likes``, ``followers``, ``reblogs``, ``replies``,
``quotes``, ``reactions``, ``counts_from`` and ``scraped_at`` (now) from the answer, ``too_young`` false. A post that
is gone (404) or unreadable keeps its row as it was (still too young, so the labels stage leaves it out). Returns how
many rows were refreshed.

The whole refresh (it runs in the driver, under the scrape lock) has a deadline, ``scrape.refresh_timeout_s``: no
request starts after it, and what was read by then is written; the rest waits for the next run.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.scrape.feeds.base import REFRESHED, FeedAdapter
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.store import POSTS, POSTS_DS, STATUS_OK, DataRoot, now, to_table

log = logging.getLogger("facerank.scrape")

UPDATED = REFRESHED  # the columns a refresh rewrites (with scraped_at)


def young_ids(root: DataRoot, site: str, min_age_days: int, limit: int) -> list[str]:
    """The item ids of ``site``'s ok posts that were too young and are old enough now (oldest first)."""
    cutoff = now() - dt.timedelta(days=min_age_days)
    f = (pc.field("site") == site) & (pc.field("status") == STATUS_OK) & (pc.field("too_young") == True)  # noqa: E712
    t = root.read(POSTS_DS, columns=["item_id", "posted_at"], filter=f & (pc.field("posted_at") <= cutoff))
    t = t.sort_by("posted_at")
    return [i for i in t.column("item_id").to_pylist() if i][:limit]


def rewrite_rows(root: DataRoot, site: str, fresh: dict[str, dict], scraped: dt.datetime) -> int:
    """Apply ``fresh`` counts to ``site``'s rows in place (one atomic rewrite per part file touched)."""
    done = 0
    for path in root.part_files(POSTS_DS):
        t = pq.read_table(path, filesystem=root.fs)
        hit = pc.and_(pc.equal(t.column("site"), site), pc.is_in(t.column("item_id"), pa.array(list(fresh))))
        if not pc.any(pc.fill_null(hit, False)).as_py():
            continue
        rows = t.to_pylist()
        for r in rows:
            upd = fresh.get(r["item_id"]) if r["site"] == site else None
            if upd is not None:
                r.update({k: v for k, v in upd.items() if k in UPDATED}, scraped_at=scraped, too_young=False)
                done += 1
        root.rewrite_part(path, to_table(rows, POSTS))
    return done


def refresh_young_posts(
    cfg: Config, root: DataRoot, client: Any = None, adapters: dict[str, FeedAdapter] | None = None
) -> int:
    """Refresh the matured young posts of every feed whose adapter refreshes counts (module docstring); returns how
    many rows changed. ``adapters``: by site name, built from the config when not given."""
    adapters = adapters if adapters is not None else {s.name: adapter_for(s) for s in cfg.scrape.feeds}
    refreshing = {name: ad for name, ad in adapters.items() if ad.refresh_max > 0}
    if not refreshing or not root.has(POSTS_DS):
        return 0
    from pipeline.scrape.net.address import allowed_domains
    from pipeline.scrape.net.http import HttpClient

    client = client or HttpClient(cfg.scrape.http, allowed_domains(cfg))
    total = 0
    deadline = time.monotonic() + cfg.scrape.refresh_timeout_s  # for every site together
    for name, ad in refreshing.items():
        ids = young_ids(root, name, cfg.scrape.min_post_age_days, ad.refresh_max)
        if not ids:
            continue
        fresh = ad.refresh_counts(client, ids, deadline=deadline)
        n = rewrite_rows(root, name, fresh, now()) if fresh else 0
        log.info("scrape: %s: refreshed the counts of %d of %d matured young posts", name, n, len(ids))
        total += n
    return total
