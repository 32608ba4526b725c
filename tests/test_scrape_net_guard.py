"""The scraper's network defences against hostile servers on 127.0.0.1: the whole exchange under one deadline, capped
interim responses, one URL parser, the address check before any connect, bounded count parsing, Crawl-delay, and
the crawl driver's bound on a batch."""

from __future__ import annotations

import datetime as dt
import json
import socket
import ssl
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack

import pytest

from helpers.http import Handler, RawServer, serve
from helpers.images import noise_jpeg
from pipeline.config import FeedSite, HttpConfig, RetryConfig, parse_config
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.scrape.net import transport
from pipeline.scrape.net.address import is_public_address, prepare_url
from pipeline.scrape.net.http import HttpClient

JPEG = noise_jpeg(32, 24)


def _client(domains=("127.0.0.1",), allow_private=True, attempts=3, **kw) -> HttpClient:
    retry = RetryConfig(attempts=attempts, backoff_s=0.01, backoff_max_s=0.05, jitter_s=0.0)
    base = dict(connect_timeout_s=1.0, read_timeout_s=0.5, total_timeout_s=1.0, requests_per_second_per_host=1000)
    cfg = HttpConfig(allow_private_addresses=allow_private, retry=retry, **{**base, **kw})
    return HttpClient(cfg, list(domains))


# ------------------------------------------------------------------------------------------ a raw socket server
@pytest.fixture
def raw_server():
    """Make raw servers on 127.0.0.1 (``helpers.http.RawServer``: robots.txt is a 404, then ``talk(conn)``)."""
    with ExitStack() as stack:
        yield lambda talk: stack.enter_context(RawServer(talk))


def _trickle(data: bytes, every_s: float, limit_s: float = 10.0):
    def talk(conn):
        t_end = time.monotonic() + limit_s
        for i in range(len(data)):
            if time.monotonic() > t_end:
                return
            conn.sendall(data[i : i + 1])
            time.sleep(every_s)

    return talk


HEADERS = b"HTTP/1.1 200 OK\r\nContent-Type: image/jpeg\r\n" + b"X-Pad: " + b"a" * 200 + b"\r\n\r\n"


# ------------------------------------------------------------------------------------------ deadline, interim
def test_trickled_status_line_and_headers_end_at_the_total_deadline(raw_server):
    """1 byte per 0.2 s of status line and headers: each byte inside the read timeout, the whole much longer than the
    1 s deadline. Before: the deadline only covered the body (8 s measured). Now: a timeout row after ~1 s, and
    urllib3's retries do not get a fresh deadline each."""
    srv = raw_server(_trickle(HEADERS, 0.2))
    c = _client(attempts=3)
    c.robots_allowed(srv.base + "/")  # robots.txt fetched before the clock starts
    t0 = time.monotonic()
    r = c.fetch_image(f"{srv.base}/a.jpg")
    took = time.monotonic() - t0
    assert (r.status, r.reason) == ("error", "timeout"), r
    assert took < 1.5, took
    assert r.fetch_row("t")["reason"] == "timeout"


def test_trickled_body_without_length_is_a_timeout_not_a_short_image(raw_server):
    """The watchdog's shutdown ends a body without Content-Length: that EOF must not read as a complete body."""
    body = HEADERS.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n") + JPEG
    srv = raw_server(
        lambda conn: (conn.sendall(body[: len(HEADERS) + 40]), _trickle(body[len(HEADERS) + 40 :], 0.2)(conn))
    )
    c = _client()
    c.robots_allowed(srv.base + "/")  # robots.txt fetched before the clock starts
    t0 = time.monotonic()
    r = c.fetch_image(f"{srv.base}/b.jpg")
    assert (r.status, r.reason, r.data) == ("error", "timeout", None) and time.monotonic() - t0 < 1.5


