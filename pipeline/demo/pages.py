"""HTML of the demo sites: the index, the two staff-page layouts whose people are inserted by JavaScript, and two
server-rendered ones (no JavaScript) for the static scraper.

* ``cards`` (cs, econ): ``<div id="people">`` filled 8 at a time from ``people.json?page=N``; each card's
  ``img.photo`` has only ``data-src`` until it scrolls into view (IntersectionObserver); a ``button.load-more``
  appends the next page and is removed when there is none.
* ``table`` (german, mech): ``<table id="staff"><tbody>`` filled with every person from ``people.json?all=1``.

The HTML of those two never contains a person: a plain HTTP client sees empty lists. Every department also has:

* ``directory.html`` (:func:`directory_page`): server-rendered cards, a Drupal views grid (``div.views-row``) with a
  ``srcset`` photo, the name in a link and the role as text after a ``<br>``; no script.
* ``list.html`` (:func:`list_page`): a text-only table whose names link to ``person/<id>.html``
  (:func:`profile_page`), the page that holds the photo and the role.
"""

from __future__ import annotations

from html import escape

_STYLE = """
body { font-family: sans-serif; max-width: 760px; margin: 0 auto; padding: 16px; }
#people .person { display: flex; align-items: center; gap: 20px; height: 280px; border-bottom: 1px solid #ddd; }
.photo { width: 220px; height: 240px; background: #eee; object-fit: cover; }
.name { font-weight: bold; } .role { color: #555; }
.load-more { margin: 24px 0; padding: 8px 24px; font-size: 16px; }
#staff td { padding: 6px 12px; } #staff img { width: 120px; height: 130px; object-fit: cover; }
"""

_CARDS_JS = """
(function () {
  const list = document.getElementById('people');
  const button = document.querySelector('button.load-more');
  let next = 1, busy = false;
  const lazy = new IntersectionObserver(function (entries) {
    for (const e of entries) {
      if (e.isIntersecting) { e.target.src = e.target.dataset.src; lazy.unobserve(e.target); }
    }
  });
  function card(p) {
    const div = document.createElement('div');
    div.className = 'person'; div.dataset.id = p.id;
    const img = document.createElement('img');
    img.className = 'photo'; img.dataset.src = p.photo; img.alt = '';
    const name = document.createElement('span'); name.className = 'name'; name.textContent = p.name;
    const role = document.createElement('span'); role.className = 'role'; role.textContent = p.role;
    div.append(img, name, role);
    return div;
  }
  async function load() {
    if (busy || next === null) return;
    busy = true; button.disabled = true;
    try {
      const r = await fetch('people.json?page=' + next);
      if (!r.ok) throw new Error('HTTP ' + r.status);
      const data = await r.json();
      for (const p of data.people) { const c = card(p); list.appendChild(c); lazy.observe(c.querySelector('img')); }
      next = data.next_page;
    } catch (err) { console.error(err); }
    busy = false; button.disabled = false;
    if (next === null) button.remove();
  }
  button.addEventListener('click', load);
  load();
})();
"""

_TABLE_JS = """
(async function () {
  const body = document.querySelector('#staff tbody');
  const r = await fetch('people.json?all=1');
  const data = await r.json();
  for (const p of data.people) {
    const tr = document.createElement('tr');
    tr.className = 'person'; tr.dataset.id = p.id;
    const tdImg = document.createElement('td');
    const img = document.createElement('img'); img.src = p.photo; img.alt = '';
    tdImg.append(img);
    const name = document.createElement('td'); name.className = 'name'; name.textContent = p.name;
    const role = document.createElement('td'); role.className = 'role'; role.textContent = p.role;
    tr.append(tdImg, name, role);
    body.appendChild(tr);
  }
})();
"""


def _page(title: str, body: str, script: str = "") -> str:
    js = f"<script>{script}</script>" if script else ""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n{js}\n</body></html>\n"
    )


def staff_page(department: str, department_name: str, layout: str) -> str:
    """The staff page of one department in the given layout (``cards`` or ``table``)."""
    title = f"Department of {department_name}: people"
    if layout == "cards":
        body = (
            f'<h1>{escape(title)}</h1>\n<div id="people"></div>\n'
            '<button class="load-more" type="button">Load more</button>'
        )
        return _page(title, body, _CARDS_JS)
    if layout == "table":
        body = (
            f'<h1>{escape(title)}</h1>\n<table id="staff"><thead><tr><th>Photo</th><th>Name</th><th>Role</th>'
            "</tr></thead><tbody></tbody></table>"
        )
        return _page(title, body, _TABLE_JS)
    raise ValueError(f"unknown layout {layout!r}")


def directory_page(department_name: str, people: list[dict]) -> str:
    """Every person of a department as server-rendered cards (``people``: id, name, role, photo URL)."""
    title = f"Department of {department_name}: people"
    cards = "\n".join(
        f'<div class="views-row" data-id="{escape(p["id"])}"><img src="{escape(p["photo"])}?w=120" '
        f'srcset="{escape(p["photo"])}?w=120 120w, {escape(p["photo"])} 240w" alt="">'
        f'<div class="info"><a href="person/{escape(p["id"])}.html">{escape(p["name"])}</a><br>{escape(p["role"])}'
        "</div></div>"
        for p in people
    )
    return _page(title, f'<h1>{escape(title)}</h1>\n<div class="view-content">\n{cards}\n</div>')


def list_page(department_name: str, people: list[dict]) -> str:
    """A text-only directory table: names link to each person's own page, no photos, no roles."""
    title = f"Department of {department_name}: directory"
    rows = "\n".join(
        f'<tr data-id="{escape(p["id"])}"><td><a href="person/{escape(p["id"])}.html">{escape(p["name"])}</a></td>'
        f"<td>{escape(p['id'])}@uni.example</td></tr>"
        for p in people
    )
    return _page(title, f'<h1>{escape(title)}</h1>\n<table id="directory"><tbody>\n{rows}\n</tbody></table>')


def profile_page(person: dict) -> str:
    """One person's own page: name, photo, role."""
    body = (
        f'<div class="profile"><h1>{escape(person["name"])}</h1><img class="portrait" src="{escape(person["photo"])}" '
        f'alt="{escape(person["name"])}"><p class="position">{escape(person["role"])}</p></div>'
    )
    return _page(person["name"], body)


def index_page(base_url: str, departments: dict[str, str]) -> str:
    """A landing page linking the feed API, the flaky site and the staff pages."""
    links = [
        f'<li><a href="{base_url}/api/feed?tag=selfie&amp;page=1">selfie feed (JSON)</a></li>',
        f'<li><a href="{base_url}/flaky/api/feed?tag=me&amp;page=1">flaky feed (JSON, 503 half the time)</a></li>',
    ]
    links += [
        f'<li><a href="{base_url}/uni/{d}/staff.html">{escape(name)}: staff</a></li>' for d, name in departments.items()
    ]
    return _page("facerank demo sites", "<h1>facerank demo sites</h1>\n<ul>\n" + "\n".join(links) + "\n</ul>")
