"""adapter: misskey against the local replay server (pipeline/testing/misskey_replay.py), Ray-free: the crawl driver
on its thread pool (``crawl(cfg, pool="threads")``), as tests/test_scrape_feeds_mastodon.py does."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.config import ConfigError, parse_config
from pipeline.scrape.crawl import crawl
from pipeline.scrape.feeds.misskey import body_of, parse_note
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.store import POSTS, DataRoot, now, to_table
from pipeline.testing.misskey_replay import MisskeyReplay, MisskeySim

TOKEN = "mk-4f1e2d"


def _cfg(tmp_path: Path, base_url: str, tags=("selfie",), min_age=30, **misskey) -> object:
    return parse_config({
        "data_root": str(tmp_path / "data"),
        "scrape": {
            "min_post_age_days": min_age, "batch_rows": 25, "threads_per_actor": 4, "num_actors": 1,
            "http": {"allow_private_addresses": True, "requests_per_second_per_host": 1000,
                     "retry": {"attempts": 2, "backoff_s": 0.01, "backoff_max_s": 0.1, "jitter_s": 0.0}},
            "feeds": [{"name": "k", "adapter": "misskey", "base_url": base_url, "hashtags": list(tags),
                       "misskey": misskey}],
        },
    })  # fmt: skip


def _rows(tmp_path: Path, ds: str = "posts") -> list[dict]:
    return DataRoot(str(tmp_path / "data")).read(ds).to_pylist()


def _truth(sim: MisskeySim) -> dict[str, tuple[str, str | None]]:
    out = {}
    for nt in sim.notes:
        if nt.file == "none":
            continue  # withFiles: the server never lists it
        if f"u{nt.user:03d}" in sim.deleted:
            out[nt.id] = ("error", "followers_lookup:not_found")
        elif nt.file.startswith("video/"):
            out[nt.id] = ("skipped", "media_video")
        elif nt.file.startswith("audio/"):
            out[nt.id] = ("skipped", "media_audio")
        elif nt.sensitive:
            out[nt.id] = ("skipped", "sensitive")
        else:
            out[nt.id] = ("ok", None)
    return out


def test_note_parser_files_users_reactions_and_wrong_types():
    sim = MisskeySim(n=14, sensitive_every=0)
    got = {nt.file: parse_note(sim.note_json(nt), "mk.example") for nt in sim.notes}
    assert got["image/png"]["image_url"].endswith(".jpg") and "skip" not in got["image/png"]
    assert got["video/mp4"]["skip"] == "media_video" and got["audio/mpeg"]["skip"] == "media_audio"
    assert got["none"]["skip"] == "no_image"
    remote, local = sim.notes[0], sim.notes[1]
    p = parse_note(sim.note_json(remote), "mk.example")
    assert p["user_acct"] == "@user0@remote0.example" and p["post_url"] == "https://remote0.example/notes/0"
    p = parse_note(sim.note_json(local), "mk.example")
    assert p["user_acct"] == "@user1@mk.example" and p["post_url"] == f"https://mk.example/notes/{local.id}"
    assert p["likes"] == sim.likes(local) == 1 + 7 + 1 and p["reblogs"] == 1 and p["tags"] == ["selfie", "me"]
    assert p["counts_from"] == "mk.example" and p["user_id"] == "u001" and p["posted_at"] == local.created_at
    sens = sim.note_json(local)
    sens["files"][0]["isSensitive"] = True
    assert parse_note(sens, "h")["skip"] == "sensitive" and "skip" not in parse_note(sens, "h", True)
    j = sim.note_json(local)
    bad = {
        "likes": {"reactions": {"👍": "3"}}, "reblogs": {"renoteCount": 1.5}, "user": {"user": None},
        "user_acct": {"user": {**j["user"], "username": None}}, "tags": {"tags": [{"x": 1}]},
        "posted_at": {"createdAt": None}, "files": {"files": {"type": "image/png"}},
    }  # fmt: skip
    for field, change in bad.items():
        assert parse_note({**j, **change}, "h")["error"] == f"bad_post:{field}", field
    assert parse_note({**j, "id": 7}, "h") == {"item_id": None, "error": "bad_post:id"}
    assert parse_note({**j, "reactions": {"a": 2**62, "b": 2**62}}, "h")["error"] == "bad_post:likes"  # over int64
    assert body_of("http://h/api/notes/search-by-tag?tag=a&limit=100&withFiles=true&untilId=x&_since=y") == {
        "tag": "a", "limit": 100, "withFiles": True, "untilId": "x"}  # fmt: skip


def test_crawl_pages_by_until_id_with_every_field(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MISSKEY_TOKEN", TOKEN)
    with MisskeyReplay(n=130, token=TOKEN) as srv:
        cfg = _cfg(tmp_path, srv.base_url, tags=("selfie", "members", "nosuch"), limit=20,
                   access_token_env="MISSKEY_TOKEN")  # fmt: skip
        with caplog.at_level(logging.DEBUG):
            s = crawl(cfg, pool="threads")
        sim = srv.sim
        rows = {r["item_id"]: r for r in _rows(tmp_path) if r["hashtag"] == "selfie"}
        assert {i: (r["status"], r["reason"]) for i, r in rows.items()} == _truth(sim)
        selfie = [b for b in sim.bodies if b["tag"] == "selfie"]
        assert all(b["withFiles"] is True and b["limit"] == 20 for b in selfie)
        assert len(selfie) == len(rows) // 20 + 2 - (len(rows) % 20 == 0)  # pages of 20, then an empty one
        for nt in sim.notes:
            if nt.id not in rows:
                continue
            r = rows[nt.id]
            assert r["site"] == "k" and r["user_id"] == f"u{nt.user:03d}" and r["likes"] == sim.likes(nt)
            host = sim.remote(nt.user) or "127.0.0.1"
            assert r["user_acct"] == f"@user{nt.user}@{host}" and r["counts_from"] == "127.0.0.1"
            assert r["reblogs"] == nt.n % 4 and r["posted_at"] == nt.created_at and r["tags"] == list(nt.tags)
            assert r["replies"] == nt.n % 5 and r["quotes"] is None
            assert json.loads(r["reactions"]) == sim.reactions(nt)  # the map as the server gave it
            assert r["too_young"] == (nt.n % 5 == 1)
            if r["status"] != "error":
                assert r["followers"] == sim.followers(nt.user)
            if r["status"] == "ok":
                assert r["image_url"] == sim.file_url(nt) and r["image_sha256"]
        members = [r for r in _rows(tmp_path) if r["hashtag"] == "members"]
        assert members == [] and s["pages_failed"] == 0  # no note tagged members: one empty page, with the token
        assert set(sim.auth_seen) == {TOKEN}
    stored = b"".join(p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file())
    assert TOKEN.encode() not in stored and TOKEN not in caplog.text


def test_auth_needed_and_429_are_rows_and_a_short_retry_after_is_waited(tmp_path):
    with MisskeyReplay(n=20) as srv:
        s = crawl(_cfg(tmp_path / "a", srv.base_url, tags=("members",)), pool="threads")
        reasons = [f["reason"] for f in _rows(tmp_path / "a", "fetches") if "search-by-tag" in f["url"]]
        assert reasons == ["http_401_auth_required"] and s["posts_written"] == 0
    with MisskeyReplay(n=30, rate_limit=2, rate_window_s=1.0, retry_after_s=1) as srv:
        s = crawl(_cfg(tmp_path / "b", srv.base_url, limit=10), pool="threads")
        assert srv.sim.hits["429"] >= 1 and s["pages_failed"] == 0  # waited for Retry-After, then went on
        assert {r["item_id"] for r in _rows(tmp_path / "b")} == set(_truth(srv.sim))
    with MisskeyReplay(n=30, rate_limit=1, rate_window_s=3600, retry_after_s=3600) as srv:
        crawl(_cfg(tmp_path / "c", srv.base_url, limit=10, max_wait_s=2), pool="threads")
        reasons = {f["reason"] for f in _rows(tmp_path / "c", "fetches")}
        assert reasons & {"rate_limited", "http_429_rate_limited"}


def test_incremental_rerun_and_a_deleted_note(tmp_path):
    with MisskeyReplay(n=50, young_every=0) as srv:
        cfg = _cfg(tmp_path, srv.base_url, limit=10)
        crawl(cfg, pool="threads")
        first = {r["item_id"] for r in _rows(tmp_path)}
        srv.sim.bodies.clear()
        new = srv.sim.add(6)
        srv.sim.delete(new[0])  # deleted before the rerun reads it
        s = crawl(cfg, pool="threads")
        got = {r["item_id"] for r in _rows(tmp_path)}
        assert got - first == {i for i in new[1:] if i in set(_truth(srv.sim))} and new[0] not in got
        assert len(srv.sim.bodies) <= 2 and s["pages_failed"] == 0  # the new page, stopped at the stored one


def test_options_checked_and_first_url():
    base = {"data_root": "/tmp/x", "scrape": {"feeds": [{"name": "k", "adapter": "misskey",
                                                         "base_url": "https://misskey.example"}]}}  # fmt: skip
    for bad in ({"limit": 101}, {"access_token_env": "HOME"}, {"x": 1}):
        base["scrape"]["feeds"][0]["misskey"] = bad
        with pytest.raises(ConfigError):
            parse_config(base)
    base["scrape"]["feeds"][0]["misskey"] = {"renote": False}
    url = adapter_for(parse_config(base).scrape.feeds[0]).first_url("#selfie")
    assert url == "https://misskey.example/api/notes/search-by-tag?tag=selfie&limit=100&withFiles=true&renote=false"


def test_young_notes_refreshed_by_notes_show_once_old_enough(tmp_path):
    with MisskeyReplay(n=40) as srv:
        crawl(_cfg(tmp_path, srv.base_url, min_age=30), pool="threads")
        young = {r["item_id"]: r for r in _rows(tmp_path) if r["too_young"] and r["status"] == "ok"}
        assert len(young) >= 3
        by_id = {nt.id: nt for nt in srv.sim.notes}
        for i in young:
            srv.sim.reactions_of[by_id[i].n] = {"👍": 500, ":party:": 20}
        gone = next(iter(young))
        srv.sim.delete(gone)
        s = crawl(_cfg(tmp_path, srv.base_url, min_age=1), pool="threads")
        assert s["refreshed"] == len(young) - 1 and srv.sim.hits["note"] == len(young)
        rows = {r["item_id"]: r for r in _rows(tmp_path)}
        for i, old in young.items():
            want = (old["likes"], True) if i == gone else (520, False)
            assert (rows[i]["likes"], rows[i]["too_young"]) == want


TREE = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=6), kids, max_size=3),
    max_leaves=10,
)
FIELDS = ["id", "user", "reactions", "renoteCount", "tags", "createdAt", "files", "url", "uri"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(0, 6), changes=st.dictionaries(st.sampled_from(FIELDS), TREE, max_size=3))
def test_note_parser_random_fields_never_crash_and_rows_fit(n, changes):
    sim = MisskeySim(n=7)
    p = parse_note({**sim.note_json(sim.notes[n]), **changes}, "h")
    if p.get("item_id") is None:
        assert p["error"] == "bad_post:id"
        return
    assert "error" in p or p.get("skip") or isinstance(p.get("image_url"), str)
    if "error" not in p:
        row = {k: p.get(k) for k in ("user_id", "likes", "tags", "posted_at", "image_url", "user_acct", "reblogs",
                                     "post_url", "counts_from")}  # fmt: skip
        to_table([{"site": "k", "item_id": p["item_id"], "scraped_at": now(), **row}], POSTS)
