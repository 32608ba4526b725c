"""Likes mature: Mastodon posts that were younger than ``min_post_age_days`` when scraped get their counts read
again on a later run, once they are old enough.

:func:`refresh_young_posts` runs at the start of a crawl (before any worker starts). For each ``adapter: mastodon``
site it finds the ``posts`` rows with status ok, ``too_young`` true and ``posted_at`` at least
``scrape.min_post_age_days`` ago (at most ``mastodon.refresh_max`` a run), fetches their statuses again through
the polite HTTP client and the adapter's pacer (``GET /api/v1/statuses/:id``, or with ``mastodon.refresh_batch`` >
1 ``GET /api/v1/statuses?id[]=…`` of Mastodon 4.3+, that many ids a request) and rewrites those rows in place (each
part file atomically): ``likes``, ``followers``, ``reblogs``, ``counts_from`` and ``scraped_at`` (now) from the
answer, ``too_young`` false. A status that is gone (404) or unreadable keeps its row as it was (still too young,
so the labels stage leaves it out). Returns how many rows were refreshed.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import Config, FeedSite
from pipeline.runtime import log
from pipeline.store import POSTS, STATUS_OK, DataRoot, now, to_table

_UPDATED = ("likes", "followers", "reblogs", "counts_from")


def young_ids(root: DataRoot, site: FeedSite, min_age_days: int, limit: int) -> list[str]:
    """The item ids of ``site``'s ok posts that were too young and are old enough now (oldest first)."""
    cutoff = now() - dt.timedelta(days=min_age_days)
    f = (pc.field("site") == site.name) & (pc.field("status") == STATUS_OK) & (pc.field("too_young") == True)  # noqa: E712
    t = root.read("posts", columns=["item_id", "posted_at"], filter=f & (pc.field("posted_at") <= cutoff))
    t = t.sort_by("posted_at")
    return [i for i in t.column("item_id").to_pylist() if i][:limit]


def fetch_counts(adapter: Any, client: Any, ids: list[str]) -> dict[str, dict]:
    """id -> fresh counts for the statuses that could be read, ``refresh_batch`` ids a request, paced."""
    from pipeline.scrape.feeds.base import FeedParseError, load_json
    from pipeline.scrape.feeds.mastodon import parse_status

    base = adapter.site.base_url.rstrip("/")
    n = adapter.opts.refresh_batch
    out: dict[str, dict] = {}
    for i in range(0, len(ids), n):
        chunk = ids[i : i + n]
        url = (
            f"{base}/api/v1/statuses/{chunk[0]}"
            if n == 1
            else f"{base}/api/v1/statuses?" + "&".join(f"id[]={x}" for x in chunk)
        )
        res = adapter.fetch(client, url, paging=False)
        if not res.ok:
            continue
        try:
            doc = load_json(res.data or b"")
        except FeedParseError:
            continue
        for st in doc if isinstance(doc, list) else [doc]:
            p = parse_status(st, adapter.host, include_sensitive=True)
            if p.get("item_id") in chunk and not p.get("error"):
                out[p["item_id"]] = {k: p.get(k) for k in _UPDATED}
    return out


def rewrite_rows(root: DataRoot, site: str, fresh: dict[str, dict], scraped: dt.datetime) -> int:
    """Apply ``fresh`` counts to ``site``'s rows in place (one atomic rewrite per part file touched)."""
    done = 0
    for path in root.part_files("posts"):
        t = pq.read_table(path, filesystem=root.fs)
        hit = pc.and_(pc.equal(t.column("site"), site), pc.is_in(t.column("item_id"), pa.array(list(fresh))))
        if not pc.any(pc.fill_null(hit, False)).as_py():
            continue
        rows = t.to_pylist()
        for r in rows:
            upd = fresh.get(r["item_id"]) if r["site"] == site else None
            if upd is not None:
                r.update(upd, scraped_at=scraped, too_young=False)
                done += 1
        root.rewrite_part(path, to_table(rows, POSTS))
    return done


def refresh_young_posts(cfg: Config, root: DataRoot, client: Any = None) -> int:
    """Refresh every Mastodon site's matured young posts (module docstring); returns how many rows changed."""
    sites = [s for s in cfg.scrape.feeds if s.adapter == "mastodon" and s.mastodon.refresh_max > 0]
    if not sites or not root.has("posts"):
        return 0
    from pipeline.scrape.feeds.mastodon import MastodonAdapter
    from pipeline.scrape.net.address import allowed_domains
    from pipeline.scrape.net.http import HttpClient

    client = client or HttpClient(cfg.scrape.http, allowed_domains(cfg))
    total = 0
    for site in sites:
        ids = young_ids(root, site, cfg.scrape.min_post_age_days, site.mastodon.refresh_max)
        if not ids:
            continue
        fresh = fetch_counts(MastodonAdapter(site), client, ids)
        n = rewrite_rows(root, site.name, fresh, now()) if fresh else 0
        log.info("scrape: %s: refreshed the counts of %d of %d matured young posts", site.name, n, len(ids))
        total += n
    return total
