"""A polite, defensive HTTP client for pages and images: every outcome is a :class:`FetchResult`, never an exception.

What it enforces, per request:

* one URL parser: a URL is prepared once by requests (the client that sends it), its host and port must read the
  same to urllib3's ``parse_url`` and to the stdlib's ``urlsplit`` (requests picks the connection with the latter),
  and exactly that prepared URL is checked and fetched; a backslash or a control character is ``bad_url`` outright
  (``http://127.0.0.1:1\\@localhost/`` reads as ``localhost`` to one parser and ``127.0.0.1`` to another);
* retries with exponential backoff and jitter on connection errors, 429 and 5xx (urllib3 ``Retry``), honouring a
  server's ``Retry-After`` up to ``retry.max_retry_after_s``; after the last attempt the result is an error with a
  reason (``http_503``, ``timeout``, ``connection_error``);
* a total deadline per hop (``total_timeout_s``) over the whole exchange: connect, TLS, status line, headers, body,
  and urllib3's retries and their sleeps. A watchdog thread shuts the hop's sockets down at the deadline (through a
  duplicate of each socket's descriptor, so it also reaches a socket that TLS has wrapped), which ends any blocked
  read at once; each connect's timeout is cut to the time left; a retry or a sleep past the deadline is not started.
  So a server that trickles its headers a byte at a time ends as ``timeout`` at the deadline, and at most
  ``max_interim_responses`` interim ``100 Continue`` responses are read (``too_many_interim_responses``);
  a read timeout per read (``read_timeout_s``) still applies inside it;
* robots.txt (:mod:`pipeline.scrape.net.robots`) on the first URL and on every redirect hop, and its ``Crawl-delay`` as
  the host's minimum interval between requests (up to ``max_crawl_delay_s``);
* redirects followed by hand, one hop at a time, only to hosts inside the allowed domains;
* private, loopback, link-local and otherwise non-global addresses refused unless ``allow_private_addresses``
  (IPv6 forms that carry an IPv4 address, IPv4-mapped, IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16``
  and Teredo, are judged by that IPv4 address; the NAT64 local-use prefix ``64:ff9b:1::/48`` is never public):
  the host is resolved once by the connection itself, BEFORE any connect, every address must pass, and the socket
  connects to exactly a checked address (``Host`` and TLS SNI keep the name). Nothing is sent to a refused address,
  so open and closed internal ports look the same (``private_address``), and DNS rebinding has no second lookup to
  swap; it holds for every redirect hop;
* per-host rate and concurrency through a limiter shared by all actors (:mod:`pipeline.scrape.net.ratelimit`); without
  one, a :class:`~pipeline.scrape.net.ratelimit.LocalLimiter` from the config;
* images: ``X-Robots-Tag: noai``/``noimageai`` → skipped; content type checked; the body streamed and aborted past
  ``max_image_bytes``; Pillow verification plus a full (reduced-scale) decode to catch truncation, and a pixel-count
  guard (Pillow's ``MAX_IMAGE_PIXELS``) against decompression bombs.

What it does not bound: the system resolver (``getaddrinfo`` blocks for the resolver's own timeouts, usually a few
seconds per lookup); the crawl driver's per-batch bound (``scrape.batch_timeout_s``) is the backstop for that.

Example::

    client = HttpClient(cfg.scrape.http, allowed_domains=["example.org"])
    res = client.fetch_image("https://example.org/a.jpg")
    if res.ok:
        sha = root.put_image(res.data)
"""

from __future__ import annotations

import dataclasses
import heapq
import http.client
import ipaddress
import itertools
import math
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, LocationParseError, NameResolutionError, NewConnectionError
from urllib3.util import parse_url
from urllib3.util.retry import Retry

from pipeline import imaging
from pipeline.config import HttpConfig
from pipeline.scrape.net.robots import RobotsCache
from pipeline.store import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, now

