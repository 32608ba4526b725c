"""``python -m pipeline scrape check-site``: the per-person table, outcome lines and exit codes."""

from __future__ import annotations

import json

import yaml

from helpers.staff_fixtures import FIXTURES, SITES, fixture_site
from pipeline.cli import main


def _site_file(tmp_path, base: str, name: str, **over) -> str:
    spec = {**SITES[name], **over}
    start = spec.pop("start")
    entry = {"name": name, "department": "maths", "start_urls": [base + start], **spec}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"staff": [entry]}))
    return str(path)


LOOPBACK = ["--set", "scrape.http.allow_private_addresses=true", "--set", "scrape.http.retry.attempts=1"]


def _people(out: str) -> list[dict[str, str]]:
    """check-site's per-person blocks: {"name": ..., label: whole value (wrapped lines joined)}."""
    people: list[dict[str, str]] = []
    label = None
    for ln in out.splitlines():
        if ln[:4].strip().isdigit() and ln[:5].endswith(" "):
            people.append({"name": ln[5:].strip()})
        elif people and ln.startswith("     ") and ln.strip():
            head, rest = ln[5:18].strip(), ln[18:]
            if head.endswith(":"):
                label = head[:-1]
                people[-1][label] = rest
            elif head == "" and label:
                sep = "" if people[-1][label].startswith("http") else " "
                people[-1][label] += sep + rest
        elif not ln.strip():
            label = None
    return people


def test_check_site_prints_people_next_page_and_saves_html(tmp_path, capsys):
    with fixture_site() as srv:
        cfg = _site_file(tmp_path, srv.base, "drupal", render="static")
        rc = main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--html", str(tmp_path / "seen")]
                  + LOOPBACK)  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "render: static (configured: static)   http status: 200" in out
        assert f"next page: {srv.base}/people?page=1" in out and "people: 3" in out
        people = _people(out)
        assert [p["name"] for p in people] == ["Ann Lee", "Bo Chen", "Cy Dunn"]
        assert people[0]["role"] == "Professor of Applied Mathematics" and people[0]["academic"] == "yes"
        assert people[0]["photo"] == f"{srv.base}/sites/default/files/styles/large/public/ann-lee.jpg?itok=aa3"
        assert people[0]["fetch photo"] == "yes" and people[0]["key"].startswith("h")
        assert "3 people on 1 page(s): 1 without a photo URL, 0 without a name; 2 photos would be fetched" in out
        assert "ann-lee.jpg" in (tmp_path / "seen" / "drupal-page1.html").read_text()

        # a text-only table: the first profile page is followed and shown; the placeholder column
        cfg = _site_file(tmp_path, srv.base, "profiles")
        assert main(["scrape", "check-site", "--config", cfg, "--site", "profiles"] + LOOPBACK) == 0
        out = capsys.readouterr().out
        assert f"profile page: {srv.base}/dir/profile.php?id=17 -> ok" in out and "profile page: " not in out.replace(
            f"profile page: {srv.base}/dir/profile.php?id=17", ""
        )

        # nothing found: exit 1 with the reason; an unknown site: exit 2
        cfg = _site_file(tmp_path, srv.base, "f5", render="static")
        assert main(["scrape", "check-site", "--config", cfg, "--site", "f5"] + LOOPBACK) == 1
        assert "outcome: error: blocked   people: 0" in capsys.readouterr().out
        assert main(["scrape", "check-site", "--config", cfg, "--site", "nope"] + LOOPBACK) == 2
        assert "no staff site named 'nope' (staff sites: f5)" in capsys.readouterr().err


def _saved_site(tmp_path) -> str:
    """The drupal fixture's site, with its start URL at a host that does not exist (nothing may be fetched)."""
    entry = {"name": "drupal", "department": "maths", "start_urls": ["https://dept.example/people"], **SITES["drupal"]}
    entry.pop("start")
    path = tmp_path / "drupal.yaml"
    path.write_text(yaml.safe_dump({"staff": [entry]}))
    return str(path)


