"""The HTTP client's transport: one deadline over a hop's whole exchange, and connections to checked addresses only.

* a total deadline per hop (:class:`Hop`, ``total_timeout_s``) over the whole exchange: connect, TLS, status line,
  headers, body, and urllib3's retries and their sleeps. A watchdog thread (:data:`WATCHDOG`) shuts the hop's sockets
  down at the deadline (through a duplicate of each socket's descriptor, so it also reaches a socket that TLS has
  wrapped), which ends any blocked read at once; each connect's timeout is cut to the time left; a retry or a sleep
  past the deadline is not started (:class:`CappedRetry`). At most ``max_interim_responses`` interim ``100
  Continue`` responses are read (:class:`InterimFlood`);
* the guarded connections (:class:`GuardedPoolManager`, the client's urllib3 pools, one per thread): the host is
  resolved once by the connection itself, BEFORE any connect, every address must be public
  (:func:`~pipeline.scrape.net.address.is_public_address`) unless the hop allows private ones, and the socket
  connects to exactly a checked address (``Host`` and TLS SNI keep the name): nothing is sent to a refused address
  (:class:`~pipeline.scrape.net.address.BlockedAddressError`), and DNS rebinding has no second lookup to swap.

The calling thread's current hop (:func:`current_hop`, set with :func:`enter_hop`) is how urllib3's connection and
retry code, which run in the caller's thread, find the deadline.

Response headers (:func:`parse_headers`): http.client parses every response's header block with the ``email``
package (its feed parser: about a tenth of an image fetch's CPU); importing this module makes http.client's
``parse_headers``, for the responses to this client's own requests (a thread inside a hop), build the same
``HTTPMessage`` directly from plain ``Name: value`` lines, and hand every other block (a folded line, a line that is
not a header, a stray CR, a block cut short) to the ``email`` package as before; any other code's responses in the
process (boto, Ray) go through the standard library's function untouched.
The same headers, values, payload and defects either way (``tests/test_scrape_net_http.py::
test_fast_header_parsing_gives_what_the_email_parser_gives``).

Example::

    pool = GuardedPoolManager(num_pools=10, maxsize=4)
    hop = Hop(60.0, guard=True, max_interim=8)
    outer = enter_hop(hop)
    WATCHDOG.add(hop)
    try:
        resp = pool.urlopen("GET", url, redirect=False, preload_content=False, retries=CappedRetry(2))
    finally:
        hop.finish()
        enter_hop(outer)
"""

from __future__ import annotations

import heapq
import http.client
import itertools
import re
import socket
import sys
import threading
import time
from typing import Any

from urllib3 import PoolManager
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.retry import Retry

from pipeline.scrape.net.address import BlockedAddressError, is_public_address


class DeadlineExceeded(Exception):
    """The hop's total deadline passed (not an ``OSError``: urllib3 neither retries nor wraps it)."""


class InterimFlood(Exception):
    """More interim ``100 Continue`` responses than ``max_interim_responses`` before the real one."""


# ---------------------------------------------------------------------------------------------- response headers
_EMAIL_PARSE_HEADERS = http.client.parse_headers  # the standard library's, through the email package
# one line as the email parser reads it: its header name, a colon, a value with no character str.splitlines breaks at
_PLAIN_HEADER = re.compile(r"([\x21-\x39\x3b-\x7e]+):([^\r\n\x0b\x0c\x1c-\x1e\x85]*)\r?\n")


def parse_headers(fp: Any, _class: type = http.client.HTTPMessage) -> http.client.HTTPMessage:
    """http.client's ``parse_headers``: plain ``Name: value`` lines straight into the message (the email parser's
    compat32 result: the name as sent, the value without leading blanks and the line end); any other block through
    the email parser, as http.client does; outside a hop of this client, the standard library's function."""
    if current_hop() is None:
        return _EMAIL_PARSE_HEADERS(fp, _class)
    lines = http.client._read_headers(fp)  # type: ignore[attr-defined]  # the same line and count limits
    if lines[-1] not in (b"\r\n", b"\n"):
        return _EMAIL_PARSE_HEADERS(_Replay(lines), _class)
    msg = _class()
    for line in lines[:-1]:
        m = _PLAIN_HEADER.fullmatch(line.decode("iso-8859-1"))
        if m is None:
            return _EMAIL_PARSE_HEADERS(_Replay(lines), _class)
        msg.set_raw(m.group(1), m.group(2).lstrip(" \t"))
    msg.set_payload("")
    return msg


