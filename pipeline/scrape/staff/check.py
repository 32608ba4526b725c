"""``python -m pipeline scrape check-site --config FILE --site NAME``: try one staff site config.

Reads the site's listing pages (``--pages N``, default 1: the first, then its next-page links) exactly as the crawl
would (:class:`~pipeline.scrape.staff.site.StaffScraper`: same HTTP client checks, same render choice, same parser),
with the first profile page a person needs, or, with ``--saved PATH --as URL``, a saved page (a file, or a folder
whose ``.html`` files are the pages in name order) parsed by the same parser as if served at ``URL`` (page 2 at page
1's next-page link, ...): relative photo and next-page links resolve as live, and nothing is fetched;
``--saved-profile FILE`` is then read as the first profile page the crawl would follow (at that person's profile
URL).

It prints, per page, its URL, how it was read, the HTTP status, the outcome and the next-page link; per person the
key (``item_id``), name, role and photo URL in full (wrapped), whether the URL says placeholder, whether the role
counts as academic and whether the crawl would fetch the photo (``yes``, or why not: ``no: non_academic``, a
placeholder, a refused address, or a photo whose host is not one of the site's photo hosts, naming the setting that
allows it); a warning when people of one page share a key; a hint naming the setting behind a refusal
(``private_address``: ``scrape.http.allow_private_addresses``). ``--json`` prints all of it as one JSON document
instead. Nothing is written to the data root and no image is fetched (one photo URL for ``placeholder_min_people``
people shows as ``shared_url``; the same bytes under several URLs only in the crawl). ``--html DIR`` saves what the
scraper saw (the HTTP body, or Chromium's rendered DOM) as ``DIR/<site>-page<N>.html``.

``FILE`` is a whole config, or a site file (``staff:`` list, as under ``configs/sites/``), read with the defaults.
Exit code 0 when every page read gave at least one person, 1 otherwise (the outcome line says why), 2 for a bad
config or an unknown site, 5 when the site needs Chromium (or chromedriver) and it is not installed. Control
characters in what is printed (it comes from the page) are written escaped (``\\x1b``).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import sys
import textwrap
from pathlib import Path
from urllib.parse import urlsplit

from pipeline.config import Config, ConfigError, StaffSite, load_site_entry, parse_overrides

EXIT_OK, EXIT_NOTHING, EXIT_CONFIG, EXIT_NO_BROWSER = 0, 1, 2, 5
SAVED_SUFFIXES = (".html", ".htm", ".xhtml")

# the setting that allows what a reason refuses
HINTS = {
    "private_address": "a site on this machine or a private network: set scrape.http.allow_private_addresses: true "
    "(here: --set scrape.http.allow_private_addresses=true)",
    "outside_allowed_domains": "pages may come from the configured sites' hosts and scrape.allowed_domains: add the "
    "host to scrape.allowed_domains",
    "redirect_outside_allowed_domains": "it redirects to a host outside the sites' hosts and scrape.allowed_domains",
    "robots": "robots.txt disallows it (scrape.http.obey_robots)",
}


# why a photo URL is a placeholder (pipeline.scrape.staff.placeholders)
PLACEHOLDER_WHY = {
    "svg": "the URL names an SVG",
    "pattern": "placeholder_patterns",
    "shared_url": "the same photo URL for placeholder_min_people or more people: a placeholder or a logo",
}


def load_site(path: str, name: str, overrides: dict | None = None) -> tuple[Config, StaffSite]:
    """The config and the staff site ``name`` from a config file or a site file. Raises :class:`ConfigError`."""
    return load_site_entry(path, "staff", name, overrides)


def saved_files(path: str) -> list[Path]:
    """The saved pages at ``path``: the file, or the folder's ``.html`` files in name order. Raises ConfigError."""
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in SAVED_SUFFIXES)
        if files:
            return files
        raise ConfigError(f"--saved {path}: no .html file in the folder")
    raise ConfigError(f"--saved {path}: no such file or folder")


