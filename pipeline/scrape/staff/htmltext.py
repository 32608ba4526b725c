"""Text and URLs as a person reads a staff page: line-aware text of an element, ``srcset`` and CSS ``url()``.

* :func:`element_lines` turns an lxml element into the lines a browser shows: ``<br>`` and block elements
  (``p``, ``div``, ``li``, ``td``…) end a line, whitespace inside a line collapses to one space, ``<script>``,
  ``<style>`` and ``<noscript>`` are not text. It walks the tree without recursion (a page nested thousands deep
  is read like any other) and cuts every line at :data:`MAX_LINE` characters. :func:`collapse` is the whitespace
  rule on its own; it also drops control characters (ESC, BEL, C1 controls…: no terminal escape sequence is kept).
* :func:`is_email`, :func:`is_contact` tell e-mail addresses, URLs and phone numbers from names and roles;
  :func:`without_emails` takes addresses out of a line. Hostile pages cannot make them slow: they look at
  :data:`MAX_LINE` characters at most, and find addresses by splitting into words (no backtracking regex).
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
MAX_LINE = 500  # characters of one line of text kept (a name or role is far shorter); before any regex runs
MAX_STYLE = 4096  # characters of a CSS string read for url(...)
_WS = re.compile(r"\s+")
_WORDS = re.compile(r"([\s<>()]+)")  # what an e-mail address cannot hold besides "@" (kept by split)
_AT = re.compile(r"[\[(]\s*at\s*[\])]")  # "name [at] host"
# control characters (C0 but whitespace, DEL, C1): dropped; whitespace controls become spaces
_CONTROLS = {c: None for c in (*range(0x00, 0x20), *range(0x7F, 0xA0))} | {c: " " for c in (9, 10, 11, 12, 13)}
_PHONE = re.compile(r"^[\s()+\-./0-9extEXT:]{6,}$")
_URLISH = re.compile(r"^(?:https?://|www\.)\S+$", re.I)


def collapse(text: str | None) -> str:
    """``text`` with every run of whitespace (also non-breaking spaces) one space, control characters dropped,
    stripped."""
    return _WS.sub(" ", (text or "").replace("\xa0", " ").translate(_CONTROLS)).strip()


def _flat(text: str) -> str:
    """Source line breaks are whitespace in HTML: only markup ends a line."""
    return text.replace("\r", " ").replace("\n", " ")


def element_lines(el) -> list[str]:
    """The non-empty lines of an lxml element's text, as rendered: ``<br>`` and block elements separate lines."""
    parts: list[str] = []
    if not isinstance(el.tag, str):  # a comment or processing instruction
        return []
    # an explicit stack instead of recursion: ("open", node) enters an element, ("close", node) leaves it
    stack: list[tuple[bool, object]] = [(True, el)]
    while stack:
        opening, node = stack.pop()
        tag = node.tag if isinstance(node.tag, str) else ""  # type: ignore[attr-defined]
        tag = tag.rsplit("}", 1)[-1].lower()
        if not opening:  # after the element's children: its block end, then its tail (not the root's)
            if tag in BLOCK_TAGS:
                parts.append("\n")
            if node is not el and node.tail:  # type: ignore[attr-defined]
                parts.append(_flat(node.tail))  # type: ignore[attr-defined]
            continue
        if tag in SKIP_TAGS:
            if node is not el and node.tail:  # type: ignore[attr-defined]
                parts.append(_flat(node.tail))  # type: ignore[attr-defined]
            continue
        if tag == "br" or tag in BLOCK_TAGS:
            parts.append("\n")
        if node.text and tag:  # type: ignore[attr-defined]
            parts.append(_flat(node.text))  # type: ignore[attr-defined]
        stack.append((False, node))
        stack.extend((True, child) for child in reversed(list(node)))  # type: ignore[call-overload]
    lines = (collapse(line[: MAX_LINE * 4])[:MAX_LINE] for line in "".join(parts).split("\n"))
    return [c for c in lines if c]


def _has_email(word: str) -> bool:
    """True when ``word`` (no whitespace, ``<>()``) holds ``local@domain.tld``: a non-empty part before an ``@``
    and, after it, a dot that is not first and is followed by two ASCII letters. Linear in the word's length."""
    pieces = word.split("@")
    for before, after in zip(pieces, pieces[1:], strict=False):
        if not before:
            continue
        dot = after.find(".", 1)
        while dot != -1:
            tld = after[dot + 1 : dot + 3]
            if len(tld) == 2 and tld.isascii() and tld.isalpha():
                return True
            dot = after.find(".", dot + 1)
    return False


def is_email(text: str | None) -> bool:
    """True when ``text`` holds an e-mail address (``mailto:`` or ``name@host.tld``, also ``name [at] host``)."""
    t = (text or "")[:MAX_LINE].strip().lower()
    if not t:
        return False
    if t.startswith("mailto:") or ("@" in t and any(_has_email(w) for w in _WORDS.split(t))):
        return True
    return any(t[: m.start()].strip() and t[m.end() :].strip() for m in _AT.finditer(t))


def is_contact(text: str | None) -> bool:
    """True for an e-mail address, a bare URL or a phone number: never a name or a role."""
    t = collapse((text or "")[: MAX_LINE * 4])[:MAX_LINE]
    return is_email(t) or bool(_URLISH.match(t)) or bool(_PHONE.match(t) and sum(c.isdigit() for c in t) >= 6)


def without_emails(text: str) -> str:
    """``text`` (its first :data:`MAX_LINE` characters) with the words holding an e-mail address (and a
    ``mailto:``) removed, whitespace collapsed."""
    t = re.sub(r"mailto:", " ", (text or "")[:MAX_LINE], flags=re.I)
    if "@" in t:
        t = "".join(" " if _has_email(w) else w for w in _WORDS.split(t))
    return collapse(t).strip(" ,;|·-–—")


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
    """The ``url(...)`` values in a CSS string (inline ``style``, or a computed ``background-image``): quoted or bare
    (a bare one ends at whitespace or a parenthesis). Its first :data:`MAX_STYLE` characters, read in one pass."""
    s = (style or "")[:MAX_STYLE]
    low, n, out, i = s.lower(), len(s), [], 0
    while (j := low.find("url(", i)) >= 0:
        k = j + 4
        while k < n and s[k].isspace():
            k += 1
        if k < n and s[k] in "\"'":
            end = s.find(s[k], k + 1)
            if end < 0:
                break  # no closing quote anywhere after this: no later url() can close either
            value, k = s[k + 1 : end], end + 1
        else:
            m = k
            while m < n and not s[m].isspace() and s[m] not in "()":
                m += 1
            value, k = s[k:m], m
        while k < n and s[k].isspace():
            k += 1
        if k < n and s[k] == ")":
            if value.strip():
                out.append(value.strip())
            i = k + 1
        else:
            i = j + 4
    return out
