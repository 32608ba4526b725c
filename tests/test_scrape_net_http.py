"""The polite HTTP client against real servers on 127.0.0.1: every failure is a result with a reason, never a crash."""

from __future__ import annotations

import threading
import time

import pytest

from helpers.http import Handler, serve
from helpers.images import noise_jpeg
from pipeline.config import HttpConfig, RetryConfig
from pipeline.scrape.net.address import is_public_address
from pipeline.scrape.net.http import HttpClient, inspect_image

OK = noise_jpeg(64, 48, 0, quality=90)
BIG = noise_jpeg(400, 400, 1, quality=90)  # ~150 KB of noise
HUGE_DIMS = noise_jpeg(300, 300, 2, quality=90)
MID = noise_jpeg(180, 180, 3, quality=90)


class _Handler(Handler):
    ctype = "image/jpeg"
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def do_GET(self):  # noqa: N802
        with self.lock:
            n = self.counts[self.path] = self.counts.get(self.path, 0) + 1
        p = self.path
        port = self.server.server_address[1]
        if p == "/robots.txt":
            return self.send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
        if p in ("/img/ok.jpg", "/private/ok.jpg", "/img/copy.jpg"):
            return self.send(200, OK)
        if p == "/img/noai.jpg":
            return self.send(200, OK, headers={"X-Robots-Tag": "noimageai, noai"})
        if p == "/img/429.jpg":
            if n == 1:
                return self.send(429, b"slow down", "text/plain", {"Retry-After": "1"})
            return self.send(200, OK)
        if p == "/img/500.jpg":
            return self.send(500, b"boom", "text/plain")
        if p == "/img/truncated.jpg":
            return self.send(200, MID[: len(MID) // 2])
        if p == "/img/html.jpg":
            return self.send(200, b"<html><body>not an image</body></html>")
        if p == "/img/big.jpg":  # no Content-Length: the client must abort the stream itself
            self.close_connection = True
            return self.send(200, BIG, length=False)
        if p == "/img/huge.jpg":
            return self.send(200, HUGE_DIMS)
        if p == "/img/text.jpg":
            return self.send(200, b"hello", "text/plain")
        if p == "/redirect/away":
            return self.send(302, b"", "text/plain", {"Location": f"http://localhost:{port}/img/ok.jpg"})
        if p == "/redirect/in":
            return self.send(302, b"", "text/plain", {"Location": "/img/ok.jpg"})
        if p == "/redirect/private":
            return self.send(302, b"", "text/plain", {"Location": f"http://127.0.0.1:{port}/private/ok.jpg"})
        if p == "/img/hang.jpg":
            time.sleep(3)
            return self.send(200, OK)
        return self.send(404, b"nope", "text/plain")


@pytest.fixture(scope="module")
def server():
    with serve(_Handler) as srv:  # quiet: a client aborting a stream is expected here
        yield srv.base


def _client(**kw) -> HttpClient:
    retry = RetryConfig(attempts=kw.pop("attempts", 3), backoff_s=0.01, backoff_max_s=0.1, jitter_s=0.01)
    domains = kw.pop("domains", ["127.0.0.1"])
    cfg = HttpConfig(
        allow_private_addresses=kw.pop("allow_private", True),
        connect_timeout_s=1.0,
        read_timeout_s=kw.pop("read_timeout_s", 2.0),
        max_image_bytes=kw.pop("max_image_bytes", 100_000),
        max_image_pixels=kw.pop("max_image_pixels", 1_000_000),
        retry=retry,
        **kw,
    )
    return HttpClient(cfg, allowed_domains=domains)


def test_ok_image_and_dimensions(server):
    r = _client().fetch_image(f"{server}/img/ok.jpg")
    assert (r.status, r.reason, r.width, r.height, r.http_status) == ("ok", None, 64, 48, 200)
    assert r.data == OK and r.attempts == 1
    row = r.fetch_row("t", "abc")
    assert row["kind"] == "image" and row["bytes"] == len(OK) and row["host"] == "127.0.0.1"


def test_robots_disallow_is_obeyed_and_cached(server):
    c = _client()
    before = _Handler.counts.get("/private/ok.jpg", 0)
    r = c.fetch_image(f"{server}/private/ok.jpg")
    assert (r.status, r.reason) == ("skipped", "robots")
    assert _Handler.counts.get("/private/ok.jpg", 0) == before  # never requested
    robots_before = _Handler.counts["/robots.txt"]
    assert c.fetch_image(f"{server}/img/ok.jpg").ok
    assert _Handler.counts["/robots.txt"] == robots_before  # cached per host
    assert [x.url for x in c.robots.drain()] == [f"{server}/robots.txt"]


def test_noai_header_skips(server):
    r = _client().fetch_image(f"{server}/img/noai.jpg")
    assert (r.status, r.reason, r.data) == ("skipped", "noai", None)


def test_429_retry_after_then_success(server):
    t0 = time.monotonic()
    r = _client().fetch_image(f"{server}/img/429.jpg")
    assert r.ok and r.attempts == 2
    assert time.monotonic() - t0 >= 0.9  # Retry-After: 1 was honoured


def test_500_until_attempts_run_out(server):
    before = _Handler.counts.get("/img/500.jpg", 0)
    r = _client(attempts=3).fetch_image(f"{server}/img/500.jpg")
    assert (r.status, r.reason, r.http_status, r.attempts) == ("error", "http_500", 500, 3)
    assert _Handler.counts["/img/500.jpg"] - before == 3


@pytest.mark.parametrize(
    "path,reason",
    [
        ("/img/truncated.jpg", "truncated"),
        ("/img/html.jpg", "not_an_image"),
        ("/img/big.jpg", "too_large"),
        ("/img/huge.jpg", "too_many_pixels"),
        ("/img/text.jpg", "content_type"),
        ("/redirect/away", "redirect_outside_allowed_domains"),
        ("/nope.jpg", "http_404"),
    ],
)
def test_bad_images_are_rows_with_reasons(server, path, reason):
    c = _client(max_image_bytes=100_000, max_image_pixels=200 * 200)
    r = c.fetch_image(f"{server}{path}")
    assert r.status in ("error", "skipped") and r.reason == reason
    assert r.fetch_row("t")["reason"] == reason


def test_redirect_inside_allowed_domains_is_followed(server):
    r = _client().fetch_image(f"{server}/redirect/in")
    assert r.ok and r.final_url.endswith("/img/ok.jpg") and r.width == 64


def test_private_addresses_refused_unless_allowed(server):
    port = server.rsplit(":", 1)[1]
    c = _client(allow_private=False, domains=["127.0.0.1", "localhost"])
    r = c.fetch_image(f"{server}/img/ok.jpg")  # a literal loopback IP
    assert (r.status, r.reason) == ("error", "private_address")
    r = c.fetch_image(f"http://localhost:{port}/img/ok.jpg")  # a name that resolves to loopback
    assert (r.status, r.reason) == ("error", "private_address")
    # a redirect hop into a private address is refused too (the check runs on every hop's socket)
    r = _client(allow_private=False, domains=["localhost", "127.0.0.1"]).fetch_image(
        f"http://localhost:{port}/redirect/private"
    )
    assert r.reason == "private_address"
    assert not is_public_address("169.254.169.254") and not is_public_address("::ffff:10.0.0.1")
    assert is_public_address("93.184.216.34")


def test_hanging_host_times_out(server):
    t0 = time.monotonic()
    r = _client(attempts=1, read_timeout_s=0.3).fetch_image(f"{server}/img/hang.jpg")
    assert (r.status, r.reason) == ("error", "timeout")
    assert time.monotonic() - t0 < 2.5


def test_inspect_image_rejects_garbage():
    for data in (b"", b"\xff\xd8\xff\xe0garbage", OK[:40]):
        with pytest.raises(ValueError):
            inspect_image(data, 1_000_000)
    assert inspect_image(OK, 1_000_000) == (64, 48)


def test_photo_hosts_govern_image_fetches_on_every_hop_with_their_robots_and_the_address_guard(server):
    """An image fetch given its site's photo hosts is checked against them (globs allowed) instead of the pages'
    allowed domains, on every redirect hop; the photo host's robots.txt is fetched and obeyed; the address guard
    still refuses private addresses. The config side: allowed_domains adds to the sites' hosts, photo_hosts add to
    both, per config and per site."""
    from pipeline.config import ConfigError, parse_config
    from pipeline.scrape.net.address import allowed_domains, host_matches, photo_hosts

    port = server.rsplit(":", 1)[1]
    cdn = f"http://localhost:{port}"
    c = _client(domains=["127.0.0.1"])  # pages: 127.0.0.1 only
    assert c.fetch_image(f"{cdn}/img/ok.jpg").reason == "outside_allowed_domains"  # no photo hosts: the pages' rule
    r = c.fetch_image(f"{cdn}/img/ok.jpg", hosts=["127.0.0.1"])
    assert (r.status, r.reason) == ("skipped", "outside_photo_hosts")
    r = c.fetch_image(f"{cdn}/img/ok.jpg", hosts=["127.0.0.1", "local*"])
    assert r.ok and r.width == 64
    assert f"{cdn}/robots.txt" in [x.url for x in c.robots.drain() if x.ok]  # the photo host's robots.txt, read
    assert c.fetch_image(f"{cdn}/private/ok.jpg", hosts=["localhost"]).reason == "robots"  # and obeyed
    r = c.fetch_image(f"{server}/redirect/away", hosts=["127.0.0.1"])  # 127.0.0.1 -> localhost
    assert (r.status, r.reason) == ("skipped", "redirect_outside_photo_hosts")
    assert c.fetch_image(f"{server}/redirect/away", hosts=["127.0.0.1", "localhost"]).ok
    r = _client(allow_private=False).fetch_image(f"{cdn}/img/ok.jpg", hosts=["*"])  # any host, but public only
    assert (r.status, r.reason) == ("error", "private_address")

    assert host_matches("d1x.cloudfront.net", ["*.cloudfront.net"]) and host_matches(
        "a.b.cloudfront.net", ["*.cloudfront.net"]
    )
    assert not host_matches("cloudfront.net", ["*.cloudfront.net"]) and not host_matches(
        "evilcloudfront.net", ["*.cloudfront.net"]
    )
    assert host_matches("img.dept.example", ["dept.example"]) and not host_matches(
        "dept.example.evil.com", ["dept.example"]
    )
    assert host_matches("anything.example", ["*"]) and not host_matches("x.example", [])

    site = {"name": "s", "department": "d", "start_urls": ["https://dept.example/people"], "photo_hosts": ["*.cdn.net"]}
    feed = {"name": "f", "base_url": "https://feed.example"}
    scrape = {
        "allowed_domains": ["Profiles.Example"],
        "photo_hosts": ["media.example"],
        "staff": [site],
        "feeds": [feed],
    }
    cfg = parse_config({"scrape": scrape})
    assert allowed_domains(cfg) == ["dept.example", "feed.example", "profiles.example"]  # added to the sites' hosts
    assert photo_hosts(cfg, "s") == [*allowed_domains(cfg), "media.example", "*.cdn.net"]
    assert photo_hosts(cfg, "f") == [*allowed_domains(cfg), "media.example"]
    with pytest.raises(ConfigError, match=r"scrape.photo_hosts: 'https://x.example/' is not a host name or a glob"):
        parse_config({"scrape": {"photo_hosts": ["https://x.example/"]}})


def test_the_crawl_fetches_each_sites_photos_from_its_own_photo_hosts(server, tmp_path):
    """The crawl's image task (``HttpWork``): a site's own ``photo_hosts`` let its photos come from that host, and
    not another site's; the refused one is a ``skipped`` result and fetch row ``outside_photo_hosts``."""
    from contextlib import nullcontext

    from pipeline.config import parse_config
    from pipeline.scrape.net.address import allowed_domains
    from pipeline.scrape.work import HttpWork

    cdn = f"http://localhost:{server.rsplit(':', 1)[1]}"
    feeds = [{"name": "a", "base_url": server, "photo_hosts": ["localhost"]}, {"name": "b", "base_url": server}]
    http = {"allow_private_addresses": True, "retry": {"attempts": 1}}
    cfg = parse_config({"data_root": str(tmp_path / "data"), "scrape": {"http": http, "feeds": feeds}})
    work = HttpWork(cfg, allowed_domains(cfg), lambda host, delay=0.0: nullcontext())
    tasks = [{"kind": "image", "site": s, "url": f"{cdn}/img/{n}.jpg"} for s, n in (("a", "ok"), ("b", "copy"))]
    (a, b), _ = work.run(tasks)
    assert (a["status"], a["reason"], a["width"]) == ("ok", None, 64) and a["sha"]
    assert (b["status"], b["reason"], b["sha"]) == ("skipped", "outside_photo_hosts", None)
    assert b["fetch"]["reason"] == "outside_photo_hosts" and b["fetch"]["host"] == "localhost"


class _KeepAlive(Handler):
    protocol_version = "HTTP/1.1"  # the server keeps a connection open between requests
    seen: list = []

    def do_GET(self):  # noqa: N802
        _KeepAlive.seen.append((self.client_address[1], self.headers.get_all("Accept"), self.headers["User-Agent"]))
        if self.path == "/robots.txt":
            return self.send(200, b"User-agent: *\nAllow: /\n", "text/plain")
        self.send(200, OK, "image/jpeg")


def test_requests_reuse_one_connection_and_a_callers_header_replaces_ours():
    """One thread's requests to a host go over one kept-alive connection (not a connect per image), each with the
    client's User-Agent; a header the caller gives (a feed API's ``accept``) replaces the client's own, whatever its
    case."""
    _KeepAlive.seen = []
    with serve(_KeepAlive) as srv:
        c = _client()
        assert all(c.fetch_image(f"{srv.base}/img/{i}.jpg").ok for i in range(3))
        assert c.fetch_page(f"{srv.base}/api", headers={"accept": "application/json"}).ok
    assert len(_KeepAlive.seen) == 5 and len({port for port, _, _ in _KeepAlive.seen}) == 1  # robots.txt first
    assert [accept for _, accept, _ in _KeepAlive.seen[1:]] == [["image/*"]] * 3 + [["application/json"]]
    assert {agent for _, _, agent in _KeepAlive.seen} == {c.cfg.user_agent}


@pytest.mark.parametrize(
    "block",
    [b"Content-Type: image/jpeg\r\nContent-Length: 5\r\nX-Robots-Tag: noai\r\n\r\n", b"A:b\nA:  \t c \n\n",
     b"Link: <a>; rel=next\r\n  folded: line\r\n\r\n", b"Bad Name: x\r\nB: y\r\n\r\n", b"A: b\rC: d\r\n\r\n",
     b"A: b\x0cC: d\r\n\r\n", b"A: \x85b\r\n\r\n", b":x\r\nB: y\r\n\r\n", b"From x\r\nB: y\r\n\r\n",
     b"A: b\r\n", b"\r\n", b"A: caf\xe9\r\n\r\n", b"A: b\r\nA: c\r\n\r\n"],
)  # fmt: skip
def test_fast_header_parsing_gives_what_the_email_parser_gives(block):
    """The transport's header parsing (plain lines directly, any other block through the email package) builds the
    message http.client's own parsing builds: the same headers in order, payload and defects (outside a request of the
    client, other code's responses, http.client's own function is called)."""
    import io

    from pipeline.scrape.net.transport import _EMAIL_PARSE_HEADERS, enter_hop, parse_headers

    outer = enter_hop(object())  # a response to this client's own request: the fast path applies
    try:
        fast = parse_headers(io.BytesIO(block + b"body"))
    finally:
        enter_hop(outer)
    slow = _EMAIL_PARSE_HEADERS(io.BytesIO(block + b"body"))
    assert type(fast) is type(slow) and fast.items() == slow.items()
    assert fast.get_payload() == slow.get_payload()
    assert [type(d) for d in fast.defects] == [type(d) for d in slow.defects]
    assert fast.get("a") == slow.get("a") and fast.get_all("a") == slow.get_all("a")


def test_replay_servers_answer_a_kept_alive_connection_without_the_delayed_ack_stall():
    """The replay sims' server sets TCP_NODELAY: its headers and body are two writes, and with Nagle's algorithm every
    response on a kept-alive connection waited for the client's delayed ACK (about 40 ms on Linux: 44 ms a request
    before, 1 ms after, docs/benchmarks.md)."""
    import http.client

    from pipeline.testing.replay import Replay

    class _Sim:
        def handle(self, method, target, headers, body):
            return 200, {"Content-Type": "image/jpeg"}, b"x" * 20000

    class _Replay(Replay):
        sim_class = _Sim

    with _Replay() as r:
        conn = http.client.HTTPConnection("127.0.0.1", r.server.server_address[1], timeout=10)
        conn.request("GET", "/warm")
        conn.getresponse().read()
        t0 = time.monotonic()
        for i in range(10):
            conn.request("GET", f"/img/{i}.jpg")
            assert len(conn.getresponse().read()) == 20000
        took = time.monotonic() - t0
        conn.close()
    assert took < 0.3, took  # with the stall: at least 10 x 40 ms
