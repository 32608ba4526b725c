"""adapter: bluesky against the local XRPC replay server (pipeline/testing/bluesky_replay.py), Ray-free: the crawl
driver on its thread pool (``crawl(cfg, pool="threads")``), as tests/test_scrape_feeds_mastodon.py does."""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, parse_config
from pipeline.scrape.crawl import crawl
from pipeline.scrape.feeds.bluesky import jwt_expired, parse_post, tid_time
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.store import POSTS, DataRoot, now, to_table
from pipeline.testing.bluesky_replay import BlueskyReplay, BlueskySim, make_tid

PASSWORD = "app-pass-8c1d"
ENV = {"identifier_env": "BLUESKY_HANDLE", "password_env": "BLUESKY_APP_PASSWORD"}


def _cfg(tmp_path: Path, base_url: str, tags=("selfie",), min_age=30, **bluesky) -> object:
    return parse_config({
        "data_root": str(tmp_path / "data"),
        "scrape": {
            "min_post_age_days": min_age, "batch_rows": 25, "threads_per_actor": 4, "num_actors": 1,
            "http": {"allow_private_addresses": True, "requests_per_second_per_host": 1000,
                     "retry": {"attempts": 2, "backoff_s": 0.01, "backoff_max_s": 0.1, "jitter_s": 0.0}},
            "feeds": [{"name": "b", "adapter": "bluesky", "base_url": base_url, "hashtags": list(tags),
                       "bluesky": bluesky}],
        },
    })  # fmt: skip


def _rows(tmp_path: Path, ds: str = "posts") -> list[dict]:
    return DataRoot(str(tmp_path / "data")).read(ds).to_pylist()


def _login(monkeypatch, sim_identifier: str = "crawler.bsky.example") -> None:
    monkeypatch.setenv("BLUESKY_HANDLE", sim_identifier)
    monkeypatch.setenv("BLUESKY_APP_PASSWORD", PASSWORD)


def _truth(sim: BlueskySim) -> dict[str, tuple[str, str | None]]:
    out = {}
    for p in sim.posts:
        if p.did in sim.deleted:
            out[p.uri] = ("error", "followers_lookup:not_found")
        elif p.embed == "video":
            out[p.uri] = ("skipped", "media_video")
        elif p.embed in ("external", "none"):
            out[p.uri] = ("skipped", "no_image")
        elif p.embed == "labelled":
            out[p.uri] = ("skipped", "sensitive")
        else:
            out[p.uri] = ("ok", None)
    return out


def test_post_parser_embeds_labels_tags_and_wrong_types():
    sim = BlueskySim(n=18)
    got = {p.embed: parse_post(sim.post_view(p), "pds.example") for p in sim.posts}
    assert got["images"]["image_url"].endswith(".jpg") and "skip" not in got["images"]
    assert "/img/" in got["record_with_media"]["image_url"]  # the media of a record with media, fullsize
    assert got["video"]["skip"] == "media_video" and got["external"]["skip"] == "no_image"
    assert got["none"]["skip"] == "no_image" and got["labelled"]["skip"] == "sensitive"
    assert "skip" not in parse_post(sim.post_view(sim.posts[8]), "h", include_sensitive=True)
    p1 = sim.posts[1]
    p = parse_post(sim.post_view(p1), "pds.example")
    assert p["item_id"] == p1.uri and p["user_id"] == p1.did and p["user_acct"] == "user1.bsky.example"
    assert p["tags"] == ["me", "selfie"] and p["likes"] == 37 and p["reblogs"] == 1
    assert p["counts_from"] is None and p["lookup_followers"]  # global counts
    assert p["post_url"] == f"https://bsky.app/profile/{p1.did}/post/{p1.rkey}"
    assert p["posted_at"] == p1.created_at
    pv = sim.post_view(p1)
    bad = {
        "likes": {"likeCount": "12"}, "reblogs": {"repostCount": -1}, "author": {"author": None},
        "user_id": {"author": {"did": "alice", "handle": "a"}}, "record": {"record": []},
        "posted_at": {"record": {**pv["record"], "createdAt": "yesterday"}},
        "embed": {"embed": {"$type": "app.bsky.embed.images#view", "images": "x"}},
        "tags": {"record": {**pv["record"], "tags": [{"t": 1}]}},
    }  # fmt: skip
    for field, change in bad.items():
        assert parse_post({**pv, **change}, "h")["error"] == f"bad_post:{field}", field
    assert parse_post({**pv, "uri": "https://x"}, "h") == {"item_id": None, "error": "bad_post:id"}
    t = dt.datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=dt.UTC)
    assert tid_time(make_tid(t, 7)) == t


