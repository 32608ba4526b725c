"""The crawl end to end on Ray: feeds into rows, reruns add nothing, a killed crawl resumes to the same rows."""

from __future__ import annotations

import datetime as dt
import json
import time
from urllib.parse import parse_qs, urlsplit

import pyarrow.compute as pc
import pytest
import ray

from helpers.http import Handler, serve
from helpers.images import noise_jpeg
from pipeline.config import parse_config
from pipeline.scrape.crawl import crawl
from pipeline.scrape.writer import CrawlInterrupted
from pipeline.store import DataRoot

N_POSTS, PER_PAGE = 60, 10


def _post(i: int, base: str) -> dict:
    img = f"{base}/img/{i}.jpg"
    if i % 20 == 3:
        img = f"{base}/private/{i}.jpg"
    elif i % 20 == 5:
        img = f"{base}/noai/{i}.jpg"
    elif i % 20 == 7:
        img = f"{base}/broken/{i}.jpg"
    elif i % 20 == 9:
        img = f"{base}/img/{i - 1}.jpg"  # same URL as the previous post
    elif i % 20 == 11:
        img = f"{base}/copy/{i - 1}.jpg"  # same bytes as the previous post, another URL
    age = 2 if i % 10 == 4 else 90
    posted = dt.datetime.now(dt.UTC) - dt.timedelta(days=age)
    return {
        "id": f"p{i:03d}",
        "image_url": img,
        "user": {"id": f"u{i % 7}", "followers": 100 + i},
        "likes": i,
        "tags": ["selfie"] + ["x"] * (i % 3),
        "posted_at": posted.isoformat().replace("+00:00", "Z"),
    }


class _Feed(Handler):
    ctype = "image/jpeg"

    def do_GET(self):  # noqa: N802
        u = urlsplit(self.path)
        base = self.base
        if u.path == "/robots.txt":
            return self.send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
        if u.path == "/api/feed":
            q = parse_qs(u.query)
            page = int(q["page"][0])
            ids = range((page - 1) * PER_PAGE, min(page * PER_PAGE, N_POSTS))
            nxt = page + 1 if page * PER_PAGE < N_POSTS else None
            doc = {"posts": [_post(i, base) for i in ids], "next_page": nxt}
            return self.send(200, json.dumps(doc).encode(), "application/json")
        parts = u.path.strip("/").split("/")
        if len(parts) == 2 and parts[1].endswith(".jpg"):
            i = int(parts[1][:-4])
            if parts[0] == "broken":
                return self.send(500, b"no", "text/plain")
            hdr = {"X-Robots-Tag": "noai"} if parts[0] == "noai" else {}
            return self.send(200, noise_jpeg(40, 32, i), headers=hdr)
        return self.send(404, b"", "text/plain")


@pytest.fixture(scope="module")
def feed_server():
    with serve(_Feed) as srv:
        yield srv.base


def _cfg(base: str, root, **scrape):
    raw = {
        "data_root": str(root),
        "scrape": {
            "num_actors": 1,
            "threads_per_actor": 6,
            "tasks_per_call": 4,
            "batch_rows": 8,
            "http": {
                "allow_private_addresses": True,
                "requests_per_second_per_host": 500,
                "max_concurrency_per_host": 6,
                "retry": {"attempts": 2, "backoff_s": 0.01, "backoff_max_s": 0.05, "jitter_s": 0.01},
            },
            "feeds": [{"name": "f", "adapter": "json", "base_url": base, "hashtags": ["selfie"]}],
            **scrape,
        },
    }
    return parse_config(raw, "test")


def _rows(root) -> list[tuple]:
    t = DataRoot(str(root)).read("posts")
    cols = ["site", "item_id", "status", "reason", "image_sha256", "too_young", "likes"]
    return sorted(zip(*[t.column(c).to_pylist() for c in cols], strict=True))


def test_feed_crawl_rows_rerun_and_resume(ray_session, feed_server, tmp_path):
    cfg = _cfg(feed_server, tmp_path / "a")
    s = crawl(cfg)
    rows = _rows(tmp_path / "a")
    assert len(rows) == N_POSTS and len({r[:2] for r in rows}) == N_POSTS
    by_status = {r[1]: (r[2], r[3]) for r in rows}
    assert by_status["p003"] == ("skipped", "robots") and by_status["p005"] == ("skipped", "noai")
    assert by_status["p007"] == ("error", "http_500")
    assert s["skipped_robots"] == 3 and s["skipped_noai"] == 3 and s["errors_by_reason"] == {"http_500": 3}
    assert s["pages"] == N_POSTS // PER_PAGE and s["posts_written"] == N_POSTS
    # p009 shares p008's URL, p011 shares p010's bytes: both stored once
    sha = {r[1]: r[4] for r in rows}
    assert sha["p009"] == sha["p008"] and sha["p011"] == sha["p010"] and s["duplicates"] == 6
    assert s["images_stored"] == len({v for v in sha.values() if v})
    assert sum(r[5] for r in rows) == N_POSTS // 10 == s["too_young"]
    root = DataRoot(str(tmp_path / "a"))
    assert all(root.has_image(v) for v in sha.values() if v)
    fetches = root.read("fetches")
    assert len(set(fetches.column("url").to_pylist())) == fetches.num_rows  # one row per URL
    assert "robots" in fetches.column("kind").to_pylist()

    # a rerun adds nothing
    s2 = crawl(cfg)
    assert _rows(tmp_path / "a") == rows and s2["posts_written"] == 0 and s2["skipped_done"] == N_POSTS
    assert root.read("fetches").num_rows == fetches.num_rows

    # killed after 2 batch writes, then rerun: exactly the rows of the uninterrupted crawl
    cfg_b = _cfg(feed_server, tmp_path / "b")
    with pytest.raises(CrawlInterrupted):
        crawl(cfg_b, stop_after_flushes=2)
    partial = _rows(tmp_path / "b")
    assert 0 < len(partial) < N_POSTS
    crawl(cfg_b)
    assert [r[:5] for r in _rows(tmp_path / "b")] == [r[:5] for r in rows]

    # retry_errors: error rows are dropped and fetched again, still one row per key
    s3 = crawl(_cfg(feed_server, tmp_path / "a", retry_errors=True))
    assert s3["retried_error_rows"] == 3 and s3["posts_written"] == 3
    assert [r[:5] for r in _rows(tmp_path / "a")] == [r[:5] for r in rows]