def read_saved(site: StaffSite, files: list[Path], as_url: str, keep_html: bool = False) -> list:
    """The saved ``files`` parsed as ``site``'s pages: the first served at ``as_url``, each next one at the previous
    page's next-page link (:func:`~pipeline.scrape.staff.parse.paginate`, nothing fetched)."""
    from pipeline.scrape.staff.parse import StaffPage, outcome, paginate, parse_page

    left = list(files)

    def render(url: str) -> StaffPage:
        f = left.pop(0)
        html = f.read_bytes().decode("utf-8", "replace")  # as the static path decodes an HTTP body
        page = StaffPage(url, [], "ok", None, render=f"saved file {f}")
        page.html = html if keep_html else None
        return outcome(page, parse_page(html, url, site))

    one = site.model_copy(update={"start_urls": [as_url], "max_pages": len(files)})
    return paginate(one, lambda url: None, render)


def read_saved_profile(site: StaffSite, pages: list, file: Path) -> list[dict]:
    """The saved profile page ``file`` read as the first profile page the crawl would follow for ``pages`` (served at
    that person's profile URL, the crawl's rule: :meth:`~pipeline.scrape.staff.site.StaffScraper.follow_profiles`);
    returns its ``fetches``-like row (none when nobody needs a profile page)."""
    from pipeline.scrape.staff.parse import parse_profile
    from pipeline.scrape.staff.site import StaffScraper

    rows: list[dict] = []

    def read(url: str, render: str) -> dict:
        rows.append({"url": url, "status": "ok", "reason": None, "read": f"saved file {file}"})
        return parse_profile(file.read_bytes(), url, site)

    scraper = StaffScraper(None, None, lambda url: None)  # type: ignore[arg-type]  # nothing is fetched
    scraper.follow_profiles(site.model_copy(update={"max_profiles": 1}), pages, set(), read=read)
    return rows


def _hint(reason: str | None) -> str:
    return f" ({HINTS[reason]})" if reason in HINTS else ""


def _photo_fetch(person: dict, placeholder: str | None, client, site: str = "", photos: list[str] | None = None) -> str:
    """``yes`` when the crawl would fetch the person's photo (robots.txt aside), else why not; a photo host refused
    names the setting that allows it."""
    from pipeline.scrape.net.address import photo_host_setting

    url = person.get("image_url")
    if not url:
        return "no: no photo URL"
    if placeholder:
        return f"no: placeholder ({PLACEHOLDER_WHY.get(placeholder, placeholder)})"
    refused = client.check_url(url, hosts=photos)
    if refused and refused[1] == "outside_photo_hosts":
        return f"no: outside_photo_hosts ({photo_host_setting(site, urlsplit(url).hostname)})"
    return f"no: {refused[1]}{_hint(refused[1])}" if refused else "yes"


def _block(label: str, value: str, width: int) -> str:
    """``label value`` wrapped to ``width``, continuation lines under the value; long words (URLs) are split, never
    cut short."""
    head = f"     {label + ':':<13}"
    return textwrap.fill(
        value, width, initial_indent=head, subsequent_indent=" " * len(head), break_long_words=True,
        break_on_hyphens=False,
    )  # fmt: skip


def report(
    cfg: Config, site: StaffSite, pages: list, fetches: list[dict], client, photos: list[str] | None = None
) -> dict:
    """What check-site found, as a JSON-able dict: pages, people (full rows), profile pages, warnings. ``photos``:
    the site's photo hosts (:func:`~pipeline.scrape.net.address.photo_hosts`)."""
    from pipeline.scrape.staff.people import is_academic

    out_pages, people, warnings = [], [], []
    for n, page in enumerate(pages, 1):
        out_pages.append(
            {
                "page": n,
                "url": page.url,
                "read": page.render,
                "http_status": page.http_status,
                "status": page.status,
                "reason": page.reason,
                "hint": HINTS.get(page.reason),
                "people": len(page.people),
                "next_url": page.next_url,
            }
        )
        keys = collections.Counter(p["item_id"] for p in page.people)
        for key, count in keys.items():
            if count > 1:
                who = ", ".join(str(p.get("name")) for p in page.people if p["item_id"] == key)
                warnings.append(
                    f"page {n}: {count} people share the key {key!r} ({who}): the crawl keeps one row per key; "
                    "the key is the person element's own data-id, else the profile link, else the name"
                )
        for p in page.people:
            extra = page.extras.get(p["item_id"], {})
            placeholder = extra.get("placeholder")
            academic = is_academic(p.get("role"), cfg.scrape.non_academic_roles)
            people.append(
                {
                    "page": n,
                    "item_id": p["item_id"],
                    "name": p.get("name"),
                    "role": p.get("role"),
                    "image_url": p.get("image_url"),
                    "profile_url": extra.get("profile_url"),
                    "placeholder": placeholder,
                    "academic": academic,
                    # the crawl keeps no photo of non-academic staff (a skipped row, nothing fetched)
                    "fetch": _photo_fetch(p, placeholder, client, site.name, photos)
                    if academic
                    else "no: non_academic",
                }
            )
    profiles = [
        {
            "url": f["url"],
            "status": f["status"],
            "reason": f["reason"],
            "hint": HINTS.get(f["reason"]),
            "read": f.get("read"),
        }
        for f in fetches
    ]
    return {
        "site": site.name,
        "department": site.department,
        "render": site.render,
        "pages": out_pages,
        "profile_pages": profiles,
        "people": people,
        "warnings": warnings,
    }


