"""The staff browser's egress guard and page-independent staff ids.

A staff page on an allowed host must not make Chromium reach anything else: its subresources, iframes and ``fetch()`` go
through :class:`~pipeline.scrape.net.egress.EgressProxy`, which applies the HTTP client's host and address rules.
Servers run on 127.0.0.1 with ``allow_private_addresses`` (as in every test), so the proxy must let exactly the
configured origin through and keep other loopback ports closed.
"""

from __future__ import annotations

import os
import socket
import socketserver
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from helpers.http import Handler, serve
from helpers.images import solid_jpeg
from pipeline.config import parse_config
from pipeline.scrape.net.egress import EgressPolicy, EgressProxy, Refused, policy_for
from pipeline.scrape.staff.browser import Browser, sandbox_flags
from pipeline.scrape.staff.people import normal_name, person_id
from pipeline.store import DataRoot


# ---------------------------------------------------------------------------------------------------- servers
class _Counting(socketserver.ThreadingTCPServer):
    """A loopback service that must never be reached: counts every connection (and what it received)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        super().__init__(("127.0.0.1", 0), _CountingHandler)


class _CountingHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.settimeout(2)
        try:
            self.server.seen.append(self.request.recv(4096))  # type: ignore[attr-defined]
            self.request.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        except OSError:
            pass


ATTACK = """<!doctype html><html><body><div id="people"></div>
<img src="http://127.0.0.1:{evil}/pixel.png"><iframe src="http://127.0.0.1:{evil}/frame"></iframe>
<script>
const evil = ['http://127.0.0.1:{evil}/api/jobs/', 'http://localhost:{evil}/api/jobs/'];
Promise.allSettled(evil.map(u => fetch(u, {{method: 'POST', body: '{{}}', mode: 'no-cors'}}))).then(() => {{
  document.getElementById('people').innerHTML = ['a', 'b'].map(i =>
    `<div class="person" data-id="p-${{i}}"><img class="photo" src="/photo/${{i}}.jpg">
     <span class="name">Person ${{i}}</span><span class="role">Professor</span></div>`).join('');
}});
</script></body></html>"""

PAGED = {  # the same two people on page 1 and page 2, without data-id; spacing and case differ
    "1": """<div class="person"><a class="profile" href="/people/ada">Ada</a><span class="name">Ada Lovelace</span>
            <span class="role">Professor</span></div>
            <div class="person"><span class="name">Alan Turing</span><span class="role">Lecturer</span></div>
            <a class="next" href="list.html?page=2">next</a>""",
    "2": """<div class="person"><a class="profile" href="../people/ada#bio">Ada</a>
            <span class="name">ADA  Lovelace</span><span class="role">Professor</span></div>
            <div class="person"><span class="name"> alan
            TURING </span><span class="role">Lecturer</span></div>""",
}


class _Site(Handler):
    jpeg = solid_jpeg(20, 24, (180, 40, 40))

    def do_GET(self):  # noqa: N802
        u = urlsplit(self.path)
        if u.path == "/robots.txt":
            return self.send(200, b"User-agent: *\nAllow: /\n", "text/plain")
        if u.path == "/uni/staff.html":
            return self.send(200, ATTACK.format(evil=self.server.evil_port).encode(), "text/html")  # type: ignore[attr-defined]
        if u.path == "/uni/list.html":
            page = parse_qs(u.query).get("page", ["1"])[0]
            return self.send(200, f"<!doctype html><html><body>{PAGED[page]}</body></html>".encode(), "text/html")
        if u.path.startswith("/photo/"):
            return self.send(200, self.jpeg, "image/jpeg")
        self.send_error(404)


@pytest.fixture
def evil():
    srv = _Counting()
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def site(evil):
    with serve(_Site, evil_port=evil.server_address[1]) as srv:
        yield srv.base


def _config(base: str, data_root: str, **site: object):
    staff = {"name": "uni", "department": "cs", "start_urls": [f"{base}/uni/staff.html"], "photo_selector": "img.photo"}
    return parse_config(
        {
            "data_root": data_root,
            "scrape": {
                "num_actors": 1,
                "http": {"allow_private_addresses": True, "requests_per_second_per_host": 500},
                "selenium": {"wait_timeout_s": 10, "page_load_timeout_s": 20},
                "staff": [{**staff, **site}],
            },
        },
        "test",
    )


def _proxy_request(proxy: EgressProxy, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as s:
        s.sendall(raw)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


# ---------------------------------------------------------------------------------------------------- proxy alone
def test_proxy_refuses_connect_outside_domains_and_to_private_addresses(evil):
    port = evil.server_address[1]
    strict = EgressPolicy.for_sites([f"http://localhost:{port}/"], ["localhost"], allow_private=False)
    with EgressProxy(strict) as proxy:
        outside = _proxy_request(proxy, b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        private = _proxy_request(proxy, f"CONNECT localhost:{port} HTTP/1.1\r\n\r\n".encode())
        plain = _proxy_request(proxy, f"GET http://localhost:{port}/api/jobs/ HTTP/1.1\r\n\r\n".encode())
    assert outside.startswith(b"HTTP/1.1 403") and b"X-Facerank-Refused: outside_allowed_domains" in outside
    assert private.startswith(b"HTTP/1.1 403") and b"X-Facerank-Refused: private_address" in private
    assert plain.startswith(b"HTTP/1.1 403") and b"private_address" in plain
    assert proxy.refused == {"outside_allowed_domains": 1, "private_address": 2}
    assert evil.seen == []  # refused before any connection: the service never learns it was probed


def test_proxy_allows_exactly_the_configured_origin(site, evil):
    """allow_private_addresses: the configured 127.0.0.1:port passes; other loopback ports and tricks do not."""
    base = site
    port = int(base.rsplit(":", 1)[1])
    policy = EgressPolicy.for_sites([f"{base}/uni/staff.html"], ["127.0.0.1"], allow_private=True)
    with EgressProxy(policy) as proxy:
        ok = _proxy_request(
            proxy, f"GET {base}/photo/x.jpg HTTP/1.1\r\nHost: evil\r\nProxy-Connection: keep-alive\r\n\r\n".encode()
        )
        other = _proxy_request(proxy, f"CONNECT 127.0.0.1:{evil.server_address[1]} HTTP/1.1\r\n\r\n".encode())
        backslash = f"GET http://127.0.0.1:{evil.server_address[1]}\\@127.0.0.1:{port}/x HTTP/1.1\r\n\r\n"
        bs = _proxy_request(proxy, backslash.encode())
        junk = _proxy_request(proxy, b"\x16\x03\x01 not http\r\n\r\n")
    head, _, body = ok.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") or head.startswith(b"HTTP/1.1 200")
    assert b"Connection: close" in head and body == _Site.jpeg
    assert other.startswith(b"HTTP/1.1 403") and b"port_not_allowed" in other
    assert bs.startswith(b"HTTP/1.1 403") and b"bad_url" in bs
    assert junk.startswith(b"HTTP/1.1 400")
    # a public-port (80) loopback address is private even with allow_private: only configured origins may be
    with pytest.raises(Refused, match="private_address"):
        policy.check("127.0.0.1", 80)
    assert evil.seen == []


def test_proxy_bounds_its_connections(site):
    policy = EgressPolicy.for_sites([f"{site}/"], ["127.0.0.1"], allow_private=True)
    host, port = "127.0.0.1", int(site.rsplit(":", 1)[1])
    with EgressProxy(policy, max_connections=1, idle_timeout_s=2) as proxy:
        held = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        held.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode())
        assert held.recv(100).startswith(b"HTTP/1.1 200")  # an open tunnel holds the only slot
        busy = _proxy_request(proxy, b"GET http://127.0.0.1/ HTTP/1.1\r\n\r\n")
        held.close()
        time.sleep(0.3)
        again = _proxy_request(proxy, f"CONNECT {host}:{port} HTTP/1.1\r\n\r\n".encode()[:-2])  # never finished
    assert busy.startswith(b"HTTP/1.1 503") and b"too_many_connections" in busy
    assert again.startswith(b"HTTP/1.1 400")  # a head never finished: dropped after the idle timeout


def test_policy_from_config_and_sandbox_flags(monkeypatch, tmp_path):
    cfg = _config("http://127.0.0.1:8765", str(tmp_path))
    p = policy_for(cfg, ["127.0.0.1"])
    assert p.origins == {("127.0.0.1", 8765)} and p.ports == {80, 443, 8765} and p.allow_private
    monkeypatch.delenv("FACERANK_CHROMIUM_NO_SANDBOX", raising=False)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert sandbox_flags() == ()  # a normal user keeps Chromium's sandbox
    assert sandbox_flags(no_sandbox=True) == ("--no-sandbox",)
    monkeypatch.setenv("FACERANK_CHROMIUM_NO_SANDBOX", "1")
    assert sandbox_flags() == ("--no-sandbox",)
    monkeypatch.delenv("FACERANK_CHROMIUM_NO_SANDBOX")
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert sandbox_flags() == ("--no-sandbox",)  # Chromium refuses to run as root with its sandbox


# ---------------------------------------------------------------------------------------------------- ids
def test_person_id_is_page_independent():
    assert normal_name("  Ada \n  LOVELACE ") == "ada lovelace"
    assert person_id("uni", "Ada Lovelace", None) == person_id("uni", " ada   lovelace", None)
    assert person_id("uni", "Ada", None, "http://u/p/ada") == person_id("uni", "Ada L.", None, "http://u/p/ada#x")
    assert person_id("uni", "Ada", None) != person_id("other", "Ada", None)  # site is part of the key
    assert person_id("uni", "Ada", "42") == "42"  # the site's own id wins
    assert person_id("uni", " ", None, None, "http://u/a.jpg") != person_id("uni", "", None, None, "http://u/b.jpg")


# ---------------------------------------------------------------------------------------------------- Chromium
@pytest.mark.chromium
def test_staff_page_cannot_reach_other_loopback_services(site, evil, tmp_path):
    """fetch() POST, <img> and <iframe> to another loopback port reach nothing; the page's own photos still load."""
    cfg = _config(site, str(tmp_path))
    browser = Browser(cfg.scrape.selenium, "facerank-test", policy_for(cfg, ["127.0.0.1"]))
    try:
        pages = browser.scrape_site(cfg.scrape.staff[0], lambda url: None)
        loaded = browser.driver.execute_script(
            "return Array.from(document.querySelectorAll('img.photo')).map(i => i.complete && i.naturalWidth)"
        )
        refused = dict(browser.proxy.refused)
    finally:
        browser.quit()
    time.sleep(0.3)
    assert [p.status for p in pages] == ["ok"], (pages, refused)
    assert [(p["item_id"], p["name"]) for p in pages[0].people] == [("p-a", "Person a"), ("p-b", "Person b")]
    assert loaded == [20, 20]  # the page's own photos came through the proxy
    assert evil.seen == []  # not one connection: no POST /api/jobs/, no image, no iframe
    assert refused.get("port_not_allowed", 0) >= 3 and refused.get("outside_allowed_domains", 0) >= 1


