"""The staff browser's egress guard: a small filtering HTTP/CONNECT proxy that every byte Chromium sends goes through.

Chromium does its own DNS and loads whatever a page asks for (subresources, iframes, ``fetch()``, websockets), so a
check of the start URL in Python guards nothing: a page on an allowed host could make the browser ``POST`` to a
loopback service, and a rebinding name could resolve differently for Chromium. :class:`EgressProxy` listens on
127.0.0.1 (an ephemeral port) and Chromium is started with ``--proxy-server`` pointing at it (see
:mod:`pipeline.scrape.staff.browser`). For every plain HTTP request and every ``CONNECT`` tunnel it applies
:meth:`EgressPolicy.check`, the HTTP client's rules (the same :func:`~pipeline.scrape.net.http.host_allowed` and
:func:`~pipeline.scrape.net.http.is_public_address`, not copies):

* the host must be inside the allowed domains and the port one of the configured sites' ports (or 80/443);
* the host is resolved once, here; every address must be public unless ``allow_private_addresses``, and even then a
  non-public address is reached only for a configured site's exact host and port (tests and the demo run on
  127.0.0.1: other loopback ports stay closed);
* the proxy connects to exactly an address it checked (no second resolution, nothing for DNS rebinding to race) and
  checks the connected socket's peer again.

Anything else is answered ``403`` (reason in an ``X-Facerank-Refused`` header, counted in :attr:`EgressProxy.refused`),
a malformed request ``400``. Bounded: at most ``max_connections`` client connections at once (more get ``503``), a
request head of at most 16 KiB, a connect timeout, an idle timeout and a lifetime per connection. Plain HTTP requests
are forwarded one per connection: ``Connection: close`` both ways, ``Host`` set from the checked URL, exactly one
request read from the client (its head and ``Content-Length`` bytes of body; a chunked request body is ``400``; what
the client sends after it is never read), and every response head up to the first final (non-1xx) one rewritten; a
response head over 16 KiB ends the connection.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import re
import selectors
import socket
import socketserver
import threading
import time
from collections.abc import Iterable
from urllib.parse import urlsplit

from pipeline.scrape.net.address import host_allowed, is_public_address

log = logging.getLogger("facerank.scrape")

MAX_HEAD = 16 * 1024
CHUNK = 64 * 1024
MAX_ADDRESSES = 4  # addresses of one name tried in order
_HOST = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
_HOP_HEADERS = {b"connection", b"keep-alive", b"proxy-connection", b"proxy-authorization", b"host", b"te"}


class Refused(Exception):
    """The policy refuses a destination; ``str(e)`` is the reason (``outside_allowed_domains``, ``private_address``)."""


def _origin(url: str) -> tuple[str, int] | None:
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not host or parts.scheme not in ("http", "https"):
        return None
    return host.lower().rstrip("."), port or (443 if parts.scheme == "https" else 80)


def _normal_host(host: str) -> str:
    """``host`` lower-cased without brackets or a trailing dot; raises :class:`Refused` unless it is a plain DNS name
    or an IP literal (no zone ids, no escapes, nothing a second parser could read differently)."""
    h = host.lower().rstrip(".")
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
    if ":" in h:
        try:
            socket.inet_pton(socket.AF_INET6, h)
        except OSError:
            raise Refused("bad_host") from None
        return h
    if not h or len(h) > 253 or not _HOST.match(h):
        raise Refused("bad_host")
    return h


@dataclasses.dataclass(frozen=True)
class EgressPolicy:
    """Where the browser may connect: allowed domains, ports, and the configured origins that may be non-public."""

    domains: tuple[str, ...]
    ports: frozenset[int]
    origins: frozenset[tuple[str, int]]
    allow_private: bool = False

    @classmethod
    def for_sites(cls, site_urls: Iterable[str], domains: Iterable[str], allow_private: bool) -> EgressPolicy:
        """The policy for these configured site URLs: their ports plus 80/443, private only on their exact origins."""
        origins = frozenset(o for o in (_origin(u) for u in site_urls) if o)
        return cls(tuple(domains), frozenset({80, 443} | {p for _, p in origins}), origins, allow_private)

    def check(self, host: str, port: int) -> list[tuple[int, tuple]]:
        """The checked ``(family, sockaddr)`` pairs to connect to for ``host:port``; raises :class:`Refused`."""
        h = _normal_host(host)
        if not host_allowed(h, list(self.domains)):
            raise Refused("outside_allowed_domains")
        if port not in self.ports:
            raise Refused("port_not_allowed")
        try:
            infos = socket.getaddrinfo(h, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            raise Refused("dns_error") from None
        out: list[tuple[int, tuple]] = []
        for family, _, _, _, sockaddr in infos:
            self.check_address(h, port, str(sockaddr[0]))  # every answer: a mixed answer is a rebinding attempt
            if (family, sockaddr) not in out:
                out.append((family, sockaddr))
        if not out:
            raise Refused("dns_error")
        return out[:MAX_ADDRESSES]

    def check_address(self, host: str, port: int, ip: str) -> None:
        """Raise :class:`Refused` unless ``ip`` may be reached as ``host:port``."""
        if is_public_address(ip):
            return
        if not self.allow_private or (host, port) not in self.origins:
            raise Refused("private_address")


def policy_for(cfg, domains: Iterable[str]):
    """The :class:`EgressPolicy` of a :class:`~pipeline.config.Config`: its feed and staff sites, these domains."""
    urls = [f.base_url for f in cfg.scrape.feeds] + [u for s in cfg.scrape.staff for u in s.start_urls]
    return EgressPolicy.for_sites(urls, domains, cfg.scrape.http.allow_private_addresses)


# ---------------------------------------------------------------------------------------------------- wire helpers
def _reply(conn: socket.socket, code: int, text: str, reason: str | None = None) -> None:
    body = f"{reason or text}\n".encode()
    extra = f"X-Facerank-Refused: {reason}\r\n" if reason else ""
    head = (
        f"HTTP/1.1 {code} {text}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
        f"Connection: close\r\n{extra}\r\n"
    )
    try:
        conn.sendall(head.encode() + body)
    except OSError:
        pass


def _read_head(conn: socket.socket, deadline: float) -> tuple[bytes, bytes]:
    """(head without the blank line, bytes after it); raises ``ValueError`` on a head too long, EOF or a timeout."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        if len(buf) > MAX_HEAD or time.monotonic() > deadline:
            raise ValueError("bad_request")
        chunk = conn.recv(4096)
        if not chunk:
            raise ValueError("bad_request")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise ValueError("bad_request")
    return head, rest


