"""The text normaliser, the srcset and CSS readers, placeholders and the academic rule, plus Chromium.

Unit tests and hypothesis properties of :mod:`pipeline.scrape.staff.htmltext` and
:mod:`pipeline.scrape.staff.placeholders`; one Chromium test renders several fixture pages through one
:class:`~pipeline.scrape.staff.browser.Browser` (the browser render mode: the same selectors, computed CSS backgrounds,
HTTP status, challenges, ``wait_for`` defaulting to the person selector, lazy images that never load costing no
timeout).
"""

from __future__ import annotations

import io
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import html as lxml_html
from PIL import Image

from pipeline.config import StaffSite
from pipeline.scrape.staff import htmltext as ht
from pipeline.scrape.staff import placeholders
from pipeline.scrape.staff.people import is_academic

KEYWORDS = ["secretary", "administrator", "assistant to", "technician"]


def lines_of(fragment: str) -> list[str]:
    return ht.element_lines(lxml_html.fragment_fromstring(fragment, create_parent="div"))


def test_element_lines_breaks_blocks_whitespace_and_scripts():
    assert lines_of("<b>Paul  Bracken</b><br>Professor of\n   Maths<br/><a>pb@x.edu</a>") == [
        "Paul Bracken",
        "Professor of Maths",
        "pb@x.edu",
    ]
    assert lines_of("<p>A&nbsp;B</p><p> </p><div>C<script>var x=1</script><style>p{}</style></div>") == ["A B", "C"]
    assert lines_of("<span>Jo</span><span>Kern</span>") == ["JoKern"]  # inline elements do not separate


def test_contacts_are_never_names():
    for s in ["a.b@uni.edu", "mailto:x@y.org", "jo [at] uni.edu", "+44 (0)20 7946 0958", "https://uni.edu/~jo"]:
        assert ht.is_contact(s), s
    for s in ["Ann Lee", "Professor of Applied Mathematics", "Room 101", "Dr. O'Neil-Smith"]:
        assert not ht.is_contact(s), s


def test_srcset_and_css_url_readers():
    assert ht.best_srcset("a.jpg 320w, b.jpg 640w, c.jpg 160w") == "b.jpg"
    assert ht.best_srcset("a.jpg, b.jpg 2x, c.jpg 1.5x") == "b.jpg"
    assert ht.best_srcset("/i/x,y.jpg 100w, /i/z.jpg 50w") == "/i/x,y.jpg"  # a comma inside a URL
    assert ht.best_srcset("data:image/gif;base64,R0l 1x") is None and ht.best_srcset("") is None
    assert ht.parse_srcset("a.jpg 10q, b.jpg 5w") == [("b.jpg", 5, None)]  # a bad descriptor drops its candidate
    assert ht.css_urls('background: #eee url( "/p/a.jpg" ) no-repeat; x: url(b.png)') == ["/p/a.jpg", "b.png"]
    assert ht.css_urls("background-image: url()") == []


def test_name_attr_xpath_roles_and_role_after_name_on_one_line():
    from pipeline.scrape.staff.parse import parse_page

    page = """<base href="https://cdn.example.org/d/"><table>
      <tr class="p"><td><img src="//img.example.org/a.jpg" alt="Photo of  Ann Lee"></td><td> </td>
          <td>Professor<br>ann@example.org</td></tr>
      <tr class="p"><td><b>Bo Chen</b>, Senior Lecturer <a href="mailto:bo@example.org">bo@example.org</a></td></tr>
      </table>"""
    site = StaffSite(name="s", department="d", start_urls=[], person="tr.p", name_selector="td:nth-child(2)",
                     name_attr="alt", role_selector="xpath:./td[3]/text()[1]")  # fmt: skip
    [ann, bo] = parse_page(page, "https://www.example.org/people", site).people
    assert (ann["name"], ann["role"], ann["image_url"]) == ("Ann Lee", "Professor", "https://img.example.org/a.jpg")
    site = site.model_copy(update={"name_selector": "b", "role_selector": None, "role_after_name": True})
    bo = parse_page(page, "https://www.example.org/people", site).people[1]
    assert (bo["name"], bo["role"]) == ("Bo Chen", "Senior Lecturer")  # on the name's line, the e-mail dropped


def test_academic_title_first_then_exclusions():
    assert is_academic("Professor Emeritus of History; Special Assistant to the Provost", KEYWORDS)
    assert is_academic("Senior Lecturer", KEYWORDS) and is_academic(None, KEYWORDS)
    assert not is_academic("Department Secretary", KEYWORDS)
    assert not is_academic("Executive Assistant to the Dean", KEYWORDS)
    assert not is_academic("Laboratory Technician", KEYWORDS)


