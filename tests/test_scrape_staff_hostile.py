"""Hostile staff pages (security review T2, T13, T16): text that would make the name/role checks slow, pages nested
thousands deep, terminal escape sequences in names, and a staff site that holds its browser worker too long.

Static pages from 127.0.0.1 through the same parser as rendered ones; the crawl driver on its thread pool. No Chromium.
"""

from __future__ import annotations

import time

from lxml import etree

from helpers.http import Handler, serve
from pipeline.config import StaffSite, parse_config
from pipeline.scrape.crawl import crawl
from pipeline.scrape.staff import htmltext as ht
from pipeline.scrape.staff.parse import StaffPage, paginate, parse_page

SITE = StaffSite(name="uni", department="cs", start_urls=["http://127.0.0.1/staff"], photo_selector="img.photo")


def _card(name: str, role: str = "Professor") -> str:
    tail = "<img class='photo' src='/p.jpg'></div>"
    return f"<div class='person'><span class='name'>{name}</span><span class='role'>{role}</span>{tail}"


def test_name_and_role_checks_take_linear_time_on_hostile_text():
    """T2: 40,000 characters without spaces (or full of '@', '[at' and 'url(') cost milliseconds, not the
    seconds the backtracking regexes took (16,000 characters: 3.3 s); lines are cut at ``MAX_LINE``."""
    n = 40_000
    hostile = ["A" * n, "a@" * (n // 2), "a@b." * (n // 4), "x [at" * (n // 5), "(" * n, "mailto:" * (n // 7)]
    for text in hostile:
        t = time.perf_counter()
        ht.is_contact(text), ht.is_email(text), ht.without_emails(text), ht.css_urls("url(" * (n // 4))
        page = parse_page(f"<html><body>{_card(text, text)}</body></html>", "http://127.0.0.1/staff", SITE)
        took = time.perf_counter() - t
        assert took < 0.5, (text[:12], took)
        for p in page.people:
            assert len(p["name"] or "") <= ht.MAX_LINE and len(p.get("role") or "") <= ht.MAX_LINE
    # what the checks tell apart is unchanged
    assert ht.is_email("ann.lee@uni.example.edu") and ht.is_email("ann [at] uni.edu") and ht.is_email("mailto:x")
    assert ht.is_email("Ann Lee (ann@uni.edu)") and not ht.is_email("Ann Lee") and not ht.is_email("a@b")
    assert not ht.is_email("[at] uni") and not ht.is_email("ann [at]") and not ht.is_email("@uni.edu")
    assert ht.without_emails("Professor, ann@uni.edu") == "Professor"
    assert ht.without_emails("Lecturer; mailto:bo@x.org | Room 4") == "Lecturer; | Room 4"
    assert ht.is_contact("+44 (0)20 7946 0958") and ht.is_contact("https://uni.edu/ann") and not ht.is_contact("Dr Ann")


def test_a_page_nested_thousands_deep_is_read_and_a_page_that_fails_is_only_that_page():
    """T13: 5,000 nested elements are walked without recursion; a page whose reading raises is that page's error
    ``internal:<Type>``, the site's other pages are kept."""
    deep = "<div>" * 5000 + _card("Deep Person") + "</div>" * 5000
    got = parse_page(f"<html><body>{_card('Ada Lovelace')}{deep}</body></html>", "http://127.0.0.1/staff", SITE)
    assert [p["name"] for p in got.people][:1] == ["Ada Lovelace"]
    root = cur = etree.Element("div")
    for i in range(5000):  # built by hand: lxml's HTML parser may flatten deep input, a browser's DOM does not
        cur = etree.SubElement(cur, "p" if i % 2 else "b")
        cur.text, cur.tail = "x" if i == 10 else None, "z" if i == 4998 else None
    cur.text = "y"
    lines = ht.element_lines(root)
    assert lines == ["x", "y", "z"]

    def render(url: str) -> StaffPage:
        if url.endswith("/2"):
            raise RecursionError("maximum recursion depth exceeded")
        return StaffPage(url, [{"item_id": url}], "ok", None, next_url="http://127.0.0.1/2" if "/1" in url else None)

    site = SITE.model_copy(update={"start_urls": ["http://127.0.0.1/1", "http://127.0.0.1/3"]})
    pages = paginate(site, lambda url: None, render)
    assert [(p.url.rsplit("/", 1)[-1], p.status, p.reason) for p in pages] == [
        ("1", "ok", None), ("2", "error", "internal:RecursionError"), ("3", "ok", None)
    ]  # fmt: skip


def test_names_and_roles_keep_no_control_characters():
    """T16: ESC, BEL, C1 controls and other control characters are dropped from names and roles when parsed."""
    name, role = "Ann\x1b]0;pwned\x07 Lee\x1b[2J\x9b31m", "Pro\x00fessor\x08\x7f\tof Law"
    [p] = parse_page(f"<html><body>{_card(name, role)}</body></html>", "http://127.0.0.1/staff", SITE).people
    assert p["name"] == "Ann]0;pwned Lee[2J31m" and p["role"] == "Professor of Law"
    assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in p["name"] + p["role"])


class _SlowStaff(Handler):
    def do_GET(self):  # noqa: N802
        if self.path == "/robots.txt":
            return self.send(200, b"User-agent: *\nAllow: /\n", "text/plain")
        time.sleep(6)  # inside the fetch's own deadline (10 s), far past the site's bound (1.5 s)
        self.send(200, f"<html><body>{_card('Ann Lee')}</body></html>".encode(), "text/html")


def test_driver_abandons_a_staff_site_past_its_bound(tmp_path):
    """T2: a browser batch (one staff site) past ``scrape.staff_batch_timeout(site)`` is abandoned like an HTTP batch:
    the site's task fails ``batch_timeout``, its worker is replaced, the crawl does not wait for it."""
    http = {"allow_private_addresses": True, "total_timeout_s": 10, "read_timeout_s": 10, "retry": {"attempts": 1}}
    with serve(_SlowStaff) as srv:
        staff = {"name": "uni", "department": "cs", "render": "static", "start_urls": [f"{srv.base}/staff"],
                 "photo_selector": "img.photo"}  # fmt: skip
        cfg = parse_config(
            {"data_root": str(tmp_path / "d"),
             "scrape": {"num_actors": 1, "staff_batch_timeout_s": 1.5, "http": http, "staff": [staff]}},
            "test",
        )  # fmt: skip
        t0 = time.monotonic()
        s = crawl(cfg, pool="threads")
        took = time.monotonic() - t0
    assert s["page_errors_by_reason"] == {"batch_timeout": 1} and s["workers_replaced"] >= 1
    assert took < 5, took
    # the derived bound: every page's load, wait, crawl delay and parse budget
    cfg = parse_config({"data_root": str(tmp_path / "d"), "scrape": {"staff": [staff]}}, "test")
    sc, h, se = cfg.scrape, cfg.scrape.http, cfg.scrape.selenium
    per_page = max(se.page_load_timeout_s + se.wait_timeout_s, (h.max_redirects + 2) * h.total_timeout_s)
    per_page += h.max_crawl_delay_s + sc.staff_parse_budget_s
    assert sc.staff_batch_timeout(sc.staff[0]) == sc.staff[0].max_pages * per_page + 60


def test_check_site_prints_page_text_escaped(tmp_path):
    """T16: ``check-site`` prints names and roles as stored (control characters dropped) and writes any control
    character of what it prints (next-page link, reasons) escaped: a page cannot drive the terminal."""
    import io

    from pipeline.scrape.staff.check import Escaped, check

    evil = "Ann\x1b]0;pwned\x07 Lee\x1b[2J"
    page = f"<html><body>{_card(evil)}<a class='next' href='/p2?\x1b[31m'>n</a></body></html>".encode()

    class _Page(Handler):
        def do_GET(self):  # noqa: N802
            if self.path == "/robots.txt":
                return self.send(200, b"User-agent: *\nAllow: /\n", "text/plain")
            self.send(200, page, "text/html")

    with serve(_Page) as srv:
        staff = {"name": "uni", "department": "cs", "render": "static", "start_urls": [f"{srv.base}/staff"],
                 "photo_selector": "img.photo", "next_page": "a.next"}  # fmt: skip
        cfg = parse_config(
            {"data_root": str(tmp_path / "d"),
             "scrape": {"http": {"allow_private_addresses": True}, "staff": [staff]}},
            "test",
        )  # fmt: skip
        out = io.StringIO()
        assert check(cfg, cfg.scrape.staff[0], out=out) == 0
    text = out.getvalue()
    assert "Ann]0;pwned Lee[2J" in text
    assert not any(not c.isprintable() and c != "\n" for c in text), repr(text)
    buf = io.StringIO()
    Escaped(buf).write("a\x1b[2Jb\x07\x9b1m\u202e ok\n")
    assert buf.getvalue() == "a\\x1b[2Jb\\x07\\x9b1m\\u202e ok\n"