def _rewrite_headers(lines: list[bytes], first: bytes, host: bytes | None) -> bytes:
    """``first`` + ``lines`` without hop-by-hop headers, with ``Host`` (when given) and ``Connection: close``."""
    out = [first]
    if host is not None:
        out.append(b"Host: " + host)
    for line in lines:
        name = line.split(b":", 1)[0].strip().lower()
        if name not in _HOP_HEADERS or (host is None and name == b"host"):
            out.append(line)
    out.append(b"Connection: close")
    return b"\r\n".join(out) + b"\r\n\r\n"


class _ResponseHead:
    """Rewrites every response head that passes upstream → client, up to and including the first final (non-1xx)
    one, to ``Connection: close`` (one request per client connection, so Chromium never sends a second host's request
    down this upstream socket); a head longer than :data:`MAX_HEAD` ends the connection (:class:`ValueError`)."""

    def __init__(self) -> None:
        self.buf: bytes | None = b""

    def feed(self, data: bytes) -> bytes:
        if self.buf is None:
            return data
        self.buf += data
        out = b""
        while self.buf is not None and b"\r\n\r\n" in self.buf:
            head, _, rest = self.buf.partition(b"\r\n\r\n")
            if len(head) > MAX_HEAD:
                raise ValueError("response head too long")
            lines = head.split(b"\r\n")
            out += _rewrite_headers(lines[1:], lines[0], None)
            status = lines[0].split(b" ", 2)[1:2]
            interim = bool(status) and len(status[0]) == 3 and status[0].startswith(b"1")
            self.buf = rest if interim else None  # after a 1xx another head follows
            if not interim:
                out += rest
        if self.buf is not None and len(self.buf) > MAX_HEAD:
            raise ValueError("response head too long")
        return out