def test_endless_interim_responses_are_capped(raw_server):
    def flood(conn):
        for _ in range(100_000):
            conn.sendall(b"HTTP/1.1 100 Continue\r\n\r\n" * 10)

    srv = raw_server(flood)
    c = _client(attempts=3, max_interim_responses=8)
    c.robots_allowed(srv.base + "/")  # robots.txt fetched before the clock starts
    t0 = time.monotonic()
    r = c.fetch_image(f"{srv.base}/c.jpg")
    assert (r.status, r.reason) == ("error", "too_many_interim_responses"), r
    assert time.monotonic() - t0 < 1.5
    # a slow stream of them, under a high cap, still ends at the deadline
    slow = raw_server(_trickle(b"HTTP/1.1 100 Continue\r\n\r\n" * 200, 0.01))
    c = _client(max_interim_responses=10_000)
    c.robots_allowed(slow.base + "/")  # robots.txt fetched before the clock starts
    t0 = time.monotonic()
    r = c.fetch_image(f"{slow.base}/d.jpg")
    assert (r.status, r.reason) == ("error", "timeout") and time.monotonic() - t0 < 1.5


def test_a_few_interim_responses_then_the_image_is_fine(raw_server):
    reply = b"HTTP/1.1 100 Continue\r\n\r\n" * 3 + HEADERS.replace(
        b"\r\n\r\n", f"\r\nContent-Length: {len(JPEG)}\r\n\r\n".encode()
    )
    srv = raw_server(lambda conn: conn.sendall(reply + JPEG))
    r = _client(max_interim_responses=8).fetch_image(f"{srv.base}/e.jpg")
    assert r.ok and (r.width, r.height) == (32, 24)
    early = raw_server(lambda conn: conn.sendall(b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"))
    r = _client().fetch_page(f"{early.base}/p")  # a 1xx other than 100 ends http.client's wait: not a page
    assert (r.status, r.reason) == ("error", "http_103")


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return tmp_path / "c.pem", tmp_path / "k.pem"


def test_watchdog_ends_a_blocked_read_on_a_tls_socket(tmp_path):
    """The deadline's mechanism under TLS: ssl wraps (and detaches) the socket the connection made, so the watchdog
    shuts the connection down through a duplicate descriptor; a read blocked in SSL_read returns at the deadline."""
    cert, key = _self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def serve():
        conn, _ = listener.accept()
        accepted.append(server_ctx.wrap_socket(conn, server_side=True))  # handshake, then silence

    threading.Thread(target=serve, daemon=True).start()
    client_ctx = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(listener.getsockname(), timeout=10)
    hop = transport.Hop(1.0, guard=False, max_interim=8)
    hop.watch(raw)  # as _new_conn does, before TLS
    tls = client_ctx.wrap_socket(raw, server_hostname="localhost")
    assert raw.fileno() == -1  # detached: shutting down `raw` itself could no longer reach the connection
    transport.WATCHDOG.add(hop)
    t0 = time.monotonic()
    try:
        got = tls.recv(1)  # read timeout 10 s; the server never sends
    except (OSError, ssl.SSLError):
        got = None
    took = time.monotonic() - t0
    hop.finish()
    tls.close()
    listener.close()
    assert got in (b"", None) and hop.fired and 0.8 < took < 2.0, (got, took)


# ------------------------------------------------------------------------------------------ one URL parser
class _Counting(Handler):
    def do_GET(self):  # noqa: N802
        self.server.paths.append(self.path)
        self.server.hosts.append(self.headers.get("Host"))
        self.server.times.append(time.monotonic())
        if self.path == "/robots.txt":
            self.send(200, self.server.robots, "text/plain")
        else:
            self.send(200, JPEG, "image/jpeg")


@pytest.fixture
def counting_server():
    """Make servers that record each request's path, Host header and time, with the given robots.txt."""
    with ExitStack() as stack:

        def make(robots: bytes = b"User-agent: *\nAllow: /\n"):
            return stack.enter_context(serve(_Counting, paths=[], hosts=[], times=[], robots=robots))

        yield make


def test_backslash_url_is_bad_url_and_never_fetched(counting_server):
    """``http://127.0.0.1:P\\@localhost:Q/x.jpg`` read as localhost by urlsplit, fetched from 127.0.0.1:P by the
    client. Now: ``bad_url``, nothing requested."""
    a, b = counting_server(), counting_server()
    p, q = a.server_address[1], b.server_address[1]
    c = _client(domains=["localhost"])
    r = c.fetch_image(f"http://127.0.0.1:{p}\\@localhost:{q}/x.jpg")
    assert (r.status, r.reason) == ("error", "bad_url")
    assert a.paths == [] and b.paths == []
    # the URL that is checked is the URL that is fetched: requests' own preparation (a space is quoted)
    r = _client().fetch_image(f"http://127.0.0.1:{p}/a b.jpg")
    assert r.ok and a.paths[-1] == "/a%20b.jpg" and r.final_url == f"http://127.0.0.1:{p}/a%20b.jpg"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:1\\@localhost:2/x", "http://a.example\\b/", "http://a.exa\tmple/", "http://a.example/\r\nX: y",
     "ftp://a.example/x", "http:///x", "http://[::1/x", "http://a.example:99999/", "javascript:alert(1)", "//a/b"],
)  # fmt: skip
def test_prepare_url_rejects(url):
    with pytest.raises(ValueError, match="bad_url"):
        prepare_url(url)


