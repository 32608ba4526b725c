"""A polite, defensive HTTP client for pages and images: every outcome is a :class:`FetchResult`, never an exception.

What it enforces, per request:

* one URL parser, the allowed domains and public addresses (:mod:`pipeline.scrape.net.address`): exactly the URL
  :func:`~pipeline.scrape.net.address.prepare_url` prepared is checked and fetched; a literal non-public address is
  ``private_address`` before any connection, and every address a host resolves to is checked by the connection
  itself, BEFORE any connect (:mod:`pipeline.scrape.net.transport`), unless ``allow_private_addresses``; open and
  closed internal ports look the same (``private_address``); it holds for every redirect hop;
* retries with exponential backoff and jitter on connection errors, 429 and 5xx (urllib3 ``Retry``), honouring a
  server's ``Retry-After`` up to ``retry.max_retry_after_s``; after the last attempt the result is an error with a
  reason (``http_503``, ``timeout``, ``connection_error``);
* a total deadline per hop (``total_timeout_s``) over the whole exchange, retries and their sleeps included
  (:mod:`pipeline.scrape.net.transport`): a server that trickles its headers a byte at a time ends as ``timeout`` at
  the deadline, and at most ``max_interim_responses`` interim ``100 Continue`` responses are read
  (``too_many_interim_responses``); a read timeout per read (``read_timeout_s``) still applies inside it;
* robots.txt (:mod:`pipeline.scrape.net.robots`) on the first URL and on every redirect hop, and its ``Crawl-delay``
  as the host's minimum interval between requests (up to ``max_crawl_delay_s``);
* redirects followed by hand, one hop at a time, only to hosts inside the allowed domains, never from https to
  plain http (``redirect_downgrade``); headers given for a request (an API token) go to its origin only;
* an image fetch given its site's photo hosts (``fetch_image(url, hosts=...)``,
  :func:`~pipeline.scrape.net.address.photo_hosts`) is checked against those instead, on every hop
  (``outside_photo_hosts``, ``redirect_outside_photo_hosts``); the address guard applies to it as to every fetch, and
  the robots.txt of a host a fetch was allowed to reach is fetched too;
* per-host rate and concurrency through a limiter shared by all actors (:mod:`pipeline.scrape.net.ratelimit`);
  without one, a :class:`~pipeline.scrape.net.ratelimit.LocalLimiter` from the config;
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
import ipaddress
import math
import threading
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from urllib.parse import urljoin, urlsplit

import urllib3
from PIL import Image
from urllib3.exceptions import MaxRetryError, NewConnectionError, ProtocolError, ResponseError
from urllib3.util import make_headers

from pipeline import imaging
from pipeline.config import HttpConfig
from pipeline.scrape.net.address import (
    BlockedAddressError,
    host_allowed,
    host_matches,
    is_public_address,
    prepare_url,
    same_origin,
)
from pipeline.scrape.net.robots import RobotsCache
from pipeline.scrape.net.transport import (
    WATCHDOG,
    CappedRetry,
    DeadlineExceeded,
    GuardedPoolManager,
    Hop,
    InterimFlood,
    enter_hop,
)
from pipeline.store import STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, now

# We reject images above max_image_pixels ourselves, with a reason; Pillow's own warning is noise then.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# response headers kept on a FetchResult (feed adapters read paging and rate limits from them)
RESPONSE_HEADERS = ("link", "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "retry-after",
                    "ratelimit-limit", "ratelimit-remaining", "ratelimit-reset")  # fmt: skip  # ratelimit-*: XRPC
NOAI_TOKENS = ("noai", "noimageai")
CHUNK = 64 * 1024
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})  # with a Location header: a redirect, followed by hand
ACCEPT_ENCODING = make_headers(accept_encoding=True)["accept-encoding"]  # the encodings urllib3 can decode here


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


class HttpClient:
    """Fetches pages and images politely; thread-safe (urllib3 connection pools per thread, kept alive).

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
        self._retries = self._retry()  # immutable: each request's retries derive new ones from it
        self._timeout = urllib3.Timeout(connect=cfg.connect_timeout_s, read=cfg.read_timeout_s)
        self.robots = RobotsCache(self._fetch_robots_text, cfg.user_agent) if obey_robots else None
        Image.MAX_IMAGE_PIXELS = cfg.max_image_pixels

    # ------------------------------------------------------------------ connections
    def _pool(self) -> GuardedPoolManager:
        """This thread's connection pools (keep-alive per host, the address guard in every connection)."""
        pool = getattr(self._local, "pool", None)
        if pool is None:
            pool = self._local.pool = GuardedPoolManager(num_pools=10, maxsize=4)
        return pool

    def _retry(self) -> CappedRetry:
        r = self.cfg.retry
        return CappedRetry(
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

    def close(self) -> None:
        """Close this thread's connections."""
        pool = getattr(self._local, "pool", None)
        if pool is not None:
            pool.clear()
            self._local.pool = None

    # ------------------------------------------------------------------ checks
    def target(
        self, url: str, hop: int = 0, hosts: list[str] | None = None
    ) -> tuple[str | None, tuple[str, str] | None]:
        """(the prepared URL to fetch, None) or (None, (status, reason) why ``url`` must not be fetched). ``hosts``:
        an image's photo hosts (globs allowed), checked instead of the allowed domains."""
        try:
            prepared = prepare_url(url)
        except ValueError:
            return None, (STATUS_ERROR, "bad_url")
        host = urlsplit(prepared).hostname
        if hosts is not None and not host_matches(host, hosts):
            return None, (STATUS_SKIPPED, "redirect_outside_photo_hosts" if hop else "outside_photo_hosts")
        if hosts is None and not host_allowed(host, self.allowed_domains):
            return None, (STATUS_SKIPPED, "redirect_outside_allowed_domains" if hop else "outside_allowed_domains")
        if not self.cfg.allow_private_addresses:
            try:
                literal = ipaddress.ip_address(host or "")
            except ValueError:
                literal = None
            if literal is not None and not is_public_address(str(literal)):
                return None, (STATUS_ERROR, "private_address")
        return prepared, None

    def check_url(self, url: str, hop: int = 0, hosts: list[str] | None = None) -> tuple[str, str] | None:
        """Why ``url`` must not be fetched, as (status, reason), or None when it may be (``hosts``: as
        :meth:`target`)."""
        return self.target(url, hop, hosts)[1]

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
        """A host's robots.txt: asked only for a URL already allowed (a photo host's too), so its own host is."""
        host = urlsplit(url).hostname
        hosts = None if host_allowed(host, self.allowed_domains) else [*self.allowed_domains, host or ""]
        cap = min(self.cfg.max_page_bytes, 1_000_000)
        return self._get(url, kind="robots", max_bytes=cap, check_robots=False, hosts=hosts)

    # ------------------------------------------------------------------ public
    def fetch_page(
        self, url: str, headers: dict[str, str] | None = None, json_body: bytes | None = None
    ) -> FetchResult:
        """GET a page (JSON/HTML) with all checks; ``data`` holds the body when ok. ``headers`` (an API token) are
        sent to ``url``'s origin only (scheme, host and port), never on a redirect to another origin. ``json_body``:
        POST it as ``application/json`` instead (an API call such as Misskey's or a login; not retried, no redirect
        followed)."""
        return self._get(url, kind="page", max_bytes=self.cfg.max_page_bytes, headers=headers, body=json_body)

    def fetch_feed_page(
        self, url: str, headers: dict[str, str] | None = None, json_body: bytes | None = None
    ) -> FetchResult:
        """:meth:`fetch_page` for a feed API page (JSON): at most ``max_feed_page_bytes`` (and ``max_page_bytes``)."""
        cap = min(self.cfg.max_feed_page_bytes, self.cfg.max_page_bytes)
        return self._get(url, kind="page", max_bytes=cap, headers=headers, body=json_body)

    def fetch_image(self, url: str, hosts: list[str] | None = None) -> FetchResult:
        """GET an image with all checks and verification; ``data``, ``width``, ``height`` are set when ok. ``hosts``:
        its site's photo hosts (:func:`~pipeline.scrape.net.address.photo_hosts`), checked on every hop instead of
        the allowed domains."""
        res = self._get(url, kind="image", max_bytes=self.cfg.max_image_bytes, hosts=hosts)
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
        self,
        url: str,
        kind: str,
        max_bytes: int,
        check_robots: bool = True,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
        hosts: list[str] | None = None,
    ) -> FetchResult:
        res = FetchResult(url=url, kind=kind, status=STATUS_ERROR)
        hop_url = url
        for hop in range(self.cfg.max_redirects + 1):
            target, bad = self.target(hop_url, hop, hosts)
            if bad or target is None:
                res.status, res.reason = bad or (STATUS_ERROR, "bad_url")
                return res
            if hop and urlsplit(target).scheme.lower() == "http" and urlsplit(url).scheme.lower() == "https":
                res.status, res.reason, res.data = STATUS_ERROR, "redirect_downgrade", None  # https -> http
                return res
            if check_robots:
                allowed, why = self.robots_allowed(target)
                if not allowed:
                    res.status, res.reason = (STATUS_SKIPPED, "robots") if why is None else (STATUS_ERROR, why)
                    return res
            delay = self.crawl_delay(target) if check_robots else 0.0
            extra = headers if headers and same_origin(target, url) else None  # scheme, host and port
            with self.limiter(urlsplit(target).hostname or "", delay):
                location = self._one_hop(target, kind, max_bytes, res, extra, body)
            if location is not None and body is not None:  # a POST is never sent on to another URL
                res.status, res.reason, res.data = STATUS_ERROR, "redirect_on_post", None
                return res
            if location is None:
                res.final_url = target
                return res
            hop_url = location
        res.status, res.reason, res.data = STATUS_ERROR, "too_many_redirects", None
        return res

    def _one_hop(
        self,
        url: str,
        kind: str,
        max_bytes: int,
        res: FetchResult,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> str | None:
        """One request (with urllib3's retries) under one deadline. Fills ``res``; returns the URL a redirect names."""
        cfg = self.cfg
        hop = Hop(cfg.total_timeout_s, not cfg.allow_private_addresses, cfg.max_interim_responses)
        outer = enter_hop(hop)
        WATCHDOG.add(hop)
        try:
            resp = self._send(url, kind, res, hop, headers, body)
            if resp is None:
                return None
            with resp:
                return self._response(resp, url, kind, max_bytes, res, hop)
        finally:
            hop.finish()
            enter_hop(outer)

    def _send(
        self,
        url: str,
        kind: str,
        res: FetchResult,
        hop: Hop,
        headers: dict[str, str] | None = None,
        body: bytes | None = None,
    ) -> urllib3.BaseHTTPResponse | None:
        """The response with its headers read, or None with ``res`` holding why there is none."""
        cfg = self.cfg
        h = {
            "User-Agent": cfg.user_agent,
            "Accept-Encoding": ACCEPT_ENCODING,
            "Accept": "image/*" if kind == "image" else "*/*",
            "Connection": "keep-alive",
        }
        for name, value in (headers or {}).items():  # the caller's headers replace ours, whatever their case
            for same in [k for k in h if k.lower() == name.lower()]:
                del h[same]
            h[name] = value
        if body:  # an empty body (a procedure without input) is sent without a type
            h["Content-Type"] = "application/json"
        try:
            return self._pool().urlopen(
                "GET" if body is None else "POST",
                url,  # as prepared and checked (target): urllib3 sends it as is
                body=body,
                headers=h,
                retries=self._retries,
                redirect=False,
                preload_content=False,
                decode_content=True,
                timeout=self._timeout,
            )
        except DeadlineExceeded:
            res.attempts += max(1, hop.requests)
            res.status, res.reason = STATUS_ERROR, "timeout"
        except InterimFlood:
            res.attempts += max(1, hop.requests)
            res.status, res.reason = STATUS_ERROR, "too_many_interim_responses"
        except BlockedAddressError:
            res.attempts += 1
            res.status, res.reason = STATUS_ERROR, "private_address"
        except MaxRetryError as e:  # urllib3 gave up: every attempt was used
            res.attempts += cfg.retry.attempts
            if isinstance(e.reason, ResponseError):
                res.status, res.reason = STATUS_ERROR, "retries_exhausted"
            else:
                res.status, res.reason = STATUS_ERROR, "timeout" if _timed_out(e.reason, hop) else "connection_error"
        except (urllib3.exceptions.TimeoutError, ProtocolError, urllib3.exceptions.SSLError, OSError) as e:
            res.attempts += cfg.retry.attempts  # a failure not retried (a POST's read error)
            res.status, res.reason = STATUS_ERROR, "timeout" if _timed_out(e, hop) else "connection_error"
        except urllib3.exceptions.HTTPError as e:
            res.attempts += 1
            res.status, res.reason = STATUS_ERROR, f"request_error:{type(e).__name__}"
        return None

    def _response(
        self, resp: urllib3.BaseHTTPResponse, url: str, kind: str, max_bytes: int, res: FetchResult, hop: Hop
    ) -> str | None:
        cfg = self.cfg
        history = getattr(resp.retries, "history", None) or ()
        res.attempts += len(history) + 1
        res.http_status = resp.status
        headers = resp.headers
        res.headers = {k: headers[k] for k in RESPONSE_HEADERS if k in headers}
        if resp.status in REDIRECT_STATUSES and "location" in headers:
            loc = headers.get("location")
            if not loc:
                res.status, res.reason = STATUS_ERROR, "redirect_without_location"
                return None
            return urljoin(url, loc)
        if resp.status >= 400 or resp.status < 200:  # a 1xx other than 100 ends http.client's wait
            res.status, res.reason = STATUS_ERROR, f"http_{resp.status}"
            return None
        if kind == "image":
            tag = headers.get("X-Robots-Tag", "").lower()
            if any(tok in tag.replace(",", " ").split() for tok in NOAI_TOKENS):
                res.status, res.reason = STATUS_SKIPPED, "noai"
                return None
            ctype = headers.get("Content-Type", "").split(";")[0].strip().lower()
            res.content_type = ctype
            if ctype not in cfg.allowed_content_types:
                res.status, res.reason = STATUS_ERROR, "content_type"
                return None
        declared = headers.get("Content-Length")
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
    def _read_body(resp: urllib3.BaseHTTPResponse, max_bytes: int, hop: Hop) -> tuple[bytes | None, str | None]:
        """(body, None) or (None, reason). A read that the watchdog ended at the deadline is a timeout, also when it
        looks like a clean end of a body without Content-Length."""
        buf = bytearray()
        try:
            # read1: returns as soon as some bytes arrive (iter_content waits for a whole CHUNK)
            while chunk := resp.read1(CHUNK, decode_content=True):
                buf += chunk
                if len(buf) > max_bytes:
                    return None, "too_large"
                if hop.fired or hop.remaining() <= 0:
                    return None, "timeout"
        except (urllib3.exceptions.HTTPError, OSError) as e:
            return None, "timeout" if _timed_out(e, hop) else "truncated_body"
        if hop.fired:
            return None, "timeout"
        return bytes(buf), None


def _timed_out(e: BaseException | None, hop: Hop) -> bool:
    """Whether a failure was a timeout: the hop's deadline fired, or a connect or read timed out (urllib3's
    ``NewConnectionError``, a refused connection, is a ``TimeoutError`` subclass but no timeout)."""
    timeout = isinstance(e, urllib3.exceptions.TimeoutError | TimeoutError) and not isinstance(e, NewConnectionError)
    return hop.fired or timeout or "timed out" in str(e).lower()