class _Replay:
    """Header lines already read, read again by the standard library's parser."""

    def __init__(self, lines: list[bytes]):
        self.lines = iter(lines)

    def readline(self, _limit: int = -1) -> bytes:
        return next(self.lines, b"")


http.client.parse_headers = parse_headers  # http.client's HTTPResponse.begin looks it up at each response


# ---------------------------------------------------------------------------------------------- the hop deadline
class Hop:
    """One hop's exchange: its deadline, the address guard, and the sockets to shut down when the deadline passes.

    The watchdog holds a duplicate descriptor of every socket the hop uses (``socket.fromfd``): ``shutdown`` on it
    ends the TCP connection under whatever object reads it (a plain socket, an ``SSLSocket``, http.client's reader),
    and closing the duplicate afterwards leaves the original alone.
    """

    def __init__(self, timeout_s: float, guard: bool, max_interim: int):
        self.deadline = time.monotonic() + timeout_s
        self.guard = guard
        self.max_interim = max_interim
        self.requests = 0
        self.fired = False
        self._done = False
        self._dups: list[socket.socket] = []
        self._lock = threading.Lock()

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> float:
        """The seconds left; raises :class:`DeadlineExceeded` when none are."""
        left = self.remaining()
        if self.fired or left <= 0:
            raise DeadlineExceeded("total deadline passed")
        return left

    def watch(self, sock: socket.socket) -> None:
        try:
            dup = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return
        with self._lock:
            if not self._done and not self.fired:
                self._dups.append(dup)
                return
            if self.fired:
                _shutdown(dup)
        dup.close()

    def fire(self) -> None:
        """Called by the watchdog at the deadline: every blocked read of this hop returns at once."""
        with self._lock:
            if self._done:
                return
            self.fired = True
            for dup in self._dups:
                _shutdown(dup)

    def finish(self) -> None:
        with self._lock:
            self._done = True
            dups, self._dups = self._dups, []
        for dup in dups:
            dup.close()

    @property
    def done(self) -> bool:
        return self._done


