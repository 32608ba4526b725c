"""A site's "no photo" images: told from headshots by URL, by content and by being shared across people.

Four checks, each giving the reason a photo is a placeholder (rows: status ``no_photo``, reason ``placeholder``):

* :func:`by_url`, before any fetch (:mod:`pipeline.scrape.staff.parse`): the URL matches one of the site's
  ``placeholder_patterns`` (regular expressions, case-insensitive, searched in the URL as written and
  percent-decoded: ``Blank%20Profile`` matches ``Blank Profile``; the site's own are added to
  :data:`~pipeline.config.DEFAULT_PLACEHOLDER_PATTERNS`), or names an SVG (``.svg``, ``data:image/svg``). The
  row keeps the URL; nothing is fetched.
* :func:`by_content`, on the fetched bytes (the staff image task, :mod:`pipeline.scrape.work`): tiny (either side
  under :data:`MIN_SIDE` pixels: a 1x1 GIF) or blank (one flat grey, white or black: a flat saturated colour is left
  to the shared-bytes check) images, and an SVG answer (``image/svg+xml``: not a ``content_type`` error).
* :func:`by_shared_url`, across the people one scrape of a site found (listing and profile pages), before any
  fetch: one photo URL for ``placeholder_min_people`` or more of them (a logo a profile selector took for every
  face, a site's "no photo" file) is ``"shared_url"``; the row keeps the URL; nothing is fetched.
* :class:`SharedImages`, across one site's people (:mod:`pipeline.scrape.rows`): the same sha256 for
  ``placeholder_min_people`` or more people of one site is that site's placeholder. Rows of a staff site with a
  fetched photo are held until every photo of the site is fetched, then decided together and written; the bytes are
  stored and the placeholder rows keep ``image_sha256``, ``width`` and ``height`` (nothing is lost, and the faces
  stage reads only ``ok`` rows).
"""

from __future__ import annotations

import collections
import io
import re
from urllib.parse import unquote

STATUS_NO_PHOTO = "no_photo"  # a staff row whose photo is the site's placeholder (reason ``placeholder``)

MIN_SIDE = 20  # px: smaller is an icon or a spacer, never a headshot
BLANK_SPREAD = 6  # a thumbnail whose every channel spans at most this many levels is one flat colour
NEUTRAL_CHROMA = 40  # ... and it is blank when that colour is a grey/white/black (channels this close)
SVG_TYPES = ("image/svg+xml",)


def compile_patterns(patterns: list[str]) -> list[re.Pattern]:
    """The site's placeholder patterns, compiled case-insensitively (config validation compiles them first)."""
    return [re.compile(p, re.I) for p in patterns]


def by_url(url: str | None, patterns: list[re.Pattern]) -> str | None:
    """``"svg"`` or ``"pattern"`` when the URL alone says placeholder, else None."""
    if not url:
        return None
    low = url.lower()
    path = low.split("?", 1)[0].split("#", 1)[0]
    if path.endswith(".svg") or path.endswith(".svgz") or low.startswith("data:image/svg"):
        return "svg"
    decoded = unquote(url)
    if any(p.search(url) or p.search(decoded) for p in patterns):
        return "pattern"
    return None


def by_content(
    data: bytes | None, width: int | None, height: int | None, content_type: str | None = None
) -> str | None:
    """``"svg"``, ``"tiny"`` or ``"blank"`` for bytes that are no headshot, else None."""
    if content_type and content_type.split(";")[0].strip().lower() in SVG_TYPES:
        return "svg"
    if width is not None and height is not None and min(width, height) < MIN_SIDE:
        return "tiny"
    if data:
        try:
            from PIL import Image

            with Image.open(io.BytesIO(data)) as im:
                im.draft("RGB", (64, 64))  # JPEG: decode at a reduced scale
                im = im.convert("RGB")
                im.thumbnail((32, 32))
                ext = im.getextrema()
                means = [(lo + hi) / 2 for lo, hi in ext]
                if all(hi - lo <= BLANK_SPREAD for lo, hi in ext) and max(means) - min(means) <= NEUTRAL_CHROMA:
                    return "blank"
        except Exception:  # the bytes were verified as an image before; a decoder quirk is not a placeholder
            return None
    return None


def by_shared_url(pages: list, min_people: int) -> int:
    """Mark ``"shared_url"`` (in each page's ``extras``) every person whose photo URL ``min_people`` or more people
    of ``pages`` (:class:`~pipeline.scrape.staff.parse.StaffPage`) have, unless the URL already says placeholder;
    returns how many were marked (0 when ``min_people`` is 0: the rule is off)."""
    if min_people <= 0:
        return 0
    people: dict[str, set[str]] = collections.defaultdict(set)
    for page in pages:
        for p in page.people:
            if p.get("image_url"):
                people[p["image_url"]].add(p["item_id"])
    marked = 0
    for page in pages:
        for p in page.people:
            if len(people.get(p.get("image_url") or "", ())) >= min_people:
                extra = page.extras.setdefault(p["item_id"], {})
                if not extra.get("placeholder"):
                    extra["placeholder"] = "shared_url"
                    marked += 1
    return marked


class SharedImages:
    """Counts the people of each site per image sha256; ``placeholder(site, sha)`` once ``min_people`` share it."""

    def __init__(self) -> None:
        self.people: collections.Counter = collections.Counter()

    def add(self, site: str, sha: str | None) -> None:
        if sha:
            self.people[(site, sha)] += 1

    def placeholder(self, site: str, sha: str | None, min_people: int) -> bool:
        return bool(sha) and min_people > 0 and self.people[(site, sha)] >= min_people
