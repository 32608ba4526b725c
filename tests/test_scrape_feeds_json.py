"""The generic json adapter: field path syntax, items at the root or nowhere, wrong types, next page from the body,
the Link header or a cursor token, and follower lookups with batching (an in-process server on 127.0.0.1)."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers.http import Handler, serve
from pipeline.config import ConfigError, FeedSite, parse_config
from pipeline.scrape.feeds.base import FeedParseError
from pipeline.scrape.feeds.fieldpath import MISSING, FieldPath, PathSyntaxError, compile_path, evaluate
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.scrape.net.http import HttpClient
from pipeline.scrape.work import HttpWork

DOC = {
    "a": {"b": 1, "list": [10, 20, 30]},
    "tags": [{"name": "selfie", "url": "u1"}, {"name": "me"}, {"url": "no-name"}],
    "media_attachments": [
        {"type": "video", "url": "v.mp4"},
        {"type": "image", "url": "i.jpg"},
        {"type": "image", "url": "j.jpg"},
    ],  # fmt: skip
    "n": None,
}


@pytest.mark.parametrize(
    ("path", "want"),
    [
        ("a.b", 1), ("a.list.0", 10), ("a.list.-1", 30), ("a.list.3", MISSING), ("a.nope", MISSING), ("n", None),
        ("tags[].name", ["selfie", "me"]), ("media_attachments[type=image].0.url", "i.jpg"),
        ("media_attachments[type=image].1.url", "j.jpg"), ("media_attachments[type=gifv].0.url", MISSING),
        ("media_attachments[type=image]", [DOC["media_attachments"][1], DOC["media_attachments"][2]]),
        ("tags[].nope", []), ("a.b.c", MISSING), ("a[].b", MISSING), ("", DOC), (".", DOC),
    ],
)  # fmt: skip
def test_path_syntax(path, want):
    assert evaluate(DOC, compile_path(path)) == want


def test_path_alternatives_and_root_projection():
    assert FieldPath(["media_attachments[type=gifv].0.url", "media_attachments[type=image].0.url"]).get(DOC) == "i.jpg"
    assert FieldPath(["nope", "a.b"]).get(DOC) == 1
    assert FieldPath(["tags[].nope", "a.list"]).get(DOC) == [10, 20, 30]  # an empty projection falls through
    assert FieldPath(["nope", "tags[].nope"]).get(DOC) == []
    assert FieldPath("[].id").get([{"id": 1}, {"id": 2}, {}]) == [1, 2]
    assert FieldPath("[kind=x].0.id").get([{"kind": "y", "id": 1}, {"kind": "x", "id": 2}]) == 2


@pytest.mark.parametrize("bad", ["a..b", "a[", "a]", "a[b", "a.[x=1", "x[=1]", "a[b=c]d"])
def test_bad_paths_are_one_config_error_line(bad):
    with pytest.raises(PathSyntaxError):
        compile_path(bad)
    with pytest.raises(ConfigError, match="fields.tags"):
        feed = {"name": "j", "adapter": "json", "base_url": "x", "json": {"fields": {"tags": bad}}}
        parse_config({"scrape": {"feeds": [feed]}})


def _site(**kw) -> FeedSite:
    fields = {"items": "", "next": "next", "id": "id", "image_url": "img", "user_id": "user.id",
              "followers": "user.followers", "likes": "likes", "tags": "tags", "posted_at": "at"}  # fmt: skip
    fields.update(kw.pop("fields", {}))
    return FeedSite(name="j", adapter="json", base_url="http://127.0.0.1:1", json={"fields": fields, **kw})


POST = {"id": "p1", "img": "/i.jpg", "user": {"id": "u1", "followers": 5}, "likes": 3, "tags": ["a"],
        "at": "2026-01-02T03:04:05Z"}  # fmt: skip
URL = "http://127.0.0.1:1/api/feed?tag=t&page=1"


def _parse(site: FeedSite, doc, headers=None):
    return adapter_for(site).parse(json.dumps(doc).encode(), URL, "t", 1, headers)


def test_items_at_the_root_or_nowhere():
    assert [p["item_id"] for p in _parse(_site(), [POST, {**POST, "id": 2}]).posts] == ["p1", "2"]
    assert [p["item_id"] for p in _parse(_site(fields={"items": "."}), [POST]).posts] == ["p1"]
    with pytest.raises(FeedParseError) as e:
        _parse(_site(fields={"items": "data.posts"}), {"data": {"items": []}})
    assert e.value.code == "items_not_found"
    with pytest.raises(FeedParseError) as e:
        _parse(_site(fields={"items": "data"}), {"data": {"posts": []}})
    assert e.value.code == "items_not_a_list"
    assert _parse(_site(fields={"items": "data"}), {"data": []}).posts == []  # an empty list is an empty page


def test_wrong_types_are_error_rows_naming_the_field():
    cases = {
        "image_url": {"img": {"url": "x"}}, "likes": {"likes": "12"},
        "followers": {"user": {"id": 1, "followers": 2.5}},
        "tags": {"tags": [{"name": "selfie"}]}, "user_id": {"user": {"id": {"x": 1}, "followers": 1}},
        "posted_at": {"at": "yesterday"},
    }  # fmt: skip
    for field, change in cases.items():
        (p,) = _parse(_site(), [{**POST, **change}]).posts
        assert p["error"] == f"bad_post:{field}", field
    (p,) = _parse(_site(fields={"tags": "tags[].name"}), [{**POST, "tags": [{"name": "selfie"}, {"name": "me"}]}]).posts
    assert p["tags"] == ["selfie", "me"] and "error" not in p
    (p,) = _parse(_site(fields={"tags": "tags.0.name"}), [{**POST, "tags": [{"name": "selfie"}]}]).posts
    assert p["tags"] == ["selfie"] and "error" not in p  # one text is one tag
    (p,) = _parse(_site(), [{**POST, "img": None}]).posts
    assert p["skip"] == "no_image" and "error" not in p  # a post without an image is skipped, not an error
    site = _site(fields={"image_url": ["media[type=image].0.url", "media[type=unknown].0.remote_url"]})
    media = [{"type": "video", "url": "v"}, {"type": "unknown", "remote_url": "r.jpg"}]
    (p,) = _parse(site, [{**POST, "media": media}]).posts
    assert p["image_url"] == "http://127.0.0.1:1/api/r.jpg"  # relative to the page URL


def test_next_page_from_body_link_header_or_cursor():
    assert _parse(_site(), [POST]).next_url is None  # a top-level list has no `next` field
    body = _site(fields={"items": "posts"})
    assert _parse(body, {"posts": [POST], "next": 2}).next_url.endswith("page=2")
    link = _site(next_from="link")
    hdr = {"link": '<https://x.example/api?max_id=5>; rel="next", <https://x.example/api?min_id=9>; rel="prev"'}
    assert _parse(link, [POST], hdr).next_url == "https://x.example/api?max_id=5"
    assert _parse(link, [POST], {}).next_url is None
    cur = _site(next_from="cursor", page_url="{base_url}/feed?tag={hashtag}&cursor={cursor}",
                fields={"items": "data.items", "next": "data.cursor"})  # fmt: skip
    assert adapter_for(cur).first_url("t") == "http://127.0.0.1:1/feed?tag=t&cursor="
    assert _parse(cur, {"data": {"items": [POST], "cursor": "ab/c=="}}).next_url.endswith("cursor=ab%2Fc%3D%3D")
    assert _parse(cur, {"data": {"items": [POST], "cursor": None}}).next_url is None


class _Profiles(Handler):
    """A Bluesky-style getProfiles (``actors`` repeated, up to 25) and a one-user profile route; counts requests
    (ids a request) in the server's ``hits``."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):  # noqa: N802
        u = urlsplit(self.path)
        q = parse_qs(u.query)
        if u.path == "/xrpc/app.bsky.actor.getProfiles":
            actors = q.get("actors", [])
            self.server.hits.append(len(actors))
            body = {"profiles": [{"did": a, "followersCount": int(a.split(":")[-1])} for a in actors if a != "did:x:7"]}
        elif u.path.startswith("/users/"):
            self.server.hits.append(1)
            body = {"data": {"user": {"edge_followed_by": {"count": 42}}}}
        elif u.path == "/feed":
            body = {"feed": [{"post": {"uri": f"at://{i}", "author": {"did": f"did:x:{i % 30}"}, "likeCount": i,
                    "embed": {"images": [{"fullsize": f"/i{i}.jpg"}]}, "indexedAt": "2026-01-02T03:04:05Z"}}
                    for i in range(60)]}  # fmt: skip
        else:
            body = {"robots": True} if u.path != "/robots.txt" else None
        data = b"User-agent: *\nAllow: /\n" if body is None else json.dumps(body).encode()
        self.send(200, data, "application/json")