def test_crawl_with_session_refresh_mid_crawl_and_every_field(tmp_path, monkeypatch, caplog):
    _login(monkeypatch)
    with BlueskyReplay(n=95, password=PASSWORD, access_uses=3) as srv:
        cfg = _cfg(tmp_path, srv.base_url, limit=20, **ENV)
        with caplog.at_level(logging.DEBUG):
            s = crawl(cfg, pool="threads")
        sim = srv.sim
        rows = {r["item_id"]: r for r in _rows(tmp_path)}
        assert {i: (r["status"], r["reason"]) for i, r in rows.items()} == _truth(sim)
        assert sim.hits["login"] == 1 and sim.hits["refresh"] >= 2  # tokens expired mid-crawl and were renewed
        assert sim.hits["search"] >= 5 and all(q["sort"] == ["latest"] and q["tag"] == ["selfie"]
                                               for q in sim.queries)  # fmt: skip
        assert s["pages_failed"] == 0
        for p in sim.posts:
            r = rows[p.uri]
            assert r["site"] == "b" and r["hashtag"] == "selfie" and r["user_id"] == p.did
            assert r["user_acct"] == f"user{p.author}.bsky.example" and r["likes"] == p.likes
            assert r["reblogs"] == p.reposts and r["posted_at"] == p.created_at and r["counts_from"] is None
            assert r["replies"] == p.n % 3 and r["quotes"] == p.n % 2 and r["reactions"] is None
            assert sorted(r["tags"]) == sorted(p.tags) and r["post_url"].endswith(p.rkey)
            if r["status"] != "error":
                assert r["followers"] == sim.followers(p.author)
            assert r["too_young"] == (p.n % 5 == 1)
            if r["status"] == "ok":
                assert r["image_url"] == sim.image_url(p) and r["image_sha256"] and r["width"] == r["height"]
        fetches = _rows(tmp_path, "fetches")
        search = [f for f in fetches if "searchPosts" in f["url"]]
        assert [f["reason"] for f in search if f["reason"]] == ["search_end_unverified"]  # the last page says so
        assert 2 <= sim.hits["profiles"] <= sim.hits["search"]  # 30 authors, 25 a call at most, cached for the run
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    for secret in [PASSWORD, "acc-1-x9", "ref-1-y7"]:
        assert secret.encode() not in stored and secret not in caplog.text  # never stored, never logged


def test_search_needing_auth_bad_password_and_no_credentials_are_error_rows(tmp_path, monkeypatch):
    with BlueskyReplay(n=20, password=PASSWORD) as srv:
        s = crawl(_cfg(tmp_path / "a", srv.base_url, tags=("selfie", "me"), **ENV), pool="threads")
        reasons = sorted(f["reason"] for f in _rows(tmp_path / "a", "fetches") if "searchPosts" in f["url"])
        assert reasons == ["http_401_auth_required"] * 2 and s["posts_written"] == 0
        monkeypatch.setenv("BLUESKY_HANDLE", "crawler.bsky.example")
        monkeypatch.setenv("BLUESKY_APP_PASSWORD", "wrong")
        s = crawl(_cfg(tmp_path / "b", srv.base_url, tags=("selfie", "me"), **ENV), pool="threads")
        reasons = sorted(f["reason"] for f in _rows(tmp_path / "b", "fetches") if "searchPosts" in f["url"])
        assert reasons == ["auth_failed:http_401_auth_required"] * 2
        assert srv.sim.hits["login"] == 1  # a failed login is not tried again (createSession's low rate limit)


def test_truncated_result_set_and_all_tags(tmp_path, monkeypatch):
    _login(monkeypatch)
    with BlueskyReplay(n=60, password=PASSWORD, max_hits=25) as srv:
        crawl(_cfg(tmp_path, srv.base_url, limit=10, all_tags=["me"], **ENV), pool="threads")
        assert all(q["tag"] == ["selfie", "me"] for q in srv.sim.queries)
        rows = _rows(tmp_path)
        assert len(rows) == 25 and all("me" in r["tags"] for r in rows)
        last = [f for f in _rows(tmp_path, "fetches") if "searchPosts" in f["url"] and f["reason"]]
        assert [f["reason"] for f in last] == ["search_end_unverified"]


def test_rate_limit_headers_paced_and_a_long_wait_is_a_row(tmp_path, monkeypatch):
    _login(monkeypatch)
    with BlueskyReplay(n=40, password=PASSWORD, rate_limit=4, rate_window_s=3600) as srv:
        s = crawl(_cfg(tmp_path, srv.base_url, limit=10, rate_reserve=1, max_wait_s=5, **ENV), pool="threads")
        fetches = _rows(tmp_path, "fetches")
        assert "rate_limited" in {f["reason"] for f in fetches}  # the window's reset is an hour away: not waited
        assert srv.sim.hits["search"] + srv.sim.hits["profiles"] <= 4  # never over the limit, no 429 provoked
        assert s["page_errors_by_reason"].get("rate_limited", 0) >= 1