def _png(size, colour=(200, 200, 200)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, "PNG")
    return buf.getvalue()


def test_placeholders_by_url_and_content():
    pats = placeholders.compile_patterns(StaffSite(name="a", department="d", start_urls=[]).placeholder_patterns)
    for url in ["/img/NoPhotoAvailable.jpg", "/a/placeholder-person.png", "/x/default_avatar.jpg", "/s/silhouette.gif"]:
        assert placeholders.by_url(url, pats) == "pattern", url
    assert placeholders.by_url("/a/avatar.SVG?v=2", pats) == "svg"
    assert placeholders.by_url("/photos/jane-doe.jpg", pats) is None
    assert placeholders.by_content(None, None, None, "image/svg+xml") == "svg"
    assert placeholders.by_content(_png((1, 1)), 1, 1) == "tiny"
    assert placeholders.by_content(_png((200, 240)), 200, 240) == "blank"
    noisy = Image.effect_noise((120, 150), 60).convert("RGB")
    buf = io.BytesIO()
    noisy.save(buf, "JPEG")
    assert placeholders.by_content(buf.getvalue(), 120, 150) is None
    shared = placeholders.SharedImages()
    for _ in range(3):
        shared.add("u", "s1")
    shared.add("v", "s1")
    assert shared.placeholder("u", "s1", 3) and not shared.placeholder("v", "s1", 3)
    assert not shared.placeholder("u", "s1", 0)  # 0 turns it off


def test_profile_pages_need_a_selector_and_a_photo_url_shared_by_many_is_a_placeholder():
    from pipeline.scrape.staff.parse import StaffPage

    base = dict(name="a", department="d", start_urls=[], profile_link="a.profile")
    assert not StaffSite(**base).follows_profiles  # a profile link alone is a key: nothing to read there
    assert StaffSite(**base, profile_photo_selector=".bio img").follows_profiles
    assert StaffSite(**base, profile_role_selector=".bio .title").follows_profiles
    assert not StaffSite(**base, profile_photo_selector=".bio img", follow_profiles=False).follows_profiles
    with pytest.raises(ValueError, match="follow_profiles: true needs profile_photo_selector"):
        StaffSite(**base, follow_profiles=True)
    with pytest.raises(ValueError, match="load_more and next_button: give one"):
        StaffSite(**base, load_more="button.more", next_button="button.next")
    site = StaffSite(**base, profile_photo_selector=".bio img")
    assert StaffSite.model_validate(site.model_dump()).follows_profiles  # a dump validates again

    # one photo URL (a logo) for three people of a site: each marked, before any fetch; two people: not
    def page(*people):
        pg = StaffPage("https://u.example/p", [{"item_id": i, "image_url": u} for i, u in people])
        pg.extras = {i: {"placeholder": "pattern" if u and "no-photo" in u else None} for i, u in people}
        return pg

    logo, own = "https://u.example/logo.png", "https://u.example/ann.jpg"
    pages = [page(("p1", logo), ("p2", logo), ("p3", own)), page(("p4", logo), ("p5", None))]
    assert placeholders.by_shared_url(pages, 3) == 3
    marks = {i: e["placeholder"] for pg in pages for i, e in pg.extras.items()}
    assert marks == {"p1": "shared_url", "p2": "shared_url", "p3": None, "p4": "shared_url", "p5": None}
    pages = [page(("p1", logo), ("p2", logo), ("p3", "https://u.example/no-photo.png"))]
    assert placeholders.by_shared_url(pages, 3) == 0 and placeholders.by_shared_url(pages, 0) == 0
    assert placeholders.by_shared_url(pages, 2) == 2  # 0 turns it off; a pattern's mark is kept
    assert pages[0].extras["p3"]["placeholder"] == "pattern"