@pytest.fixture
def profiles_server():
    """The profiles server (helpers.http.serve): ``.base`` its URL, ``.hits`` the ids of each profile request."""
    with serve(_Profiles, hits=[]) as srv:
        yield srv


BSKY_FIELDS = {"items": "feed", "next": "cursor", "id": "post.uri", "image_url": "post.embed.images.0.fullsize",
               "user_id": "post.author.did", "likes": "post.likeCount", "tags": "post.tags",
               "posted_at": "post.indexedAt"}  # fmt: skip


def test_followers_lookup_batched_once_per_user(profiles_server, tmp_path):
    cfg = parse_config({"data_root": str(tmp_path), "scrape": {"http": {"allow_private_addresses": True},
        "feeds": [{"name": "bsky", "adapter": "json", "base_url": profiles_server.base, "json": {
                   "page_url": "{base_url}/feed", "fields": BSKY_FIELDS, "followers_lookup": {
                       "url": "{base_url}/xrpc/app.bsky.actor.getProfiles?{ids}", "batch": 25, "id_param": "actors",
                       "items": "profiles", "id": "did", "count": "followersCount"}}}]}})  # fmt: skip
    work = HttpWork(cfg, [])
    task = {"kind": "page", "site": "bsky", "hashtag": "t", "page": 1, "url": f"{profiles_server.base}/feed"}
    (r,), _ = work.run([task])
    assert r["status"] == "ok" and len(r["posts"]) == 60
    assert sorted(profiles_server.hits) == [5, 25]  # 30 users, 25 a request
    by = {p["item_id"]: p for p in r["posts"]}
    assert by["at://31"]["followers"] == 1 and by["at://29"]["followers"] == 29
    assert by["at://7"]["error"] == "followers_lookup:not_found"  # the answer left that user out
    (r2,), _ = work.run([task])
    assert sorted(profiles_server.hits) == [5, 25] and r2["posts"][1]["followers"] == 1  # cached: no second lookup