# We reject images above max_image_pixels ourselves, with a reason; Pillow's own warning is noise then.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# response headers kept on a FetchResult (feed adapters read paging and rate limits from them)
RESPONSE_HEADERS = ("link", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after")
NOAI_TOKENS = ("noai", "noimageai")
CHUNK = 64 * 1024
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are an IPv4 address
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use NAT64: a local network by definition


class BlockedAddressError(Exception):
    """The host resolves to a private/loopback/link-local address and the config does not allow that.

    Deliberately not an ``OSError``: urllib3 must not retry it or wrap it, requests must not swallow it.
    """


class DeadlineExceeded(Exception):
    """The hop's total deadline passed (not an ``OSError``: urllib3 does not retry it, requests does not wrap it)."""


class InterimFlood(Exception):
    """More interim ``100 Continue`` responses than ``max_interim_responses`` before the real one."""


def _embedded_ipv4(addr: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, 6to4, NAT64, Teredo client, IPv4-compatible), if any."""
    if addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    if addr.sixtofour is not None:
        return addr.sixtofour
    if addr.teredo is not None:
        return addr.teredo[1]
    if addr in NAT64 or int(addr) >> 32 == 0:  # 64:ff9b::a.b.c.d, ::a.b.c.d (and :: and ::1, not public either)
        return ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    return None


def is_public_address(ip: str) -> bool:
    """True for a globally routable unicast address; an IPv6 address carrying an IPv4 one is judged by the IPv4."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address):
        if addr in NAT64_LOCAL:
            return False
        v4 = _embedded_ipv4(addr)
        if v4 is not None:
            addr = v4
    return addr.is_global and not addr.is_multicast


# ---------------------------------------------------------------------------------------------- the hop deadline
class _Hop:
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
        self._heap: list[tuple[float, int, _Hop]] = []
        self._cond = threading.Condition()
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, hop: _Hop) -> None:
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


_WATCHDOG = _Watchdog()
_HOP = threading.local()  # the calling thread's current hop: requests and urllib3 run in the caller's thread


def _current_hop() -> _Hop | None:
    return getattr(_HOP, "hop", None)


class _InterimCappedResponse(http.client.HTTPResponse):
    """http.client skips ``100 Continue`` responses in an unbounded loop; this counts them against the hop's cap."""

    def _read_status(self) -> tuple[str, int, str]:
        version, status, reason = super()._read_status()  # type: ignore[misc]
        if status == http.client.CONTINUE:
            self._interims = getattr(self, "_interims", 0) + 1
            hop = _current_hop()
            if self._interims > (hop.max_interim if hop is not None else 8):
                raise InterimFlood(f"more than {self._interims - 1} interim responses")
        return version, status, reason


class _GuardMixin:
    """Connects only to addresses it resolved and checked itself, within the hop's deadline, watched by the watchdog."""

    response_class = _InterimCappedResponse
    _watched_by: _Hop | None = None

    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        hop = _current_hop()
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

    def _connect_any(self, addrs: list[tuple[int, Any]], hop: _Hop | None) -> socket.socket:
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
        hop = _current_hop()
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


