"""The saved-directory fixtures of tests/fixtures/staff served on 127.0.0.1, their site configs and a Ray-free crawl.

:func:`fixture_site` serves every fixture page and the images they name (real-looking photos, a silhouette shared
under three URLs, a 1x1 GIF, a flat square, SVGs); :func:`site` builds the :class:`~pipeline.config.StaffSite` of one
fixture; :func:`crawl_rows` runs the crawl driver on its thread pool (:func:`pipeline.scrape.crawl.crawl`, no Ray) and
returns the stored ``staff`` and ``fetches`` rows.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

from helpers.http import Reply, serve

FIXTURES = Path(__file__).parents[1] / "fixtures" / "staff"
SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64"><circle cx="32" cy="32" r="30"/></svg>'


def _jpeg(seed: int, size=(160, 200)) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (size[1] // 8, size[0] // 8, 3), dtype=np.uint8)
    im = Image.fromarray(arr).resize(size, Image.BILINEAR)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def silhouette() -> bytes:
    """A grey head-and-shoulders silhouette: not blank, but the same bytes for everyone who has it."""
    from PIL import ImageDraw

    im = Image.new("RGB", (150, 180), (225, 225, 225))
    d = ImageDraw.Draw(im)
    d.ellipse((45, 25, 105, 95), fill=(150, 150, 150))
    d.ellipse((15, 105, 135, 230), fill=(150, 150, 150))
    return _png(im)


GIF_1X1 = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00"
    b"\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)


def _pages() -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in FIXTURES.glob("*.html")}


def routes(host: str) -> dict:
    pages = {k: v.replace("{HOST}", host) for k, v in _pages().items()}

    def html(name: str, code: int = 200) -> Reply:
        return Reply(pages[name].encode(), "text/html; charset=utf-8", code)

    def drupal(h) -> Reply:
        page = parse_qs(urlsplit(h.path).query).get("page", ["0"])[0]
        if page == "0":
            return html("drupal_people.html")
        if page == "1":
            return html("drupal_people_page1.html")
        return Reply(b"<html><body><h1>Page not found</h1></body></html>", "text/html", 404)

    def profile(h) -> Reply:
        pid = parse_qs(urlsplit(h.path).query).get("id", [""])[0]
        name = f"profile_{pid}.html"
        return html(name) if name in pages else Reply(b"<h1>Not found</h1>", "text/html", 404)

    r: dict = {
        "/people": drupal,
        "/wp/faculty-staff/": html("wordpress_table.html"),
        "/plone/people/listing": html("plone_listing.html"),
        "/team.html": html("lazy_jquery.html"),
        "/bg/staff.html": html("css_background.html"),
        "/srcset/faculty.html": html("srcset_only.html"),
        "/ph/people.html": html("shared_placeholder.html"),
        "/dir/index.php": html("text_table.html"),
        "/dir/profile.php": profile,
        "/cf/people.html": html("challenge_cloudflare.html", 403),
        "/f5/people.html": html("challenge_f5.html"),
        "/empty.html": Reply(b"<html><body><p>No directory here.</p></body></html>", "text/html"),
    }
    jpg = lambda seed: Reply(_jpeg(seed), "image/jpeg")  # noqa: E731
    photos = [
        "/sites/default/files/styles/large/public/ann-lee.jpg",
        "/sites/default/files/styles/thumbnail/public/bo-chen.jpg",
        "/sites/default/files/styles/thumbnail/public/di-eze.jpg",
        "/wp-content/uploads/2023/09/bracken-300x300.jpg",
        "/wp-content/uploads/2023/09/okafor-150x150.jpg",
        "/wp-content/uploads/2023/09/marsh-150x150.jpg",
        "/plone/people/kim-park/@@images/image/thumb",
        "/cdn/ravi-shah.jpg",
        "/photos/oak.jpg",
        "/photos/pine.jpg",
        "/photos/elm.jpg",
        "/photos/ash-400.jpg",
        "/photos/fox.jpg",
        "/photos/gil.jpg",
        "/photos/ivy.jpg",
        "/photos/jo-640.jpg",
        "/photos/max@2x.jpg",
        "/photos/sol-800.webp",
        "/photos/real-1.jpg",
        "/photos/real-2.jpg",
        "/photos/nash.jpg",
        "/photos/ortiz.jpg",
    ]
    for i, path in enumerate(photos):
        r[path] = jpg(i + 1)
    sil = silhouette()
    for path in ("/photos/p101.png", "/photos/p102.png", "/photos/p103.png"):
        r[path] = Reply(sil, "image/png")
    r["/images/grey.gif"] = Reply(GIF_1X1, "image/gif")
    r["/photos/hal.gif"] = Reply(GIF_1X1, "image/gif")
    r["/photos/ida.png"] = Reply(_png(Image.new("RGB", (200, 240), (200, 200, 200))), "image/png")
    r["/images/avatar.svg"] = Reply(SVG, "image/svg+xml")
    r["/photos/jan"] = Reply(SVG, "image/svg+xml")
    r["/img/logo.png"] = Reply(_png(Image.new("RGB", (300, 80), (10, 40, 120))), "image/png")
    return r


@contextlib.contextmanager
def fixture_site():
    """Serve the fixtures; yields the server (``base``, ``port``)."""
    table: dict = {}
    with serve(table) as srv:
        table.update(routes(f"127.0.0.1:{srv.port}"))
        yield srv


SITES = {
    "drupal": dict(
        start="/people",
        person=".views-row",
        name_selector=".views-field-title a",
        role_selector=".views-field-field-job-title",
        profile_link=".views-field-title a",
        follow_profiles=False,
        next_page="li.pager__item--next a",
    ),
    "wordpress": dict(
        start="/wp/faculty-staff/",
        person="table.faculty tr",
        name_selector="strong",
        role_selector=None,
        role_after_name=True,
    ),
    "plone": dict(
        start="/plone/people/listing",
        person="article.entry",
        name_selector=".fn",
        role_selector=".description",
        profile_link="a.url",
        follow_profiles=False,
    ),
    "lazy": dict(start="/team.html", person="li.member", name_selector="h3", role_selector=".title"),
    "bg": dict(start="/bg/staff.html", person=".card", photo_selector=".face"),
    "srcset": dict(start="/srcset/faculty.html"),
    "placeholders": dict(start="/ph/people.html"),
    "profiles": dict(
        start="/dir/index.php",
        person="#directory tbody tr",
        name_selector="td:nth-child(1)",
        role_selector="td:nth-child(2)",
        profile_link="td:nth-child(1) a",
        profile_photo_selector=".profile img",
        profile_role_selector=".profile .position",
    ),
    "cloudflare": dict(start="/cf/people.html"),
    "f5": dict(start="/f5/people.html"),
    "empty": dict(start="/empty.html"),
}


def site(name: str, base: str, **over):
    """The StaffSite of fixture ``name`` served at ``base``."""
    from pipeline.config import StaffSite

    spec = {**SITES[name], **over}
    start = spec.pop("start")
    return StaffSite(name=f"fx-{name}", department="cs", start_urls=[base + start], **spec)


def config(tmp_path, sites: list, **scrape):
    """A config on ``tmp_path`` whose staff sites are ``sites`` (loopback allowed, no retries)."""
    from pipeline.config import parse_config

    raw = {
        "data_root": str(tmp_path / "data"),
        "scrape": {
            "http": {"allow_private_addresses": True, "retry": {"attempts": 1}, "requests_per_second_per_host": 1000},
            "staff": [s.model_dump() for s in sites],
            **scrape,
        },
    }
    return parse_config(raw)


def no_limit(host: str, delay: float = 0.0):
    return contextlib.nullcontext()


def crawl_rows(cfg) -> tuple[dict, list[dict]]:
    """Every staff site of ``cfg`` through the crawl driver on its thread pool (no Ray): (staff rows by name,
    fetches rows), as stored."""
    from pipeline.scrape.crawl import crawl
    from pipeline.store import FETCHES_DS, STAFF_DS, DataRoot

    crawl(cfg, pool="threads")
    root = DataRoot(cfg.data_root)
    staff_rows = root.read(STAFF_DS).to_pylist() if root.has(STAFF_DS) else []
    return {r["name"]: r for r in staff_rows}, root.read(FETCHES_DS).to_pylist()