@pytest.mark.chromium
@pytest.mark.slow
def test_crawl_staff_browser_is_guarded(ray_session, site, evil, tmp_path):
    """The crawl's browser actor runs the same proxy: rows and photos as usual, the other service untouched."""
    from pipeline.scrape.crawl import crawl

    cfg = _config(site, str(tmp_path / "d"))
    s = crawl(cfg)
    rows = DataRoot(str(tmp_path / "d")).read("staff").to_pylist()
    assert sorted(r["item_id"] for r in rows) == ["p-a", "p-b"] and s["pages"] == 1, (s, rows)
    assert all(r["status"] == "ok" and r["image_sha256"] and r["width"] == 20 for r in rows), rows
    time.sleep(0.3)
    assert evil.seen == []


@pytest.mark.chromium
def test_same_person_on_page_one_and_two_has_one_item_id(site, tmp_path):
    cfg = _config(
        site,
        str(tmp_path),
        start_urls=[f"{site}/uni/list.html?page=1"],
        next_page="a.next",
        profile_selector="a.profile",
        scroll_for_lazy_images=False,
    )
    browser = Browser(cfg.scrape.selenium, "facerank-test", policy_for(cfg, ["127.0.0.1"]))
    try:
        pages = browser.scrape_site(cfg.scrape.staff[0], lambda url: None)
    finally:
        browser.quit()
    assert [p.status for p in pages] == ["ok", "ok"] and pages[0].url != pages[1].url
    one, two = ([p["item_id"] for p in page.people] for page in pages)
    assert one == two and len(set(one)) == 2
    assert one[0] == person_id("uni", None, None, f"{site}/people/ada")  # Ada by her profile URL
    assert one[1] == person_id("uni", "alan turing", None)  # Alan by his normalised name