class _Adapter(HTTPAdapter):
    """requests adapter whose connections resolve, check and connect themselves (see :class:`_GuardMixin`)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


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
        hop = _current_hop()
        if hop is not None:
            hop.check()
        return super().increment(*args, **kwargs)  # type: ignore[return-value]

    def sleep(self, response: Any = None) -> None:
        hop = _current_hop()
        if hop is not None:
            wait = self.get_retry_after(response) if response is not None and self.respect_retry_after_header else None
            if wait is None:
                wait = self.get_backoff_time()
            if wait >= hop.check():
                raise DeadlineExceeded("the retry would start after the deadline")
        super().sleep(response)


def prepare_url(url: str) -> str:
    """``url`` exactly as the client will send it (prepared by requests); ``ValueError("bad_url")`` when it cannot be
    fetched: not http(s), no host, a backslash or control character, or parsers that disagree on host or port."""
    if "\\" in url or any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise ValueError("bad_url")
    try:
        prep = requests.models.PreparedRequest()
        prep.prepare_url(url, None)
        target = str(prep.url)
        p = parse_url(target)
        s = urlsplit(target)
        same = (s.hostname or "") == (p.host or "").strip("[]").lower() and s.port == p.port
    except (ValueError, LocationParseError, requests.exceptions.RequestException):
        raise ValueError("bad_url") from None
    if p.scheme not in ("http", "https") or not p.host or not same or "\\" in target:
        raise ValueError("bad_url")
    return target


@dataclasses.dataclass
class FetchResult:
    """The outcome of one URL: ``status`` ok | skipped | error, a short ``reason`` when not ok, and the body."""

    url: str
    kind: str  # page | image | robots
    status: str
    reason: str | None = None
    http_status: int | None = None
    attempts: int = 0
    final_url: str | None = None
    content_type: str | None = None
    data: bytes | None = None
    width: int | None = None
    height: int | None = None
    headers: dict[str, str] | None = None  # the response headers of RESPONSE_HEADERS (lower-case names)

    @property
    def ok(self) -> bool:
        return self.status == STATUS_OK

    def fetch_row(self, site: str, image_sha256: str | None = None) -> dict:
        """This result as a row of the ``fetches`` dataset."""
        return {
            "url": self.url,
            "site": site,
            "kind": self.kind,
            "host": urlsplit(self.url).hostname,
            "status": self.status,
            "http_status": self.http_status,
            "reason": self.reason,
            "attempts": self.attempts,
            "bytes": len(self.data) if self.data is not None else None,
            "image_sha256": image_sha256,
            "fetched_at": now(),
        }


class _Reject(Exception):
    def __init__(self, status: str, reason: str):
        super().__init__(reason)
        self.status, self.reason = status, reason


def inspect_image(data: bytes, max_pixels: int, formats: Sequence[str] = imaging.DEFAULT_FORMATS) -> tuple[int, int]:
    """Verify that ``data`` is one whole image of an allowed format and at most ``max_pixels``; (width, height).

    The check is :func:`pipeline.imaging.check_image` (bounded memory: a PNG's stream is counted piecewise, a JPEG
    decoded at 1/8 scale, only ``formats``' decoders run). Raises :class:`ValueError` whose message is the
    reason: ``not_an_image``, ``format_not_allowed``, ``too_many_pixels``, ``truncated`` or ``decode_error``.
    """
    try:
        return imaging.check_image(data, max_pixels, formats)
    except imaging.ImageDecodeError as e:
        raise ValueError(_INSPECT_REASONS.get(e.code, "decode_error")) from None


_INSPECT_REASONS = {
    "empty": "not_an_image",
    "not_an_image": "not_an_image",
    "format": "format_not_allowed",
    "too_large": "too_many_pixels",
    "truncated": "truncated",
}


def resolves_public(host: str, port: int = 80) -> bool:
    """True when every address ``host`` resolves to is public (used before handing a URL to a browser)."""
    try:
        infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
    except OSError:
        return False
    return bool(infos) and all(is_public_address(str(info[4][0])) for info in infos)


def host_allowed(host: str | None, domains: list[str]) -> bool:
    """``host`` equals one of ``domains`` or is a subdomain of one (an empty list allows every host)."""
    if not host:
        return False
    if not domains:
        return True
    host = host.lower().rstrip(".")
    return any(host == d or host.endswith("." + d) for d in (d.lower().rstrip(".") for d in domains))


class HttpClient:
    """Fetches pages and images politely; thread-safe (one requests session per thread).

    ``limiter(host, min_interval)`` is a context manager held around each request to ``host`` (``min_interval``:
    the host's robots.txt Crawl-delay, capped); by default a :class:`~pipeline.scrape.net.ratelimit.LocalLimiter` at the
    config's per-host rate and concurrency.
    """

    def __init__(
        self,
        cfg: HttpConfig,
        allowed_domains: list[str] | None = None,
        limiter: Callable[..., AbstractContextManager] | None = None,
        obey_robots: bool = True,
    ):
        self.cfg = cfg
        self.allowed_domains = list(allowed_domains or [])
        if limiter is None:
            from pipeline.scrape.net.ratelimit import LocalLimiter  # imports ray: only when no limiter is given

            limiter = LocalLimiter(cfg.requests_per_second_per_host, cfg.max_concurrency_per_host).slot
        self.limiter = limiter
        self._local = threading.local()
        self.robots = RobotsCache(self._fetch_robots_text, cfg.user_agent) if obey_robots else None
        Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels

    # ------------------------------------------------------------------ session
    def _session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            r = self.cfg.retry
            retry = CappedRetry(
                total=r.attempts - 1,
                connect=r.attempts - 1,
                read=r.attempts - 1,
                status=r.attempts - 1,
                other=0,
                redirect=0,
                allowed_methods=frozenset({"GET", "HEAD"}),
                status_forcelist=RETRY_STATUSES,
                backoff_factor=r.backoff_s,
                backoff_max=r.backoff_max_s,
                backoff_jitter=r.jitter_s,
                respect_retry_after_header=True,
                raise_on_status=False,
                raise_on_redirect=False,
                retry_after_cap=r.max_retry_after_s,
            )
            s = requests.Session()
            s.trust_env = False  # no proxies or netrc from the environment
            s.headers["User-Agent"] = self.cfg.user_agent
            adapter = _Adapter(max_retries=retry, pool_maxsize=4)
            s.mount("http://", adapter)
            s.mount("https://", adapter)
            self._local.session = s
        return s

    def close(self) -> None:
        s = getattr(self._local, "session", None)
        if s is not None:
            s.close()
            self._local.session = None

    # ------------------------------------------------------------------ checks
    def target(self, url: str, hop: int = 0) -> tuple[str | None, tuple[str, str] | None]:
        """(the prepared URL to fetch, None) or (None, (status, reason) why ``url`` must not be fetched)."""
        try:
            prepared = prepare_url(url)
        except ValueError:
            return None, (STATUS_ERROR, "bad_url")
        host = urlsplit(prepared).hostname
        if not host_allowed(host, self.allowed_domains):
            return None, (STATUS_SKIPPED, "redirect_outside_allowed_domains" if hop else "outside_allowed_domains")
        if not self.cfg.allow_private_addresses:
            try:
                literal = ipaddress.ip_address(host or "")
            except ValueError:
                literal = None
            if literal is not None and not is_public_address(str(literal)):
                return None, (STATUS_ERROR, "private_address")
        return prepared, None

    def check_url(self, url: str, hop: int = 0) -> tuple[str, str] | None:
        """Why ``url`` must not be fetched, as (status, reason), or None when it may be."""
        return self.target(url, hop)[1]

    def crawl_delay(self, url: str) -> float:
        """The minimum seconds between requests to ``url``'s host that its robots.txt asks for, capped by
        ``max_crawl_delay_s`` (0 when it asks for none, or when robots are not obeyed)."""
        if self.robots is None or self.cfg.max_crawl_delay_s <= 0:
            return 0.0
        try:
            delay = float(self.robots.crawl_delay(url) or 0.0)
        except (TypeError, ValueError):
            return 0.0
        if math.isnan(delay) or delay <= 0:
            return 0.0
        return min(delay, self.cfg.max_crawl_delay_s)

    def _fetch_robots_text(self, url: str) -> FetchResult:
        return self._get(url, kind="robots", max_bytes=min(self.cfg.max_page_bytes, 1_000_000), check_robots=False)

    # ------------------------------------------------------------------ public
    def fetch_page(self, url: str, headers: dict[str, str] | None = None) -> FetchResult:
        """GET a page (JSON/HTML) with all checks; ``data`` holds the body when ok. ``headers`` (an API token) are
        sent to ``url``'s host only, never on a redirect to another host."""
        return self._get(url, kind="page", max_bytes=self.cfg.max_page_bytes, headers=headers)

    def fetch_image(self, url: str) -> FetchResult:
        """GET an image with all checks and verification; ``data``, ``width``, ``height`` are set when ok."""
        res = self._get(url, kind="image", max_bytes=self.cfg.max_image_bytes)
        if res.ok:
            try:
                res.width, res.height = inspect_image(res.data or b"", self.cfg.max_image_pixels)
            except ValueError as e:
                res.status, res.reason = STATUS_ERROR, str(e)
        return res

    def robots_allowed(self, url: str) -> tuple[bool, str | None]:
        """(allowed, reason) for ``url`` under its host's robots.txt."""
        if self.robots is None:
            return True, None
        return self.robots.allowed(url)

    # ------------------------------------------------------------------ core
    def _get(
        self, url: str, kind: str, max_bytes: int, check_robots: bool = True, headers: dict[str, str] | None = None
    ) -> FetchResult:
        res = FetchResult(url=url, kind=kind, status=STATUS_ERROR)
        hop_url = url
        first_host = urlsplit(url).hostname
        for hop in range(self.cfg.max_redirects + 1):
            target, bad = self.target(hop_url, hop)
            if bad or target is None:
                res.status, res.reason = bad or (STATUS_ERROR, "bad_url")
                return res
            if check_robots:
                allowed, why = self.robots_allowed(target)
                if not allowed:
                    res.status, res.reason = (STATUS_SKIPPED, "robots") if why is None else (STATUS_ERROR, why)
                    return res
            delay = self.crawl_delay(target) if check_robots else 0.0
            extra = headers if headers and urlsplit(target).hostname == first_host else None
            with self.limiter(urlsplit(target).hostname or "", delay):
                location = self._one_hop(target, kind, max_bytes, res, extra)
            if location is None:
                res.final_url = target
                return res
            hop_url = location
        res.status, res.reason, res.data = STATUS_ERROR, "too_many_redirects", None
        return res

    def _one_hop(
        self, url: str, kind: str, max_bytes: int, res: FetchResult, headers: dict[str, str] | None = None
    ) -> str | None:
        """One request (with urllib3's retries) under one deadline. Fills ``res``; returns the URL a redirect names."""
        cfg = self.cfg
        hop = _Hop(cfg.total_timeout_s, not cfg.allow_private_addresses, cfg.max_interim_responses)
        outer, _HOP.hop = _current_hop(), hop
        _WATCHDOG.add(hop)
        try:
            resp = self._send(url, kind, res, hop, headers)
            if resp is None:
                return None
            with resp:
                return self._response(resp, url, kind, max_bytes, res, hop)
        finally:
            hop.finish()
            _HOP.hop = outer

    def _send(
        self, url: str, kind: str, res: FetchResult, hop: _Hop, headers: dict[str, str] | None = None
    ) -> requests.Response | None:
        """The response with its headers read, or None with ``res`` holding why there is none."""
        cfg = self.cfg
        session = self._session()
        try:
            req = session.prepare_request(
                requests.Request(
                    "GET", url, headers={"Accept": "image/*" if kind == "image" else "*/*", **(headers or {})}
                )
            )
            if req.url != url:  # never expected: the URL was prepared by the same code
                res.status, res.reason = STATUS_ERROR, "bad_url"
                return None
            timeout = (cfg.connect_timeout_s, cfg.read_timeout_s)
            return session.send(req, stream=True, allow_redirects=False, timeout=timeout)
        except DeadlineExceeded:
            res.attempts += max(1, hop.requests)
            res.status, res.reason = STATUS_ERROR, "timeout"
        except InterimFlood:
            res.attempts += max(1, hop.requests)
            res.status, res.reason = STATUS_ERROR, "too_many_interim_responses"
        except BlockedAddressError:
            res.attempts += 1
            res.status, res.reason = STATUS_ERROR, "private_address"
        except requests.exceptions.RetryError:
            res.attempts += cfg.retry.attempts
            res.status, res.reason = STATUS_ERROR, "retries_exhausted"
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as e:
            res.attempts += cfg.retry.attempts  # urllib3 gave up: every attempt was used
            timeout = hop.fired or isinstance(e, requests.exceptions.Timeout) or "timed out" in str(e).lower()
            res.status, res.reason = STATUS_ERROR, "timeout" if timeout else "connection_error"
        except requests.exceptions.RequestException as e:
            res.attempts += 1
            res.status, res.reason = STATUS_ERROR, f"request_error:{type(e).__name__}"
        return None

    def _response(
        self, resp: requests.Response, url: str, kind: str, max_bytes: int, res: FetchResult, hop: _Hop
    ) -> str | None:
        cfg = self.cfg
        history = getattr(getattr(resp.raw, "retries", None), "history", None) or ()
        res.attempts += len(history) + 1
        res.http_status = resp.status_code
        res.headers = {k: resp.headers[k] for k in RESPONSE_HEADERS if k in resp.headers}
        if resp.is_redirect:
            loc = resp.headers.get("location")
            if not loc:
                res.status, res.reason = STATUS_ERROR, "redirect_without_location"
                return None
            return urljoin(url, loc)
        if resp.status_code >= 400 or resp.status_code < 200:  # a 1xx other than 100 ends http.client's wait
            res.status, res.reason = STATUS_ERROR, f"http_{resp.status_code}"
            return None
        if kind == "image":
            tag = resp.headers.get("X-Robots-Tag", "").lower()
            if any(tok in tag.replace(",", " ").split() for tok in NOAI_TOKENS):
                res.status, res.reason = STATUS_SKIPPED, "noai"
                return None
            ctype = resp.headers.get("Content-Type", "").split(";")[0].strip().lower()
            res.content_type = ctype
            if ctype not in cfg.allowed_content_types:
                res.status, res.reason = STATUS_ERROR, "content_type"
                return None
        declared = resp.headers.get("Content-Length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            res.status, res.reason = STATUS_ERROR, "too_large"
            return None
        data, why = self._read_body(resp, max_bytes, hop)
        if why is not None:
            res.status, res.reason = STATUS_ERROR, why
            return None
        res.data = data
        res.status, res.reason = STATUS_OK, None
        return None

    @staticmethod
    def _read_body(resp: requests.Response, max_bytes: int, hop: _Hop) -> tuple[bytes | None, str | None]:
        """(body, None) or (None, reason). A read that the watchdog ended at the deadline is a timeout, also when it
        looks like a clean end of a body without Content-Length."""
        buf = bytearray()
        try:
            # read1: returns as soon as some bytes arrive (iter_content waits for a whole CHUNK)
            while chunk := resp.raw.read1(CHUNK, decode_content=True):
                buf += chunk
                if len(buf) > max_bytes:
                    return None, "too_large"
                if hop.fired or hop.remaining() <= 0:
                    return None, "timeout"
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            timeout = hop.fired or isinstance(e, requests.exceptions.Timeout) or "timed out" in str(e).lower()
            return None, "timeout" if timeout else "truncated_body"
        if hop.fired:
            return None, "timeout"
        return bytes(buf), None