def print_report(rep: dict, out, width: int | None = None) -> None:
    """The report as text: page lines, one block per person (whole values, wrapped), warnings, the counts."""
    width = width or max(60, min(shutil.get_terminal_size((100, 24)).columns, 160))
    print(f"site: {rep['site']} (department {rep['department']})", file=out)
    for pg in rep["pages"]:
        print(f"page {pg['page']}: {pg['url']}", file=out)
        print(
            f"  render: {pg['read']} (configured: {rep['render']})   http status: {pg['http_status'] or '-'}", file=out
        )
        why = f": {pg['reason']}" if pg["reason"] else ""
        print(f"  outcome: {pg['status']}{why}   people: {pg['people']}", file=out)
        if pg["hint"]:
            print(f"  hint: {pg['hint']}", file=out)
        print(f"  next page: {pg['next_url'] or '-'}", file=out)
    for f in rep["profile_pages"]:
        why = f" {f['reason']}" if f["reason"] else ""
        why += f" ({f['read']})" if f.get("read") else ""
        print(f"profile page: {f['url']} -> {f['status']}{why}{' (' + f['hint'] + ')' if f['hint'] else ''}", file=out)
    people = rep["people"]
    for i, p in enumerate(people, 1):
        print(f"\n{i:>3}  {p['name'] or '-'}", file=out)
        print(_block("key", p["item_id"], width), file=out)
        print(_block("role", p["role"] or "-", width), file=out)
        print(_block("photo", p["image_url"] or "-", width), file=out)
        if p["profile_url"]:
            print(_block("profile", p["profile_url"], width), file=out)
        print(_block("placeholder", p["placeholder"] or "no", width), file=out)
        print(_block("academic", "yes" if p["academic"] else "no", width), file=out)
        print(_block("fetch photo", p["fetch"], width), file=out)
    for w in rep["warnings"]:
        print(f"\nwarning: {w}", file=out)
    if people:
        missing = sum(1 for p in people if not p["image_url"])
        unnamed = sum(1 for p in people if not p["name"])
        fetched = sum(1 for p in people if p["fetch"] == "yes")
        print(
            f"\n{len(people)} people on {len(rep['pages'])} page(s): {missing} without a photo URL, {unnamed} without "
            f"a name; {fetched} photos would be fetched",
            file=out,
        )


class Escaped:
    """A text stream that writes control characters (ESC, BEL, C1…; not the line break) escaped as ``\\x1b``: what a
    page says never drives the terminal."""

    def __init__(self, out) -> None:
        self.out = out

    def write(self, text: str) -> int:
        return self.out.write("".join(c if c == "\n" or c.isprintable() else ascii(c)[1:-1] for c in text))

    def flush(self) -> None:
        self.out.flush()


