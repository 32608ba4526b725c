"""adapter: mastodon against the local replay server (pipeline/testing/mastodon_replay.py), Ray-free.

Each test runs the crawl driver itself on its thread pool (``crawl(cfg, pool="threads")``: the stage's driver, work
units, row builder, writer and feed cursors, in this process) and checks rows, fetch rows and the requests the server
saw.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.feed_truth import mastodon_truth
from pipeline.config import ConfigError, FeedSite, parse_config
from pipeline.scrape.crawl import crawl
from pipeline.scrape.feeds.mastodon import Pacer, RateLimited, parse_status
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.scrape.writer import CrawlInterrupted
from pipeline.store import POSTS, DataRoot, now, to_table
from pipeline.testing.mastodon_replay import MastodonReplay, MastodonSim

TOKEN = "tok-3b9f0c1d2e"


def _cfg(tmp_path: Path, base_url: str, tags=("selfie",), min_age=30, **mastodon) -> object:
    return parse_config({
        "data_root": str(tmp_path / "data"),
        "scrape": {
            "min_post_age_days": min_age, "batch_rows": 25, "threads_per_actor": 8, "num_actors": 1,
            "http": {"allow_private_addresses": True, "requests_per_second_per_host": 1000,
                     "retry": {"attempts": 3, "backoff_s": 0.01, "backoff_max_s": 0.1, "jitter_s": 0.0}},
            "feeds": [{"name": "m", "adapter": "mastodon", "base_url": base_url, "hashtags": list(tags),
                       "mastodon": mastodon}],
        },
    })  # fmt: skip


def _stop_after(calls: int):
    """An ``on_progress`` that ends the crawl as a kill would after that many worker calls (one task each here)."""

    def check(progress) -> None:
        if progress.calls_done >= calls:
            raise CrawlInterrupted(f"stopped after {calls} results (a kill)")

    return check


def _posts(tmp_path: Path) -> list[dict]:
    return DataRoot(str(tmp_path / "data")).read("posts").to_pylist()


def test_status_parser_media_accounts_and_wrong_types():
    sim = MastodonSim(n=24, sensitive_every=0)
    got = {s.media: parse_status(sim.status_json(s), "h.example") for s in sim.statuses}
    assert got["image"]["image_url"].endswith(".jpg") and "skip" not in got["image"]
    assert got["unknown"]["image_url"].endswith(".jpg")  # through remote_url
    assert {got[t].get("skip") for t in ("gifv", "video", "audio")} == {"media_gifv", "media_video", "media_audio"}
    assert got["none"]["skip"] == "no_image"
    remote, local = sim.status_json(sim.statuses[0]), sim.status_json(sim.statuses[1])
    assert parse_status(remote, "h.example")["user_acct"] == "user0@remote0.example"
    p = parse_status(local, "h.example")
    assert p["user_acct"] == "user1@h.example" and p["counts_from"] == "h.example"
    assert p["tags"] == ["selfie", "me"] and p["likes"] == 37 and p["followers"] == 153 and p["reblogs"] == 1
    assert p["replies"] == 1 and p["quotes"] is None and p.get("reactions") is None
    assert p["post_url"].startswith("https://") and p["posted_at"].tzinfo is not None
    sens = {**remote, "sensitive": True}
    assert parse_status(sens, "h")["skip"] == "sensitive" and "skip" not in parse_status(sens, "h", True)
    bad = {
        "likes": {"favourites_count": "12"}, "followers": {"account": {**remote["account"], "followers_count": 1.5}},
        "tags": {"tags": ["selfie"]}, "account": {"account": None}, "user_acct": {"account": {**remote["account"],
        "acct": {"x": 1}}}, "media_attachments": {"media_attachments": {"type": "image"}},
        "posted_at": {"created_at": None}, "reblogs": {"reblogs_count": -1},
    }  # fmt: skip
    for field, change in bad.items():
        assert parse_status({**remote, **change}, "h")["error"] == f"bad_post:{field}", field
    assert parse_status({**remote, "id": {"a": 1}}, "h") == {"item_id": None, "error": "bad_post:id"}


def test_crawl_reads_every_link_page_and_skips_with_reasons(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MASTODON_TOKEN", TOKEN)
    with MastodonReplay(n=150, token=TOKEN) as srv:
        cfg = _cfg(tmp_path, srv.base_url, tags=("selfie", "preview", "nosuch"), access_token_env="MASTODON_TOKEN")
        with caplog.at_level(logging.DEBUG):
            s = crawl(cfg, pool="threads")
        sim = srv.sim
        truth = mastodon_truth(sim)
        rows = {r["item_id"]: r for r in _posts(tmp_path) if r["hashtag"] == "selfie"}
        assert {i: (r["status"], r["reason"]) for i, r in rows.items()} == truth  # every page, every status
        assert sim.hits["paging"] == 4  # 138 media statuses: 4 pages after the first (the last one empty)
        r = rows[sim.statuses[0].id]
        assert r["user_acct"] == "user0@remote0.example" and r["counts_from"] == "127.0.0.1"
        assert r["image_sha256"] or r["status"] == "skipped"
        fetches = DataRoot(str(tmp_path / "data")).read("fetches").to_pylist()
        bad = sorted((f["url"].split("/tag/")[1].split("?")[0], f["reason"]) for f in fetches if f["status"] != "ok")
        assert bad == [("nosuch", "http_404_unknown_tag"), ("preview", "http_422_unprocessable")]
        assert s["page_errors_by_reason"] == {"http_404_unknown_tag": 1, "http_422_unprocessable": 1}
        assert sim.auth_seen and set(sim.auth_seen) == {f"Bearer {TOKEN}"}
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert TOKEN.encode() not in stored and TOKEN not in caplog.text  # never stored, never logged


def test_tag_needing_auth_is_one_error_row_without_token_and_opens_with_it(tmp_path, monkeypatch):
    with MastodonReplay(n=30, token=TOKEN) as srv:
        s = crawl(
            _cfg(tmp_path / "a", srv.base_url, tags=("private",), access_token_env="MASTODON_TOKEN"), pool="threads"
        )
        fetches = DataRoot(str(tmp_path / "a" / "data")).read("fetches").to_pylist()
        assert [f["reason"] for f in fetches if "/tag/private" in f["url"]] == ["http_401_auth_required"]
        assert s["page_errors_by_reason"] == {"http_401_auth_required": 1} and s["posts_written"] == 0
        monkeypatch.setenv("MASTODON_TOKEN", TOKEN)
        s = crawl(
            _cfg(tmp_path / "b", srv.base_url, tags=("private",), access_token_env="MASTODON_TOKEN"), pool="threads"
        )
        assert s["pages_failed"] == 0 and s["posts_written"] == len(mastodon_truth(srv.sim))


def test_config_limits_and_params_pass_through():
    site = FeedSite(name="m", adapter="mastodon", base_url="https://social.example", mastodon={
        "limit": 40, "local": True, "any": ["me"], "all": ["a"], "none": ["nsfw"], "only_media": True})  # fmt: skip
    url = adapter_for(site).first_url("selfie")
    assert url == ("https://social.example/api/v1/timelines/tag/selfie?limit=40&only_media=true&local=true"
                   "&any[]=me&all[]=a&none[]=nsfw")  # fmt: skip
    with pytest.raises(ConfigError, match="limit"):
        parse_config({"scrape": {"feeds": [{"name": "m", "adapter": "mastodon", "base_url": "x",
                                            "mastodon": {"limit": 80}}]}})  # fmt: skip


def test_incremental_rerun_stops_at_newest_stored_status(tmp_path):
    with MastodonReplay(n=100) as srv:
        cfg = _cfg(tmp_path, srv.base_url)
        crawl(cfg, pool="threads")
        first = srv.sim.hits["timeline"]
        new = srv.sim.add(6)
        s = crawl(cfg, pool="threads")
        assert srv.sim.hits["timeline"] - first == 2  # the new statuses' page and the empty one after it
        media_new = [i for i in new if srv.sim.by_id[i].media != "none"]
        assert s["posts_written"] == len(media_new) and s["skipped_done"] == 0
        before = srv.sim.hits["timeline"]
        assert crawl(cfg, pool="threads")["posts_written"] == 0
        assert srv.sim.hits["timeline"] - before == 1  # nothing new: one empty page
        assert {r["item_id"] for r in _posts(tmp_path)} == set(mastodon_truth(srv.sim))


def test_killed_crawl_resumes_from_its_last_cursor(tmp_path):
    with MastodonReplay(n=200) as srv:
        cfg = _cfg(tmp_path, srv.base_url)
        with pytest.raises(CrawlInterrupted):
            crawl(cfg, pool="threads", on_progress=_stop_after(90))  # pages and images handled, some rows not written
        written = {r["item_id"] for r in _posts(tmp_path)}
        assert 0 < len(written) < len(mastodon_truth(srv.sim))
        t0 = srv.sim.hits["timeline"]
        s = crawl(cfg, pool="threads")
        assert {(r["item_id"], r["status"], r["reason"]) for r in _posts(tmp_path)} == {
            (i, *v) for i, v in mastodon_truth(srv.sim).items()
        }  # exactly the rows of an uninterrupted crawl, each once
        assert len(_posts(tmp_path)) == len(mastodon_truth(srv.sim))
        assert srv.sim.hits["timeline"] - t0 < 6 + 2  # resumed: not the whole walk plus a head walk again
        assert s["skipped_done"] < len(written)  # pages before the cursor were not listed again


def test_rate_limit_headers_paging_throttle_and_429(tmp_path):
    # 12 requests per 1.5 s window, 3 paging requests per 1 s: a crawl of 5 pages must wait, never fail
    with MastodonReplay(n=200, rate_limit=12, rate_window_s=1.5, paging_limit=3, paging_window_s=1.0) as srv:
        cfg = _cfg(tmp_path, srv.base_url, paging_requests=3, paging_window_s=1.0, rate_reserve=1)
        t = time.monotonic()
        s = crawl(cfg, pool="threads")
        assert s["pages_failed"] == 0 and srv.sim.hits["paging"] == 5
        assert srv.sim.hits["429_paging"] == 0  # the paging budget was kept
        assert time.monotonic() - t >= 0.9  # the 4th and 5th paging requests waited for the window
    p = Pacer(300, 900, reserve=0)
    p.observe({"retry-after": "1"}, 429)  # a 429's Retry-After holds every later request of the process
    assert 0.8 <= p.wait(paging=False) <= 1.1
    reset = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.4)).isoformat(timespec="milliseconds")
    p.observe({"x-ratelimit-limit": "300", "x-ratelimit-remaining": "0", "x-ratelimit-reset": reset}, 200)
    assert 0.2 < p.wait(paging=False) <= 0.5  # exhausted: wait for the reset
    p.observe({"x-ratelimit-limit": "300", "x-ratelimit-remaining": "100", "x-ratelimit-reset": reset}, 200)
    assert p.wait(paging=False) < 0.05  # plenty left: no wait


def test_young_posts_refreshed_once_old_enough(tmp_path):
    with MastodonReplay(n=60) as srv:
        crawl(_cfg(tmp_path, srv.base_url, min_age=30), pool="threads")
        young = {r["item_id"]: r for r in _posts(tmp_path) if r["too_young"] and r["status"] == "ok"}
        assert young
        for i in young:
            srv.sim.set_likes(i, 999, followers=4242)
        cfg = _cfg(tmp_path, srv.base_url, min_age=1, refresh_batch=20)  # 2 days old now counts as old enough
        s = crawl(cfg, pool="threads")
        assert s["refreshed"] == len(young)
        assert srv.sim.hits["statuses"] == -(-len(young) // 20)  # batched: id[]= up to 20 a request
        rows = {r["item_id"]: r for r in _posts(tmp_path)}
        assert len(rows) == len(_posts(tmp_path))  # rewritten in place: still one row per status
        for i, old in young.items():
            assert (rows[i]["likes"], rows[i]["followers"], rows[i]["too_young"]) == (999, 4242, False)
            assert rows[i]["scraped_at"] > old["scraped_at"]
        assert crawl(cfg, pool="threads")["refreshed"] == 0  # done once


STATUS_TREE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)
FIELDS = ["id", "created_at", "account", "favourites_count", "reblogs_count", "tags", "media_attachments",
          "sensitive", "url"]  # fmt: skip


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(0, 11),
    changes=st.dictionaries(st.sampled_from(FIELDS), STATUS_TREE, max_size=3),
)
def test_status_parser_random_fields_never_crash_and_rows_fit(n, changes):
    """A real Status with random values in a few fields: a post, an error post or a skip; rows fit POSTS."""
    sim = MastodonSim(n=12)
    p = parse_status({**sim.status_json(sim.statuses[n]), **changes}, "h.example")
    assert p.get("item_id") is None or isinstance(p["item_id"], str)
    if p.get("item_id") is None:
        assert p["error"] == "bad_post:id"
        return
    assert "error" in p or p.get("skip") or isinstance(p.get("image_url"), str)
    if "error" not in p:
        row = {k: p.get(k) for k in ("user_id", "followers", "likes", "tags", "posted_at", "image_url", "user_acct",
                                     "reblogs", "post_url", "counts_from")}  # fmt: skip
        to_table([{"site": "m", "item_id": p["item_id"], "scraped_at": now(), **row}], POSTS)
    json.dumps({k: v for k, v in p.items() if k != "posted_at"})


def test_labels_rank_only_home_counts_or_per_counting_instance():
    from pipeline.config import LabelsConfig, SelfieLabelsConfig
    from pipeline.labels.selfie import label_selfies_table

    old = now() - dt.timedelta(days=90)
    rows = [
        {"site": "m", "item_id": f"{i:03d}", "user_id": f"u{i}", "followers": 100 + i, "likes": i % 5, "tags": ["s"],
         "posted_at": old, "scraped_at": now(), "too_young": False, "image_sha256": f"h{i}", "status": "ok",
         "user_acct": f"u{i}@{'a.example' if i % 2 else 'b.example'}", "counts_from": "a.example"}
        for i in range(16)
    ]  # fmt: skip
    table = to_table(rows, POSTS)

    def labels(**kw):
        cfg = LabelsConfig(selfie=SelfieLabelsConfig(group_size=4, require_face=False, **kw))
        return {r["item_id"]: r for r in label_selfies_table(table, None, cfg).to_dicts()}

    assert {r["status"] for r in labels().values()} == {"ok"}  # default any: every post ranked together
    home = labels(counts_from="home")
    assert {i for i, r in home.items() if r["status"] == "ok"} == {r["item_id"] for r in rows if int(r["item_id"]) % 2}
    assert {r["reason"] for r in home.values() if r["status"] != "ok"} == {"counts_not_from_home"}
    rows2 = [{**r, "counts_from": "a.example" if int(r["item_id"]) % 2 else "b.example"} for r in rows]
    table = to_table(rows2, POSTS)

    def instances_per_group(out):
        groups: dict = {}
        for r in rows2:
            groups.setdefault(out[r["item_id"]]["group_id"], set()).add(r["counts_from"])
        return sorted(len(v) for v in groups.values())

    assert instances_per_group(labels()) == [2, 2, 2, 2]  # by audience alone the servers' counts mix
    assert instances_per_group(labels(counts_from="per_instance")) == [1, 1, 1, 1]


def test_replay_429_retry_after_is_waited_for():
    """The replay server's window runs out: 429 with Retry-After; the client waits for it and gets the page."""
    from pipeline.scrape.net.http import HttpClient

    with MastodonReplay(n=5, rate_limit=2, rate_window_s=1.0) as srv:
        cfg = _cfg(Path("/nonexistent"), srv.base_url)
        ad = adapter_for(cfg.scrape.feeds[0])
        client = HttpClient(cfg.scrape.http, [])
        got = [client.fetch_page(ad.first_url("selfie")) for _ in range(3)]  # no pacer: the 3rd is over the limit
        assert [r.ok for r in got] == [True, True, True] and srv.sim.hits["429"] >= 1
        assert got[2].attempts >= 2 and int(got[2].headers["x-ratelimit-remaining"]) >= 0