def test_followers_lookup_one_user_a_request(profiles_server):
    site = FeedSite(
        name="ig",
        adapter="json",
        base_url=profiles_server.base,
        json={
            "fields": {"followers": "owner.nope"},
            "followers_lookup": {"url": "{base_url}/users/{id}", "count": "data.user.edge_followed_by.count"},
        },
    )
    posts = [{"item_id": "a", "user_id": "u1", "followers": None, "lookup_followers": True},
             {"item_id": "b", "user_id": "u1", "followers": None, "lookup_followers": True}]  # fmt: skip
    client = HttpClient(parse_config({"scrape": {"http": {"allow_private_addresses": True}}}).scrape.http)
    adapter_for(site).enrich(client, posts)
    assert [p["followers"] for p in posts] == [42, 42] and profiles_server.hits == [1]


def test_items_path_that_matches_nothing_is_a_page_error_with_reason(profiles_server, tmp_path):
    cfg = parse_config({"data_root": str(tmp_path), "scrape": {"http": {"allow_private_addresses": True},
        "feeds": [{"name": "j", "adapter": "json", "base_url": profiles_server.base, "json": {
                   "page_url": "{base_url}/feed", "fields": {**BSKY_FIELDS, "items": "data.feed"}}}]}})  # fmt: skip
    (r,), _ = HttpWork(cfg, []).run([{"kind": "page", "site": "j", "hashtag": "t", "page": 1,
                                      "url": f"{profiles_server.base}/feed"}])  # fmt: skip
    assert (r["status"], r["reason"], r["posts"]) == ("error", "parse_error:items_not_found", [])


