"""A staff page's HTML into people, with parsel: the one reader of both render modes (HTTP body or Chromium's DOM).

:func:`parse_page` applies a :class:`~pipeline.config.StaffSite`'s selectors (CSS, or XPath after ``xpath:``) to the
HTML of one listing page and returns a :class:`ParsedPage`: one dict per person (``item_id``, ``name``, ``role``,
``image_url``, ``profile_url``, ``placeholder``, ``page_url``), the next-page link, whether the page has scripts and
whether it is a bot challenge (:func:`challenge`). :func:`parse_profile` reads a person's own page.

* Names and roles are read as a person sees them (:mod:`pipeline.scrape.staff.htmltext`): ``<br>`` and block elements
  separate lines, whitespace collapses; a line that is an e-mail address, URL or phone number is never a name or a
  role; the role drops the name's line and joins the rest with ``"; "`` (``role_lines: first``: the first only),
  without the text of the elements ``role_exclude`` selects. ``name_attr`` reads the name from the
  photo's ``alt``/``title`` when the name selector finds none; ``role_after_name`` takes the card's text after the
  name (bare text nodes), and XPath selectors reach any text node.
* The photo is the first of ``photo_attrs`` with a usable value on the photo element: lazy attributes first,
  ``srcset`` (its largest candidate, ``<picture><source>`` included), ``src``, CSS ``url()`` in ``style`` (and the
  computed ``background-image`` the browser copies into ``data-facerank-bg``). ``data:`` URIs never count. A card
  whose photo selector finds nothing falls back to the first element with a CSS background image. URLs resolve
  against ``<base href>`` and the page URL (protocol-relative ones too); only http(s) URLs are kept.
* :func:`~pipeline.scrape.staff.placeholders.by_url` marks a placeholder photo by its URL before any fetch.

:class:`States` gathers the people of every state a listing goes through (a JavaScript pager that replaces the
list: the browser's ``next_button``), by key.

A page's outcome is a :class:`StaffPage` (:func:`outcome`: its people, or the error that explains an empty page);
:func:`paginate` follows next-page links over any renderer (the static one of :mod:`pipeline.scrape.staff.site`, or
Chromium's, :mod:`pipeline.scrape.staff.browser`).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import re
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

from parsel import Selector

from pipeline.config import StaffSite
from pipeline.scrape.staff import htmltext as ht
from pipeline.scrape.staff import placeholders
from pipeline.scrape.staff.people import person_id

log = logging.getLogger("facerank.scrape")

IMAGE_TYPES = ("", "image/jpeg", "image/jpg", "image/png", "image/webp", "image/gif")
_ALT_PREFIX = re.compile(r"^(?:(?:a\s+)?(?:photo|picture|portrait|headshot|image|profile\s+photo)\s+(?:of|for)\s+)",
                         re.I)  # fmt: skip
_LABEL = re.compile(r"^(?:e-?mail|tel|telephone|phone|fax|office|room|web|website|homepage|mobile)\s*[:.]", re.I)

# text a bot challenge interstitial shows instead of the page (Cloudflare, F5/Shape, Imperva, Akamai, generic)
CHALLENGE_MARKERS = (
    ("cloudflare", re.compile(r"cf[-_]chl|cf-browser-verification|challenge-platform|<title>\s*just a moment", re.I)),
    ("cloudflare", re.compile(r"attention required!\s*\|\s*cloudflare", re.I)),
    ("f5", re.compile(r"TSPD_101|window\[\s*[\"']bobcmn|/TSbd/|The requested URL was rejected", re.I)),
    ("imperva", re.compile(r"_Incapsula_Resource|Incapsula incident ID", re.I)),
    ("akamai", re.compile(r"<title>\s*Access Denied\s*</title>.*Reference\s*#", re.I | re.S)),
    ("challenge", re.compile(r"checking (?:if the site connection is secure|your browser before accessing)", re.I)),
    ("challenge", re.compile(r"please (?:enable|turn on) javascript and cookies to continue", re.I)),
)


@dataclasses.dataclass
class ParsedPage:
    """What one listing page holds."""

    people: list[dict]
    next_url: str | None = None
    scripts: bool = False
    challenge: str | None = None  # the kind of bot challenge this page is, when it is one


class States:
    """The people of every state one listing goes through (a JavaScript pager that replaces the cards in place,
    ``next_button``), by key (``item_id``): the first state that lists a person gives their row, a later one fills in
    only what it lacked (a photo URL loaded late); the first next-page link found is kept."""

    def __init__(self) -> None:
        self.people: dict[str, dict] = {}
        self.next_url: str | None = None
        self.scripts = False
        self.challenge: str | None = None

    def add(self, parsed: ParsedPage) -> int:
        """Take one state's people; returns how many of them are new."""
        new = 0
        for p in parsed.people:
            have = self.people.get(p["item_id"])
            if have is None:
                self.people[p["item_id"]] = dict(p)
                new += 1
                continue
            for k, v in p.items():
                if have.get(k) is None and v is not None:
                    have[k] = v
        self.next_url = self.next_url or parsed.next_url
        self.scripts = self.scripts or parsed.scripts
        self.challenge = self.challenge or parsed.challenge
        return new

    def parsed(self) -> ParsedPage:
        """Every state's people as one page (in the order they were first seen)."""
        people = list(self.people.values())
        return ParsedPage(people, self.next_url, self.scripts, None if people else self.challenge)


