"""The demo sites' HTTP server: a selfie feed API, a flaky copy of it, four universities' staff pages, robots.txt.

A real ``http.server.ThreadingHTTPServer`` in a daemon thread, bound to loopback unless told otherwise. The content
is drawn when the server starts (milliseconds); each image is rendered on its first request and cached. Routes and
formats are documented in docs/demo-sites.md.

Example::

    from pipeline.demo.server import DemoServer
    with DemoServer(n_posts=240, staff_per_department=12) as srv:
        print(srv.base_url)  # http://127.0.0.1:43210

CLI: ``python -m pipeline.demo.server --port 8765 [--n-posts 700] [--staff-per-department 24] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import signal
import socket
import sys
import threading
from datetime import datetime
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa

from pipeline.demo import content as ct
from pipeline.demo import images as im
from pipeline.demo import pages

FEED_PAGE_SIZE = 50
STAFF_PAGE_SIZE = 8
ROBOTS_TXT = "User-agent: *\nDisallow: /private/\n"
NOT_AN_IMAGE = b"<!doctype html><html><body><h1>Sorry, this photo is not available</h1></body></html>\n"
TRUNCATE_AT = 0.5  # a truncated JPEG keeps this fraction of its bytes (no end-of-image marker)

_IMG = re.compile(r"^/(?:(?P<flaky>flaky)/img|img(?P<noai>/noai)?|private/img)/(?P<id>[A-Za-z0-9_-]+)\.jpg$")
_LAST_INT = re.compile(r"(\d+)\D*$")
_UNI = re.compile(
    r"^/uni/(?P<dept>[a-z]+)/(?:(?P<page>staff\.html|people\.json|directory\.html|list\.html)"
    r"|photo/(?P<id>[A-Za-z0-9_-]+)\.jpg|person/(?P<pid>[A-Za-z0-9_-]+)\.html)$"
)


def is_loopback(host: str) -> bool:
    """True when every address ``host`` resolves to is a loopback address."""
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0].split("%")[0]).is_loopback for i in infos)


class DemoSite:
    """The sites' logic without the socket: answers ``(method, target)`` with ``(status, headers, body)``."""

    def __init__(self, base_url: str, n_posts: int, staff_per_department: int, seed: int) -> None:
        self.base_url = base_url.rstrip("/")
        self.content = ct.build_content(n_posts, staff_per_department, seed)
        self.anchor: datetime = ct.day_anchor()
        self._flaky_hits: dict[str, int] = {}
        self._lock = threading.Lock()
        self.render_post = lru_cache(maxsize=4096)(self._render_post)
        self.render_photo = lru_cache(maxsize=1024)(self._render_photo)

    # -- images ----------------------------------------------------------------------------------------------
    def _render_post(self, post_id: str) -> bytes:
        post = self.content.post_by_id[post_id]
        if post.kind == "html":
            return NOT_AN_IMAGE
        spec = post.image
        data = im.render_scene(spec) if isinstance(spec, im.SceneSpec) else im.render_face(spec)
        if post.kind == "truncated":
            data = data[: int(len(data) * TRUNCATE_AT)]
        return data

    def _render_photo(self, person_id: str) -> bytes:
        return im.render_staff(self.content.staff_by_id[person_id].photo)

    # -- JSON ------------------------------------------------------------------------------------------------
    def image_url(self, post: ct.Post) -> str:
        """Where a post's image is served (the path tells robots and noai cases apart)."""
        if post.id.startswith("f"):
            return f"{self.base_url}/flaky/img/{post.id}.jpg"
        if post.kind == "private":
            return f"{self.base_url}/private/img/{post.id}.jpg"
        if post.kind == "noai":
            return f"{self.base_url}/img/noai/{post.id}.jpg"
        return f"{self.base_url}/img/{post.id}.jpg"

    def post_json(self, post: ct.Post) -> dict:
        return {
            "id": post.id,
            "image_url": self.image_url(post),
            "user": {"id": post.user_id, "followers": post.followers},
            "likes": post.likes,
            "tags": list(post.tags),
            "posted_at": post.posted_at(self.anchor),
        }

    def feed(self, posts: list[ct.Post], tag: str, want: str, page: int, size: int) -> dict:
        items = posts if tag == want else []
        chunk = items[(page - 1) * size : page * size]
        more = page * size < len(items)
        return {
            "tag": tag,
            "page": page,
            "posts": [self.post_json(p) for p in chunk],
            "next_page": page + 1 if more else None,
        }

    def person_json(self, m: ct.StaffMember) -> dict:
        return {
            "id": m.id,
            "name": m.name,
            "role": m.role,
            "photo": f"{self.base_url}/uni/{m.department}/photo/{m.id}.jpg",
        }

    # -- flaky -----------------------------------------------------------------------------------------------
    def flaky_fails(self, target: str) -> bool:
        """Whether this request to ``target`` (path and query) answers 503.

        The n-th request (n = 0, 1, ...) to a target fails when ``n + k`` is even, ``k`` being the last number in
        the target (the page number or the post number; 0 if none): odd pages and odd posts succeed at the first
        try, even ones at the second. So a client that retries once gets everything and one that never retries
        gets every other page and image."""
        m = _LAST_INT.search(target)
        k = int(m.group(1)) if m else 0
        with self._lock:
            n = self._flaky_hits.get(target, 0)
            self._flaky_hits[target] = n + 1
        return (n + k) % 2 == 0

    # -- routing ---------------------------------------------------------------------------------------------
    def handle(self, target: str) -> tuple[int, dict[str, str], bytes]:
        """Answer a GET of ``target`` (path and query)."""
        url = urlsplit(target)
        path, query = url.path, parse_qs(url.query)
        if path.startswith("/flaky/") and self.flaky_fails(target):
            return 503, {"Retry-After": "0", "Content-Type": "text/plain"}, b"busy, try again\n"
        if path == "/robots.txt":
            return 200, {"Content-Type": "text/plain; charset=utf-8"}, ROBOTS_TXT.encode()
        if path.startswith("/mastodon/"):  # a small Mastodon-compatible timeline (pipeline/demo/mastodon.py)
            from pipeline.demo.mastodon import DemoMastodon

            with self._lock:
                self._mastodon = getattr(self, "_mastodon", None) or DemoMastodon(self)
            return self._mastodon.handle(target)
        if path in ("/", "/index.html"):
            return _html(pages.index_page(self.base_url, ct.DEPARTMENT_NAMES))
        if path in ("/api/feed", "/flaky/api/feed"):
            page = _int_arg(query, "page", 1)
            if page is None or page < 1:
                return _json({"error": "page must be an integer >= 1"}, 400)
            tag = query.get("tag", [""])[0]
            if path == "/api/feed":
                return _json(self.feed(self.content.posts, tag, ct.FEED_TAG, page, FEED_PAGE_SIZE))
            return _json(self.feed(self.content.flaky_posts, tag, ct.FLAKY_TAG, page, ct.FLAKY_PAGE_SIZE))
        m = _IMG.match(path)
        if m:
            post = self.content.post_by_id.get(m["id"])
            if post is None or (m["flaky"] is not None) != post.id.startswith("f"):
                return _not_found()
            headers = {"Content-Type": "image/jpeg"}
            if m["noai"]:
                headers["X-Robots-Tag"] = "noai"
            return 200, headers, self.render_post(post.id)
        m = _UNI.match(path)
        if m and m["dept"] in ct.LAYOUTS:
            if m["pid"] is not None or m["page"] in ("directory.html", "list.html"):
                return self._static_staff(m["dept"], m["page"], m["pid"])
            return self._uni(m["dept"], m["page"], m["id"], query)
        return _not_found()

    def _uni(self, dept: str, page_name: str | None, person: str | None, query: dict) -> tuple[int, dict, bytes]:
        staff = self.content.staff[dept]
        if page_name == "staff.html":
            return _html(pages.staff_page(dept, ct.DEPARTMENT_NAMES[dept], ct.LAYOUTS[dept]))
        if page_name == "people.json":
            if query.get("all", ["0"])[0] == "1":
                return _json({"department": dept, "page": 1, "people": [self.person_json(m) for m in staff],
                              "next_page": None})  # fmt: skip
            page = _int_arg(query, "page", 1)
            if page is None or page < 1:
                return _json({"error": "page must be an integer >= 1"}, 400)
            chunk = staff[(page - 1) * STAFF_PAGE_SIZE : page * STAFF_PAGE_SIZE]
            nxt = page + 1 if page * STAFF_PAGE_SIZE < len(staff) else None
            body = {"department": dept, "page": page, "people": [self.person_json(m) for m in chunk], "next_page": nxt}
            return _json(body)
        member = self.content.staff_by_id.get(person or "")
        if member is None or member.department != dept:
            return _not_found()
        return 200, {"Content-Type": "image/jpeg"}, self.render_photo(member.id)

    def _static_staff(self, dept: str, page_name: str | None, person: str | None) -> tuple[int, dict, bytes]:
        """The server-rendered staff pages (no JavaScript): directory.html, list.html, person/<id>.html."""
        people = [self.person_json(m) for m in self.content.staff[dept]]
        if page_name == "directory.html":
            return _html(pages.directory_page(ct.DEPARTMENT_NAMES[dept], people))
        if page_name == "list.html":
            return _html(pages.list_page(ct.DEPARTMENT_NAMES[dept], people))
        member = next((p for p in people if p["id"] == person), None)
        return _html(pages.profile_page(member)) if member else _not_found()