def test_rate_limit_waits_are_capped_and_end_the_hashtag_as_rate_limited(tmp_path):
    """T3: a reset or Retry-After years away is never slept for: the request is not sent, the hashtag ends with a
    ``rate_limited`` fetches row, the driver's count refresh stops at once; epoch-millisecond resets are read."""
    far = "2099-01-01T00:00:00.000Z"
    for headers, code in (
        ({"x-ratelimit-limit": "300", "x-ratelimit-remaining": "0", "x-ratelimit-reset": far}, 200),
        ({"x-ratelimit-limit": "300", "x-ratelimit-remaining": "6", "x-ratelimit-reset": far}, 200),  # spread
        ({"retry-after": "999999999"}, 429),
    ):
        p = Pacer(300, 900, reserve=5, max_wait_s=5)
        p.observe(headers, code)
        t = time.monotonic()
        with pytest.raises(RateLimited):
            p.wait(paging=False)
            p.wait(paging=False)  # the spread applies from the second request on
        assert time.monotonic() - t < 0.5
    p = Pacer(300, 900, reserve=5)
    ms = int((time.time() + 0.4) * 1000)  # a reset in epoch milliseconds (some compatible servers)
    p.observe({"x-ratelimit-limit": "300", "x-ratelimit-remaining": "0", "x-ratelimit-reset": str(ms)}, 200)
    assert 0.2 < p.wait(paging=False) <= 0.5
    p.observe({"x-ratelimit-limit": "300", "x-ratelimit-remaining": "0", "x-ratelimit-reset": "1"}, 200)  # delta
    assert 0.8 < p.wait(paging=False) <= 1.1

    # two requests a window of 30 years: the first page's answer says "wait until 2056"
    with MastodonReplay(n=120, rate_limit=2, rate_window_s=1e9) as srv:
        cfg = _cfg(tmp_path, srv.base_url, max_wait_s=2)
        t = time.monotonic()
        s = crawl(cfg, pool="threads")
        assert time.monotonic() - t < 30
        fetches = DataRoot(str(tmp_path / "data")).read("fetches").to_pylist()
        limited = [f for f in fetches if f["reason"] == "rate_limited"]
        assert len(limited) == 1 and limited[0]["status"] == "error" and limited[0]["kind"] == "page"  # tag ended
        assert s["pages_failed"] == 1 and srv.sim.hits["timeline"] == 1  # nothing sent past the cap
        assert sum(1 for r in _posts(tmp_path) if r["too_young"] and r["status"] == "ok") >= 2
        before = dict(srv.sim.hits)
        t = time.monotonic()
        s = crawl(_cfg(tmp_path, srv.base_url, min_age=1, max_wait_s=2), pool="threads")  # refresh in the driver
        assert time.monotonic() - t < 30 and s["refreshed"] <= 1
        assert srv.sim.hits["statuses"] - before.get("statuses", 0) <= 1  # it stopped at the first far reset