class _KeepAliveSite:
    """A site that answers keep-alive (``mode``: plain, a 103 first, or a head over 16 KiB) and records every byte it
    gets after the first request's head and body: a proxy that forwards one request per connection sends none."""

    def __init__(self) -> None:
        self.mode, self.got, self.heads = "plain", [], []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(2)
            buf = b""
            try:
                while b"\r\n\r\n" not in buf:
                    buf += conn.recv(65536)
                head, _, rest = buf.partition(b"\r\n\r\n")
                self.heads.append(head)
                length = int(
                    (
                        [ln.split(b":")[1] for ln in head.split(b"\r\n") if ln.lower().startswith(b"content-length")]
                        or [b"0"]
                    )[0]
                )
                while len(rest) < length:
                    rest += conn.recv(65536)
                self.got.append(rest[length:])
                ok = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=9\r\n\r\n"
                ok += b"hello"
                if self.mode == "103":
                    conn.sendall(
                        b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\nConnection: keep-alive\r\n\r\n"
                        + ok
                    )
                elif self.mode == "long":
                    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Pad: " + b"p" * 17000)
                    time.sleep(0.2)
                    conn.sendall(b"\r\nConnection: keep-alive\r\n\r\nhello")
                else:
                    conn.sendall(ok)
                while chunk := conn.recv(65536):  # whatever else the proxy forwards
                    self.got[-1] += chunk
            except OSError:
                pass