def select(sel: Selector, spec: str | None) -> list[Selector]:
    """``spec`` applied to ``sel``: CSS, or XPath after ``xpath:`` (relative to ``sel``)."""
    if not spec:
        return []
    if spec.startswith("xpath:"):
        return list(sel.xpath(spec[6:]))
    return list(sel.css(spec))


def _lines(sels: list[Selector]) -> list[str]:
    """The text lines of matched elements or text nodes."""
    out: list[str] = []
    for s in sels:
        root = s.root
        if isinstance(root, str):  # an XPath text node or attribute value: one line
            if ht.collapse(root):
                out.append(ht.collapse(root))
        elif hasattr(root, "tag"):
            out += ht.element_lines(root)
    return out


def base_url(sel: Selector, page_url: str) -> str:
    """The URL relative links of the page resolve against: ``<base href>`` (itself resolved), else the page URL."""
    href = sel.xpath("//base/@href").get()
    if href and href.strip():
        try:
            return urljoin(page_url, href.strip())
        except ValueError:
            return page_url
    return page_url


def absolute(url: str | None, base: str) -> str | None:
    """``url`` resolved against ``base``; None unless it is a well-formed http(s) URL."""
    if not url:
        return None
    url = url.strip()
    if not url or url.startswith("data:"):
        return None
    try:
        full = urljoin(base, url)
        parts = urlsplit(full)
        _ = parts.port  # raises on a bad port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return full


def _srcset_candidates(el: Selector, attr: str) -> list[tuple[str, int, float]]:
    """(url, width, density) of ``el``'s ``attr`` srcset and, for ``srcset`` on an ``img`` in a ``<picture>``, of its
    ``<source>``s (allowed image types only)."""
    values = [el.attrib.get(attr)]
    tag = el.root.tag if hasattr(el.root, "tag") else ""
    # (libxml2 does not know <source> is empty: an <img> after one parses as its child, hence descendant::)
    pic = el if tag == "picture" else None
    if tag == "img":
        anc = el.xpath("ancestor::picture[1]")
        pic = anc[0] if anc else None
    if pic is not None:
        sources = [s for s in pic.xpath("descendant::source") if s.attrib.get("type", "").lower() in IMAGE_TYPES]
        values += [s.attrib.get(attr) for s in sources]
        if tag == "picture":
            values += [i.attrib.get(attr) for i in pic.xpath("descendant::img")]
    out = []
    for v in values:
        for url, w, x in ht.parse_srcset(v):
            out.append((url, w or 0, x if x is not None else 1.0))
    return out


def photo_url(el: Selector, attrs: list[str], base: str) -> str | None:
    """The photo URL of one element: the first attribute of ``attrs`` that holds a usable URL."""
    for attr in attrs:
        if attr.endswith("srcset"):
            cands = _srcset_candidates(el, attr)
            if cands:
                best = max(cands, key=lambda c: c[1]) if any(c[1] for c in cands) else max(cands, key=lambda c: c[2])
                url = absolute(best[0], base)
                if url:
                    return url
            continue
        value = el.attrib.get(attr)
        if not value or not value.strip():
            if attr == "src" and el.root.tag == "picture":
                for img in el.xpath("descendant::img"):
                    url = absolute(img.attrib.get("src"), base)
                    if url:
                        return url
            continue
        if attr == "style" or "url(" in value:
            for u in ht.css_urls(value):
                url = absolute(u, base)
                if url:
                    return url
            continue
        url = absolute(value, base)
        if url:
            return url
    return None


