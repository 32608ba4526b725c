"""Staff pages rendered by Chromium, read with Selenium: one headless Chromium reused across pages.

:class:`Browser` owns one WebDriver (local headless Chromium, or a remote one when ``SELENIUM_REMOTE_URL`` or
``selenium.remote_url`` is set), restarts it when it dies, and sets a page-load timeout; downloads and pop-ups are
disabled. :meth:`Browser.render_page` renders one page of a configured :class:`~pipeline.config.StaffSite`: wait for the
person list (``wait_for``, by default the ``person`` selector), click "load more" until it disappears (then read the
page once), or click a ``next_button`` that replaces the list and read every state it shows (:meth:`Browser._pager`),
bring each card
whose photo has no URL yet into view (each at most twice: an element that never gets one costs no timeout), copy each
photo's computed CSS ``background-image`` into ``data-facerank-bg``, then hand the rendered DOM to the same parser as
static pages (:mod:`pipeline.scrape.staff.parse`). The page's HTTP status (the navigation timing entry's
``responseStatus``) makes ``http_<code>`` errors, a bot challenge ``blocked``, an empty list ``no_people_found``.
:func:`~pipeline.scrape.staff.parse.paginate` follows next-page links over any renderer (this one, or the static one of
:mod:`pipeline.scrape.staff.site`); :meth:`Browser.scrape_site` is the two together. Everything a site needs is YAML
(selectors, paging); no site-specific code.

Everything Chromium sends goes through the egress proxy (:mod:`pipeline.scrape.net.egress`) when the browser gets an
:class:`~pipeline.scrape.net.egress.EgressPolicy` (the crawl always gives one): ``--proxy-server`` points at it,
``--proxy-bypass-list=<-loopback>`` removes Chromium's implicit loopback bypass, and ``--host-resolver-rules`` make
every name Chromium itself would resolve fail (the proxy resolves and checks; Chromium never needs DNS), so pages,
subresources, iframes, ``fetch()`` and websockets reach only allowed hosts on checked addresses. Chromium runs with
its sandbox unless that cannot work: as root, or with ``selenium.no_sandbox`` / ``FACERANK_CHROMIUM_NO_SANDBOX=1`` (a
container without user namespaces) (:func:`sandbox_flags`). chromedriver, and so Chromium, start with a minimal
environment (:func:`browser_env`: ``PATH``, ``HOME``, locale, temp and font settings), never the worker's S3 keys,
tokens or opt-out key.

A local Chromium or chromedriver that is not there (:func:`missing`) is one line naming the path tried, its setting
and the Debian packages (:data:`APT_PACKAGES`): :class:`BrowserMissing` from :meth:`Browser.start`, and the page's
reason ``no_chromium``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping

from pipeline.config import SeleniumConfig, StaffSite
from pipeline.scrape.net.egress import EgressPolicy, EgressProxy
from pipeline.scrape.staff.parse import StaffPage, States, challenge, outcome, paginate, parse_page

log = logging.getLogger("facerank.scrape")

NO_SANDBOX_ENV = "FACERANK_CHROMIUM_NO_SANDBOX"
APT_PACKAGES = "chromium chromium-driver"  # what installs both on Debian/Ubuntu


class BrowserMissing(RuntimeError):
    """No local Chromium or chromedriver at the configured path (the message says which, and how to install)."""


def missing(cfg: SeleniumConfig) -> str | None:
    """Why a local headless Chromium cannot start (a path that is no executable file), else None (a remote browser:
    never checked here)."""
    if os.environ.get("SELENIUM_REMOTE_URL") or cfg.remote_url:
        return None
    for what, key in (("Chromium", "chromium_path"), ("chromedriver", "chromedriver_path")):
        path = getattr(cfg, key)
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (
                f"{what} not found at {path} (scrape.selenium.{key}): install it with "
                f"`apt-get install {APT_PACKAGES}`, or set scrape.selenium.{key}"
            )
    return None


# How every headless Chromium of this project starts (the scraper's, and the tests' that look at pages).
CHROMIUM_FLAGS = (
    "--headless=new",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


def sandbox_flags(no_sandbox: bool = False) -> tuple[str, ...]:
    """``("--no-sandbox",)`` only where Chromium's sandbox cannot start: as root (Chromium refuses to), or when the
    config (``selenium.no_sandbox``) or ``FACERANK_CHROMIUM_NO_SANDBOX=1`` says the container has no user namespaces."""
    env = os.environ.get(NO_SANDBOX_ENV, "").strip().lower() in ("1", "true", "yes")
    root = hasattr(os, "geteuid") and os.geteuid() == 0
    return ("--no-sandbox",) if (no_sandbox or env or root) else ()


def proxy_flags(proxy_url: str, proxy_host: str) -> tuple[str, ...]:
    """Chromium flags that send all its traffic through the egress proxy at ``proxy_url`` and nowhere else."""
    return (
        f"--proxy-server={proxy_url}",
        "--proxy-bypass-list=<-loopback>",  # Chromium bypasses proxies for localhost unless told not to
        f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {proxy_host}",  # no DNS of its own: the proxy resolves
        "--disable-quic",
        "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
        "--webrtc-ip-handling-policy=disable_non_proxied_udp",
    )


# A Chromium with no egress proxy reaches loopback only: everything else goes to a proxy address where nothing
# listens (port 9, discard), and it resolves no names but localhost. Chromium calls home on its own (update,
# accounts and search-engine hosts were seen with CHROMIUM_FLAGS alone); these flags stop that too.
LOOPBACK_ONLY_FLAGS = (
    "--proxy-server=http://127.0.0.1:9",
    "--proxy-bypass-list=localhost;127.0.0.1;[::1]",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1 , EXCLUDE [::1]",
    "--disable-quic",
    "--force-webrtc-ip-handling-policy=disable_non_proxied_udp",
    "--webrtc-ip-handling-policy=disable_non_proxied_udp",
)


# what chromedriver and Chromium may see of the worker's environment (no S3 keys, tokens, the opt-out key)
BROWSER_ENV_KEEP = (
    "PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME",
    "FONTCONFIG_PATH", "FONTCONFIG_FILE", "CHROME_DEVEL_SANDBOX",
)  # fmt: skip


def browser_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The minimal environment chromedriver (and the Chromium it starts) runs with: :data:`BROWSER_ENV_KEEP` and the
    ``LC_*`` locale variables of ``environ`` (default ``os.environ``), nothing else; ``PATH`` always set."""
    env = os.environ if environ is None else environ
    out = {k: v for k, v in env.items() if k in BROWSER_ENV_KEEP or k.startswith("LC_")}
    out.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    return out