def test_proxy_forwards_one_request_per_connection_and_rewrites_every_head():
    """T11: a client that pipelines (or keeps the connection alive) never gets a second request to the first
    upstream: the proxy reads one request (head + Content-Length body) and no more; every head up to the first
    final one says ``Connection: close``; a response head over 16 KiB ends the connection; a chunked body is 400."""
    site = _KeepAliveSite()
    base = f"http://127.0.0.1:{site.port}"
    policy = EgressPolicy.for_sites([f"{base}/staff"], ["127.0.0.1"], allow_private=True)
    second = b"GET http://127.0.0.1:1/api/jobs/ HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n"
    with EgressProxy(policy, idle_timeout_s=2) as proxy:
        for mode in ("plain", "103"):
            site.mode = mode
            first = f"GET {base}/staff HTTP/1.1\r\nHost: x\r\nProxy-Connection: keep-alive\r\n\r\n".encode()
            out = _proxy_request(proxy, first + second)  # pipelined: the second request in the same write
            heads = [h for h in out.split(b"\r\n\r\n") if h.startswith(b"HTTP/1.1 ")]
            assert [h.split(b"\r\n")[0] for h in heads] == (
                [b"HTTP/1.1 200 OK"] if mode == "plain" else [b"HTTP/1.1 103 Early Hints", b"HTTP/1.1 200 OK"]
            )
            for h in heads:
                assert b"Connection: close" in h and b"keep-alive" not in h.lower() and b"Keep-Alive" not in h
            assert out.endswith(b"hello")
        post = f"POST {base}/form HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd".encode()
        assert _proxy_request(proxy, post + second).endswith(b"hello")
        chunked = f"POST {base}/form HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n0\r\n\r\n".encode()
        assert _proxy_request(proxy, chunked).startswith(b"HTTP/1.1 400")
        site.mode = "long"
        long = _proxy_request(proxy, f"GET {base}/staff HTTP/1.1\r\n\r\n".encode())
        assert b"hello" not in long and b"keep-alive" not in long  # never passed on untouched
    time.sleep(0.3)
    assert len(site.heads) == 4 and site.got[:3] == [b"", b"", b""]  # nothing after the one request reached it
    assert site.heads[2].startswith(b"POST /form ") and b"Connection: close" in site.heads[2]
    site.sock.close()


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


@pytest.mark.chromium
def test_chromedriver_and_chromium_get_a_minimal_environment(site, monkeypatch, tmp_path):
    """M4: chromedriver and every Chromium process run without the worker's S3 keys, tokens or opt-out key."""
    from pipeline.scrape.staff.browser import browser_env

    secrets = {"AWS_SECRET_ACCESS_KEY": "s3-secret-1", "FACERANK_OPTOUT_KEY": "k" * 64, "MASTODON_TOKEN": "tok-2"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    env = browser_env()
    assert not set(secrets) & set(env) and env["LC_ALL"] == "C.UTF-8" and env["PATH"] == os.environ["PATH"]
    assert browser_env({})["PATH"]  # never empty (selenium would fall back to the whole environment)
    cfg = _config(site, str(tmp_path))
    browser = Browser(cfg.scrape.selenium, "facerank-test", policy_for(cfg, ["127.0.0.1"]))
    try:
        browser.start()
        pids = _descendants(browser.driver.service.process.pid)
        assert len(pids) >= 2  # chromedriver and Chromium's processes
        for pid in pids:
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    seen = f.read()
            except OSError:
                continue
            names = {e.split(b"=", 1)[0].decode() for e in seen.split(b"\0") if e}
            assert not names & set(secrets), (pid, names)
            assert all(v.encode() not in seen for v in secrets.values())
    finally:
        browser.quit()