def test_pager_states_collect_people_by_key():
    """What the browser keeps of a list a next_button replaces: every state's people, once each, by key."""
    from pipeline.scrape.staff.parse import States, parse_page

    site = StaffSite(name="a", department="d", start_urls=[], next_button="button.next")

    def state(*cards):
        return parse_page("".join(f"<div class=person data-id={i}><span class=name>{n}</span>{img}</div>"
                                  for i, n, img in cards), "https://u.example/people", site)  # fmt: skip

    states = States()
    assert states.add(state(("1", "Ann Lee", ""), ("2", "Bo Chen", "<img src=/bo.jpg>"))) == 2
    assert states.add(state(("3", "Cy Dunn", ""), ("1", "Ann Lee", "<img src=/ann.jpg>"))) == 1
    assert states.add(state(("1", "Ann Lee", ""), ("2", "Bo Chen", "<img src=/other.jpg>"))) == 0  # back to page 1
    got = states.parsed()
    assert [(p["item_id"], p["name"], p["image_url"]) for p in got.people] == [
        ("1", "Ann Lee", "https://u.example/ann.jpg"),  # a later state filled in what the first lacked
        ("2", "Bo Chen", "https://u.example/bo.jpg"),  # ... and never replaced what it had
        ("3", "Cy Dunn", None),
    ]
    assert States().parsed().people == []
    # the crawl's bound for such a site: max_pages - 1 clicks, each at most three waits (change, settling, photos)
    from pipeline.config import ScrapeConfig

    sc = ScrapeConfig()
    w = sc.selenium.wait_timeout_s
    pager = StaffSite(name="a", department="d", start_urls=["https://u.example/p"], next_button="b")
    plain = pager.model_copy(update={"next_button": None})
    assert sc.staff_batch_timeout(pager) > sc.staff_batch_timeout(plain)
    assert sc.staff_batch_timeout(pager) >= pager.max_pages * (pager.max_pages - 1) * 3 * w


def test_site_placeholder_patterns_add_to_the_defaults_and_match_the_decoded_url():
    from pipeline.config import DEFAULT_PLACEHOLDER_PATTERNS
    from pipeline.scrape.staff.parse import parse_page

    site = StaffSite(name="a", department="d", start_urls=[], placeholder_patterns=["Blank Profile"])
    assert site.placeholder_patterns == [*DEFAULT_PLACEHOLDER_PATTERNS, "Blank Profile"]
    assert StaffSite.model_validate(site.model_dump()).placeholder_patterns == site.placeholder_patterns  # idempotent
    pats = placeholders.compile_patterns(site.placeholder_patterns)
    for url in ["https://x.edu/i/Blank%20Profile.jpg", "https://x.edu/i/Blank Profile.jpg", "/p/blank%20profile.png"]:
        assert placeholders.by_url(url, pats) == "pattern", url  # the site's own, percent-encoded or not
    assert placeholders.by_url("/img/no%20photo.jpg", pats) == "pattern"  # a default still applies
    # replace: the site's patterns alone
    only = StaffSite(name="a", department="d", start_urls=[], placeholder_patterns=["Blank Profile"],
                     placeholder_patterns_replace=True)  # fmt: skip
    assert only.placeholder_patterns == ["Blank Profile"]
    assert placeholders.by_url("/img/no-photo.jpg", placeholders.compile_patterns(only.placeholder_patterns)) is None
    # what the parser marks on a page: both kinds, never a real photo
    html = """<div class=person><img src="/i/Blank%20Profile.jpg"><span class=name>A B</span></div>
              <div class=person><img src="/i/placeholder.png"><span class=name>C D</span></div>
              <div class=person><img src="/i/c-d.jpg"><span class=name>E F</span></div>"""
    people = parse_page(html, "https://x.edu/people", site).people
    assert [p["placeholder"] for p in people] == ["pattern", "pattern", None]
    # docs/sites.md lists the defaults as they are
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "sites.md").read_text()
    listed = doc.split("(`pipeline.config.DEFAULT_PLACEHOLDER_PATTERNS`):")[1].split("```")[1].strip().splitlines()
    assert listed == list(DEFAULT_PLACEHOLDER_PATTERNS)


# ---------------------------------------------------------------------------------------------------- hypothesis
words = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp")), min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.lists(words, min_size=1, max_size=4), min_size=1, max_size=5), st.sampled_from([" ", "  ", "\n "]))
def test_normaliser_keeps_lines_and_collapses_whitespace(lines, gap):
    """Lines joined by <br> come back one per line, whitespace collapsed, whatever the spacing in the source."""
    from html import escape

    frag = "<br>".join(gap.join(escape(w) for w in line) for line in lines)
    got = lines_of(frag)
    want = [c for c in (ht.collapse(" ".join(line)) for line in lines) if c]
    assert got == want
    for line in got:
        assert line == line.strip() and "  " not in line and "\n" not in line
        assert ht.collapse(line) == line  # idempotent


url_part = st.text(st.sampled_from("abcxyz019-_./,"), min_size=1, max_size=12).filter(
    lambda u: not u.startswith(",") and not u.endswith(",")
)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.tuples(url_part, st.integers(1, 5000)), min_size=1, max_size=6), st.sampled_from([",", ", ", " ,\n"])
)
def test_srcset_parser_round_trips_width_candidates(cands, sep):
    """A srcset written from (url, width) candidates parses back to them; the best is the widest."""
    value = sep.join(f"{u} {w}w" for u, w in cands)
    assert ht.parse_srcset(value) == [(u, w, None) for u, w in cands]
    widest = max(w for _, w in cands)
    assert ht.best_srcset(value) == next(u for u, w in cands if w == widest)