def test_check_site_reads_saved_pages_as_if_served_at_a_url(tmp_path, capsys):
    cfg = _saved_site(tmp_path)
    saved = tmp_path / "saved"
    saved.mkdir()
    (saved / "1-people.html").write_text((FIXTURES / "drupal_people.html").read_text())
    (saved / "2-people.html").write_text((FIXTURES / "drupal_people_page1.html").read_text())
    (saved / "notes.txt").write_text("not a page")
    as_url = "https://dept.example/people"
    # one file: page 1 at --as; relative photo and next-page links resolve against it; nothing is fetched
    rc = main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--saved", str(saved / "1-people.html"),
               "--as", as_url])  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0, out
    assert f"render: saved file {saved / '1-people.html'}" in out and "http status: -" in out
    assert "next page: https://dept.example/people?page=1" in out
    people = _people(out)
    assert people[0]["photo"] == "https://dept.example/sites/default/files/styles/large/public/ann-lee.jpg?itok=aa3"
    assert [p["fetch photo"] for p in people] == ["yes", "yes", "no: no photo URL"]
    # a folder: its .html files are the pages in name order, page 2 served at page 1's next-page link
    rc = main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--saved", str(saved), "--as", as_url,
               "--pages", "5", "--json"])  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert [p["url"] for p in rep["pages"]] == [as_url, "https://dept.example/people?page=1"]
    assert rep["pages"][1]["next_url"] == "https://dept.example/people?page=2"
    di = next(p for p in rep["people"] if p["name"] == "Di Eze")
    assert di["page"] == 2 and di["image_url"].startswith("https://dept.example/sites/default/files/")
    # the photos a crawl would refuse say so, with the setting behind it
    rc = main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--saved", str(saved), "--as",
               "http://127.0.0.1:9/people", "--json"])  # fmt: skip
    rep = json.loads(capsys.readouterr().out)
    assert rep["people"][0]["fetch"].startswith("no: private_address (")
    assert "scrape.http.allow_private_addresses" in rep["people"][0]["fetch"]
    # --saved without --as, --as without --saved, a missing file: one line, exit 2
    assert main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--saved", str(saved)]) == 2
    assert "--saved needs --as URL" in capsys.readouterr().err
    assert main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--as", as_url]) == 2
    assert main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--saved", "/nope", "--as", as_url]) == 2
    assert "no such file or folder" in capsys.readouterr().err


LONG_ROLE = "Professor of Applied Mathematics and Director of the Centre for Computational Fluid Dynamics (on leave)"
LONG_PHOTO = "/photos/a-very-long-directory-name/another-level/ann-lee-headshot-2024-large-version-final.jpg"
KEYS_PAGE = f"""<html><body>
<div class="person" data-id="p1"><img src="{LONG_PHOTO}"><span class="name">Ann Lee</span>
  <span class="role">{LONG_ROLE}</span></div>
<div class="person" data-id="p1"><span class="name">Bo Chen</span><span class="role">Lecturer</span></div>
<div class="person"><div data-id="nested-9"><span class="name">Cy Dunn</span></div></div>
</body></html>"""


def test_check_site_prints_keys_whole_values_and_warns_on_shared_keys(tmp_path, capsys):
    entry = {"name": "k", "department": "maths", "start_urls": ["https://dept.example/people"], "person": ".person"}
    cfg = tmp_path / "k.yaml"
    cfg.write_text(yaml.safe_dump({"staff": [entry]}))
    page = tmp_path / "people.html"
    page.write_text(KEYS_PAGE)
    argv = [
        "scrape",
        "check-site",
        "--config",
        str(cfg),
        "--site",
        "k",
        "--saved",
        str(page),
        "--as",
        entry["start_urls"][0],
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    people = _people(out)
    # the person element's own data-id is the key; a nested one is not read (a hash of the site and name instead)
    assert [p["key"] for p in people[:2]] == ["p1", "p1"] and people[2]["key"] not in ("nested-9", "p1")
    assert "warning: page 1: 2 people share the key 'p1' (Ann Lee, Bo Chen)" in " ".join(out.split())
    # whole values, wrapped to the width: nothing cut
    assert people[0]["role"] == LONG_ROLE and people[0]["photo"] == "https://dept.example" + LONG_PHOTO
    assert max(len(ln) for ln in out.splitlines() if ln.startswith("     ")) <= 160
    # --json: the full rows
    assert main(argv + ["--json"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert rep["people"][0] == {
        "page": 1, "item_id": "p1", "name": "Ann Lee", "role": LONG_ROLE,
        "image_url": "https://dept.example" + LONG_PHOTO, "profile_url": None, "placeholder": None,
        "academic": True, "fetch": "yes",
    }  # fmt: skip
    assert len(rep["warnings"]) == 1 and "'p1'" in rep["warnings"][0]


CDN_PAGE = """<html><body>
<div class="person"><img src="/photos/ann.jpg"><span class="name">Ann Lee</span><span class="role">Lecturer</span></div>
<div class="person"><img src="https://d1x.cloudfront.net/bo.jpg"><span class="name">Bo Chen</span>
  <span class="role">Professor</span></div>
</body></html>"""


def test_check_site_says_which_photo_a_crawl_refuses_and_the_setting_that_allows_it(tmp_path, capsys):
    """A photo on another host (a CDN) is refused by the crawl unless a photo host names it: check-site says so per
    person, with the setting; a per-site ``photo_hosts`` glob (set by name) lets it through."""
    entry = {"name": "c", "department": "maths", "start_urls": ["https://dept.example/people"], "person": ".person"}
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"staff": [entry]}))
    page = tmp_path / "people.html"
    page.write_text(CDN_PAGE)
    argv = ["scrape", "check-site", "--config", str(cfg), "--site", "c", "--saved", str(page), "--as",
            entry["start_urls"][0]]  # fmt: skip
    assert main(argv) == 0
    ann, bo = _people(capsys.readouterr().out)
    assert ann["fetch photo"] == "yes"
    assert bo["fetch photo"].startswith("no: outside_photo_hosts (photos of c may come from")
    assert "add 'd1x.cloudfront.net' (or '*.cloudfront.net') to this site's photo_hosts" in bo["fetch photo"]
    assert main(argv + ["--set", "scrape.staff[c].photo_hosts=['*.cloudfront.net']", "--json"]) == 0
    assert [p["fetch"] for p in json.loads(capsys.readouterr().out)["people"]] == ["yes", "yes"]


