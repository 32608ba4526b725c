"""Staff directories as real sites build them, read by the static path: HTTP client + parsel, no Ray.

Each fixture under tests/fixtures/staff reproduces one pattern of saved university directories; the tests assert
person by person what the scraper reads (:class:`~pipeline.scrape.staff.site.StaffScraper`) and, through the crawl
driver on its thread pool, which rows come out (:func:`helpers.staff_fixtures.crawl_rows`).
"""

from __future__ import annotations

import pytest

from helpers.staff_fixtures import config, crawl_rows, fixture_site, no_limit, site
from pipeline.config import ConfigError, StaffSite, load_config
from pipeline.scrape.net.http import HttpClient
from pipeline.scrape.staff.parse import StaffPage
from pipeline.scrape.staff.people import person_id
from pipeline.scrape.staff.site import StaffScraper
from pipeline.store import DataRoot


@pytest.fixture(scope="module")
def srv():
    with fixture_site() as s:
        yield s


def scrape(srv, tmp_path, name: str, browser=None, skip=None, **over) -> tuple[list[StaffPage], StaffScraper]:
    s = site(name, srv.base, **over)
    cfg = config(tmp_path, [s])
    scraper = StaffScraper(HttpClient(cfg.scrape.http, ["127.0.0.1"], no_limit), browser, lambda url: None)
    return scraper.scrape(cfg.scrape.staff[0], skip), scraper


def people(pages: list[StaffPage]) -> dict[str, dict]:
    """Each person by name, with the page's extras (profile_url, placeholder) merged in."""
    return {p["name"]: {**p, **page.extras.get(p["item_id"], {})} for page in pages for p in page.people}


def test_drupal_cards_pager_srcset_and_a_404_next_page(srv, tmp_path):
    pages, _ = scrape(srv, tmp_path, "drupal")
    assert [(p.url.removeprefix(srv.base), p.status, p.reason, p.http_status, p.render) for p in pages] == [
        ("/people", "ok", None, 200, "static"),
        ("/people?page=1", "ok", None, 200, "static"),
        ("/people?page=2", "error", "http_404", 404, "static"),  # the pager's next link is dead: said so
    ]
    got = people(pages)
    assert sorted(got) == ["Ann Lee", "Bo Chen", "Cy Dunn", "Di Eze"]  # "Ann  Lee", "Bo\n  Chen" collapsed
    img = f"{srv.base}/sites/default/files/styles"
    assert got["Ann Lee"]["image_url"] == f"{img}/large/public/ann-lee.jpg?itok=aa3"  # srcset's largest (480w)
    assert got["Ann Lee"]["role"] == "Professor of Applied Mathematics"
    assert got["Bo Chen"]["image_url"] == f"{img}/thumbnail/public/bo-chen.jpg?itok=bb1"
    assert got["Cy Dunn"]["image_url"] is None and got["Cy Dunn"]["profile_url"] == f"{srv.base}/people/cy-dunn"
    assert got["Di Eze"]["role"] == "Research Associate"
    # Cy Dunn is on page 1 and (the listing shifted) page 2: one key, from the profile URL, not the page
    cy = [p["item_id"] for page in pages for p in page.people if p["name"] == "Cy Dunn"]
    assert len(cy) == 2 and cy[0] == cy[1] == person_id("fx-drupal", "Cy Dunn", None, f"{srv.base}/people/cy-dunn")


def test_wordpress_layout_table_bare_text_roles_and_emails(srv, tmp_path):
    [page], _ = scrape(srv, tmp_path, "wordpress")
    got = people([page])
    assert sorted(got) == ["Grace Okafor", "Lena Marsh", "Paul Bracken"]  # the e-mail in <strong> is not a name
    assert got["Paul Bracken"]["role"] == "Professor of Modern History"  # <br> separates; e-mail and Tel: dropped
    assert got["Paul Bracken"]["image_url"] == f"{srv.base}/wp-content/uploads/2023/09/bracken-300x300.jpg"
    assert got["Grace Okafor"]["role"] == "Professor Emeritus of History; Special Assistant to the Provost"
    assert got["Lena Marsh"]["role"] == "Department Secretary"


