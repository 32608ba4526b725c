"""A polite, defensive HTTP client for pages and images: every outcome is a :class:`FetchResult`, never an exception.

What it enforces, per request:

* retries with exponential backoff and jitter on connection errors, 429 and 5xx (urllib3 ``Retry``), honouring a
  server's ``Retry-After`` up to ``retry.max_retry_after_s``; after the last attempt the result is an error with a
  reason (``http_503``, ``timeout``, ``connection_error``);
* connect/read timeouts and a total deadline per response (a byte-by-byte trickle cannot hold a thread);
* robots.txt (:mod:`pipeline.scrape.robots`) on the first URL and on every redirect hop;
* redirects followed by hand, one hop at a time, only to hosts inside the allowed domains;
* private, loopback, link-local and otherwise non-global addresses refused unless ``allow_private_addresses``: the
  check runs on the socket's peer address after DNS resolution and connect, so it holds for every redirect hop and
  against DNS rebinding;
* per-host rate and concurrency through a limiter shared by all actors (:mod:`pipeline.scrape.ratelimit`);
* images: ``X-Robots-Tag: noai``/``noimageai`` → skipped; content type checked; the body streamed and aborted past
  ``max_image_bytes``; Pillow verification plus a full (reduced-scale) decode to catch truncation, and a pixel-count
  guard (Pillow's ``MAX_IMAGE_PIXELS``) against decompression bombs.

Example::

    client = HttpClient(cfg.scrape.http, allowed_domains=["example.org"])
    res = client.fetch_image("https://example.org/a.jpg")
    if res.ok:
        sha = root.put_image(res.data)
"""

from __future__ import annotations

import dataclasses
import io
import ipaddress
import socket
import struct
import threading
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any
from urllib.parse import urljoin, urlsplit

import requests
import urllib3
from PIL import Image, UnidentifiedImageError
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util.retry import Retry

from pipeline.config import HttpConfig
from pipeline.scrape.robots import RobotsCache
from pipeline.store import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, now

# We reject images above max_image_pixels ourselves, with a reason; Pillow's own warning is noise then.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
NOAI_TOKENS = ("noai", "noimageai")
CHUNK = 64 * 1024


class BlockedAddressError(Exception):
    """The connection's peer address is private/loopback/link-local and the config does not allow that.

    Deliberately not an ``OSError``: urllib3 must not retry it or wrap it, requests must not swallow it.
    """