PATH_TEXT = st.text(alphabet="ab0-1.[]=x ", max_size=14)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(alphabet="abx0", max_size=3),
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.sampled_from(["a", "b", "x", "0"]), kids, max_size=3),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None)
@given(path=PATH_TEXT, doc=JSON)
def test_path_parser_random_paths_and_documents(path, doc):
    """Any text is a path or a PathSyntaxError; any compiled path on any JSON gives a value or MISSING."""
    try:
        steps = compile_path(path)
    except PathSyntaxError:
        return
    v = evaluate(doc, steps)
    assert v is MISSING or v is None or isinstance(v, bool | int | str | list | dict)


def test_feed_pages_are_bounded_in_bytes_items_and_memory(tmp_path):
    """T9: a feed page is capped at ``http.max_feed_page_bytes`` (2 MB, well under the 10 MB image cap), more than
    ``MAX_ITEMS_PER_PAGE`` items is a ``too_many_items`` page error, and posts without an id are counted by reason
    instead of one dict each (a 4 MB page of ``{}`` once cost ~350 MiB)."""
    import tracemalloc

    from helpers.http import Reply, serve
    from pipeline.config import parse_config
    from pipeline.scrape.feeds.base import MAX_ITEMS_PER_PAGE, FeedParseError
    from pipeline.scrape.feeds.registry import adapter_for
    from pipeline.scrape.net.http import HttpClient

    cfg = parse_config({"scrape": {"http": {"allow_private_addresses": True}, "feeds": [
        {"name": "m", "adapter": "mastodon", "base_url": "https://m.example", "hashtags": ["t"]},
        {"name": "j", "adapter": "json", "base_url": "https://j.example", "hashtags": ["t"],
         "json": {"fields": {"items": ""}}},
    ]}}, "test")  # fmt: skip
    assert cfg.scrape.http.max_feed_page_bytes * 5 <= cfg.scrape.http.max_image_bytes
    for site in cfg.scrape.feeds:
        ad = adapter_for(site)
        n = MAX_ITEMS_PER_PAGE
        page = ad.parse(b"[" + b"{}," * (n - 1) + b"{}]", site.base_url, "t", 1, {})
        assert page.posts == [] and page.bad_posts == {"bad_post:id": n}
        with pytest.raises(FeedParseError) as e:
            ad.parse(b"[" + b"{}," * n + b"{}]", site.base_url, "t", 1, {})
        assert e.value.code == "too_many_items"
        body = b"[" + b"{}," * (2_000_000 // 3 - 1) + b"{}]"  # just under the feed page cap
        tracemalloc.start()
        with pytest.raises(FeedParseError):
            ad.parse(body, site.base_url, "t", 1, {})
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 120 * 2**20, peak  # what json.loads itself holds; no post dicts on top

    big = b"[" + b"{}," * 1_000_000 + b"{}]"  # 3 MB: over the feed page cap, under the general page cap
    with serve({"/robots.txt": Reply(b"User-agent: *\nAllow: /\n"), "/feed": Reply(big, "application/json")}) as srv:
        client = HttpClient(cfg.scrape.http, ["127.0.0.1"])
        assert client.fetch_page(f"{srv.base}/feed").ok
        res = adapter_for(cfg.scrape.feeds[1]).fetch(client, f"{srv.base}/feed")
        assert res.status == "error" and res.data is None and res.reason.startswith("too_large")
