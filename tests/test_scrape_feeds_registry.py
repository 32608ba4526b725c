"""Adding a feed API is one adapter module and one registry line: a made-up API (tests/helpers/lines_feed.py) is
registered by name for the test, configured by its own section, validated by its own options model, and crawled by
the one driver, incremental reruns included, without any other module knowing it."""

from __future__ import annotations

import datetime as dt

import pytest

from helpers.http import Handler, serve
from helpers.images import noise_jpeg
from pipeline.config import ConfigError, parse_config
from pipeline.scrape.crawl import crawl
from pipeline.scrape.feeds import registry
from pipeline.store import POSTS_DS, DataRoot


class _Lines(Handler):
    """``/lines/<tag>?n=&page=&since=``: the server's posts, newest first; ``/img/<id>.jpg`` their photos."""

    def do_GET(self):  # noqa: N802
        from urllib.parse import parse_qs, urlsplit

        u = urlsplit(self.path)
        q = {k: v[-1] for k, v in parse_qs(u.query).items()}
        self.server.requests.append(self.path)
        if u.path == "/robots.txt":
            return self.send(200, b"User-agent: *\nAllow: /\n")
        if u.path.startswith("/img/"):
            return self.send(200, noise_jpeg(48, 48, seed=int(u.path[5:-4])), "image/jpeg")
        ids = [i for i in sorted(self.server.ids, reverse=True) if "since" not in q or i > int(q["since"])]
        n, k = int(q.get("n", 5)), int(q.get("page", 1))
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=90)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lines = [f"{i} /img/{i}.jpg {i * 3} {i * 7} {old}" for i in ids[(k - 1) * n : k * n]]
        self.send(200, "\n".join(lines).encode())


@pytest.fixture
def lines_adapter(monkeypatch):
    """The one registry line a new adapter needs (here for this test only)."""
    monkeypatch.setitem(registry.ADAPTERS, "lines", "helpers.lines_feed:LinesAdapter")


def _cfg(tmp_path, base: str, **lines):
    return parse_config({
        "data_root": str(tmp_path / "data"),
        "scrape": {"threads_per_actor": 4, "batch_rows": 4,
                   "http": {"allow_private_addresses": True, "requests_per_second_per_host": 1000},
                   "feeds": [{"name": "l", "adapter": "lines", "base_url": base, "hashtags": ["me"], "lines": lines}]},
    })  # fmt: skip


def test_a_new_adapter_is_its_module_and_a_registry_line(lines_adapter, tmp_path):
    with serve(_Lines, ids=list(range(10, 22)), requests=[]) as srv:
        cfg = _cfg(tmp_path, srv.base, per_page=5)
        s = crawl(cfg, pool="threads")
        rows = {r["item_id"]: r for r in DataRoot(cfg.data_root).read(POSTS_DS).to_pylist()}
        assert sorted(rows) == [str(i) for i in range(10, 22)] and s["pages"] == 3
        assert all(r["status"] == "ok" and r["likes"] == int(i) * 3 and r["image_sha256"] for i, r in rows.items())
        srv.ids += [22, 23]  # two new posts: the rerun walks down to the newest stored one only
        srv.requests.clear()
        s = crawl(cfg, pool="threads")
        pages = [p for p in srv.requests if p.startswith("/lines/")]
        assert pages == ["/lines/me?n=5&page=1&since=21"] and s["posts_written"] == 2 and s["skipped_done"] == 0


def test_its_options_are_its_own_section_checked_by_its_model(lines_adapter, tmp_path):
    assert _cfg(tmp_path, "http://x", per_page=7).scrape.feeds[0].options.per_page == 7
    with pytest.raises(ConfigError, match=r"lines\.per_page"):
        _cfg(tmp_path, "http://x", per_page=500)
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg(tmp_path, "http://x", pages=2)