# ---------------------------------------------------------------------------------------------------- Chromium
@pytest.mark.slow
@pytest.mark.chromium
def test_browser_mode_reads_fixture_pages_with_the_same_selectors(tmp_path):
    """One Chromium over six fixture pages: what the static path reads, plus computed backgrounds and statuses."""
    from helpers.staff_fixtures import config, fixture_site, no_limit, site
    from pipeline.scrape.net.egress import policy_for
    from pipeline.scrape.net.http import HttpClient
    from pipeline.scrape.staff.browser import Browser
    from pipeline.scrape.staff.site import StaffScraper

    with fixture_site() as srv:
        names = ("bg", "lazy", "drupal", "cloudflare", "wordpress", "profiles")
        cfg = config(tmp_path, [site(n, srv.base, render="browser") for n in names])
        cfg.scrape.selenium.wait_timeout_s = 3.0
        browser = Browser(cfg.scrape.selenium, "facerank-test", policy_for(cfg, ["127.0.0.1"]))
        scraper = StaffScraper(HttpClient(cfg.scrape.http, ["127.0.0.1"], no_limit), browser, lambda url: None)
        try:
            got = {s.name: scraper.scrape(s) for s in cfg.scrape.staff}
            t0 = time.monotonic()
            never = site("lazy", srv.base, render="browser", photo_attrs=["data-nothing"])
            [slow] = scraper.scrape(never)
            lazy_s = time.monotonic() - t0
        finally:
            browser.quit()

    def by_name(pages):
        return {p["name"]: p for page in pages for p in page.people}

    bg = by_name(got["fx-bg"])
    assert bg["Cal Ivy"]["image_url"] == f"{srv.base}/photos/ivy.jpg"  # the computed style sheet background
    assert bg["Al Fox"]["image_url"] == f"{srv.base}/photos/fox.jpg"
    lazy = {n: p["image_url"].removeprefix(srv.base) for n, p in by_name(got["fx-lazy"]).items()}
    assert lazy == {"Noor Oak": "/photos/oak.jpg", "Ola Pine": "/photos/pine.jpg", "Uma Elm": "/photos/elm.jpg",
                    "Ed Ash": "/photos/ash-400.jpg"}  # fmt: skip
    drupal = got["fx-drupal"]
    assert [(p.status, p.reason, p.http_status, p.render) for p in drupal] == [
        ("ok", None, 200, "browser"),  # wait_for defaulted to the person selector (.views-row)
        ("ok", None, 200, "browser"),
        ("error", "http_404", 404, "browser"),
    ]
    assert by_name(drupal)["Ann Lee"]["image_url"].endswith("/large/public/ann-lee.jpg?itok=aa3")
    [cf] = got["fx-cloudflare"]
    assert (cf.status, cf.reason, cf.http_status) == ("error", "blocked", 403)
    wp = by_name(got["fx-wordpress"])
    assert wp["Paul Bracken"]["role"] == "Professor of Modern History" and "Lena Marsh" in wp
    prof = by_name(got["fx-profiles"])
    assert prof["Leo Ortiz"]["image_url"] == f"{srv.base}/photos/ortiz.jpg"  # a profile page rendered too
    assert prof["Leo Ortiz"]["role"] == "Senior Lecturer; Director of Studies"
    # photos that never get a URL: each card scrolled at most twice, far under wait_timeout_s per page
    assert slow.status == "ok" and all(p["image_url"] is None for p in slow.people) and lazy_s < 2.5


PAGER_HTML = b"""<!DOCTYPE html><html><head><title>People</title></head><body>
<ul id="people"></ul><nav><button class="next" type="button">Next</button></nav>
<script>
const pages = [
  [["a1", "Ann Lee", "Professor"], ["b2", "Bo Chen", "Lecturer"], ["c3", "Cy Dunn", "Reader in Logic"]],
  [["d4", "Di Eze", "Professor"], ["e5", "Ed Fox", "Lecturer"], ["a1", "Ann Lee", "Professor"]],
  [["f6", "Flo Gray", "Research Fellow"]],
];
let n = 0;
const ul = document.getElementById("people"), next = document.querySelector("button.next");
function show() {
  ul.innerHTML = pages[n].map(([id, name, role]) => `<li class="person" data-id="${id}"><img src="/photos/${id}.jpg">`
    + `<span class="name">${name}</span><span class="role">${role}</span></li>`).join("");
  next.disabled = n >= pages.length - 1;
}
next.onclick = () => { n++; location.hash = "page=" + (n + 1); ul.innerHTML = ""; setTimeout(show, 150); };
show();
</script></body></html>"""


