"""One staff site end to end, in either render mode: listing pages, then the profile pages people need.

:class:`StaffScraper` is what the browser worker (:mod:`pipeline.scrape.work`) and ``scrape check-site``
(:mod:`pipeline.scrape.staff.check`) run for a :class:`~pipeline.config.StaffSite`:

* ``render: static`` fetches each page with the polite HTTP client (:class:`~pipeline.scrape.net.http.HttpClient`:
  allowed domains, robots.txt, per-host rate, retries, size caps) and parses it (:mod:`pipeline.scrape.staff.parse`);
  ``render: browser`` renders it in Chromium (:class:`~pipeline.scrape.staff.browser.Browser`, started only then) and
  parses the rendered DOM with the same parser; ``render: auto`` fetches statically and renders in Chromium only when
  the page needs scripts: no person found and the page has scripts, or the answer is a 403/429/503 (how bot challenges
  are served: the rendered page tells ``blocked`` from ``http_403``). A challenge page is ``blocked``; nothing tries to
  get past it. A site with a ``load_more`` button is rendered in Chromium at once (clicking needs scripts).
* Profile pages (``profile_link`` and a ``profile_photo_selector`` or ``profile_role_selector``, unless
  ``follow_profiles: false``): for each person with a profile URL but no photo or no role, fetch their page (same
  render as their listing page, same checks, one request per person, at most ``max_profiles`` per site and run) and
  take ``profile_photo_selector`` / ``profile_role_selector``. People in ``skip`` (those with a row from an earlier
  run) are not followed again: a rerun fetches only what is missing. Each profile fetch gives a ``fetches`` row
  (:attr:`StaffScraper.fetches`).
* Last, one photo URL given to ``placeholder_min_people`` or more people of the site (a logo a profile selector
  took, a "no photo" image) marks each of them placeholder ``shared_url``
  (:func:`~pipeline.scrape.staff.placeholders.by_shared_url`): their rows say ``no_photo: placeholder`` and nothing
  is fetched.
"""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from pipeline.config import StaffSite
from pipeline.scrape.net.http import FetchResult, HttpClient
from pipeline.scrape.staff.browser import Browser
from pipeline.scrape.staff.parse import StaffPage, outcome, paginate, parse_page, parse_profile
from pipeline.scrape.staff.placeholders import by_shared_url
from pipeline.store import STATUS_ERROR, now

CHALLENGE_STATUSES = (403, 429, 503)  # statuses bot challenges are served with