def chrome_options(*extra: str, binary: str | None = None, no_sandbox: bool = False):
    """Selenium options for a headless Chromium with :data:`CHROMIUM_FLAGS`, :func:`sandbox_flags`, ``extra``.

    Without a ``--proxy-server`` in ``extra`` (:func:`proxy_flags`, the scraper's egress proxy) the browser gets
    :data:`LOOPBACK_ONLY_FLAGS`: report screenshots and tests reach 127.0.0.1 and nothing else.
    """
    from selenium.webdriver.chrome.options import Options

    o = Options()
    if binary:
        o.binary_location = binary
    guard = () if any(a.startswith("--proxy-server=") for a in extra) else LOOPBACK_ONLY_FLAGS
    for arg in CHROMIUM_FLAGS + sandbox_flags(no_sandbox) + guard + extra:
        o.add_argument(arg)
    return o


SCROLL_PENDING_JS = """
const [personSel, photoSel] = arguments;
let pending = 0, first = null;
for (const el of document.querySelectorAll(personSel)) {
  const p = photoSel ? el.querySelector(photoSel) : null;
  if (p && !p.getAttribute('src')) { pending++; if (!first) first = el; }
}
if (first) first.scrollIntoView({block: 'start'});
return pending;
"""


_JS_QUERY = """
const qa = (root, s) => {
  if (!s) return [];
  if (s.startsWith('xpath:')) {
    const r = document.evaluate(s.slice(6), root, null, XPathResult.ORDERED_NODE_SNAPSHOT_TYPE, null);
    const out = []; for (let i = 0; i < r.snapshotLength; i++) out.push(r.snapshotItem(i)); return out;
  }
  return Array.from(root.querySelectorAll(s));
};
"""

# the HTTP status of the page now shown (Chromium's navigation timing entry; null when unknown)
STATUS_JS = """
const e = performance.getEntriesByType('navigation')[0];
return e && e.responseStatus ? e.responseStatus : null;
"""