def test_plone_base_href_and_protocol_relative_photo(srv, tmp_path):
    [page], _ = scrape(srv, tmp_path, "plone")
    got = people([page])
    assert got["Kim Park"]["image_url"] == f"{srv.base}/plone/people/kim-park/@@images/image/thumb"
    assert got["Kim Park"]["profile_url"] == f"{srv.base}/plone/people/kim-park"  # relative to <base href>
    assert got["Ravi Shah"]["image_url"] == f"{srv.base}/cdn/ravi-shah.jpg"  # //host/… keeps the page's scheme
    assert got["Kim Park"]["role"] == "Lecturer in Physics"


def test_jquery_lazy_loader_photos_behind_transparent_gifs(srv, tmp_path):
    [page], _ = scrape(srv, tmp_path, "lazy")
    got = {n: p["image_url"].removeprefix(srv.base) for n, p in people([page]).items()}
    assert got == {
        "Noor Oak": "/photos/oak.jpg",  # data-original over a data: GIF
        "Ola Pine": "/photos/pine.jpg",  # data-original over a real 1x1 GIF file
        "Uma Elm": "/photos/elm.jpg",  # data-lazy-src
        "Ed Ash": "/photos/ash-400.jpg",  # data-srcset's largest
    }


def test_css_background_photos_and_srcset_only_images(srv, tmp_path):
    [page], _ = scrape(srv, tmp_path, "bg")
    got = {n: p["image_url"] for n, p in people([page]).items()}
    assert got["Al Fox"] == f"{srv.base}/photos/fox.jpg" and got["Bea Gil"] == f"{srv.base}/photos/gil.jpg"
    assert got["Cal Ivy"] is None  # a style-sheet background: only the browser's computed style has it
    [page], _ = scrape(srv, tmp_path, "srcset")
    got = {n: p["image_url"].removeprefix(srv.base) for n, p in people([page]).items()}
    assert got == {
        "Jo Kern": "/photos/jo-640.jpg",
        "Max Lund": "/photos/max@2x.jpg",
        "Sol Moss": "/photos/sol-800.webp",
    }


def test_page_outcomes_blocked_http_status_and_no_people(srv, tmp_path):
    [cf], _ = scrape(srv, tmp_path, "cloudflare", render="static")
    assert (cf.status, cf.reason, cf.http_status) == ("error", "http_403", 403)
    [f5], _ = scrape(srv, tmp_path, "f5")  # served 200: the page itself says challenge
    assert (f5.status, f5.reason, f5.http_status) == ("error", "blocked", 200)
    [empty], _ = scrape(srv, tmp_path, "empty")
    assert (empty.status, empty.reason, empty.http_status) == ("error", "no_people_found", 200)


class _FakeBrowser:
    """Records which URLs ``auto`` hands to the browser."""

    def __init__(self):
        self.urls: list[str] = []

    def render_page(self, site, url, keep_html=False):
        self.urls.append(url)
        return StaffPage(url, [], "error", "blocked", http_status=403)


def test_auto_uses_the_browser_only_when_the_page_needs_it(srv, tmp_path):
    fake = _FakeBrowser()
    [page], _ = scrape(srv, tmp_path, "lazy", browser=fake)  # people found: scripts or not, no browser
    assert page.render == "static" and page.status == "ok" and not fake.urls
    [page], _ = scrape(srv, tmp_path, "f5", browser=fake)  # a challenge is never tried again in the browser
    assert page.reason == "blocked" and not fake.urls
    [page], _ = scrape(srv, tmp_path, "cloudflare", browser=fake)  # a 403: the rendered page says why
    assert fake.urls == [f"{srv.base}/cf/people.html"] and page.reason == "blocked"
    [page], _ = scrape(srv, tmp_path, "wordpress", browser=fake, person=".nobody")  # 0 people, scripts: browser
    assert fake.urls[-1] == f"{srv.base}/wp/faculty-staff/"
    [page], _ = scrape(srv, tmp_path, "wordpress", browser=fake, person=".nobody", render="static")
    assert page.reason == "no_people_found" and len(fake.urls) == 2


