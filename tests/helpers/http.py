"""Tiny servers on 127.0.0.1 for tests: an HTTP server for a handler class or a dict of routes, and a raw socket one.

:func:`serve` starts a :class:`~http.server.ThreadingHTTPServer` on a free port in a daemon thread and always shuts
it down when the block ends; it yields the server, with ``base`` (``http://127.0.0.1:<port>``) and ``port`` set.
Give it a handler class (best a :class:`Handler` subclass: quiet, with :meth:`Handler.send`) or a dict of
routes, path → :class:`Reply` (or a function of the handler returning one); a path not in the dict is a 404.
:class:`RawServer` hands each connection to a function, for hosts that misbehave below HTTP.

Example::

    with serve({"/robots.txt": Reply(b"User-agent: *\\nAllow: /\\n", "text/plain")}) as srv:
        requests.get(f"{srv.base}/robots.txt", timeout=5)
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Reply:
    """One HTTP answer: body, content type, status, extra headers."""

    body: bytes = b""
    ctype: str = "text/plain"
    code: int = 200
    headers: dict[str, str] = field(default_factory=dict)


class Handler(BaseHTTPRequestHandler):
    """A request handler that logs nothing and answers with :meth:`send` (``ctype`` defaults to :attr:`ctype`)."""

    ctype = "text/plain"

    def log_message(self, *args: Any) -> None:  # keep the test output quiet
        pass

    @property
    def base(self) -> str:
        """This server's own URL, ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def send(self, code: int, body: bytes, ctype: str | None = None, headers: dict | None = None, length=True):
        """Status, headers (``Content-Length`` unless ``length`` is false) and body."""
        self.send_response(code)
        self.send_header("Content-Type", ctype or self.ctype)
        if length:
            self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def reply(self, r: Reply) -> None:
        self.send(r.code, r.body, r.ctype, r.headers)


Route = Reply | Callable[[Handler], Reply]


def routes_handler(routes: Mapping[str, Route]) -> type[Handler]:
    """A handler class answering GET from ``routes`` by path (the query is ignored); other paths are 404."""

    class Routes(Handler):
        def do_GET(self):  # noqa: N802
            route = routes.get(urlsplit(self.path).path)
            if route is None:
                return self.send(404, b"", "text/plain")
            self.reply(route(self) if callable(route) else route)

    return Routes


class QuietServer(ThreadingHTTPServer):
    """Daemon handler threads; a client that hangs up mid-answer (expected in these tests) prints nothing."""

    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        pass


@contextmanager
def serve(handler: type[BaseHTTPRequestHandler] | Callable | Mapping[str, Route], **attrs: Any) -> Iterator[Any]:
    """Serve ``handler`` (a handler class or factory, or a dict of routes) on 127.0.0.1 until the block ends.

    ``attrs`` are set on the server before it starts (handlers read them as ``self.server.<name>``).
    """
    factory = routes_handler(handler) if isinstance(handler, Mapping) else handler
    srv = QuietServer(("127.0.0.1", 0), factory)
    srv.port = srv.server_address[1]
    srv.base = f"http://127.0.0.1:{srv.port}"
    for k, v in attrs.items():
        setattr(srv, k, v)
    thread = threading.Thread(target=srv.serve_forever, daemon=True, name="test-http")
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        thread.join(timeout=5)


class RawServer:
    """Accepts on 127.0.0.1 (at most ``max_conns`` connections) and, once a request's headers are in, hands the
    connection to ``talk(conn)`` in a thread; ``GET /robots.txt`` gets a 404. Records each request line."""

    def __init__(self, talk: Callable[[socket.socket], None], max_conns: int = 200):
        self.talk, self.max_conns = talk, max_conns
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests: list[bytes] = []
        self._open: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="test-raw")
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set() and self.connections < self.max_conns:
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request and len(request) < 65536:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    request += chunk
                self.requests.append(request.split(b"\r\n", 1)[0])
                if request.startswith(b"GET /robots.txt"):
                    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    return
                self.talk(conn)
            except OSError:
                pass  # the client gave up, or close() cut the connection: expected

    def close(self) -> None:
        """Stop accepting and cut every open connection (a talk still sending ends with an OSError)."""
        self._stop.set()
        self.sock.close()
        for conn in self._open:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=5)

    def __enter__(self) -> RawServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