def _body_length(lines: list[bytes]) -> int:
    """The request body's length from ``Content-Length`` (0 without one); :class:`ValueError` for a chunked or
    otherwise framed body, or a length that is not one plain number (the proxy forwards exactly one request)."""
    lengths = set()
    for line in lines:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"transfer-encoding":
            raise ValueError("bad_request")
        if name == b"content-length":
            v = value.strip()
            if not v.isdigit() or len(v) > 15:
                raise ValueError("bad_request")
            lengths.add(int(v))
    if len(lengths) > 1:
        raise ValueError("bad_request")
    return lengths.pop() if lengths else 0


# ---------------------------------------------------------------------------------------------------- the proxy
class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 64
    proxy: EgressProxy

    def process_request(self, request, client_address):  # type: ignore[override]
        if not self.proxy._slots.acquire(blocking=False):
            _reply(request, 503, "Service Unavailable", "too_many_connections")
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self.proxy._slots.release()
            raise

    def process_request_thread(self, request, client_address):  # type: ignore[override]
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.proxy._slots.release()


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.server.proxy._serve(self.request)


class EgressProxy:
    """A filtering HTTP/CONNECT proxy on ``host`` (127.0.0.1 by default), serving from a daemon thread.

    Use as a context manager or :meth:`start` / :meth:`stop`; :attr:`url` is what Chromium's ``--proxy-server`` gets.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        host: str = "127.0.0.1",
        max_connections: int = 64,
        connect_timeout_s: float = 5.0,
        idle_timeout_s: float = 30.0,
        max_lifetime_s: float = 300.0,
    ):
        self.policy = policy
        self.host = host
        self.connect_timeout_s = connect_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.max_lifetime_s = max_lifetime_s
        self._slots = threading.BoundedSemaphore(max_connections)
        self._server: _Server | None = None
        self._lock = threading.Lock()
        self.refused: collections.Counter = collections.Counter()  # reason → how many
        self.refused_targets: collections.deque = collections.deque(maxlen=100)  # recent (host, port, reason)
        self.allowed: collections.Counter = collections.Counter()  # "host:port" → connections made

    # ---------------------------------------------------------------- lifecycle
    @property
    def port(self) -> int:
        assert self._server is not None, "proxy not started"
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> EgressProxy:
        if self._server is None:
            srv = _Server((self.host, 0), _Handler)
            srv.proxy = self
            threading.Thread(target=srv.serve_forever, name="egress-proxy", daemon=True).start()
            self._server = srv
        return self

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.shutdown()
            srv.server_close()

    def __enter__(self) -> EgressProxy:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- one client connection
    def _refuse(self, conn: socket.socket, host: str, port: int, reason: str) -> None:
        with self._lock:
            self.refused[reason] += 1
            self.refused_targets.append((host, port, reason))
        log.debug("egress proxy: refused %s:%s (%s)", host, port, reason)
        _reply(conn, 403, "Forbidden", reason)

    def _serve(self, conn: socket.socket) -> None:
        start = time.monotonic()
        conn.settimeout(self.idle_timeout_s)
        try:
            head, rest = _read_head(conn, start + self.idle_timeout_s)
            lines = head.split(b"\r\n")
            method, target, version = lines[0].decode("latin-1").split(" ")
            if not version.startswith("HTTP/1.") or not method.isalpha():
                raise ValueError("bad_request")
        except (ValueError, OSError, UnicodeError):
            _reply(conn, 400, "Bad Request", "bad_request")
            return
        try:
            client_left: int | None = None  # bytes still to read from the client (None: a tunnel, no limit)
            if method == "CONNECT":
                host, port = _split_authority(target)
                first, rewrite, reply = rest, None, b"HTTP/1.1 200 Connection Established\r\n\r\n"
            else:
                try:
                    body = _body_length(lines[1:])
                except ValueError:
                    _reply(conn, 400, "Bad Request", "bad_request")
                    return
                rest, client_left = rest[:body], body - len(rest[:body])  # what follows it is never forwarded
                host, port, path = _split_absolute(target)
                name = f"[{host}]" if ":" in host else host
                authority = name if port == 80 else f"{name}:{port}"
                line = f"{method} {path} {version}".encode("latin-1")
                first, rewrite, reply = (
                    _rewrite_headers(lines[1:], line, authority.encode()) + rest,
                    _ResponseHead(),
                    b"",
                )
            upstream = self._connect(host, port)
        except Refused as e:
            h, p = _target_for_log(target)
            self._refuse(conn, h, p, str(e))
            return
        except OSError:
            _reply(conn, 502, "Bad Gateway", "connection_error")
            return
        with upstream:
            try:
                if reply:
                    conn.sendall(reply)
                if first:
                    upstream.sendall(first)
            except OSError:
                return
            self._pipe(conn, upstream, rewrite, start + self.max_lifetime_s, client_left)

    def _connect(self, host: str, port: int) -> socket.socket:
        """A socket connected to a checked address of ``host:port``; raises :class:`Refused` or ``OSError``."""
        if not 0 < port < 65536:
            raise Refused("bad_port")
        h = _normal_host(host)
        last: OSError | None = None
        for family, sockaddr in self.policy.check(h, port):
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(self.connect_timeout_s)
            try:
                s.connect(sockaddr)
                self.policy.check_address(h, port, str(s.getpeername()[0]))  # the peer, again, after connect
            except Refused:
                s.close()
                raise
            except OSError as e:
                s.close()
                last = e
                continue
            s.settimeout(self.idle_timeout_s)
            with self._lock:
                self.allowed[f"{h}:{port}"] += 1
            return s
        raise last or OSError("no address")

    def _pipe(
        self, client: socket.socket, upstream: socket.socket, rewrite, deadline: float, client_left: int | None = None
    ) -> None:
        """Copy bytes both ways until either side closes, the idle timeout passes or the lifetime ends; from the
        client at most ``client_left`` more bytes (the rest of one request's body; then the client is not read).
        A response head the rewrite refuses ends the connection."""
        sel = selectors.DefaultSelector()
        if client_left is None or client_left > 0:
            sel.register(client, selectors.EVENT_READ, upstream)
        sel.register(upstream, selectors.EVENT_READ, client)
        try:
            while time.monotonic() < deadline:
                events = sel.select(timeout=min(self.idle_timeout_s, max(0.0, deadline - time.monotonic())))
                if not events:
                    return  # idle
                for key, _ in events:
                    src, dst = key.fileobj, key.data
                    data = src.recv(CHUNK)  # type: ignore[union-attr]
                    if not data:
                        return
                    if src is client and client_left is not None:
                        data, client_left = data[:client_left], client_left - len(data[:client_left])
                        if client_left == 0:
                            sel.unregister(client)  # the request is whole: nothing more is read from the client
                    if rewrite is not None and src is upstream:
                        data = rewrite.feed(data)
                    if data:
                        dst.sendall(data)
        except (OSError, ValueError):
            return
        finally:
            sel.close()


def _split_authority(target: str) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` of a CONNECT request; raises :class:`Refused` when malformed."""
    if "\\" in target or "@" in target or "/" in target:
        raise Refused("bad_host")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise Refused("bad_host")
    return host, int(port)


def _split_absolute(target: str) -> tuple[str, int, str]:
    """(host, port, origin-form path) of a plain proxy request ``http://host[:port]/path?q``."""
    if "\\" in target or any(c in target for c in "\r\n\t "):
        raise Refused("bad_url")
    try:
        parts = urlsplit(target)
        host, port = parts.hostname, parts.port
    except ValueError:
        raise Refused("bad_url") from None
    if parts.scheme != "http" or not host or "@" in parts.netloc:
        raise Refused("bad_url")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return host, port or 80, path


def _target_for_log(target: str) -> tuple[str, int]:
    try:
        if "://" in target:
            parts = urlsplit(target)
            return parts.hostname or "", parts.port or 80
        host, _, port = target.rpartition(":")
        return host, int(port) if port.isdigit() else 0
    except ValueError:
        return target[:100], 0