# Scroll the first card whose photo has no usable URL in any photo attribute into view, at most twice per card
# (a lazy loader's observer can miss a card scrolled past too fast); returns how many such cards may still load.
SCROLL_LAZY_JS = (
    _JS_QUERY
    + """
const [personSel, photoSel, attrs] = arguments;
const usable = v => v && v.trim() && !v.trim().startsWith('data:');
let pending = 0, first = null;
for (const el of qa(document, personSel)) {
  const p = qa(el, photoSel)[0];
  if (!p || !(p instanceof Element)) continue;
  if (attrs.some(a => a === 'style' ? (p.getAttribute(a) || '').includes('url(') : usable(p.getAttribute(a)))) continue;
  const n = +(p.getAttribute('data-facerank-scrolls') || 0);
  if (n >= 2) continue;
  pending++;
  if (!first) { first = p; p.setAttribute('data-facerank-scrolls', n + 1); }
}
if (first) first.scrollIntoView({block: 'center'});
return pending;
"""
)

# Copy the computed CSS background image of each card's photo element (or, without one, of the card's elements)
# into data-facerank-bg, where the HTML parser finds it.
MARK_BACKGROUNDS_JS = (
    _JS_QUERY
    + """
const [personSel, photoSel] = arguments;
for (const el of qa(document, personSel)) {
  let els = qa(el, photoSel).filter(x => x instanceof Element);
  if (!els.length) els = [el, ...Array.from(el.querySelectorAll('*')).slice(0, 200)];
  for (const p of els) {
    const bg = getComputedStyle(p).backgroundImage;
    if (bg && bg.includes('url(')) { p.setAttribute('data-facerank-bg', bg); break; }
  }
}
"""
)


# What the person list shows now (each card's data-id, text and first link): changes when a pager swaps the cards.
LIST_STATE_JS = (
    _JS_QUERY
    + """
const [personSel] = arguments;
return qa(document, personSel).filter(e => e instanceof Element).map(e => {
  const a = e.querySelector('a[href]');
  return (e.getAttribute('data-id') || '') + '|' + e.textContent.replace(/\\s+/g, ' ').trim() + '|' + (a ? a.href : '');
}).join('\\n');
"""
)


def by(selector: str) -> tuple[str, str]:
    """A Selenium locator for a selector of the site config: CSS, or XPath after ``xpath:``."""
    from selenium.webdriver.common.by import By

    return (By.XPATH, selector[6:]) if selector.startswith("xpath:") else (By.CSS_SELECTOR, selector)


def _displayed(driver, selector: str) -> list:
    """The displayed elements matching ``selector``; one the page removes between lookup and check is not there."""
    from selenium.common.exceptions import StaleElementReferenceException

    out = []
    for el in driver.find_elements(*by(selector)):
        try:
            if el.is_displayed():
                out.append(el)
        except StaleElementReferenceException:  # the "load more" button is removed after the last page
            pass
    return out


def _enabled(el) -> bool:
    """A button that can be clicked: not ``disabled``, not ``aria-disabled="true"`` (a pager's last page)."""
    from selenium.common.exceptions import StaleElementReferenceException

    try:
        return el.is_enabled() and (el.get_attribute("aria-disabled") or "").lower() != "true"
    except StaleElementReferenceException:
        return False


