"""``python -m pipeline scrape check-feed``: one feed site's first page per hashtag, decided as the crawl decides.

Against the local replay servers (pipeline/testing/: Mastodon, Misskey) and saved response bodies (Bluesky's,
Mastodon's), Ray-free: nothing but the check's own HTTP client runs, and the data root is only read.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from pipeline.cli import main
from pipeline.testing.bluesky_replay import BlueskySim
from pipeline.testing.mastodon_replay import MastodonReplay, MastodonSim
from pipeline.testing.misskey_replay import MisskeyReplay

REPO = Path(__file__).resolve().parents[1]
RETRY = {"attempts": 1, "backoff_s": 0.01, "backoff_max_s": 0.1, "jitter_s": 0.0}


def _config(tmp_path: Path, feed: dict, private: bool = True) -> str:
    path = tmp_path / "feeds.yaml"
    http = {"allow_private_addresses": private, "retry": RETRY, "connect_timeout_s": 1.0}
    path.write_text(yaml.safe_dump({"data_root": str(tmp_path / "data"), "scrape": {"http": http, "feeds": [feed]}}))
    return str(path)


def _files(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")} if root.exists() else {}


def test_check_feed_decides_each_post_as_the_crawl_and_writes_nothing(tmp_path, capsys):
    """Mastodon, live: every status of the first page with the crawl's verdict (skip reasons, an opted-out account,
    photos on a media host the config does not name, with the setting that allows them), the next page and the
    rate-limit headers; the data root (its opt-out list) is read, never written."""
    from pipeline.config import load_config
    from pipeline.privacy import forget

    with MastodonReplay(n=24) as srv:
        media = srv.base_url.replace("127.0.0.1", "localhost")
        srv.sim.media_base = media  # the images live on another host, as on many servers
        feed = {"name": "m", "adapter": "mastodon", "base_url": srv.base_url, "hashtags": ["selfie"],
                "mastodon": {"limit": 20}}  # fmt: skip
        cfg = _config(tmp_path, feed)
        listed = [s for s in srv.sim.statuses[::-1] if s.media != "none"][:20]  # the first page (only_media)
        out_acct = next(s.acct for s in listed if "@" in s.acct and s.media == "image" and not s.sensitive)
        forget(load_config(cfg), "acct", out_acct)
        before = _files(tmp_path / "data")
        assert before  # the opt-out list is there

        rc = main(["scrape", "check-feed", "--config", cfg, "--site", "m", "--json"])
        rep = json.loads(capsys.readouterr().out)
        assert rc == 0 and rep["opt_out"] == "read (1 entries)"
        (pg,) = rep["pages"]
        assert (pg["status"], pg["http_status"], pg["posts"]) == ("ok", 200, 20)
        assert "max_id=" in pg["next_url"] and int(pg["rate_limit"]["x-ratelimit-remaining"]) > 0
        got = {r["item_id"]: r for r in rep["posts"]}
        assert list(got) == [s.id for s in listed]
        for s in listed:
            r = got[s.id]
            assert r["user_id"] and r["followers"] == s.followers and r["likes"] == s.likes
            if s.acct == out_acct:
                assert r["crawl"] == "no row: opted out (the account is on the opt-out list)"
            elif s.media in ("gifv", "video", "audio"):
                assert r["crawl"] == f"skipped: media_{s.media}"
            elif s.sensitive:
                assert r["crawl"] == "skipped: sensitive"
            else:  # an image on the media host: refused, naming the setting
                assert r["image_url"].startswith(media)
                assert r["crawl"].startswith("no: outside_photo_hosts (") and "'localhost'" in r["crawl"]
                assert "photo_hosts" in r["crawl"]

        # the setting it names: the images would be fetched (text output)
        rc = main(["scrape", "check-feed", "--config", cfg, "--site", "m", "--set",
                   "scrape.feeds[m].photo_hosts=[localhost]"])  # fmt: skip
        out = capsys.readouterr().out
        fetch = [s for s in listed if s.media in ("image", "unknown") and not s.sensitive and s.acct != out_acct]
        assert rc == 0 and out.count("crawl:       fetch image") == len(fetch) > 0
        assert "next page: http" in out and "rate limit: x-ratelimit-limit=" in out
    assert _files(tmp_path / "data") == before  # nothing written


def test_check_feed_reads_a_saved_page_as_if_served_at_its_url(tmp_path, capsys):
    """Bluesky, a saved searchPosts body: parsed by the adapter as if fetched from the crawl's first URL (or --as),
    nothing fetched (followers are a lookup request: not made), the cursor as the next page; images on the CDN
    are refused until scrape.photo_hosts names it."""
    sim = BlueskySim(n=10, require_auth=False)
    sim.base_url = "https://cdn.bsky.app"  # where the images are
    status, _, body = sim.handle("GET", "/xrpc/app.bsky.feed.searchPosts?q=%23selfie&tag=selfie&limit=5", {}, b"")
    assert status == 200
    saved = tmp_path / "page.json"
    saved.write_bytes(body)
    feed = {"name": "b", "adapter": "bluesky", "base_url": "https://bsky.social", "hashtags": ["selfie"]}
    cfg = _config(tmp_path, feed, private=False)
    rc = main(["scrape", "check-feed", "--config", cfg, "--site", "b", "--saved", str(saved), "--json"])
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0
    (pg,) = rep["pages"]
    assert pg["read"] == f"saved file {saved}" and pg["http_status"] is None
    assert pg["url"].startswith("https://bsky.social/xrpc/app.bsky.feed.searchPosts?q=%23selfie")
    assert pg["next_url"].startswith(pg["url"]) and "cursor=" in pg["next_url"]
    posts = rep["posts"]
    assert len(posts) == 5 and all(p["user_id"].startswith("did:") for p in posts)
    assert all(p["followers"] is None and p["followers_lookup"] == "not made (saved page)" for p in posts)
    assert {p["crawl"] for p in posts if not p["image_url"]} == {"skipped: no_image"}
    assert "skipped: sensitive" in {p["crawl"] for p in posts}  # a labelled post, as the crawl skips it
    images = [p for p in posts if p["image_url"] and not p["crawl"].startswith("skipped")]
    assert images and all(p["image_url"].startswith("https://cdn.bsky.app/") for p in images)
    assert all("outside_photo_hosts" in p["crawl"] and "'cdn.bsky.app'" in p["crawl"] for p in images)
    # --as: the page served elsewhere; the config's photo_hosts let the CDN's images through
    as_url = "https://bsky.social/xrpc/app.bsky.feed.searchPosts?q=%23selfie&tag=selfie&limit=5"
    rc = main(["scrape", "check-feed", "--config", cfg, "--site", "b", "--saved", str(saved), "--as", as_url,
               "--set", "scrape.photo_hosts=[cdn.bsky.app]", "--json"])  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0 and rep["pages"][0]["url"] == as_url and "cdn.bsky.app" in rep["photo_hosts"]
    fetched = [p["item_id"] for p in rep["posts"] if p["crawl"] == "fetch image"]
    assert fetched == [p["item_id"] for p in images]
    # a JSON API's page with relative links: they resolve against --as, exactly as live
    post = {"id": 7, "image_url": "/img/7.jpg", "user": {"id": "u7", "followers": 3}, "likes": 2, "tags": ["selfie"],
            "posted_at": "2026-01-02T03:04:05Z"}  # fmt: skip
    saved.write_text(json.dumps({"posts": [post], "next_page": "?tag=selfie&page=2"}))
    cfg = _config(tmp_path, {"name": "j", "adapter": "json", "base_url": "https://feed.example"}, private=False)
    as_url = "https://www.feed.example/api/feed?tag=selfie&page=1"
    assert main(["scrape", "check-feed", "--config", cfg, "--site", "j", "--saved", str(saved), "--as", as_url]) == 0
    out = capsys.readouterr().out
    assert "next page: https://www.feed.example/api/feed?tag=selfie&page=2" in out
    assert "image_url:   https://www.feed.example/img/7.jpg" in out and "crawl:       fetch image" in out
    assert not (tmp_path / "data").exists()


def test_check_feed_misskey_followers_looked_up_as_the_crawl_does(tmp_path, capsys):
    """Misskey, live: the POST search and users/show lookups through the adapter; a deleted user is the crawl's
    error row ``followers_lookup:not_found``."""
    with MisskeyReplay(n=12) as srv:
        feed = {"name": "k", "adapter": "misskey", "base_url": srv.base_url, "hashtags": ["selfie"],
                "misskey": {"limit": 12}}  # fmt: skip
        rc = main(["scrape", "check-feed", "--config", _config(tmp_path, feed), "--site", "k", "--json"])
        rep = json.loads(capsys.readouterr().out)
        deleted = {n.id for n in srv.sim.notes if f"u{n.user:03d}" in srv.sim.deleted}
    assert rc == 0 and rep["pages"][0]["posts"] == len(rep["posts"]) > 0
    for p in rep["posts"]:
        if p["item_id"] in deleted:
            assert p["crawl"] == "error: followers_lookup:not_found"
        else:
            assert isinstance(p["followers"], int) and p["user_acct"].startswith("@")
    assert "untilId=" in rep["pages"][0]["next_url"]


def test_check_feed_errors_are_one_line_with_distinct_exit_codes(tmp_path, capsys):
    """A bad site name 2, an unreachable host 6, authentication needed 7 (naming the setting), bad options 2."""
    with MastodonReplay(n=4) as srv:
        feed = {"name": "m", "adapter": "mastodon", "base_url": srv.base_url, "hashtags": ["selfie"]}
        cfg = _config(tmp_path, feed)
        assert main(["scrape", "check-feed", "--config", cfg, "--site", "nope"]) == 2
        assert "no feed site named 'nope' (feed sites: m)" in capsys.readouterr().err
        assert main(["scrape", "check-feed", "--config", cfg, "--site", "m", "--tag", "private"]) == 7
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and "http_401_auth_required" in err
        assert "mastodon.access_token_env (not configured)" in err
        refused = _config(tmp_path, feed, private=False)
        assert main(["scrape", "check-feed", "--config", refused, "--site", "m"]) == 6
        assert "private_address" in (e := capsys.readouterr().err) and "allow_private_addresses" in e
    closed = _config(tmp_path, {**feed, "base_url": "http://127.0.0.1:9"})
    assert main(["scrape", "check-feed", "--config", closed, "--site", "m"]) == 6
    err = capsys.readouterr().err  # its robots.txt could not be fetched first: the crawl's reason, and why
    assert "robots_unavailable" in err and "robots.txt: connection_error" in err
    assert main(["scrape", "check-feed", "--config", cfg, "--site", "m", "--as", "https://x.example/"]) == 2
    assert main(["scrape", "check-feed", "--config", cfg, "--site", "m", "--saved", str(tmp_path / "no.json")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_the_documented_check_feed_command_starts_no_ray(tmp_path, capsys, monkeypatch):
    """docs/feeds.md's command on a saved page of the example site file, with Ray and the modules that start it made
    unimportable: it runs all the same (the check starts no Ray and needs no limiter actor)."""
    status, _, body = MastodonSim(n=8, host="mastodon.social").handle(
        "/api/v1/timelines/tag/selfie?limit=40&only_media=true"
    )
    assert status == 200
    (tmp_path / "page.json").write_bytes(body)
    for name in ("ray", "pipeline.scrape.net.ratelimit", "pipeline.runtime", "pipeline.scrape.workers"):
        monkeypatch.setitem(sys.modules, name, None)  # an import of any of them raises ImportError
    monkeypatch.chdir(tmp_path)  # the site file's data root ("data") is read here: there is none
    rc = main(["scrape", "check-feed", "--config", str(REPO / "configs/sites/mastodon.example.yaml"),
               "--site", "mastodon-social", "--saved", "page.json"])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "crawl:       fetch image" in out
    # no Link header in a saved body: the next page is the one a server without Link headers gets (max_id paging)
    assert "next page: https://mastodon.social/api/v1/timelines/tag/selfie?limit=40&only_media=true&max_id=" in out
    assert "#selfie: https://mastodon.social/api/v1/timelines/tag/selfie?limit=40&only_media=true" in out
    assert not (tmp_path / "data").exists()
