"""Text and URLs as a person reads a staff page: line-aware text of an element, ``srcset`` and CSS ``url()``.

* :func:`element_lines` turns an lxml element into the lines a browser shows: ``<br>`` and block elements
  (``p``, ``div``, ``li``, ``td``…) end a line, whitespace inside a line collapses to one space, ``<script>``,
  ``<style>`` and ``<noscript>`` are not text. :func:`collapse` is the whitespace rule on its own.
* :func:`is_email`, :func:`is_contact` tell e-mail addresses, URLs and phone numbers from names and roles;
  :func:`without_emails` takes addresses out of a line.
* :func:`parse_srcset` reads a ``srcset`` (HTML's image candidate strings, commas inside URLs included) into
  ``(url, width, density)`` candidates; :func:`best_srcset` picks the largest.
* :func:`css_urls` reads the ``url(...)`` values of a CSS ``background``/``background-image`` declaration.
"""

from __future__ import annotations

import re

BLOCK_TAGS = frozenset(
    "address article aside blockquote caption dd div dl dt figcaption figure footer form h1 h2 h3 h4 h5 h6 header "
    "hr li main nav ol p pre section table tbody td tfoot th thead tr ul".split()
)
SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "head"})
_WS = re.compile(r"\s+")
_EMAIL = re.compile(r"[^\s@<>()]+@[^\s@<>()]+\.[A-Za-z]{2,}")
_PHONE = re.compile(r"^[\s()+\-./0-9extEXT:]{6,}$")
_URLISH = re.compile(r"^(?:https?://|www\.)\S+$", re.I)
_CSS_URL = re.compile(r"""url\(\s*(?:"([^"]*)"|'([^']*)'|([^)\s]*))\s*\)""", re.I)


def collapse(text: str | None) -> str:
    """``text`` with every run of whitespace (also non-breaking spaces) one space, stripped."""
    return _WS.sub(" ", (text or "").replace("\xa0", " ")).strip()


def _flat(text: str) -> str:
    """Source line breaks are whitespace in HTML: only markup ends a line."""
    return text.replace("\r", " ").replace("\n", " ")


def element_lines(el) -> list[str]:
    """The non-empty lines of an lxml element's text, as rendered: ``<br>`` and block elements separate lines."""
    parts: list[str] = []

    def walk(node) -> None:
        tag = node.tag if isinstance(node.tag, str) else ""
        tag = tag.rsplit("}", 1)[-1].lower()
        if tag in SKIP_TAGS:
            return
        block = tag in BLOCK_TAGS
        if tag == "br" or block:
            parts.append("\n")
        if node.text and tag:
            parts.append(_flat(node.text))
        for child in node:
            walk(child)
            if child.tail:
                parts.append(_flat(child.tail))
        if block:
            parts.append("\n")

    if not isinstance(el.tag, str):  # a comment or processing instruction
        return []
    walk(el)
    return [c for c in (collapse(line) for line in "".join(parts).split("\n")) if c]


def is_email(text: str | None) -> bool:
    """True when ``text`` holds an e-mail address (``mailto:`` or ``name@host.tld``, also ``name [at] host``)."""
    t = (text or "").strip().lower()
    if not t:
        return False
    if t.startswith("mailto:") or _EMAIL.search(t):
        return True
    return bool(re.search(r"\S+\s*[\[(]\s*at\s*[\])]\s*\S+", t))


def is_contact(text: str | None) -> bool:
    """True for an e-mail address, a bare URL or a phone number: never a name or a role."""
    t = collapse(text)
    return is_email(t) or bool(_URLISH.match(t)) or bool(_PHONE.match(t) and sum(c.isdigit() for c in t) >= 6)


def without_emails(text: str) -> str:
    """``text`` with e-mail addresses (and a ``mailto:`` before them) removed, whitespace collapsed."""
    return collapse(_EMAIL.sub(" ", re.sub(r"mailto:", " ", text or "", flags=re.I))).strip(" ,;|·-–—")


def _split_candidates(value: str) -> list[str]:
    """Split a srcset into candidate strings: a comma ends a candidate only after a URL and its descriptors."""
    out, i, n = [], 0, len(value)
    while i < n:
        while i < n and (value[i].isspace() or value[i] == ","):
            i += 1
        start = i
        while i < n and not value[i].isspace():  # the URL: commas inside it belong to it
            i += 1
        url_end = i
        url = value[start:url_end]
        if url.endswith(","):  # "a.jpg," : no descriptor
            out.append(url.rstrip(","))
            continue
        depth = 0
        while i < n:
            c = value[i]
            if c == "(":
                depth += 1
            elif c == ")":
                depth = max(0, depth - 1)
            elif c == "," and depth == 0:
                break
            i += 1
        out.append((url + " " + value[url_end:i]).strip())
        i += 1
    return [c for c in out if c]


def parse_srcset(value: str | None) -> list[tuple[str, int | None, float | None]]:
    """The candidates of a ``srcset``: ``(url, width in w or None, pixel density or None)``; bad descriptors skip
    their candidate, as browsers do."""
    cands = []
    for cand in _split_candidates(value or ""):
        url, *descs = cand.split()
        if not url or url.startswith("data:"):
            continue
        width: int | None = None
        density: float | None = None
        ok = True
        for d in descs:
            d = d.lower()
            try:
                if d.endswith("w") and width is None and density is None:
                    width = int(d[:-1])
                    ok = width > 0
                elif d.endswith("x") and width is None and density is None:
                    density = float(d[:-1])
                    ok = density > 0
                elif d.endswith("h"):
                    int(d[:-1])
                else:
                    ok = False
            except ValueError:
                ok = False
        if ok:
            cands.append((url, width, density))
    return cands


def best_srcset(value: str | None) -> str | None:
    """The URL of the largest candidate of a ``srcset`` (by width, else density; none given counts as ``1x``)."""
    cands = parse_srcset(value)
    if not cands:
        return None
    if any(w is not None for _, w, _ in cands):
        return max(cands, key=lambda c: c[1] or 0)[0]
    return max(cands, key=lambda c: c[2] if c[2] is not None else 1.0)[0]


def css_urls(style: str | None) -> list[str]:
    """The ``url(...)`` values in a CSS string (inline ``style``, or a computed ``background-image``)."""
    urls = (next(g for g in m.groups() if g is not None).strip() for m in _CSS_URL.finditer(style or ""))
    return [u for u in urls if u]