def _shutdown(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


class _Watchdog:
    """One daemon thread per process that fires each hop at its deadline (a heap ordered by deadline)."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Hop]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, hop: Hop) -> None:
        with self._cond:
            heapq.heappush(self._heap, (hop.deadline, next(self._seq), hop))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadline", daemon=True)
                self._thread.start()
            if self._heap[0][2] is hop:  # the earliest deadline now; a later one needs no wake-up (one per request)
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                deadline, _, hop = self._heap[0]
                wait = deadline - time.monotonic()
                if not hop.done and wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
            if not hop.done:
                hop.fire()


WATCHDOG = _Watchdog()
_HOP = threading.local()  # the calling thread's current hop: urllib3 runs in the caller's thread


def current_hop() -> Hop | None:
    """The calling thread's current hop (None outside a request of the HTTP client)."""
    return getattr(_HOP, "hop", None)


def enter_hop(hop: Hop | None) -> Hop | None:
    """Make ``hop`` the calling thread's current hop; returns the one it replaces (to be put back after)."""
    outer = current_hop()
    _HOP.hop = hop
    return outer


class _InterimCappedResponse(http.client.HTTPResponse):
    """http.client skips ``100 Continue`` responses in an unbounded loop; this counts them against the hop's cap."""

    def _read_status(self) -> tuple[str, int, str]:
        version, status, reason = super()._read_status()  # type: ignore[misc]
        if status == http.client.CONTINUE:
            self._interims = getattr(self, "_interims", 0) + 1
            hop = current_hop()
            if self._interims > (hop.max_interim if hop is not None else 8):
                raise InterimFlood(f"more than {self._interims - 1} interim responses")
        return version, status, reason


class _GuardMixin:
    """Connects only to addresses it resolved and checked itself, within the hop's deadline, watched by the watchdog."""

    response_class = _InterimCappedResponse
    _watched_by: Hop | None = None

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        hop = current_hop()
        guard = hop.guard if hop is not None else True
        if hop is not None:
            hop.check()
        addrs = self._resolve_checked(guard)
        sock = self._connect_any(addrs, hop)
        sys.audit("http.client.connect", self, self.host, self.port)  # type: ignore[attr-defined]
        if hop is not None:
            hop.watch(sock)
            self._watched_by = hop
        return sock

    def _resolve_checked(self, guard: bool) -> list[tuple[int, Any]]:
        host = self._dns_host  # type: ignore[attr-defined]
        try:
            infos = socket.getaddrinfo(host, self.port, 0, socket.SOCK_STREAM)  # type: ignore[attr-defined]
        except socket.gaierror as e:
            raise NameResolutionError(self.host, self, e) from e  # type: ignore[attr-defined,arg-type]
        addrs = list(dict.fromkeys((family, sockaddr) for family, _, _, _, sockaddr in infos))
        if guard:
            bad = [str(sockaddr[0]) for _, sockaddr in addrs if not is_public_address(str(sockaddr[0]))]
            if bad or not addrs:
                raise BlockedAddressError(f"{host} resolves to non-public address {', '.join(bad)}")
        return addrs

    def _connect_any(self, addrs: list[tuple[int, Any]], hop: Hop | None) -> socket.socket:
        err: Exception = NewConnectionError(self, "no address")  # type: ignore[arg-type]
        for family, sockaddr in addrs:
            timeout = self.timeout if isinstance(self.timeout, int | float) else None  # type: ignore[attr-defined]
            if hop is not None:
                left = hop.check()
                timeout = left if timeout is None else min(timeout, left)
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for opt in self.socket_options or ():  # type: ignore[attr-defined]
                    sock.setsockopt(*opt)
                if self.source_address:  # type: ignore[attr-defined]
                    sock.bind(self.source_address)  # type: ignore[attr-defined]
                sock.settimeout(timeout)
                sock.connect(sockaddr)  # exactly the checked address: no second resolution to race
                return sock
            except TimeoutError:
                sock.close()
                err = ConnectTimeoutError(self, f"Connection to {self.host} timed out")  # type: ignore[attr-defined]
            except OSError as e:
                sock.close()
                err = NewConnectionError(self, f"Failed to establish a new connection: {e}")  # type: ignore[arg-type]
        raise err

    def request(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        hop = current_hop()
        if hop is not None:
            hop.check()
            hop.requests += 1
            sock = getattr(self, "sock", None)
            if sock is not None and self._watched_by is not hop:  # a kept-alive connection from an earlier hop
                hop.watch(sock)
                self._watched_by = hop
        super().request(*args, **kwargs)  # type: ignore[misc]


class _GuardedHTTPConnection(_GuardMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class GuardedPoolManager(PoolManager):
    """urllib3 pools whose connections resolve, check and connect themselves (see :class:`_GuardMixin`)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class CappedRetry(Retry):
    """urllib3 ``Retry`` that honours ``Retry-After`` but never sleeps longer than ``retry_after_cap`` seconds,
    and starts no retry and no sleep past the current hop's deadline."""

    def __init__(self, *args: Any, retry_after_cap: float = 60.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.retry_after_cap = retry_after_cap

    def new(self, **kw: Any) -> CappedRetry:  # type: ignore[override]
        r = super().new(**kw)
        r.retry_after_cap = self.retry_after_cap
        return r

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), self.retry_after_cap)

    def increment(self, *args: Any, **kwargs: Any) -> CappedRetry:  # type: ignore[override]
        hop = current_hop()
        if hop is not None:
            hop.check()
        return super().increment(*args, **kwargs)  # type: ignore[return-value]

    def sleep(self, response: Any = None) -> None:
        hop = current_hop()
        if hop is not None:
            wait = self.get_retry_after(response) if response is not None and self.respect_retry_after_header else None
            if wait is None:
                wait = self.get_backoff_time()
            if wait >= hop.check():
                raise DeadlineExceeded("the retry would start after the deadline")
        super().sleep(response)