class Browser:
    """One headless Chromium (or remote WebDriver), created lazily, restarted when it dies."""

    def __init__(self, cfg: SeleniumConfig, user_agent: str, policy: EgressPolicy | None = None):
        """``policy``: where Chromium may connect (through an :class:`EgressProxy`); None only for trusted pages."""
        self.cfg = cfg
        self.user_agent = user_agent
        self.policy = policy
        self.proxy: EgressProxy | None = None
        self.driver = None
        self._profile: str | None = None
        self.restarts = 0

    # ------------------------------------------------------------------ lifecycle
    def _options(self):
        extra = ("--disable-gpu", "--disable-extensions", "--window-size=1280,1600", f"--user-agent={self.user_agent}")
        if self.proxy is not None:
            extra += proxy_flags(self.proxy.url, self.cfg.proxy_host)
        o = chrome_options(*extra, no_sandbox=self.cfg.no_sandbox)
        o.add_experimental_option(
            "prefs",
            {
                "download_restrictions": 3,  # block all downloads
                "download.prompt_for_download": False,
                "profile.default_content_setting_values.popups": 2,
                "profile.default_content_setting_values.automatic_downloads": 2,
                "profile.default_content_setting_values.notifications": 2,
            },
        )
        return o

    def start(self) -> None:
        from selenium import webdriver

        self.quit()
        if self.policy is not None:
            c = self.cfg
            self.proxy = EgressProxy(
                self.policy,
                host=c.proxy_host,
                max_connections=c.proxy_max_connections,
                connect_timeout_s=min(c.page_load_timeout_s, 10.0),
                idle_timeout_s=c.proxy_idle_timeout_s,
                max_lifetime_s=c.proxy_max_lifetime_s,
            ).start()
        opts = self._options()
        remote = os.environ.get("SELENIUM_REMOTE_URL") or self.cfg.remote_url
        if remote:
            if self.proxy is not None and self.cfg.proxy_host.startswith("127."):
                log.warning(
                    "staff browser: a remote browser cannot reach the egress proxy on %s; its pages will fail until "
                    "scrape.selenium.proxy_host is an address of this actor that the browser can reach",
                    self.cfg.proxy_host,
                )
            self.driver = webdriver.Remote(command_executor=remote, options=opts)
        else:
            from selenium.webdriver.chrome.service import Service

            why = missing(self.cfg)
            if why:
                self.quit()  # the egress proxy started above
                raise BrowserMissing(why)
            self._profile = tempfile.mkdtemp(prefix="facerank-chromium-")
            opts.add_argument(f"--user-data-dir={self._profile}")
            opts.binary_location = self.cfg.chromium_path
            service = Service(self.cfg.chromedriver_path, env=browser_env())  # not the worker's secrets
            self.driver = webdriver.Chrome(service=service, options=opts)
        self.driver.set_page_load_timeout(self.cfg.page_load_timeout_s)
        self.driver.set_script_timeout(self.cfg.wait_timeout_s)

    def alive(self) -> bool:
        if self.driver is None:
            return False
        try:
            _ = self.driver.current_url
            return True
        except Exception:
            return False

    def ensure(self) -> None:
        if not self.alive():
            if self.driver is not None:
                self.restarts += 1
            self.start()

    def quit(self) -> None:
        if self.driver is not None:
            try:
                self.driver.quit()
            except Exception:
                pass
            self.driver = None
        if self._profile:
            shutil.rmtree(self._profile, ignore_errors=True)
            self._profile = None
        if self.proxy is not None:
            self.proxy.stop()
            self.proxy = None

    # ------------------------------------------------------------------ pages
    def scrape_site(self, site: StaffSite, may_fetch: Callable[[str], tuple[str, str] | None]) -> list[StaffPage]:
        """Render every page of ``site`` in Chromium; ``may_fetch(url)`` returns (status, reason) when a URL must be
        skipped."""
        return paginate(site, may_fetch, lambda url: self.render_page(site, url))

    def render_page(self, site: StaffSite, url: str, keep_html: bool = False) -> StaffPage:
        """One page of ``site`` rendered and read; restarts a dead browser once. Never raises."""
        from selenium.common.exceptions import WebDriverException

        for attempt in range(2):
            try:
                self.ensure()
                return self._render(site, url, keep_html)
            except BrowserMissing as e:
                log.error("staff browser: %s", e)
                return StaffPage(url, [], "error", "no_chromium")
            except WebDriverException as e:
                if attempt == 0 and not self.alive():
                    continue  # the browser died: restart it once and try the page again
                name = type(e).__name__
                reason = "timeout" if "Timeout" in name else f"browser:{name}"
                return StaffPage(url, [], "error", reason)
            except Exception as e:  # never crash the stage on one page
                return StaffPage(url, [], "error", f"browser:{type(e).__name__}")
        return StaffPage(url, [], "error", "browser_died")

    def render_html(self, url: str, wait_for: str | None = None) -> tuple[str, int | None, str]:
        """(rendered DOM, HTTP status, final URL) of any page (a profile page), waiting up to ``wait_timeout_s`` (5 s
        at most) for ``wait_for`` when given."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        self.ensure()
        d = self.driver
        d.get(url)
        if wait_for:
            try:
                WebDriverWait(d, min(self.cfg.wait_timeout_s, 5.0), poll_frequency=0.1).until(
                    ec.presence_of_element_located(by(wait_for))
                )
            except TimeoutException:
                pass
        return d.page_source, d.execute_script(STATUS_JS), d.current_url

    def _render(self, site: StaffSite, url: str, keep_html: bool = False) -> StaffPage:
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support import expected_conditions as ec
        from selenium.webdriver.support.ui import WebDriverWait

        d = self.driver
        assert d is not None
        d.get(url)
        code = d.execute_script(STATUS_JS)
        if code and code >= 400:  # the server's answer was an error page: never read people from it
            html = d.page_source
            reason = "blocked" if challenge(html) else f"http_{code}"
            return StaffPage(d.current_url, [], "error", reason, http_status=code, html=html if keep_html else None)
        wait = WebDriverWait(d, self.cfg.wait_timeout_s, poll_frequency=0.1)
        try:
            wait.until(ec.presence_of_element_located(by(site.wait_selector)))
        except TimeoutException:
            html = d.page_source
            reason = "blocked" if challenge(html) else "no_people_found"
            return StaffPage(d.current_url, [], "error", reason, http_status=code, html=html if keep_html else None)
        if site.next_button:
            return self._pager(site, d, code, keep_html)
        clicks = 0
        if site.load_more:
            while clicks < self.cfg.max_clicks:
                buttons = _displayed(d, site.load_more)
                if not buttons:
                    break
                before = len(d.find_elements(*by(site.person)))
                try:
                    d.execute_script(
                        "arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", buttons[0]
                    )
                except StaleElementReferenceException:  # the page replaced the button meanwhile: look again
                    continue
                clicks += 1
                try:
                    WebDriverWait(d, self.cfg.wait_timeout_s, poll_frequency=0.05).until(
                        lambda drv, before=before: (
                            len(drv.find_elements(*by(site.person))) > before or not _displayed(drv, site.load_more)
                        )
                    )
                except TimeoutException:
                    break
        html = self._settled_html(site)
        page = StaffPage(d.current_url, [], clicks=clicks, http_status=code, html=html if keep_html else None)
        page.bytes = len(html.encode("utf-8", "replace"))
        return outcome(page, parse_page(html, page.url, site))

    def _settled_html(self, site: StaffSite) -> str:
        """The DOM once lazy photos had their chance (each card without a photo URL scrolled into view at most
        twice) and computed CSS backgrounds are copied where the parser reads them."""
        d = self.driver
        if site.scroll_for_lazy_images:
            deadline = time.monotonic() + self.cfg.wait_timeout_s
            while time.monotonic() < deadline:
                if not d.execute_script(SCROLL_LAZY_JS, site.person, site.photo_selector, site.photo_attrs):
                    break
                time.sleep(0.05)
        d.execute_script(MARK_BACKGROUNDS_JS, site.person, site.photo_selector)
        return d.page_source

    def _pager(self, site: StaffSite, d, code: int | None, keep_html: bool) -> StaffPage:
        """A list that a ``next_button`` replaces in place: read each state, click, wait for the list to change
        (``wait_timeout_s``), until the button is gone or disabled, a state brings nobody new, the list does not
        change, or ``min(max_clicks, max_pages - 1)`` clicks; the people of every state, by key (:class:`States`)."""
        from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        url = d.current_url  # the list's URL, before a pager writes #page=N into it
        states, clicks, size = States(), 0, 0
        limit = min(self.cfg.max_clicks, site.max_pages - 1)
        html = self._settled_html(site)
        size += len(html.encode("utf-8", "replace"))
        states.add(parse_page(html, url, site))
        for _ in range(2 * limit + 2):  # a stale button is looked up again, within bounds
            if clicks >= limit:
                break
            buttons = [b for b in _displayed(d, site.next_button) if _enabled(b)]
            if not buttons:
                break
            before = d.execute_script(LIST_STATE_JS, site.person)
            try:
                d.execute_script("arguments[0].scrollIntoView({block: 'center'}); arguments[0].click();", buttons[0])
            except StaleElementReferenceException:
                continue
            clicks += 1
            try:
                WebDriverWait(d, self.cfg.wait_timeout_s, poll_frequency=0.05).until(
                    lambda drv, before=before: drv.execute_script(LIST_STATE_JS, site.person) not in (before, "")
                )
            except TimeoutException:
                log.info("staff page %s: the list did not change after click %d of %s", url, clicks, site.next_button)
                break
            self._until_stable(site)
            html = self._settled_html(site)
            size += len(html.encode("utf-8", "replace"))
            if not states.add(parse_page(html, url, site)):
                break  # a pager that came back to a page already read
        page = StaffPage(url, [], clicks=clicks, http_status=code, html=html if keep_html else None)
        page.bytes = size
        return outcome(page, states.parsed())

    def _until_stable(self, site: StaffSite, settle_s: float = 0.1, at_most_s: float = 2.0) -> None:
        """Wait until the list is the same over ``settle_s`` (cards filled in one by one), ``at_most_s`` at most."""
        deadline = time.monotonic() + min(at_most_s, self.cfg.wait_timeout_s)
        last = self.driver.execute_script(LIST_STATE_JS, site.person)
        while time.monotonic() < deadline:
            time.sleep(settle_s)
            now = self.driver.execute_script(LIST_STATE_JS, site.person)
            if now == last:
                return
            last = now