def _int_arg(query: dict, name: str, default: int) -> int | None:
    try:
        return int(query.get(name, [str(default)])[0])
    except ValueError:
        return None


def _json(obj: object, status: int = 200) -> tuple[int, dict[str, str], bytes]:
    return status, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _html(text: str) -> tuple[int, dict[str, str], bytes]:
    return 200, {"Content-Type": "text/html; charset=utf-8"}, text.encode()


def _not_found() -> tuple[int, dict[str, str], bytes]:
    return 404, {"Content-Type": "text/plain"}, b"not found\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK stall on kept-alive connections
    server_version = "facerank-demo/1.0"
    server: _Server

    def _answer(self, with_body: bool) -> None:
        try:
            status, headers, body = self.server.site.handle(self.path)
        except Exception as err:  # a bug in the demo must not kill the connection thread silently
            status, headers, body = 500, {"Content-Type": "text/plain"}, f"internal error: {err}\n".encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._answer(True)

    def do_HEAD(self) -> None:  # noqa: N802
        self._answer(False)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    site: DemoSite
    verbose: bool

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up mid-response (crawlers aborting a download) are normal here, not errors."""
        if isinstance(sys.exc_info()[1], ConnectionError) and not self.verbose:
            return
        super().handle_error(request, client_address)


class DemoServer:
    """The bundled demo sites on ``host:port`` (port 0: a free port), run in a daemon thread.

    Deterministic in ``(seed, n_posts, staff_per_department)``. Binds only loopback addresses unless
    ``allow_remote=True``. ``public_url`` overrides the base of the absolute URLs in the pages (e.g. when other
    containers reach the server by a service name). Use as a context manager, or call :meth:`start` /
    :meth:`stop`.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        n_posts: int = 700,
        staff_per_department: int = 24,
        seed: int = 0,
        *,
        allow_remote: bool = False,
        public_url: str | None = None,
        verbose: bool = False,
    ) -> None:
        if not allow_remote and not is_loopback(host):
            raise ValueError(f"refusing to serve the demo sites on non-loopback host {host!r} (allow_remote=False)")
        self.host, self.port = host, port
        self.n_posts, self.staff_per_department, self.seed = n_posts, staff_per_department, seed
        self.public_url = public_url.rstrip("/") if public_url else None
        self.verbose = verbose
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        """``http://host:port`` (no trailing slash), or ``public_url`` when given. Valid after :meth:`start`."""
        if self.public_url:
            return self.public_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def site(self) -> DemoSite:
        if self._httpd is None:
            raise RuntimeError("DemoServer is not started")
        return self._httpd.site

    def start(self) -> DemoServer:
        """Bind the socket, draw the content and serve in a daemon thread. Returns self."""
        if self._httpd is not None:
            return self
        server_cls = _Server
        if ":" in self.host:
            server_cls = type("_Server6", (_Server,), {"address_family": socket.AF_INET6})
        httpd = server_cls((self.host, self.port), _Handler)
        self.port = httpd.server_address[1]
        httpd.site = DemoSite(self.base_url, self.n_posts, self.staff_per_department, self.seed)
        httpd.verbose = self.verbose
        self._httpd = httpd
        self._thread = threading.Thread(target=httpd.serve_forever, name="demo-sites", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (idempotent)."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def truth(self) -> pa.Table:
        """The hidden quality of every post these sites serve (:func:`pipeline.demo.content.truth`, same size and
        seed): what ``python -m pipeline demo`` passes to the labels stage (``run(cfg, truth=...)``)."""
        return ct.truth(self.n_posts, self.seed)

    def __enter__(self) -> DemoServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``python -m pipeline.demo.server``: serve the demo sites until interrupted."""
    ap = argparse.ArgumentParser(prog="python -m pipeline.demo.server", description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--n-posts", type=int, default=700)
    ap.add_argument("--staff-per-department", type=int, default=24)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host (e.g. 0.0.0.0)")
    ap.add_argument("--public-url", default=None, help="base of the absolute URLs in pages (default: host:port)")
    ap.add_argument("--verbose", action="store_true", help="log every request")
    args = ap.parse_args(argv)
    try:
        srv = DemoServer(
            args.host,
            args.port,
            args.n_posts,
            args.staff_per_department,
            args.seed,
            allow_remote=args.allow_remote,
            public_url=args.public_url,
            verbose=args.verbose,
        ).start()
    except (ValueError, OSError) as err:
        print(f"demo server: {err}", file=sys.stderr)
        return 2
    print(f"demo sites at {srv.base_url}  (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
