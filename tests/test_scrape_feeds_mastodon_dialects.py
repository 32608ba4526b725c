"""adapter: mastodon against Mastodon-compatible servers that speak their own dialect (Pixelfed, GoToSocial, Akkoma),
each answered by the replay server's ``dialect`` (pipeline/testing/mastodon_replay.py), Ray-free."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from test_scrape_feeds_mastodon import TOKEN, _cfg, _posts

from helpers.feed_truth import mastodon_truth
from pipeline.scrape.crawl import crawl
from pipeline.scrape.feeds.mastodon import parse_status
from pipeline.scrape.feeds.nodeinfo import Software, document_href, software_name
from pipeline.store import DataRoot
from pipeline.testing.mastodon_replay import MastodonReplay, MastodonSim

REL = "http://nodeinfo.diaspora.software/ns/schema/"


def _failed(tmp_path: Path) -> list[tuple[str, str]]:
    fetches = DataRoot(str(tmp_path / "data")).read("fetches").to_pylist()
    return sorted((f["url"].split("/tag/")[1].split("?")[0], f["reason"]) for f in fetches if f["status"] != "ok")


def test_nodeinfo_is_two_requests_at_most_on_the_same_origin_and_cached():
    base = "https://px.example"
    doc = {"links": [{"rel": REL + "2.0", "href": "/api/nodeinfo/2.0.json"}, {"rel": REL + "2.1", "href": "/n/2.1"}]}
    assert document_href(doc, base + "/") == "https://px.example/n/2.1"  # the newest 2.x
    away = {"links": [{"rel": REL + "2.0", "href": "https://elsewhere.example/nodeinfo/2.0"}]}
    assert document_href(away, base + "/") is None and document_href([1], base) is None
    assert software_name({"software": {"name": " Pixelfed "}}) == "pixelfed" and software_name({"software": 1}) == ""
    seen = []

    def fetch(url):
        seen.append(url)
        body = b'{"links":[{"rel":"%s2.0","href":"/api/nodeinfo/2.0.json"}]}' % REL.encode()
        if url.endswith(".json"):
            body = b'{"software":{"name":"pixelfed","version":"0.12.4"}}'
        return SimpleNamespace(ok=True, data=body)

    sw = Software(base)
    assert sw.get(fetch) == "pixelfed" and sw.get(fetch) == "pixelfed"
    assert seen == [base + "/.well-known/nodeinfo", base + "/api/nodeinfo/2.0.json"]  # once, two requests
    assert Software(base).get(lambda u: SimpleNamespace(ok=False, data=None)) == ""  # no NodeInfo: unknown


def test_pixelfed_token_rejected_only_media_and_no_link_headers(tmp_path, monkeypatch):
    with MastodonReplay(n=60, token=TOKEN, dialect="pixelfed", strict_only_media=True) as srv:
        cfg = _cfg(tmp_path / "a", srv.base_url, tags=("selfie", "portrait"), access_token_env="MASTODON_TOKEN")
        s = crawl(cfg, pool="threads")
        want = "auth_required:pixelfed:MASTODON_TOKEN_unset"  # names the variable to set, one row per hashtag
        assert _failed(tmp_path / "a") == [("portrait", want), ("selfie", want)] and s["posts_written"] == 0
        assert srv.sim.hits["nodeinfo"] == 2  # asked once for both hashtags
        monkeypatch.setenv("MASTODON_TOKEN", TOKEN)
        srv.sim.hits.clear()
        s = crawl(_cfg(tmp_path / "b", srv.base_url, access_token_env="MASTODON_TOKEN", limit=20), pool="threads")
        rows = {r["item_id"]: (r["status"], r["reason"]) for r in _posts(tmp_path / "b")}
        assert rows == mastodon_truth(srv.sim) and s["pages_failed"] == 0
        # only_media=true rejected once (422), then left out; no Link header: paged by max_id to the empty page
        assert srv.sim.hits["timeline"] == 1 + 4 and srv.sim.hits["paging"] == 3
        assert srv.sim.hits["nodeinfo"] == 2  # this run's adapter asked once
    monkeypatch.delenv("MASTODON_TOKEN")
    with MastodonReplay(n=5, dialect="pixelfed") as srv:
        crawl(_cfg(tmp_path / "c", srv.base_url), pool="threads")
        assert _failed(tmp_path / "c") == [("selfie", "auth_required:pixelfed:mastodon.access_token_env")]


def test_gotosocial_ulids_unread_filters_and_incremental_rerun(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTODON_TOKEN", TOKEN)
    with MastodonReplay(n=50, token=TOKEN, dialect="gotosocial") as srv:
        cfg = _cfg(tmp_path, srv.base_url, access_token_env="MASTODON_TOKEN", limit=20)
        crawl(cfg, pool="threads")
        rows = {r["item_id"]: (r["status"], r["reason"]) for r in _posts(tmp_path)}
        # only_media is not read there: statuses without media come back and are skipped here as no_image
        assert rows == mastodon_truth(srv.sim, only_media=False)
        assert all(len(i) == 26 and not i.isdigit() for i in rows)  # ULIDs, kept as text
        assert srv.sim.hits["nodeinfo"] == 0  # nothing needed the software's name
        new = srv.sim.add(3)
        before = srv.sim.hits["timeline"]
        s = crawl(cfg, pool="threads")
        assert srv.sim.hits["timeline"] - before <= 2 and s["posts_written"] == 3  # since_id by ULID order
        assert {r["item_id"] for r in _posts(tmp_path)} >= set(new)


def test_akkoma_flake_ids_hidden_follower_counts_and_restricted_timelines(tmp_path):
    with MastodonReplay(n=40, dialect="akkoma") as srv:
        crawl(_cfg(tmp_path / "a", srv.base_url, limit=20), pool="threads")
        rows = {r["item_id"]: r for r in _posts(tmp_path / "a")}
        assert {i: (r["status"], r["reason"]) for i, r in rows.items()} == mastodon_truth(srv.sim)
        sim = srv.sim
        hidden = [s for s in sim.statuses if s.id in rows and sim.hidden_followers(s)]
        assert hidden and all(rows[s.id]["followers"] is None for s in hidden)  # not the 0 Akkoma answers
        shown = [s for s in sim.statuses if s.id in rows and not sim.hidden_followers(s)]
        assert all(rows[s.id]["followers"] == s.followers for s in shown)
        assert all(len(i) == 18 for i in rows)
        for s in sim.statuses:  # pleroma.emoji_reactions kept as the reactions map; replies_count as replies
            if s.id in rows:
                want = {e["name"]: e["count"] for e in sim.emoji_reactions(s)}
                assert json.loads(rows[s.id]["reactions"]) == want and rows[s.id]["replies"] == s.n % 6
    with MastodonReplay(n=5, dialect="akkoma", restrict_unauthenticated=True) as srv:
        crawl(_cfg(tmp_path / "b", srv.base_url), pool="threads")
        assert _failed(tmp_path / "b") == [("selfie", "auth_required:akkoma:mastodon.access_token_env")]


def test_absent_counts_are_null_and_a_wrong_type_is_still_an_error():
    sim = MastodonSim(n=2, dialect="gotosocial")
    st = sim.status_json(sim.statuses[1])
    gone = {**st, "account": {k: v for k, v in st["account"].items() if k != "followers_count"}}
    del gone["favourites_count"]
    p = parse_status(gone, "h")
    assert p["followers"] is None and p["likes"] is None and "error" not in p and p["image_url"]
    nulls = parse_status({**st, "account": {**st["account"], "followers_count": None}}, "h")
    assert nulls["followers"] is None and "error" not in nulls
    assert parse_status({**st, "favourites_count": "3"}, "h")["error"] == "bad_post:likes"
    assert parse_status(st, "h")["item_id"] == sim.statuses[1].id  # a ULID, as text