class StaffScraper:
    """Scrapes one site at a time; ``may_fetch(url)`` is the browser path's pre-check ((status, reason) to refuse)."""

    def __init__(
        self,
        client: HttpClient,
        browser: Browser | None,
        may_fetch: Callable[[str], tuple[str, str] | None],
        keep_html: bool = False,
    ):
        self.client = client
        self.browser = browser
        self.may_fetch = may_fetch
        self.keep_html = keep_html
        self.fetches: list[dict] = []  # fetches rows of the profile pages

    # ---------------------------------------------------------------- listing pages
    def scrape(self, site: StaffSite, skip: set[str] | None = None, max_pages: int | None = None) -> list[StaffPage]:
        """Every listing page of ``site`` (at most ``max_pages`` when given), people completed from profile pages."""
        if max_pages is not None:
            site = site.model_copy(update={"max_pages": max_pages})
        # a button to click (load_more, next_button) needs the browser: auto does not fetch the page statically first
        if site.render == "browser" or (site.render == "auto" and site.clicks and self.browser is not None):
            pages = paginate(site, self.may_fetch, lambda url: self._browser(site, url))
        else:
            pages = paginate(site, self._static_precheck, lambda url: self._static_or_auto(site, url))
        self.follow_profiles(site, pages, skip or set())
        by_shared_url(pages, site.placeholder_min_people)
        return pages

    def _static_precheck(self, url: str) -> tuple[str, str] | None:
        return self.client.check_url(url)  # robots, rate and addresses: inside fetch_page

    def _browser(self, site: StaffSite, url: str) -> StaffPage:
        if self.browser is None:
            return StaffPage(url, [], STATUS_ERROR, "no_browser")
        return self.browser.render_page(site, url, self.keep_html)

    def _static_or_auto(self, site: StaffSite, url: str) -> StaffPage:
        res = self.client.fetch_page(url)
        page = StaffPage(res.final_url or url, [], res.status, res.reason, render="static")
        page.http_status, page.attempts = res.http_status, max(1, res.attempts)
        page.bytes = len(res.data) if res.data is not None else None
        if not res.ok:
            # auto: a 403/429/503 is often a bot challenge; one browser render tells `blocked` from `http_403`
            if site.render == "auto" and res.http_status in CHALLENGE_STATUSES and self.browser is not None:
                return self._browser_fallback(site, url)
            return page
        html = (res.data or b"").decode("utf-8", "replace")
        page.html = html if self.keep_html else None
        parsed = parse_page(html, page.url, site)
        needs_js = not parsed.people and parsed.scripts and not parsed.challenge
        if site.render == "auto" and needs_js and self.browser is not None:
            return self._browser_fallback(site, url)
        return outcome(page, parsed)

    def _browser_fallback(self, site: StaffSite, url: str) -> StaffPage:
        refused = self.may_fetch(url)  # the browser's own checks and rate slot
        if refused:
            return StaffPage(url, [], refused[0], refused[1], render="browser")
        return self.browser.render_page(site, url, self.keep_html)

    # ---------------------------------------------------------------- profile pages
    def follow_profiles(
        self,
        site: StaffSite,
        pages: list[StaffPage],
        skip: set[str],
        read: Callable[[str, str], dict | None] | None = None,
    ) -> int:
        """Complete people lacking a photo or role from their profile page; returns how many pages were fetched.
        ``read(url, render)`` reads one profile page (default :meth:`profile`; check-site: a saved page)."""
        read = read or (lambda url, render: self.profile(site, url, render))
        if not site.follows_profiles:
            return 0
        done = 0
        seen: set[str] = set()
        for page in pages:
            for p in page.people:
                extra = page.extras.setdefault(p["item_id"], {})
                url = extra.get("profile_url")
                if not url or p["item_id"] in skip or url in seen or (p.get("image_url") and p.get("role")):
                    continue
                if done >= site.max_profiles:
                    return done
                seen.add(url)
                done += 1
                try:
                    found = read(url, page.render)
                except Exception as e:  # one profile page that cannot be read: that page's error only
                    self.fetches.append(
                        self._row(site, FetchResult(url, "page", STATUS_ERROR, f"internal:{type(e).__name__}"))
                    )
                    continue
                if found is None:
                    continue
                if not p.get("image_url") and found["image_url"]:
                    p["image_url"], extra["placeholder"] = found["image_url"], found["placeholder"]
                if not p.get("role") and found["role"]:
                    p["role"] = found["role"]
        return done

    def profile(self, site: StaffSite, url: str, render: str) -> dict | None:
        """One profile page read (its ``fetches`` row kept), or None when it could not be fetched."""
        if render == "browser" and self.browser is not None:
            refused = self.may_fetch(url)
            if refused:
                self.fetches.append(self._row(site, FetchResult(url, "page", refused[0], refused[1])))
                return None
            try:
                html, code, final = self.browser.render_html(url, site.profile_photo_selector)
            except Exception as e:  # never crash the site on one profile
                self.fetches.append(
                    self._row(site, FetchResult(url, "page", STATUS_ERROR, f"browser:{type(e).__name__}"))
                )
                return None
            res = FetchResult(url, "page", "ok", None, http_status=code, attempts=1)
            if code and code >= 400:
                res.status, res.reason = STATUS_ERROR, f"http_{code}"
            self.fetches.append(self._row(site, res, len(html)))
            return parse_profile(html, final, site) if res.ok else None
        res = self.client.fetch_page(url)
        self.fetches.append(res.fetch_row(site.name))
        if not res.ok:
            return None
        return parse_profile(res.data or b"", res.final_url or url, site)

    @staticmethod
    def _row(site: StaffSite, res: FetchResult, size: int | None = None) -> dict:
        return {
            "url": res.url,
            "site": site.name,
            "kind": "page",
            "host": urlsplit(res.url).hostname,
            "status": res.status,
            "http_status": res.http_status,
            "reason": res.reason,
            "attempts": max(1, res.attempts),
            "bytes": size,
            "image_sha256": None,
            "fetched_at": now(),
        }
