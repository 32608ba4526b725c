"""``python -m pipeline scrape check-site --config FILE --site NAME [--html DIR]``: try one staff site config.

Renders the site's first listing page (and the first profile page a person needs) exactly as the crawl would
(:class:`~pipeline.scrape.staff.site.StaffScraper`: same HTTP client checks, same render choice, same parser), and
prints the render mode used, the HTTP status, the page outcome, the next-page link and one line per person: name,
role, photo URL, whether the photo URL already says placeholder, whether the role counts as academic. Nothing is
written to the data root and no image is fetched (a shared placeholder shows up only in the crawl). ``--html DIR``
saves what the scraper saw (the HTTP body, or Chromium's rendered DOM) as ``DIR/<site>-page1.html``.

``FILE`` is a whole config, or a site file (``staff:`` list, as under ``configs/sites/``), read with the defaults.
Exit code 0 when the page gave at least one person, 1 when it gave none (or failed), 2 for a bad config or an
unknown site. Control characters in what is printed (it comes from the page) are written escaped (``\\x1b``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from pipeline.config import Config, ConfigError, StaffSite, load_config, parse_config

EXIT_OK, EXIT_NOTHING, EXIT_CONFIG = 0, 1, 2


def load_site(path: str, name: str, overrides: dict | None = None) -> tuple[Config, StaffSite]:
    """The config and the staff site ``name`` from a config file or a site file. Raises :class:`ConfigError`."""
    p = Path(path)
    raw = None
    if p.is_file():
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raw = None
    if isinstance(raw, dict) and raw and set(raw) <= {"staff", "feeds"}:
        cfg = parse_config({"sites": [str(p.resolve())]}, str(p), overrides)
    else:
        cfg = load_config(path, overrides)
    sites = {s.name: s for s in cfg.scrape.staff}
    if name not in sites:
        known = ", ".join(sorted(sites)) or "none"
        raise ConfigError(f"{path}: no staff site named {name!r} (staff sites: {known})")
    return cfg, sites[name]


def _cut(text: str | None, n: int) -> str:
    t = "-" if text is None else str(text)
    return t if len(t) <= n else t[: n - 1] + "…"


def _tail(text: str | None, n: int) -> str:
    """A URL's end (its file name is what tells photos apart)."""
    t = "-" if text is None else str(text)
    return t if len(t) <= n else "…" + t[-(n - 1) :]


class Escaped:
    """A text stream that writes control characters (ESC, BEL, C1…; not the line break) escaped as ``\\x1b``: what a
    page says never drives the terminal."""

    def __init__(self, out) -> None:
        self.out = out

    def write(self, text: str) -> int:
        return self.out.write("".join(c if c == "\n" or c.isprintable() else ascii(c)[1:-1] for c in text))

    def flush(self) -> None:
        self.out.flush()


def check(cfg: Config, site: StaffSite, html_dir: str | None = None, out=None) -> int:
    """Scrape the first page of ``site`` and print the report to ``out``; returns the exit code."""
    from contextlib import nullcontext

    from pipeline.scrape.net.address import allowed_domains
    from pipeline.scrape.net.egress import policy_for
    from pipeline.scrape.net.http import HttpClient
    from pipeline.scrape.staff.browser import Browser
    from pipeline.scrape.staff.people import is_academic
    from pipeline.scrape.staff.site import StaffScraper

    out = Escaped(out or sys.stdout)  # names, roles, URLs and reasons come from the page
    domains = allowed_domains(cfg)
    client = HttpClient(cfg.scrape.http, domains, lambda host, delay=0.0: nullcontext())
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
        pages = scraper.scrape(one, max_pages=1)
    finally:
        browser.quit()
        client.close()
    page = pages[0]
    print(f"site: {site.name} (department {site.department})", file=out)
    print(f"page: {page.url}", file=out)
    print(f"render: {page.render} (configured: {site.render})   http status: {page.http_status or '-'}", file=out)
    print(f"outcome: {page.status}{': ' + page.reason if page.reason else ''}   people: {len(page.people)}", file=out)
    print(f"next page: {page.next_url or '-'}", file=out)
    for f in scraper.fetches:
        print(f"profile page: {f['url']} -> {f['status']}{' ' + f['reason'] if f['reason'] else ''}", file=out)
    if page.people:
        print(f"\n{'#':>3}  {'name':<28} {'role':<34} {'photo':<48} {'placeholder':<11} academic", file=out)
        for i, p in enumerate(page.people, 1):
            academic = is_academic(p.get("role"), cfg.scrape.non_academic_roles)
            placeholder = page.extras.get(p["item_id"], {}).get("placeholder") or "no"
            print(
                f"{i:>3}  {_cut(p.get('name'), 28):<28} {_cut(p.get('role'), 34):<34} "
                f"{_tail(p.get('image_url'), 48):<48} {placeholder:<11} "
                f"{'yes' if academic else 'no'}",
                file=out,
            )
        missing = sum(1 for p in page.people if not p.get("image_url"))
        unnamed = sum(1 for p in page.people if not p.get("name"))
        print(f"\n{missing} without a photo URL, {unnamed} without a name", file=out)
    if html_dir and page.html is not None:
        d = Path(html_dir)
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{site.name}-page1.html"
        target.write_text(page.html, encoding="utf-8")
        print(f"saved: {target}", file=out)
    return EXIT_OK if page.status == "ok" and page.people else EXIT_NOTHING


def main(args: argparse.Namespace) -> int:
    """The ``scrape check-site`` command (``args``: config, site, html, set)."""
    overrides: dict = {}
    for item in getattr(args, "set", None) or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        overrides[key] = yaml.safe_load(value)
    cfg, site = load_site(args.config, args.site, overrides)
    return check(cfg, site, args.html)