def test_prepare_url_is_what_requests_sends():
    assert prepare_url("HTTP://Example.ORG/a b?q=1") == "http://example.org/a%20b?q=1"
    assert prepare_url("http://bücher.example/x") == "http://xn--bcher-kva.example/x"


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:41234/img/12.jpg", "https://cdn.example.org/a/b-c_d~e.jpg?w=1&h=2", "http://a.example/",
     "http://a.example:65535/x", "http://a.example:65536/x", "http://a.example:080/x", "http://a.example/x?",
     "http://a.example/a/../b", "http://a.example/./b", "http://a.example/.well-known/x", "http://A.example/x",
     "http://a.example", "http://0x7f.1/x", "http://a..example/x", "http://-a.example/x", "http://a.example//x/",
     "http://a.example/x#f", "http://a.example/%41", "http://u@a.example/x", "HTTP://a.example/x"],
)  # fmt: skip
def test_prepare_url_fast_path_is_what_requests_gives(url):
    """A URL already in prepared form is given back without requests; every other goes through it, as before."""
    from pipeline.scrape.net.address import _PREPARED, _prepare

    try:
        slow = _prepare(url)
    except ValueError:
        slow = "bad_url"
    try:
        fast = prepare_url(url)
    except ValueError:
        fast = "bad_url"
    assert fast == slow
    if url in ("http://127.0.0.1:41234/img/12.jpg", "https://cdn.example.org/a/b-c_d~e.jpg?w=1&h=2"):
        assert _PREPARED.fullmatch(url)  # the crawl's image URLs take the fast path


