"""Address and URL rules of every request the crawl makes (the HTTP client's, and the browser's egress proxy's).

* one URL parser (:func:`prepare_url`): a URL is prepared once by requests' URL preparation (IDNA, quoting), its
  host and port must read the same to urllib3's ``parse_url`` (which the client's urllib3 pools send it with) and to
  the stdlib's ``urlsplit``, and exactly that prepared URL is checked and fetched (a URL already in that prepared
  form, as image URLs mostly are, is recognised by one pattern and given back as requests would); a backslash or a
  control character is ``bad_url`` outright (``http://127.0.0.1:1\\@localhost/`` reads as ``localhost`` to one
  parser and ``127.0.0.1`` to another);
* pages and API calls (and their redirects) to hosts inside the allowed domains only (:func:`host_allowed`;
  :func:`allowed_domains`: the hosts of the configured sites and ``scrape.allowed_domains``); photos from those hosts
  and the photo hosts (:func:`photo_hosts`: ``scrape.photo_hosts`` and the site's own, globs allowed,
  :func:`host_matches`);
* private, loopback, link-local and otherwise non-global addresses are not public (:func:`is_public_address`): IPv6
  forms that carry an IPv4 address, IPv4-mapped, IPv4-compatible, NAT64 ``64:ff9b::/96``, 6to4 ``2002::/16`` and
  Teredo, are judged by that IPv4 address; the NAT64 local-use prefix ``64:ff9b:1::/48`` is never public.
  :mod:`pipeline.scrape.net.transport` applies it to every address a connection resolves, before it connects.
* a URL's origin (:func:`origin`, :func:`same_origin`): scheme, host and port, where a credential may be sent.
"""

from __future__ import annotations

import fnmatch
import ipaddress
import re
import socket
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from pipeline.config import Config

NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix: the last 32 bits are an IPv4 address
NAT64_LOCAL = ipaddress.ip_network("64:ff9b:1::/48")  # RFC 8215 local-use NAT64: a local network by definition


class BlockedAddressError(Exception):
    """The host resolves to a private/loopback/link-local address and the config does not allow that.

    Deliberately not an ``OSError``: urllib3 must not retry it or wrap it, requests must not swallow it.
    """


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


_BAD_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")  # a control character or a backslash
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
# A URL already in the form requests prepares (lower-case scheme and host, a port without a leading zero, a path
# without dot segments and a non-empty query, both of unreserved characters, / = & only): preparing it gives it back,
# as tests/test_scrape_net_guard.py::test_prepare_url_fast_path_is_what_requests_gives checks; no parser disagrees.
_PREPARED = re.compile(
    rf"https?://(?:{_LABEL}\.)*{_LABEL}(?::([1-9][0-9]{{0,4}}))?/[A-Za-z0-9_~/.-]*(?:\?[A-Za-z0-9_~/.=&-]+)?"
)


def prepare_url(url: str) -> str:
    """``url`` exactly as the client will send it (prepared by requests); ``ValueError("bad_url")`` when it cannot be
    fetched: not http(s), no host, a backslash or control character, or parsers that disagree on host or port."""
    if _BAD_CHARS.search(url):
        raise ValueError("bad_url")
    m = _PREPARED.fullmatch(url)
    if m is not None and "/." not in url and (m.group(1) is None or int(m.group(1)) <= 65535):
        return url  # what requests would give (the crawl's image URLs, one per image: requests' preparation was 5%)
    return _prepare(url)


def _prepare(url: str) -> str:
    """:func:`prepare_url` through requests' URL preparation and both parsers."""
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


DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> tuple[str, str, int | None]:
    """``url``'s origin: (scheme, host, port), lower-case, the port the scheme's default when not given; an
    unparsable port is None (no origin matches it)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def same_origin(a: str, b: str) -> bool:
    """True when ``a`` and ``b`` have one origin (scheme, host and port): where a credential may go."""
    oa = origin(a)
    return oa[2] is not None and oa[1] != "" and oa == origin(b)


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


def host_matches(host: str | None, patterns: list[str]) -> bool:
    """``host`` matches one of ``patterns``: a host name (the host itself or a subdomain of it), a glob over the whole
    name (``*.cloudfront.net``; ``*`` also spans dots) or ``*`` (any host). An empty list matches nothing."""
    if not host:
        return False
    host = host.lower().rstrip(".")
    for p in patterns:
        p = p.lower().rstrip(".")
        if "*" in p:
            if fnmatch.fnmatchcase(host, p):
                return True
        elif host == p or host.endswith("." + p):
            return True
    return False


def allowed_domains(cfg: Config) -> list[str]:
    """Where pages, API calls and their redirects may go: the hosts of every configured feed and staff site, and
    ``scrape.allowed_domains`` added to them."""
    urls = [f.base_url for f in cfg.scrape.feeds] + [u for s in cfg.scrape.staff for u in s.start_urls]
    hosts = {h for h in (urlsplit(u).hostname for u in urls) if h}
    return sorted(hosts | {d.lower().rstrip(".") for d in cfg.scrape.allowed_domains})


def photo_hosts(cfg: Config, site: str, domains: list[str] | None = None) -> list[str]:
    """Where site ``site``'s photos may come from: every host a page may (``domains``, by default
    :func:`allowed_domains`), ``scrape.photo_hosts`` and the site's own ``photo_hosts``."""
    own = next((s.photo_hosts for s in [*cfg.scrape.feeds, *cfg.scrape.staff] if s.name == site), [])
    base = allowed_domains(cfg) if domains is None else list(domains)
    return list(dict.fromkeys([*base, *cfg.scrape.photo_hosts, *own]))


def photo_host_setting(site: str, host: str | None) -> str:
    """The settings that would let a photo from ``host`` be fetched for site ``site``, for messages."""
    h = host or "?"
    glob = f" (or '*.{h.split('.', 1)[1]}')" if h.count(".") >= 2 and not h.replace(".", "").isdigit() else ""
    return (
        f"photos of {site} may come from the pages' hosts (the sites' own and scrape.allowed_domains) and photo_hosts: "
        f"add {h!r}{glob} to this site's photo_hosts, or to scrape.photo_hosts for every site"
    )