def _photo(card: Selector, site: StaffSite, base: str) -> tuple[str | None, Selector | None]:
    els = select(card, site.photo_selector)
    for el in els:
        url = photo_url(el, site.photo_attrs, base)
        if url:
            return url, el
    # no photo where the selector points: a CSS background image anywhere in the card
    for el in card.xpath("descendant-or-self::*[@style[contains(., 'url(')] or @data-facerank-bg]"):
        url = photo_url(el, ["style", "data-facerank-bg"], base)
        if url:
            return url, el
    return None, els[0] if els else None


def _name(card: Selector, site: StaffSite, photo_el: Selector | None) -> str | None:
    for line in _lines(select(card, site.name_selector)):
        if not ht.is_contact(line):
            return line
    if site.name_attr:
        for el in ([photo_el] if photo_el is not None else []) + [card]:
            v = ht.collapse(el.attrib.get(site.name_attr))
            v = ht.collapse(_ALT_PREFIX.sub("", v[: ht.MAX_LINE]))
            if v and not ht.is_contact(v):
                return v
    return None


def _role_lines(lines: list[str], name: str | None, first: bool = False) -> str | None:
    n = (name or "").casefold()
    lines = [ht.without_emails(x) for x in lines]
    keep = [x for x in lines if x and x.casefold() != n and not ht.is_contact(x) and not _LABEL.match(x)]
    return "; ".join(keep[:1] if first else keep) or None


def _without(sels: list[Selector], exclude: str | None) -> list[Selector]:
    """Copies of the matched elements without what ``exclude`` selects inside them (``role_exclude``)."""
    if not exclude:
        return sels
    out = []
    for s in sels:
        if hasattr(s.root, "tag"):
            s = Selector(root=copy.deepcopy(s.root))
            for e in select(s, exclude):
                if hasattr(e.root, "drop_tree") and e.root is not s.root:
                    e.root.drop_tree()
        out.append(s)
    return out


def _role(card: Selector, site: StaffSite, name: str | None) -> str | None:
    first = site.role_lines == "first"
    role = None
    if site.role_selector:
        role = _role_lines(_lines(_without(select(card, site.role_selector), site.role_exclude)), name, first)
    if role or not site.role_after_name or not name:
        return role
    lines = _lines(_without([card], site.role_exclude))
    key = name.casefold()
    for i, line in enumerate(lines):
        if line.casefold() == key or line.casefold().startswith(key):
            rest = lines[i + 1 :]
            if line.casefold() != key:  # "Jane Doe, Professor of …" on one line
                rest = [line[len(name) :].lstrip(" ,;:-–—")] + rest
            return _role_lines([r for r in rest if r], name, first)
    return None


def _profile(card: Selector, site: StaffSite, base: str) -> str | None:
    for el in select(card, site.profile_link):
        href = el.attrib.get("href") if hasattr(el.root, "tag") else el.get()
        if not href:
            href = el.xpath("descendant::a/@href").get()
        url = absolute(href, base)
        if url:
            return url.split("#", 1)[0]
    return None


def has_scripts(sel: Selector) -> bool:
    """True when the page runs scripts (external, or inline code; JSON data blocks do not count)."""
    for s in sel.xpath("//script"):
        t = (s.attrib.get("type") or "").lower()
        if t and ("json" in t or t == "text/template"):
            continue
        if s.attrib.get("src") or (s.xpath("string()").get() or "").strip():
            return True
    return False


def challenge(html: str) -> str | None:
    """The kind of bot-challenge interstitial ``html`` is (``cloudflare``, ``f5``, …), else None."""
    head = html[:200_000]
    for kind, pat in CHALLENGE_MARKERS:
        if pat.search(head):
            return kind
    return None


def _selector(html: str | bytes) -> Selector:
    if isinstance(html, bytes):
        html = html.decode("utf-8", "replace")
    return Selector(text=html or "<html></html>")