def is_public_address(ip: str) -> bool:
    """True for a globally routable unicast address (IPv4-mapped IPv6 is judged by its IPv4 part)."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_global and not addr.is_multicast


class _GuardMixin:
    def _new_conn(self) -> socket.socket:  # type: ignore[override]
        sock = super()._new_conn()  # type: ignore[misc]
        try:
            peer = sock.getpeername()[0]
        except OSError:
            peer = ""
        if not is_public_address(peer):
            sock.close()
            raise BlockedAddressError(f"{self.host} resolved to non-public address {peer}")  # type: ignore[attr-defined]
        return sock


class _GuardedHTTPConnection(_GuardMixin, HTTPConnection):
    pass


class _GuardedHTTPSConnection(_GuardMixin, HTTPSConnection):
    pass


class _GuardedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _GuardedHTTPConnection


class _GuardedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _GuardedHTTPSConnection


class _Adapter(HTTPAdapter):
    """requests adapter whose connections check the peer address after DNS resolution and connect."""

    def __init__(self, guard: bool, **kw: Any):
        self._guard = guard
        super().__init__(**kw)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        if self._guard:
            self.poolmanager.pool_classes_by_scheme = {"http": _GuardedHTTPPool, "https": _GuardedHTTPSPool}


class CappedRetry(Retry):
    """urllib3 ``Retry`` that honours ``Retry-After`` but never sleeps longer than ``retry_after_cap`` seconds."""

    def __init__(self, *args: Any, retry_after_cap: float = 60.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.retry_after_cap = retry_after_cap

    def new(self, **kw: Any) -> CappedRetry:  # type: ignore[override]
        r = super().new(**kw)
        r.retry_after_cap = self.retry_after_cap
        return r

    def parse_retry_after(self, retry_after: str) -> float:
        return min(super().parse_retry_after(retry_after), self.retry_after_cap)


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


def inspect_image(data: bytes, max_pixels: int) -> tuple[int, int]:
    """Verify that ``data`` is one whole, decodable image of at most ``max_pixels``; return (width, height).

    Raises :class:`ValueError` whose message is the reason: ``not_an_image``, ``too_many_pixels``, ``truncated``
    or ``decode_error``. JPEGs are decoded at 1/8 scale (``draft``), which still reads every entropy-coded byte.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise ValueError("too_many_pixels")
            im.verify()
        with Image.open(io.BytesIO(data)) as im:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, w // 8), max(1, h // 8)))
            im.load()
    except Image.DecompressionBombError:
        raise ValueError("too_many_pixels") from None
    except UnidentifiedImageError:
        raise ValueError("not_an_image") from None
    except ValueError as e:
        if str(e) == "too_many_pixels":
            raise
        raise ValueError("decode_error") from None
    except (OSError, SyntaxError, EOFError, IndexError, TypeError, struct.error) as e:
        raise ValueError("truncated" if "truncated" in str(e).lower() else "decode_error") from None
    return w, h


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
    """Fetches pages and images politely; thread-safe (one requests session per thread)."""

    def __init__(
        self,
        cfg: HttpConfig,
        allowed_domains: list[str] | None = None,
        limiter: Callable[[str], AbstractContextManager] | None = None,
        obey_robots: bool = True,
    ):
        self.cfg = cfg
        self.allowed_domains = list(allowed_domains or [])
        self.limiter = limiter or (lambda host: nullcontext())
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
            adapter = _Adapter(not self.cfg.allow_private_addresses, max_retries=retry, pool_maxsize=4)
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
    def check_url(self, url: str, hop: int = 0) -> tuple[str, str] | None:
        """Why ``url`` must not be fetched, as (status, reason), or None when it may be."""
        try:
            parts = urlsplit(url)
            host = parts.hostname
            _ = parts.port
        except ValueError:
            return STATUS_ERROR, "bad_url"
        if parts.scheme not in ("http", "https") or not host:
            return STATUS_ERROR, "bad_url"
        if not host_allowed(host, self.allowed_domains):
            return STATUS_SKIPPED, "redirect_outside_allowed_domains" if hop else "outside_allowed_domains"
        if not self.cfg.allow_private_addresses:
            try:
                ipaddress.ip_address(host)
                literal = True
            except ValueError:
                literal = False
            if literal and not is_public_address(host):
                return STATUS_ERROR, "private_address"
        return None

    def _fetch_robots_text(self, url: str) -> FetchResult:
        return self._get(url, kind="robots", max_bytes=min(self.cfg.max_page_bytes, 1_000_000), check_robots=False)

    # ------------------------------------------------------------------ public
    def fetch_page(self, url: str) -> FetchResult:
        """GET a page (JSON/HTML) with all checks; ``data`` holds the body when ok."""
        return self._get(url, kind="page", max_bytes=self.cfg.max_page_bytes)

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
    def _get(self, url: str, kind: str, max_bytes: int, check_robots: bool = True) -> FetchResult:
        res = FetchResult(url=url, kind=kind, status=STATUS_ERROR)
        hop_url = url
        for hop in range(self.cfg.max_redirects + 1):
            bad = self.check_url(hop_url, hop)
            if bad:
                res.status, res.reason = bad
                return res
            if check_robots:
                allowed, why = self.robots_allowed(hop_url)
                if not allowed:
                    res.status, res.reason = (STATUS_SKIPPED, "robots") if why is None else (STATUS_ERROR, why)
                    return res
            host = urlsplit(hop_url).hostname or ""
            with self.limiter(host):
                location = self._one_hop(hop_url, kind, max_bytes, res)
            if location is None:
                res.final_url = hop_url
                return res
            hop_url = location
        res.status, res.reason, res.data = STATUS_ERROR, "too_many_redirects", None
        return res

    def _one_hop(self, url: str, kind: str, max_bytes: int, res: FetchResult) -> str | None:
        """One request (with urllib3's retries). Fills ``res``; returns the next URL when redirected."""
        cfg = self.cfg
        deadline = time.monotonic() + cfg.total_timeout_s
        try:
            resp = self._session().get(
                url,
                stream=True,
                allow_redirects=False,
                timeout=(cfg.connect_timeout_s, cfg.read_timeout_s),
                headers={"Accept": "image/*" if kind == "image" else "*/*"},
            )
        except BlockedAddressError:
            res.attempts += 1
            res.status, res.reason = STATUS_ERROR, "private_address"
            return None
        except requests.exceptions.RetryError:
            res.attempts += cfg.retry.attempts
            res.status, res.reason = STATUS_ERROR, "retries_exhausted"
            return None
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as e:
            res.attempts += cfg.retry.attempts  # urllib3 gave up: every attempt was used
            timeout = isinstance(e, requests.exceptions.Timeout) or "timed out" in str(e).lower()
            res.status, res.reason = STATUS_ERROR, "timeout" if timeout else "connection_error"
            return None
        except requests.exceptions.RequestException as e:
            res.attempts += 1
            res.status, res.reason = STATUS_ERROR, f"request_error:{type(e).__name__}"
            return None
        with resp:
            history = getattr(getattr(resp.raw, "retries", None), "history", None) or ()
            res.attempts += len(history) + 1
            res.http_status = resp.status_code
            if resp.is_redirect:
                loc = resp.headers.get("location")
                if not loc:
                    res.status, res.reason = STATUS_ERROR, "redirect_without_location"
                    return None
                return urljoin(url, loc)
            if resp.status_code >= 400:
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
            buf = bytearray()
            try:
                # read1: returns as soon as some bytes arrive (iter_content waits for a whole CHUNK), so the
                # deadline below also stops a server that trickles its body byte by byte within the read timeout
                while chunk := resp.raw.read1(CHUNK, decode_content=True):
                    buf += chunk
                    if len(buf) > max_bytes:
                        res.status, res.reason = STATUS_ERROR, "too_large"
                        return None
                    if time.monotonic() > deadline:
                        res.status, res.reason = STATUS_ERROR, "timeout"
                        return None
            except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
                timeout = isinstance(e, requests.exceptions.Timeout) or "timed out" in str(e).lower()
                res.status, res.reason = STATUS_ERROR, "timeout" if timeout else "truncated_body"
                return None
            res.data = bytes(buf)
            res.status, res.reason = STATUS_OK, None
            return None
