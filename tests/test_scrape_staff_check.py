"""``python -m pipeline scrape check-site``: the per-person table, outcome lines and exit codes."""

from __future__ import annotations

import yaml

from helpers.staff_fixtures import SITES, fixture_site
from pipeline.cli import main


def _site_file(tmp_path, base: str, name: str, **over) -> str:
    spec = {**SITES[name], **over}
    start = spec.pop("start")
    entry = {"name": name, "department": "maths", "start_urls": [base + start], **spec}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"staff": [entry]}))
    return str(path)


LOOPBACK = ["--set", "scrape.http.allow_private_addresses=true", "--set", "scrape.http.retry.attempts=1"]


def test_check_site_prints_people_next_page_and_saves_html(tmp_path, capsys):
    with fixture_site() as srv:
        cfg = _site_file(tmp_path, srv.base, "drupal", render="static")
        rc = main(["scrape", "check-site", "--config", cfg, "--site", "drupal", "--html", str(tmp_path / "seen")]
                  + LOOPBACK)  # fmt: skip
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "render: static (configured: static)   http status: 200" in out
        assert f"next page: {srv.base}/people?page=1" in out and "people: 3" in out
        rows = [ln for ln in out.splitlines() if ln[:4].strip().isdigit()]
        assert [r.split()[1:3] for r in rows] == [["Ann", "Lee"], ["Bo", "Chen"], ["Cy", "Dunn"]]
        assert "Professor of Applied Mathematics" in rows[0] and rows[0].rstrip().endswith("yes")
        assert "1 without a photo URL, 0 without a name" in out
        assert "ann-lee.jpg" in (tmp_path / "seen" / "drupal-page1.html").read_text()

        # a text-only table: the first profile page is followed and shown; the placeholder column
        cfg = _site_file(tmp_path, srv.base, "profiles")
        assert main(["scrape", "check-site", "--config", cfg, "--site", "profiles"] + LOOPBACK) == 0
        out = capsys.readouterr().out
        assert f"profile page: {srv.base}/dir/profile.php?id=17 -> ok" in out and "id=18" not in out

        # nothing found: exit 1 with the reason; an unknown site: exit 2
        cfg = _site_file(tmp_path, srv.base, "f5", render="static")
        assert main(["scrape", "check-site", "--config", cfg, "--site", "f5"] + LOOPBACK) == 1
        assert "outcome: error: blocked   people: 0" in capsys.readouterr().out
        assert main(["scrape", "check-site", "--config", cfg, "--site", "nope"] + LOOPBACK) == 2
        assert "no staff site named 'nope' (staff sites: f5)" in capsys.readouterr().err