def parse_page(html: str | bytes, page_url: str, site: StaffSite) -> ParsedPage:
    """The people, next-page link, scripts and challenge of one listing page (see the module docstring)."""
    sel = _selector(html)
    base = base_url(sel, page_url)
    patterns = placeholders.compile_patterns(site.placeholder_patterns)
    people = []
    for card in select(sel, site.person):
        if not hasattr(card.root, "tag"):
            continue
        image, photo_el = _photo(card, site, base)
        name = _name(card, site, photo_el)
        role = _role(card, site, name)
        profile = _profile(card, site, base)
        people.append(
            {
                "item_id": person_id(site.name, name, card.attrib.get("data-id"), profile, image),
                "name": name,
                "role": role,
                "image_url": image,
                "profile_url": profile,
                "placeholder": placeholders.by_url(image, patterns),
                "page_url": page_url,
            }
        )
    next_url = None
    if site.next_page:
        for el in select(sel, site.next_page):
            href = el.attrib.get("href") if hasattr(el.root, "tag") else el.get()
            next_url = absolute(href or el.xpath("descendant::a/@href").get(), base)
            if next_url:
                break
    text = html.decode("utf-8", "replace") if isinstance(html, bytes) else html
    return ParsedPage(people, next_url, has_scripts(sel), None if people else challenge(text or ""))


def parse_profile(html: str | bytes, page_url: str, site: StaffSite) -> dict:
    """A person's own page: ``image_url`` (``profile_photo_selector``), ``role`` (``profile_role_selector``) and
    ``placeholder``, each None when the page has none."""
    sel = _selector(html)
    base = base_url(sel, page_url)
    image = None
    for el in select(sel, site.profile_photo_selector):
        image = photo_url(el, site.photo_attrs, base)
        if image:
            break
    role = None
    if site.profile_role_selector:
        found = _without(select(sel, site.profile_role_selector), site.role_exclude)
        role = _role_lines(_lines(found), None, site.role_lines == "first")
    patterns = placeholders.compile_patterns(site.placeholder_patterns)
    return {"image_url": image, "role": role, "placeholder": placeholders.by_url(image, patterns)}


@dataclasses.dataclass
class StaffPage:
    """One rendered page: the people on it, or an error; ``render`` says how (static | browser)."""

    url: str
    people: list[dict]
    status: str = "ok"
    reason: str | None = None
    clicks: int = 0
    http_status: int | None = None
    render: str = "browser"
    bytes: int | None = None
    attempts: int = 1
    next_url: str | None = None
    html: str | None = None  # only when asked for (check-site --html): never sent back by the crawl's workers
    # item_id -> what the rows need beyond the person's staff columns: placeholder (by URL), profile_url
    extras: dict[str, dict] = dataclasses.field(default_factory=dict)


EXTRA_KEYS = ("placeholder", "profile_url")


def paginate(
    site: StaffSite,
    may_fetch: Callable[[str], tuple[str, str] | None],
    render: Callable[[str], StaffPage],
) -> list[StaffPage]:
    """Every page of ``site``: each start URL, then its next-page links (``max_pages`` per start URL in all).

    ``may_fetch(url)`` returns (status, reason) when a URL must be skipped; ``render(url)`` gives the page, with
    ``next_url`` set when it links to another; a page whose ``render`` raises is an error page
    ``internal:<Type>``, and the other pages go on."""
    pages: list[StaffPage] = []
    queue = list(site.start_urls)
    seen: set[str] = set()
    while queue and len(pages) < site.max_pages * max(1, len(site.start_urls)):
        url = queue.pop(0)
        if url in seen:
            continue
        seen.add(url)
        refused = may_fetch(url)
        if refused:
            pages.append(StaffPage(url, [], refused[0], refused[1], render="none"))
            continue
        try:
            page = render(url)
        except Exception as e:  # one page that cannot be read is that page's error, never the whole site's
            log.warning("staff page %s could not be read: %r", url, e)
            page = StaffPage(url, [], "error", f"internal:{type(e).__name__}")
        if page.url != url and may_fetch(page.url):  # redirected somewhere we may not go
            page = StaffPage(url, [], "error", "redirect_outside_allowed_domains", render=page.render)
        pages.append(page)
        if page.next_url and page.next_url not in seen:
            queue.insert(0, page.next_url)
    return pages


def outcome(page: StaffPage, parsed) -> StaffPage:
    """``page`` with its people and next link from ``parsed``, or the error that explains an empty page."""
    page.people = [{k: v for k, v in p.items() if k not in EXTRA_KEYS} for p in parsed.people]
    page.extras = {p["item_id"]: {k: p.get(k) for k in EXTRA_KEYS} for p in parsed.people}
    page.next_url = parsed.next_url
    if not parsed.people:
        page.status = "error"
        page.reason = "blocked" if parsed.challenge else "no_people_found"
        if parsed.challenge:
            log.warning("staff page %s is a bot challenge (%s): not scraped", page.url, parsed.challenge)
    return page