def test_count_refresh_has_a_total_deadline(tmp_path):
    """T3: the driver-side refresh starts no request after ``scrape.refresh_timeout_s``."""
    from pipeline.scrape.feeds.refresh import refresh_young_posts

    with MastodonReplay(n=60) as srv:
        crawl(_cfg(tmp_path, srv.base_url), pool="threads")
        young = [r for r in _posts(tmp_path) if r["too_young"] and r["status"] == "ok"]
        assert len(young) >= 5
        cfg = _cfg(tmp_path, srv.base_url, min_age=1)
        cfg.scrape.refresh_timeout_s = 0.6
        ad = adapter_for(cfg.scrape.feeds[0])
        ad.pacer.spread_s = 0.5  # every request 0.5 s after the last (the server's headers not read)
        ad.pacer.observe = lambda headers, status: None
        before = srv.sim.hits["statuses"]
        t = time.monotonic()
        n = refresh_young_posts(cfg, DataRoot(cfg.data_root), adapters={"m": ad})
        assert time.monotonic() - t < 5
        assert 1 <= srv.sim.hits["statuses"] - before <= 2 and n == srv.sim.hits["statuses"] - before


def test_token_goes_to_the_sites_origin_only_not_another_port_or_plain_http(monkeypatch):
    """T10: a ``Link`` next page or a redirect to another port of the same host gets no token; a redirect from https
    to plain http is refused (``redirect_downgrade``) before anything is sent there."""
    from helpers.http import Reply, serve
    from pipeline.scrape.net.address import same_origin
    from pipeline.scrape.net.http import HttpClient

    robots = Reply(b"User-agent: *\nAllow: /\n")
    seen: list[str | None] = []

    def other(h) -> Reply:
        seen.append(h.headers.get("Authorization"))
        return Reply(b"[]", "application/json")

    monkeypatch.setenv("MASTODON_TOKEN", TOKEN)
    with serve({"/robots.txt": robots, "/api/v1/timelines/tag/selfie": other, "/x": other}) as b:
        nxt = f'<{b.base}/api/v1/timelines/tag/selfie?max_id=5>; rel="next"'
        status = {"id": "9", "account": {"id": "1", "acct": "a", "followers_count": 1}, "favourites_count": 1}
        with serve({
            "/robots.txt": robots,
            "/api/v1/timelines/tag/selfie": lambda h: Reply(
                json.dumps([status]).encode() if h.headers.get("Authorization") == f"Bearer {TOKEN}" else b"{}",
                "application/json", headers={"Link": nxt}),
            "/redirect": Reply(b"", code=302, headers={"Location": f"{b.base}/x"}),
        }) as a:  # fmt: skip
            cfg = _cfg(Path("/nonexistent"), a.base, access_token_env="MASTODON_TOKEN")
            ad = adapter_for(cfg.scrape.feeds[0])
            client = HttpClient(cfg.scrape.http, ["127.0.0.1"])
            first = ad.first_url("selfie")
            res = ad.fetch(client, first)
            page = ad.parse(res.data, first, "selfie", 0, res.headers)
            assert res.ok and len(page.posts) == 1 and page.next_url.startswith(b.base)  # the token opened it
            assert ad.fetch(client, page.next_url).ok and ad.fetch(client, f"{a.base}/redirect").ok
    assert seen == [None, None]  # the other port got neither the Link page's nor the redirect's token
    assert same_origin("https://m.example/a", "https://M.example:443/b")
    assert not same_origin("https://m.example/a", "http://m.example/a")
    assert not same_origin("https://m.example/a", "https://m.example:8443/a")

    # https -> http: the hop is refused before it is fetched (the first hop's answer stands in for a TLS server)
    client = HttpClient(cfg.scrape.http, ["m.example"])
    hops: list[str] = []
    monkeypatch.setattr(client, "target", lambda url, hop, hosts=None: (url, None))
    monkeypatch.setattr(client, "robots_allowed", lambda url: (True, None))
    monkeypatch.setattr(client, "_one_hop", lambda url, *a: hops.append(url) or "http://m.example/next")
    res = client.fetch_page("https://m.example/start", headers={"Authorization": "Bearer x"})
    assert (res.status, res.reason) == ("error", "redirect_downgrade")
    assert [h for h in hops if not h.endswith("/robots.txt")] == ["https://m.example/start"]
    assert not any(h.startswith("http:") for h in hops)  # not even its robots.txt