# ------------------------------------------------------------------------------------------ address check
def test_connecting_to_the_checked_address_keeps_the_host_name(counting_server):
    """The connection goes to the address the client resolved and checked, the request still names the host."""
    srv = counting_server()
    port = srv.server_address[1]
    r = _client(domains=["localhost"]).fetch_image(f"http://localhost:{port}/x.jpg")
    assert r.ok and srv.hosts[-1] == f"localhost:{port}"


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_open_and_closed_private_ports_look_the_same_and_nothing_connects():
    """The address is checked before connecting: a listening port sees no connection at all, and an open and a
    closed port give the same row (before: ``private_address`` vs ``robots_unavailable``, a port scanner)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.3)
    open_port, closed_port = listener.getsockname()[1], _closed_port()
    c = _client(domains=["localhost"], allow_private=False)
    rows = []
    for port in (open_port, closed_port):
        r = c.fetch_image(f"http://localhost:{port}/x.jpg")
        rows.append((r.status, r.reason, r.http_status))
    robots = [(x.status, x.reason) for x in c.robots.drain()]
    with pytest.raises(TimeoutError):
        listener.accept()  # no handshake ever reached the listening socket
    listener.close()
    assert rows == [("error", "private_address", None)] * 2
    assert robots == [("error", "private_address")] * 2


@pytest.mark.parametrize(
    "ip",
    ["64:ff9b::7f00:1", "64:ff9b::a9fe:a9fe", "64:ff9b::a00:1", "64:ff9b:1::808:808", "2002:7f00:1::",
     "2002:a9fe:a9fe::1", "2002:c0a8:101::", "::127.0.0.1", "::10.0.0.1", "::169.254.169.254", "::", "::1",
     "::ffff:10.0.0.1", "::ffff:127.0.0.1", "2001:0:4136:e378:8000:63bf:3fff:fdd2", "fe80::1%eth0", "fc00::1",
     "127.0.0.1", "169.254.169.254", "10.1.2.3", "0.0.0.0", "224.0.0.1", "not-an-ip"],
)  # fmt: skip
def test_private_addresses_also_inside_ipv6(ip):
    assert not is_public_address(ip)


@pytest.mark.parametrize(
    "ip", ["8.8.8.8", "64:ff9b::808:808", "2002:808:808::1", "::ffff:8.8.8.8", "2606:4700:4700::1111", "1.1.1.1"]
)
def test_public_addresses(ip):
    assert is_public_address(ip)


# ------------------------------------------------------------------------------------------ counts
POST = {"id": "p1", "image_url": "/i.jpg", "user": {"id": "u1", "followers": 5}, "likes": 3, "tags": [],
        "posted_at": "2026-01-02T03:04:05Z"}  # fmt: skip


def _parse(body: bytes):
    site = FeedSite(name="demo", adapter="demo", base_url="http://127.0.0.1:1")
    return adapter_for(site).parse(body, "http://127.0.0.1:1/api/feed?tag=t&page=1", "t", 1)


def test_counts_are_bounded_json_integers_and_errors_are_per_post():
    huge = "9" * 5000  # Python's int() refuses more than 4300 digits: this used to fail the whole page
    variants = {
        "ok": {}, "float_int": {"likes": 12.0}, "str": {"likes": "12"}, "frac": {"likes": 1.9},
        "bool": {"likes": True}, "null": {"likes": None}, "neg": {"likes": -1}, "big": {"likes": 2**63},
        "int64": {"likes": 2**63 - 1}, "huge_followers": {"user": {"id": "u1", "followers": "HUGE"}},
        "huge_likes": {"likes": "HUGE"}, "inf": {"likes": "INF"},
    }  # fmt: skip
    posts = [{**POST, "id": name, **v} for name, v in variants.items()]
    posts.append({**POST, "id": "HUGE"})  # an id that is a huge integer
    text = json.dumps({"posts": posts, "next_page": "HUGE"})
    body = text.replace('"HUGE"', huge).replace('"INF"', "1e999").encode()
    t0 = time.monotonic()
    page = _parse(body)
    assert time.monotonic() - t0 < 1.0
    got = {p["item_id"]: (p.get("error"), p.get("likes")) for p in page.posts}
    assert got["ok"] == (None, 3) and got["float_int"] == (None, 12) and got["int64"] == (None, 2**63 - 1)
    for name in ("str", "frac", "bool", "null", "neg", "big", "huge_likes", "inf"):
        assert got[name][0] == "bad_post:likes", name
    assert got["huge_followers"][0] == "bad_post:followers"
    assert page.bad_posts == {"bad_post:id": 1}  # the post without a usable id: counted (no dict kept for it)
    assert all(p["item_id"] is not None for p in page.posts)
    assert page.next_url is None  # a next page number of 5000 digits is no next page


def test_next_page_string_of_many_digits_does_not_fail_the_page():
    body = json.dumps({"posts": [POST], "next_page": "9" * 5000}).encode()
    page = _parse(body)
    assert page.next_url is None and page.posts[0].get("error") is None
    page = _parse(json.dumps({"posts": [POST], "next_page": "²"}).encode())  # a digit to isdigit(), not to int()
    assert page.next_url is not None and page.posts[0]["likes"] == 3


# ------------------------------------------------------------------------------------------ Crawl-delay
def _gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:], strict=False)]


def test_crawl_delay_spaces_requests_to_the_host(counting_server):
    srv = counting_server(b"User-agent: *\nCrawl-delay: 0.4\n")
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    c = _client(max_crawl_delay_s=5.0)
    with ThreadPoolExecutor(4) as pool:  # concurrent fetches share the host's interval
        results = list(pool.map(c.fetch_image, [f"{base}/{i}.jpg" for i in range(4)]))
    assert all(r.ok for r in results)
    assert srv.paths[0] == "/robots.txt" and len(srv.times) == 5
    gaps = _gaps(sorted(srv.times))
    assert min(gaps) >= 0.38, gaps  # robots.txt, then one request per 0.4 s


def test_crawl_delay_is_capped(counting_server):
    """A hostile Crawl-delay: 100000 would stall the crawl on that host for days: it is applied as the cap."""
    srv = counting_server(b"User-agent: *\nCrawl-delay: 100000\n")
    base = f"http://127.0.0.1:{srv.server_address[1]}"
    c = _client(max_crawl_delay_s=0.3)
    t0 = time.monotonic()
    assert all(c.fetch_image(f"{base}/{i}.jpg").ok for i in range(3))
    gaps = _gaps(srv.times)
    assert min(gaps) >= 0.28 and time.monotonic() - t0 < 2.0, gaps
    assert c.crawl_delay(f"{base}/x.jpg") == 0.3
    assert _client(max_crawl_delay_s=0).crawl_delay(f"{base}/x.jpg") == 0.0  # 0: Crawl-delay ignored


# ------------------------------------------------------------------------------------------ the driver's bound
class _SlowImages(Handler):
    def do_GET(self):  # noqa: N802
        base = self.base
        if self.path == "/robots.txt":
            body, ctype = b"User-agent: *\nAllow: /\n", "text/plain"
        elif self.path.startswith("/api/feed"):
            old = (dt.datetime.now(dt.UTC) - dt.timedelta(days=90)).isoformat().replace("+00:00", "Z")
            posts = [{**POST, "id": f"p{i}", "image_url": f"{base}/img/{i}.jpg", "posted_at": old} for i in range(3)]
            body, ctype = json.dumps({"posts": posts, "next_page": None}).encode(), "application/json"
        else:
            time.sleep(6)  # inside the fetch's own deadline (10 s), far past the batch bound (2 s)
            body, ctype = JPEG, "image/jpeg"
        self.send(200, body, ctype)


def test_driver_abandons_a_batch_past_its_bound(ray_session, tmp_path):
    """Three image fetches, each inside its own deadline but far past the driver's 2 s bound on their batch: error
    rows ``batch_timeout``, the worker killed and replaced, the crawl done without waiting for them."""
    from pipeline.scrape.crawl import crawl
    from pipeline.store import DataRoot

    http = {"allow_private_addresses": True, "total_timeout_s": 10, "read_timeout_s": 10, "retry": {"attempts": 1}}
    with serve(_SlowImages) as srv:  # quiet: the abandoned worker's connections break, as expected
        cfg = parse_config(
            {
                "data_root": str(tmp_path / "d"),
                "scrape": {
                    "num_actors": 1, "threads_per_actor": 4, "tasks_per_call": 4, "batch_rows": 10,
                    "batch_timeout_s": 2.0, "http": http,
                    "feeds": [{"name": "f", "adapter": "json", "base_url": srv.base, "hashtags": ["selfie"]}],
                },
            },
            "test",
        )  # fmt: skip
        t0 = time.monotonic()
        s = crawl(cfg)
        took = time.monotonic() - t0
    rows = DataRoot(cfg.data_root).read("posts").to_pylist()
    assert sorted((r["item_id"], r["status"], r["reason"]) for r in rows) == [
        (f"p{i}", "error", "batch_timeout") for i in range(3)
    ]
    assert s["errors_by_reason"] == {"batch_timeout": 3} and s["workers_replaced"] == 1
    assert took < 6, took  # the driver did not wait for the 6 s images


def test_thread_pool_abandons_a_batch_past_its_bound(tmp_path):
    """The same bound on the thread pool (no Ray): a thread cannot be killed, so each overdue call is abandoned, its
    task an error row ``batch_timeout``, its worker replaced, and the crawl ends without waiting for it."""
    from pipeline.scrape.crawl import crawl
    from pipeline.store import DataRoot

    http = {"allow_private_addresses": True, "total_timeout_s": 10, "read_timeout_s": 10, "retry": {"attempts": 1}}
    with serve(_SlowImages) as srv:
        cfg = parse_config(
            {
                "data_root": str(tmp_path / "d"),
                "scrape": {
                    "num_actors": 1, "threads_per_actor": 4, "batch_rows": 10, "batch_timeout_s": 2.0, "http": http,
                    "feeds": [{"name": "f", "adapter": "json", "base_url": srv.base, "hashtags": ["selfie"]}],
                },
            },
            "test",
        )  # fmt: skip
        t0 = time.monotonic()
        s = crawl(cfg, pool="threads")
        took = time.monotonic() - t0
    rows = DataRoot(cfg.data_root).read("posts").to_pylist()
    assert sorted((r["item_id"], r["status"], r["reason"]) for r in rows) == [
        (f"p{i}", "error", "batch_timeout") for i in range(3)
    ]
    assert s["errors_by_reason"] == {"batch_timeout": 3} and s["workers_replaced"] >= 1
    assert took < 6, took  # the driver did not wait for the 6 s images