def test_incremental_rerun_searches_since_newest_stored(tmp_path, monkeypatch):
    _login(monkeypatch)
    with BlueskyReplay(n=40, password=PASSWORD, young_every=0) as srv:
        cfg = _cfg(tmp_path, srv.base_url, limit=10, incremental_overlap_s=60, **ENV)
        crawl(cfg, pool="threads")
        first = len(_rows(tmp_path))
        srv.sim.queries.clear()
        new = srv.sim.add(12)
        s = crawl(cfg, pool="threads")
        assert all(q.get("since") for q in srv.sim.queries) and len(srv.sim.queries) <= 3
        assert len(_rows(tmp_path)) == first + 12 and s["posts_written"] == 12
        assert set(new) <= {r["item_id"] for r in _rows(tmp_path)}


def test_deleted_post_and_options_checked(tmp_path, monkeypatch):
    _login(monkeypatch)
    with BlueskyReplay(n=30, password=PASSWORD) as srv:
        srv.sim.delete(srv.sim.posts[-1].uri)  # the newest post is gone before the crawl
        crawl(_cfg(tmp_path, srv.base_url, **ENV), pool="threads")
        assert len(_rows(tmp_path)) == 29
    base = {"data_root": str(tmp_path), "scrape": {"feeds": [{"name": "b", "adapter": "bluesky",
                                                              "base_url": "https://bsky.social"}]}}  # fmt: skip
    for bad in ({"limit": 101}, {"password_env": "HOME"}, {"identifier_env": "AWS_SECRET_HANDLE"}, {"x": 1}):
        base["scrape"]["feeds"][0]["bluesky"] = bad
        with pytest.raises(ConfigError):
            parse_config(base)
    base["scrape"]["feeds"][0]["bluesky"] = {"since": "2026-01-01", "lang": "en", **ENV}
    url = adapter_for(parse_config(base).scrape.feeds[0]).first_url("#Selfie")
    assert url.startswith("https://bsky.social/xrpc/app.bsky.feed.searchPosts?q=%23Selfie&tag=Selfie&sort=latest")
    assert "limit=100" in url and "since=2026-01-01" in url and "lang=en" in url


def test_young_posts_refreshed_by_get_posts_once_old_enough(tmp_path, monkeypatch):
    _login(monkeypatch)
    with BlueskyReplay(n=60, password=PASSWORD) as srv:
        crawl(_cfg(tmp_path, srv.base_url, min_age=30, **ENV), pool="threads")
        young = {r["item_id"]: r for r in _rows(tmp_path) if r["too_young"] and r["status"] == "ok"}
        assert len(young) >= 5
        gone = next(iter(young))
        for uri in young:
            srv.sim.set_counts(uri, 999, followers=4242)
        srv.sim.delete(gone)  # deleted since: its row stays as it was
        s = crawl(_cfg(tmp_path, srv.base_url, min_age=1, **ENV), pool="threads")
        assert s["refreshed"] == len(young) - 1 and srv.sim.hits["get_posts"] == -(-len(young) // 25)
        rows = {r["item_id"]: r for r in _rows(tmp_path)}
        for uri, old in young.items():
            r = rows[uri]
            if uri == gone:
                assert (r["likes"], r["too_young"]) == (old["likes"], True)
            else:
                assert (r["likes"], r["followers"], r["too_young"]) == (999, 4242, False)


def test_label_negation_and_jwt_expiry():
    sim = BlueskySim(n=9)
    pv = sim.post_view(sim.posts[8])
    pv["labels"].append({**pv["labels"][0], "neg": True})  # the labeller took it back
    assert "skip" not in parse_post(pv, "h")

    def jwt(exp: float) -> str:
        claims = base64.urlsafe_b64encode(json.dumps({"exp": exp}).encode()).decode().rstrip("=")
        return f"eyJhbGciOiJIUzI1NiJ9.{claims}.sig"

    assert jwt_expired(jwt(time.time() - 5)) and not jwt_expired(jwt(time.time() + 3600))
    assert jwt_expired("opaque") and jwt_expired(None)


TREE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)
FIELDS = ["uri", "author", "record", "embed", "likeCount", "repostCount", "labels", "indexedAt"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 8), changes=st.dictionaries(st.sampled_from(FIELDS), TREE, max_size=3))
def test_post_parser_random_fields_never_crash_and_rows_fit(n, changes):
    sim = BlueskySim(n=9)
    p = parse_post({**sim.post_view(sim.posts[n]), **changes}, "h")
    if p.get("item_id") is None:
        assert p["error"] == "bad_post:id"
        return
    assert "error" in p or p.get("skip") or isinstance(p.get("image_url"), str)
    if "error" not in p:
        row = {k: p.get(k) for k in ("user_id", "likes", "tags", "posted_at", "image_url", "user_acct", "reblogs",
                                     "post_url", "counts_from")}  # fmt: skip
        to_table([{"site": "b", "item_id": p["item_id"], "scraped_at": now(), **row}], POSTS)