def test_check_site_follows_pages_and_sets_a_site_by_name(tmp_path, capsys):
    with fixture_site() as srv:
        cfg = _site_file(tmp_path, srv.base, "drupal")  # render: auto in the file
        argv = ["scrape", "check-site", "--config", cfg, "--site", "drupal", "--pages", "3", "--json",
                "--set", "scrape.staff[drupal].render=static"] + LOOPBACK  # fmt: skip
        assert main(argv) == 1  # page 3 (?page=2) is a 404
        rep = json.loads(capsys.readouterr().out)
        assert rep["render"] == "static"
        assert [(p["url"].removeprefix(srv.base), p["status"], p["reason"]) for p in rep["pages"]] == [
            ("/people", "ok", None), ("/people?page=1", "ok", None), ("/people?page=2", "error", "http_404"),
        ]  # fmt: skip
        assert [p["name"] for p in rep["people"] if p["page"] == 2] == ["Cy Dunn", "Di Eze"]
    # a name no site has: one line naming those there are, exit 2
    assert (
        main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--set", "scrape.staff[maths].person=x"])
        == 2
    )
    assert "no item [maths] (names: drupal)" in capsys.readouterr().err


def test_check_site_errors_name_what_to_fix(tmp_path, capsys):
    from pipeline.config import SeleniumConfig
    from pipeline.scrape.staff.browser import Browser

    # no Chromium: the path tried, the setting and the packages; exit 5 (before any fetch)
    cfg = _site_file(tmp_path, "http://127.0.0.1:9", "drupal", render="browser")
    argv = ["scrape", "check-site", "--config", cfg, "--site", "drupal", "--set",
            "scrape.selenium.chromium_path=/nonexistent/chromium"]  # fmt: skip
    assert main(argv) == 5
    err = capsys.readouterr().err
    assert "Chromium not found at /nonexistent/chromium (scrape.selenium.chromium_path)" in err
    assert "apt-get install chromium chromium-driver" in err
    # render: auto with a button to click (next_button, like load_more) needs Chromium at once: exit 5 as well
    cfg_pager = _site_file(tmp_path, "http://127.0.0.1:9", "drupal", next_button="button.next")
    assert main([*argv[:3], cfg_pager, *argv[4:]]) == 5
    assert "Chromium not found at /nonexistent/chromium" in capsys.readouterr().err
    page = Browser(SeleniumConfig(chromedriver_path="/nonexistent/chromedriver"), "ua").render_page(
        _site(cfg), "http://127.0.0.1:9/people"
    )
    assert (page.status, page.reason) == ("error", "no_chromium")
    # a private address: the hint names the setting that allows it
    cfg = _site_file(tmp_path, "http://127.0.0.1:9", "drupal", render="static")
    assert main(["scrape", "check-site", "--config", cfg, "--site", "drupal"]) == 1
    out = capsys.readouterr().out
    assert "outcome: error: private_address   people: 0" in out
    assert "hint: a site on this machine or a private network: set scrape.http.allow_private_addresses: true" in out


def _site(path: str):
    from pipeline.scrape.staff.check import load_site

    return load_site(path, "drupal")[1]


