"""Staff pages rendered by JavaScript, read with headless Chromium: lazy images, "load more", tables, role filter."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

import pytest

from helpers.http import Handler, serve
from helpers.images import noise_jpeg
from pipeline.config import parse_config
from pipeline.scrape.crawl import crawl
from pipeline.store import DataRoot

pytestmark = [pytest.mark.chromium, pytest.mark.slow]

CARDS = """<!doctype html><html><body><div id="people"></div><button class="load-more">Load more</button>
<script>
let page = 1;
const obs = new IntersectionObserver(es => es.forEach(e => {
  if (e.isIntersecting) { e.target.src = e.target.dataset.src; obs.unobserve(e.target); } }));
async function load() {
  const d = await (await fetch('people.json?page=' + page)).json();
  for (const p of d.people) {
    const div = document.createElement('div'); div.className = 'person'; div.dataset.id = p.id;
    div.style.height = '700px';
    div.innerHTML = `<img class="photo" data-src="${p.photo}" alt=""><span class="name">${p.name}</span>
                     <span class="role">${p.role}</span>`;
    document.getElementById('people').appendChild(div); obs.observe(div.querySelector('img'));
  }
  page++;
  if (!d.next) document.querySelector('.load-more').remove();
}
document.querySelector('.load-more').onclick = load; load();
</script></body></html>"""

TABLE = """<!doctype html><html><body><table id="staff"><tbody></tbody></table><script>
fetch('people.json?all=1').then(r => r.json()).then(d => { for (const p of d.people) {
  const tr = document.createElement('tr'); tr.className = 'person'; tr.dataset.id = p.id;
  tr.innerHTML = `<td><img src="${p.photo}"></td><td class="name">${p.name}</td><td class="role">${p.role}</td>`;
  document.querySelector('#staff tbody').appendChild(tr); } });
</script></body></html>"""

ROLES = ["Professor", "Lecturer", "Secretary", "PhD student", "Department Administrator", "Postdoc"]


def _people(dept: str, n: int, base: str) -> list[dict]:
    return [
        {
            "id": f"{dept}{i}",
            "name": f"Person {dept} {i}",
            "role": ROLES[i % len(ROLES)],
            "photo": f"{base}/uni/{dept}/photo/{dept}{i}.jpg",
        }
        for i in range(n)
    ]


class _Uni(Handler):
    def do_GET(self):  # noqa: N802
        u = urlsplit(self.path)
        base = self.base
        parts = u.path.strip("/").split("/")
        if u.path == "/robots.txt":
            return self.send(200, b"User-agent: *\nDisallow: /private/\n", "text/plain")
        if len(parts) == 3 and parts[2] == "staff.html":
            return self.send(200, (CARDS if parts[1] == "cs" else TABLE).encode(), "text/html")
        if len(parts) == 3 and parts[2] == "people.json":
            people = _people(parts[1], 10 if parts[1] == "cs" else 6, base)
            q = parse_qs(u.query)
            if "page" in q:
                page = int(q["page"][0])
                doc = {"people": people[(page - 1) * 4 : page * 4], "next": page * 4 < len(people)}
            else:
                doc = {"people": people, "next": False}
            return self.send(200, json.dumps(doc).encode(), "application/json")
        if len(parts) == 4 and parts[2] == "photo":
            return self.send(200, noise_jpeg(20, 24, abs(hash(parts[3])) % 2**32), "image/jpeg")
        self.send_error(404)


@pytest.fixture(scope="module")
def uni():
    with serve(_Uni) as srv:
        yield srv.base


def test_staff_cards_lazy_load_more_and_table(ray_session, uni, tmp_path):
    cfg = parse_config(
        {
            "data_root": str(tmp_path / "d"),
            "scrape": {
                "num_actors": 1,
                "http": {"allow_private_addresses": True, "requests_per_second_per_host": 500},
                "selenium": {"wait_timeout_s": 15, "page_load_timeout_s": 30},
                "staff": [
                    # only src counts here: a photo is found only if scrolling made the lazy loader set it
                    {
                        "name": "cs",
                        "department": "cs",
                        "start_urls": [f"{uni}/uni/cs/staff.html"],
                        "photo_selector": "img.photo",
                        "photo_attrs": ["src"],
                        "load_more": "button.load-more",
                    },
                    {
                        "name": "mech",
                        "department": "mech",
                        "start_urls": [f"{uni}/uni/mech/staff.html"],
                        "wait_for": "tr.person",
                        "person": "tr.person",
                        "name_selector": "td.name",
                        "role_selector": "td.role",
                        "photo_selector": "img",
                    },
                ],
            },
        },
        "test",
    )
    s = crawl(cfg)
    t = DataRoot(str(tmp_path / "d")).read("staff").to_pylist()
    assert len(t) == 16 and len({(r["site"], r["item_id"]) for r in t}) == 16
    cs = {r["item_id"]: r for r in t if r["site"] == "cs"}
    assert set(cs) == {f"cs{i}" for i in range(10)}  # all three "load more" pages
    non_academic = [r for r in t if not r["is_academic"]]
    assert {r["role"] for r in non_academic} == {"Secretary", "Department Administrator"}
    assert s["non_academic"] == len(non_academic) == 5
    assert all(r["status"] == "skipped" and r["reason"] == "non_academic" for r in non_academic)
    academic = [r for r in t if r["is_academic"]]
    bad = [(r["item_id"], r["status"], r["reason"], r["image_url"]) for r in academic if r["status"] != "ok"]
    assert not bad
    assert all(r["image_sha256"] and r["width"] == 20 for r in academic)
    assert {r["department"] for r in t} == {"cs", "mech"}
    assert s["staff_written"] == 16 and s["pages"] == 2
    s2 = crawl(cfg)  # rerun: nothing new
    assert s2["staff_written"] == 0 and DataRoot(str(tmp_path / "d")).read("staff").num_rows == 16