def check(
    cfg: Config,
    site: StaffSite,
    html_dir: str | None = None,
    out=None,
    *,
    pages: int = 1,
    saved: str | None = None,
    as_url: str | None = None,
    as_json: bool = False,
    saved_profile: str | None = None,
) -> int:
    """Read ``pages`` pages of ``site`` (live, or the ``saved`` files served at ``as_url``) and print the report to
    ``out``; returns the exit code."""
    from contextlib import nullcontext

    from pipeline.scrape.net.address import allowed_domains, photo_hosts
    from pipeline.scrape.net.egress import policy_for
    from pipeline.scrape.net.http import HttpClient
    from pipeline.scrape.staff.browser import Browser, missing
    from pipeline.scrape.staff.placeholders import by_shared_url
    from pipeline.scrape.staff.site import StaffScraper

    out = Escaped(out or sys.stdout)  # names, roles, URLs and reasons come from the page
    if saved is not None:
        files = saved_files(saved)[:pages]
        if saved_profile is not None and not Path(saved_profile).is_file():
            raise ConfigError(f"--saved-profile {saved_profile}: no such file")
        if saved_profile is not None and not site.follows_profiles:
            raise ConfigError(
                f"--saved-profile: site {site.name!r} follows no profile pages (it needs profile_link and "
                "profile_photo_selector or profile_role_selector)"
            )
        if not as_url or urlsplit(as_url).scheme not in ("http", "https") or not urlsplit(as_url).hostname:
            raise ConfigError(f"--saved needs --as URL, the http(s) URL the page was served at (got {as_url!r})")
        site = site.model_copy(update={"start_urls": [as_url]})
        # the allowed domains (and photo hosts) of a crawl that starts at --as
        staff = [site if s.name == site.name else s for s in cfg.scrape.staff]
        cfg = cfg.model_copy(update={"scrape": cfg.scrape.model_copy(update={"staff": staff})})
    domains = allowed_domains(cfg)
    client = HttpClient(cfg.scrape.http, domains, lambda host, delay=0.0: nullcontext())
    fetches: list[dict] = []
    no_browser = None
    try:
        if saved is not None:
            read = read_saved(site, files, as_url, keep_html=bool(html_dir))
            if saved_profile is not None:
                fetches = read_saved_profile(site, read, Path(saved_profile))
            by_shared_url(read, site.placeholder_min_people)
        else:
            no_browser = missing(cfg.scrape.selenium) if site.render != "static" else None
            if no_browser and (site.render == "browser" or site.clicks):
                print(f"error: {no_browser}", file=sys.stderr)
                return EXIT_NO_BROWSER
            browser = None
            if not no_browser:
                browser = Browser(cfg.scrape.selenium, cfg.scrape.http.user_agent, policy_for(cfg, domains))

            def may_fetch(url: str) -> tuple[str, str] | None:
                bad = client.check_url(url)
                if bad:
                    return bad
                allowed, why = client.robots_allowed(url)
                return None if allowed else (("skipped", "robots") if why is None else ("error", why))

            scraper = StaffScraper(client, browser, may_fetch, keep_html=bool(html_dir))
            one = site.model_copy(update={"max_profiles": min(site.max_profiles, 1)})
            try:
                read = scraper.scrape(one, max_pages=pages)
            finally:
                if browser is not None:
                    browser.quit()
            fetches = scraper.fetches
        rep = report(cfg, site, read, fetches, client, photo_hosts(cfg, site.name, domains))
    finally:
        client.close()
    if as_json:
        print(json.dumps(rep, indent=1), file=out)
    else:
        print_report(rep, out)
    if html_dir:
        d = Path(html_dir)
        for n, page in enumerate(read, 1):
            if page.html is not None:
                d.mkdir(parents=True, exist_ok=True)
                target = d / f"{site.name}-page{n}.html"
                target.write_text(page.html, encoding="utf-8")
                print(f"saved: {target}", file=sys.stderr if as_json else out)
    ok = all(page.status == "ok" and page.people for page in read)
    if no_browser and any(page.reason == "no_people_found" for page in read):  # auto would have rendered it
        print(f"error: {no_browser} (render: auto read the page without it)", file=sys.stderr)
        return EXIT_NO_BROWSER
    return EXIT_OK if ok else EXIT_NOTHING


def main(args: argparse.Namespace) -> int:
    """The ``scrape check-site`` command (``args``: config, site, html, set, pages, saved, as_url, json)."""
    cfg, site = load_site(args.config, args.site, parse_overrides(getattr(args, "set", None)))
    if (getattr(args, "pages", 1) or 1) < 1:
        raise ConfigError(f"--pages {args.pages}: must be 1 or more")
    if getattr(args, "as_url", None) and not getattr(args, "saved", None):
        raise ConfigError("--as URL goes with --saved PATH (the saved page served at URL)")
    if getattr(args, "saved_profile", None) and not getattr(args, "saved", None):
        raise ConfigError("--saved-profile FILE goes with --saved PATH --as URL (the listing it belongs to)")
    return check(
        cfg,
        site,
        args.html,
        pages=getattr(args, "pages", 1) or 1,
        saved=getattr(args, "saved", None),
        as_url=getattr(args, "as_url", None),
        as_json=bool(getattr(args, "json", False)),
        saved_profile=getattr(args, "saved_profile", None),
    )