def test_an_opted_out_account_is_skipped_on_every_server_and_not_missing_from_the_walk(tmp_path):
    """T8: ``forget --acct`` before any crawl lists only the account (no user id is known yet): its statuses get no
    row (counted ``opted_out``), and the walk state does not list them as statuses still to be stored."""
    from pipeline.privacy import forget

    with MastodonReplay(n=60) as srv:
        remote = [s for s in srv.sim.statuses if "@" in s.acct and s.media == "image" and not s.sensitive]
        acct = remote[0].acct
        theirs = {s.id for s in srv.sim.statuses if s.acct == acct}
        cfg = _cfg(tmp_path, srv.base_url)
        forget(cfg, "acct", "@" + acct.upper())  # leading @ and case do not matter
        s = crawl(cfg, pool="threads")
    rows = _posts(tmp_path)
    assert rows and not {r["item_id"] for r in rows} & theirs
    assert all((r["user_acct"] or "").lower() != acct for r in rows)
    assert s["opted_out"] >= len(theirs & set(mastodon_truth(srv.sim)))
    state = json.loads((tmp_path / "data" / "feed_cursors" / "m" / "selfie.json").read_text())
    listed = {i for w in state["walks"] for p in w["pages"] for i in p["ids"]}
    assert listed and not listed & theirs  # a blocked status is not one the walk waits for