def test_walkthroughs_in_the_docs_run_as_shown(monkeypatch, capsys, tmp_path):
    """docs/sites.md's walkthroughs: each site file is the one shown, each command prints the output shown."""
    import re
    import shlex
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    doc = (repo / "docs" / "sites.md").read_text()
    section = doc[doc.index("## Walkthroughs") :]
    section = section[: section.index("\n## ", 1)]
    blocks = re.findall(r"```(\w*)\n(.*?)```", section, flags=re.S)
    monkeypatch.chdir(repo)
    monkeypatch.setenv("COLUMNS", "100")
    configs = [b for lang, b in blocks if lang == "yaml"]
    assert len(configs) == 3
    for block in configs:
        path = block.splitlines()[0].removeprefix("# ")
        assert yaml.safe_load(block) == yaml.safe_load((repo / path).read_text()), path
    runs = [(b.strip(), blocks[i + 1]) for i, (lang, b) in enumerate(blocks) if b.startswith("python -m pipeline")]
    found = {}
    for command, (lang, shown) in runs:
        assert lang == "text", command
        assert main(shlex.split(command)[3:]) == 0, command
        out = capsys.readouterr().out
        assert out.rstrip("\n") == shown.rstrip("\n"), command
        site = shlex.split(command)[shlex.split(command).index("--site") + 1]
        found[site] = {p["name"]: (p["photo"], p["fetch photo"]) for p in _people(out)}
    chem = "https://www.chem.example.edu"
    assert found["chem"] == {
        "Amara Okonkwo": (f"{chem}/sites/default/files/portraits/okonkwo.jpg", "yes"),  # data-src behind a data: GIF
        "Tomas Lindqvist": (f"{chem}/sites/default/files/portraits/lindqvist.jpg", "yes"),
        "Wen Zhao": (f"{chem}/themes/custom/chem/images/default-avatar.png", "no: placeholder (placeholder_patterns)"),
        "Grace Mbeki": (f"{chem}/sites/default/files/portraits/mbeki.jpg", "no: non_academic"),
    }
    assert found["history"] == {
        "Harriet Whitlock": ("https://www.history.example.ac.uk/media/staff/whitlock-harriet.jpg", "yes"),  # profile
        "Olusegun Banjo": ("-", "no: no photo URL"),
        "Marta Rossi": ("-", "no: no photo URL"),
    }
    up = "https://www.econ.example.edu/wp-content/uploads/2024"
    assert found["econ"] == {
        "Rahul Mehta": (f"{up}/02/mehta-400x400.jpg", "yes"),  # style="background-image: url('...')"
        "Lucía Castillo": (f"{up}/02/castillo-400x400.jpg", "yes"),  # data-bg
        "Petra Novak": (f"{up}/03/novak-400x400.jpg", "yes"),  # url(&quot;...&quot;)
    }
    # --saved-profile: only with --saved, for a site that follows profile pages; one line, exit 2
    w = "tests/fixtures/staff/walkthrough"
    base = ["scrape", "check-site", "--config", f"{w}/cards.yaml", "--site", "chem"]
    assert main([*base, "--saved-profile", f"{w}/table-profile.html"]) == 2
    assert "--saved-profile FILE goes with --saved PATH --as URL" in capsys.readouterr().err
    saved = [
        "--saved",
        f"{w}/cards.html",
        "--as",
        f"{chem}/people/faculty",
        "--saved-profile",
        f"{w}/table-profile.html",
    ]
    assert main([*base, *saved]) == 2
    assert "site 'chem' follows no profile pages" in capsys.readouterr().err
    # one photo URL for placeholder_min_people (3) people: shown as a placeholder, not fetched
    cards = "".join(f'<div class=person><img src="{u}"><span class=name>P {i}</span></div>'
                    for i, u in enumerate(["/logo.png", "/logo.png", "/logo.png", "/own.jpg"]))  # fmt: skip
    (tmp_path / "p.html").write_text(f"<html><body>{cards}</body></html>")
    site = {"name": "x", "department": "d", "start_urls": ["https://u.example/people"]}
    (tmp_path / "x.yaml").write_text(yaml.safe_dump({"staff": [site]}))
    argv = ["scrape", "check-site", "--config", str(tmp_path / "x.yaml"), "--site", "x", "--json"]
    assert main([*argv, "--saved", str(tmp_path / "p.html"), "--as", "https://u.example/people"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert [(p["placeholder"], p["fetch"][:16]) for p in rep["people"]] == [
        *[("shared_url", "no: placeholder ")] * 3,
        (None, "yes"),
    ]