@pytest.mark.slow
@pytest.mark.chromium
def test_browser_next_button_collects_every_state_load_more_reads_the_last(tmp_path):
    """A JavaScript pager that replaces the cards (#page=N, a next button, the list empty while it loads)."""
    from helpers.http import Reply, serve
    from helpers.staff_fixtures import config, no_limit
    from pipeline.scrape.net.egress import policy_for
    from pipeline.scrape.net.http import HttpClient
    from pipeline.scrape.staff.browser import Browser
    from pipeline.scrape.staff.site import StaffScraper

    with serve({"/people": Reply(PAGER_HTML, "text/html; charset=utf-8")}) as srv:
        common = dict(department="cs", start_urls=[f"{srv.base}/people"], render="auto", scroll_for_lazy_images=False)
        sites = [
            StaffSite(name="pager", next_button="button.next", **common),
            StaffSite(name="two", next_button="button.next", max_pages=2, **common),
            StaffSite(name="more", load_more="button.next", **common),
        ]
        cfg = config(tmp_path, sites)
        cfg.scrape.selenium.wait_timeout_s = 1.0
        browser = Browser(cfg.scrape.selenium, "facerank-test", policy_for(cfg, ["127.0.0.1"]))
        scraper = StaffScraper(HttpClient(cfg.scrape.http, ["127.0.0.1"], no_limit), browser, lambda url: None)
        try:
            got = {s.name: scraper.scrape(s) for s in cfg.scrape.staff}
        finally:
            browser.quit()
    [pager] = got["pager"]
    assert (pager.status, pager.render, pager.clicks, pager.url) == ("ok", "browser", 2, f"{srv.base}/people")
    assert [(p["item_id"], p["name"], p["role"]) for p in pager.people] == [
        ("a1", "Ann Lee", "Professor"),
        ("b2", "Bo Chen", "Lecturer"),
        ("c3", "Cy Dunn", "Reader in Logic"),
        ("d4", "Di Eze", "Professor"),
        ("e5", "Ed Fox", "Lecturer"),
        ("f6", "Flo Gray", "Research Fellow"),
    ]  # fmt: skip  (Ann, on pages 1 and 2, once; the disabled button on page 3 ended it)
    assert pager.people[5]["image_url"] == f"{srv.base}/photos/f6.jpg"
    [two] = got["two"]
    assert two.clicks == 1 and [p["item_id"] for p in two.people] == ["a1", "b2", "c3", "d4", "e5"]  # max_pages: 2
    # load_more reads the page once, after its clicks: on a pager that replaces the list, only the state it ends on
    # (the list never grew, so it stopped after one click and wait_timeout_s)
    [more] = got["more"]
    assert more.clicks == 1 and [p["item_id"] for p in more.people] == ["d4", "e5", "a1"]


def test_role_lines_first_and_role_exclude():
    from pipeline.scrape.staff.parse import parse_page, parse_profile

    html = """<div class=person><span class=name>Ann Lee</span><div class=role>Professor of History<br>
              <span class=dept>School of Humanities</span><br>Director of Graduate Studies</div></div>
              <div class=person><strong>Bo Chen</strong><br>Lecturer<br><em class=dept>Classics</em><br>Advisor</div>"""
    base = dict(name="a", department="d", start_urls=[], person=".person")

    def roles(**over):
        return [p["role"] for p in parse_page(html, "https://x.edu/", StaffSite(**base, **over)).people]

    assert roles() == ["Professor of History; School of Humanities; Director of Graduate Studies", None]
    assert roles(role_lines="first") == ["Professor of History", None]
    assert roles(role_exclude=".dept") == ["Professor of History; Director of Graduate Studies", None]
    # the bare-text role after the name, and a profile page's role: the same two settings
    after = dict(name_selector="strong", role_selector=None, role_after_name=True, role_exclude=".dept")
    assert roles(**after)[1] == "Lecturer; Advisor"
    assert roles(**after, role_lines="first")[1] == "Lecturer"
    prof = StaffSite(**base, profile_role_selector=".role", role_exclude="span", role_lines="first")
    assert parse_profile(html, "https://x.edu/p", prof)["role"] == "Professor of History"
    with pytest.raises(ValueError, match="role_lines"):
        StaffSite(**base, role_lines="some")