def test_text_only_table_follows_profile_pages_bounded_and_resumable(srv, tmp_path):
    [page], scraper = scrape(srv, tmp_path, "profiles")
    got = people([page])
    assert got["Mia Nash"]["image_url"] == f"{srv.base}/photos/nash.jpg"  # not the logo: profile_photo_selector
    assert got["Mia Nash"]["role"] == "Professor"  # the listing's role is kept
    assert got["Leo Ortiz"]["image_url"] == f"{srv.base}/photos/ortiz.jpg"  # lazy data-src on the profile too
    assert got["Leo Ortiz"]["role"] == "Senior Lecturer; Director of Studies"  # the role the table lacked
    assert got["Zoe Park"]["image_url"] is None  # her profile is a 404
    assert [(f["url"].removeprefix(srv.base), f["status"], f["reason"]) for f in scraper.fetches] == [
        ("/dir/profile.php?id=17", "ok", None),
        ("/dir/profile.php?id=18", "ok", None),
        ("/dir/profile.php?id=19", "error", "http_404"),
    ]
    # a rerun skips people who have rows; max_profiles bounds the rest
    mia = got["Mia Nash"]["item_id"]
    [page], scraper = scrape(srv, tmp_path, "profiles", skip={mia}, max_profiles=1)
    assert [f["url"].removeprefix(srv.base) for f in scraper.fetches] == ["/dir/profile.php?id=18"]
    assert people([page])["Mia Nash"]["image_url"] is None


def test_a_logo_taken_from_every_profile_page_is_a_placeholder_never_fetched(srv, tmp_path):
    """profile_photo_selector: img takes the page's logo for everyone; one URL for placeholder_min_people people."""
    s = site("profiles", srv.base, profile_photo_selector="img", placeholder_min_people=2)
    rows, fetches = crawl_rows(config(tmp_path, [s]))
    logo = f"{srv.base}/img/logo.png"
    assert {n: (r["status"], r["reason"], r["image_url"]) for n, r in rows.items()} == {
        "Mia Nash": ("no_photo", "placeholder", logo),
        "Leo Ortiz": ("no_photo", "placeholder", logo),
        "Zoe Park": ("error", "no_photo", None),  # her profile page is a 404
    }
    assert not [f for f in fetches if f["kind"] == "image"]  # the logo was never fetched


def test_crawl_rows_placeholders_academic_order_and_page_rows(srv, tmp_path):
    """The crawl's work units and row builder (no Ray): placeholders end as no_photo, real photos as ok."""
    sites = [site(n, srv.base) for n in ("placeholders", "wordpress", "profiles")]
    rows, fetches = crawl_rows(config(tmp_path, sites))
    status = {n: (r["status"], r["reason"]) for n, r in rows.items()}
    ph = ("no_photo", "placeholder")
    assert status == {
        "Ada Real": ("ok", None),
        "Ben Real": ("ok", None),
        "Cat Sil": ph,  # the same silhouette bytes under three URLs: the site's placeholder
        "Dan Sil": ph,
        "Eve Sil": ph,
        "Fay Named": ph,  # NoPhotoAvailable.jpg: by placeholder_patterns, never fetched
        "Guy Svg": ph,  # .svg: by URL
        "Hal Tiny": ph,  # a 1x1 GIF
        "Ida Flat": ph,  # one flat colour
        "Jan Svg": ph,  # served as image/svg+xml: not a content_type error
        "Paul Bracken": ("ok", None),
        "Grace Okafor": ("ok", None),  # "Professor Emeritus …; Special Assistant to the Provost" is academic
        "Lena Marsh": ("skipped", "non_academic"),
        "Mia Nash": ("ok", None),
        "Leo Ortiz": ("ok", None),
        "Zoe Park": ("error", "no_photo"),
    }
    assert rows["Cat Sil"]["image_sha256"] == rows["Dan Sil"]["image_sha256"]  # kept: nothing is lost
    assert rows["Fay Named"]["image_url"].endswith("/images/NoPhotoAvailable.jpg")
    assert rows["Ada Real"]["width"] == 160 and rows["Ada Real"]["is_academic"]
    pages = {f["url"].removeprefix(srv.base): f for f in fetches if f["kind"] == "page"}
    assert pages["/ph/people.html"]["http_status"] == 200 and pages["/ph/people.html"]["bytes"] > 1000
    assert pages["/dir/profile.php?id=19"]["reason"] == "http_404"
    # each profile page followed is the profile_url of its person's row (T7: forget --person finds its fetch)
    profiles = {f["url"] for f in fetches if "/dir/profile.php" in f["url"]}
    assert profiles and profiles <= {r["profile_url"] for r in rows.values()}
    images = {f["url"].removeprefix(srv.base) for f in fetches if f["kind"] == "image"}
    assert "/images/NoPhotoAvailable.jpg" not in images and "/images/avatar.svg" not in images