def test_forgotten_user_is_not_scraped_again(ray_session, feed_server, tmp_path):
    from pipeline.privacy import forget

    cfg = _cfg(feed_server, tmp_path / "o")
    crawl(cfg)
    root = DataRoot(str(tmp_path / "o"))
    users = root.read("posts", columns=["user_id"]).column(0).to_pylist()
    n_u1 = users.count("u1")
    assert n_u1 > 0
    u1_images = set(root.read("posts", filter=pc.field("user_id") == "u1").column("image_sha256").to_pylist()) - {None}
    forget(cfg, "user", "u1")
    s = crawl(cfg)  # u1's posts are listed again by the feed, and skipped
    after = root.read("posts")
    assert "u1" not in after.column("user_id").to_pylist() and s["opted_out"] >= n_u1
    assert not u1_images & set(after.column("image_sha256").to_pylist())  # their photos are not stored again
    assert u1_images and not any(root.has_image(sha) for sha in u1_images)


def test_killed_actor_is_replaced_and_every_item_written_once(ray_session, feed_server, tmp_path):
    killed = []

    def kill_one(progress):
        if progress.calls_done == 2 and not killed:
            killed.append(progress.http_actors[0])
            ray_session.kill(progress.http_actors[0])

    s = crawl(_cfg(feed_server, tmp_path / "k"), on_progress=kill_one)
    rows = _rows(tmp_path / "k")
    assert killed and s["workers_replaced"] >= 1
    assert len(rows) == N_POSTS and len({r[:2] for r in rows}) == N_POSTS


# ------------------------------------------------------------------------------------------ the bundled demo sites
def test_demo_feeds_crawl_and_rerun(ray_session, request):
    cfg = request.getfixturevalue("demo_config")
    cfg.scrape.staff = []
    s = crawl(cfg)
    root = DataRoot(cfg.data_root)
    t = root.read("posts")
    keys = list(zip(t.column("site").to_pylist(), t.column("item_id").to_pylist(), strict=True))
    n_demo, n_flaky = 240, 60  # conftest's demo_site: n_posts=240; the flaky feed: 3 pages of 20
    assert len(keys) == len(set(keys)) == n_demo + n_flaky
    rows = t.to_pylist()
    flaky = [r for r in rows if r["site"] == "demo-flaky"]
    assert all(r["status"] == "ok" for r in flaky), "retries must recover every 503 of the flaky site"
    reasons = {r["reason"] for r in rows if r["status"] != "ok"}
    assert {"robots", "noai"} <= reasons and reasons <= {"robots", "noai", "truncated", "not_an_image", "decode_error"}
    assert any(r["too_young"] for r in rows) and s["images_stored"] > 0
    s2 = crawl(cfg)
    assert s2["posts_written"] == 0 and root.read("posts").num_rows == len(keys)


@pytest.mark.chromium
@pytest.mark.slow
def test_demo_staff_pages(ray_session, request):
    cfg = request.getfixturevalue("demo_config")
    cfg.scrape.feeds = []
    s = crawl(cfg)
    t = DataRoot(cfg.data_root).read("staff").to_pylist()
    assert len(t) == 4 * 12 and {r["department"] for r in t} == {"cs", "econ", "german", "mech"}
    non_academic = [r for r in t if not r["is_academic"]]
    assert non_academic and s["non_academic"] == len(non_academic)
    assert all(r["status"] == "ok" and r["image_sha256"] for r in t if r["is_academic"])


def test_host_limiter_rate_concurrency_and_dead_owner(ray_session):
    from pipeline.scrape.net.ratelimit import HostLimiter

    lim = HostLimiter.remote(20.0, 2, 600.0)
    t0 = time.monotonic()
    a = ray.get(lim.acquire.remote("h", "dead-actor"))
    b = ray.get(lim.acquire.remote("h", "dead-actor"))
    third = lim.acquire.remote("h", "live")
    ready, _ = ray.wait([third], timeout=0.5)
    assert not ready  # the concurrency cap holds
    assert ray.get(lim.release_owner.remote("dead-actor")) == 2  # a dead actor's slots are freed at once
    ray.get(third, timeout=5)
    assert a != b and time.monotonic() - t0 >= 0.1  # three requests spaced 1/20 s apart
    assert ray.get(lim.stats.remote()) == {"h": 1}
    ray.kill(lim)