def test_two_entries_sharing_a_url_get_a_page_row_each(srv, tmp_path):
    """One page, two site entries (two departments read from it): each entry's page row and people are its own."""
    first = site("wordpress", srv.base)
    second = first.model_copy(update={"name": "fx-wordpress-math", "department": "math"})
    root = tmp_path / "data"
    _, fetches = crawl_rows(config(tmp_path, [first, second]))
    pages = sorted((f["site"], f["url"], f["status"]) for f in fetches if f["kind"] == "page")
    url = srv.base + "/wp/faculty-staff/"
    assert pages == [("fx-wordpress", url, "ok"), ("fx-wordpress-math", url, "ok")]
    DataRoot(str(root)).write_part("fetches", fetches)  # and a rerun's writer sees both pairs as done
    assert {(s, u) for s, u, _ in pages} <= DataRoot(str(root)).done_keys("fetches")


def test_site_config_defaults_and_site_files(tmp_path):
    s = StaffSite(name="a", department="cs", start_urls=["http://x/"], person=".views-row", profile_selector="a")
    assert s.wait_selector == ".views-row" and s.profile_link == "a" and s.render == "auto"
    assert "data-original" in s.photo_attrs and "srcset" in s.photo_attrs
    with pytest.raises(ValueError, match="placeholder_patterns"):
        StaffSite(name="a", department="cs", start_urls=["http://x/"], placeholder_patterns=["("])
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "maths.yaml").write_text(
        "staff:\n  - {name: maths, department: maths, start_urls: ['http://u.example/people'], render: static}\n"
    )
    (tmp_path / "main.yaml").write_text("sites: [sites/*.yaml]\nscrape: {staff: []}\n")
    cfg = load_config(tmp_path / "main.yaml")
    assert [(s.name, s.render) for s in cfg.scrape.staff] == [("maths", "static")]
    from pipeline.scrape.staff.check import load_site

    for f, name in [("drupal-views", "maths-example"), ("wordpress-table", "history-example"),
                    ("profile-table", "physics-example")]:  # fmt: skip
        assert load_site(f"configs/sites/{f}.example.yaml", name)[1].name == name
    (tmp_path / "sites" / "bad.yaml").write_text("staff:\n  - {name: bad, department: x, start_urls: [], rendr: 1}\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(tmp_path / "main.yaml")


def test_demo_static_and_profile_departments(tmp_path, monkeypatch):
    """configs/demo.yaml's german (server-rendered cards) and mech (text table + profile pages): no browser, every
    person with the demo's own name, role and photo."""
    from pipeline.demo.server import DemoServer

    with DemoServer(n_posts=10, staff_per_department=5) as demo:
        monkeypatch.setenv("DEMO_BASE_URL", demo.base_url)
        cfg = load_config("configs/demo.yaml", {"data_root": str(tmp_path)})
        client = HttpClient(cfg.scrape.http, ["127.0.0.1"], no_limit)
        site_json = demo.site
        for s in cfg.scrape.staff[2:]:
            scraper = StaffScraper(client, None, lambda url: None)
            [page] = scraper.scrape(s)
            want = {
                m.id: (m.name, m.role, f"{demo.base_url}/uni/{m.department}/photo/{m.id}.jpg")
                for m in site_json.content.staff[s.department]
            }
            got = {p["item_id"]: (p["name"], p["role"], p["image_url"]) for p in page.people}
            assert page.render == "static" and got == want, s.name
            assert len(scraper.fetches) == (5 if s.department == "mech" else 0)  # one profile page per person
