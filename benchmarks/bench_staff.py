"""Staff pages: the static path (HTTP client + parsel) vs Chromium (Selenium), on the same local pages.

Pages: ``--pages`` server-rendered directory pages of ``--people`` cards each
(:func:`pipeline.demo.pages.directory_page`:
Drupal-style cards with ``srcset`` photos, the role after a ``<br>``), served by a threaded HTTP server on
127.0.0.1. Both read every page with the same :class:`~pipeline.config.StaffSite` selectors and must find the same
people (checked).

* ours: ``render: static``: :class:`~pipeline.scrape.staff.site.StaffScraper` with the polite HTTP client, pages in
  sequence (as one staff task runs them);
* peer: ``render: browser``: the same scraper with one headless Chromium
  (:class:`~pipeline.scrape.staff.browser.Browser`, started before the clock), pages in sequence.

Timed: wall-clock pages/s and CPU seconds per page of the whole process tree (this process plus chromedriver and
every Chromium process, from psutil), rate limits off. Prints a table, then one JSON line with ratio = ours / peer
pages per second. Run: ``python benchmarks/bench_staff.py [--pages 40] [--people 30]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import parse_config  # noqa: E402
from pipeline.demo.pages import directory_page  # noqa: E402


def _pages(n_pages: int, n_people: int) -> dict[str, bytes]:
    out = {}
    for i in range(n_pages):
        people = [
            {"id": f"p{i}-{j}", "name": f"Person {i} {j}", "role": "Professor" if j % 3 else "Lecturer",
             "photo": f"/photo/p{i}-{j}.jpg"}
            for j in range(n_people)
        ]  # fmt: skip
        out[f"/dir/{i}.html"] = directory_page(f"Department {i}", people).encode()
    return out


@contextlib.contextmanager
def _serve(pages: dict[str, bytes]):
    class H(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = pages.get(self.path.split("?")[0])
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *a):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    srv.daemon_threads = True
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def _tree_cpu() -> float:
    """CPU seconds (user + system) of this process and all its descendants alive now."""
    me = psutil.Process(os.getpid())
    total = 0.0
    for p in [me] + me.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            c = p.cpu_times()
            total += c.user + c.system
    return total


def _run(scraper, sites) -> tuple[float, float, list]:
    c0, t0 = _tree_cpu(), time.perf_counter()
    found = []
    for s in sites:
        [page] = scraper.scrape(s)
        assert page.status == "ok", (page.url, page.reason)
        found.append([(p["item_id"], p["name"], p["role"], p["image_url"]) for p in page.people])
    return time.perf_counter() - t0, _tree_cpu() - c0, found


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pages", type=int, default=40)
    ap.add_argument("--people", type=int, default=30)
    args = ap.parse_args()

    from contextlib import nullcontext

    from pipeline.scrape.net.egress import policy_for
    from pipeline.scrape.net.http import HttpClient
    from pipeline.scrape.staff.browser import Browser
    from pipeline.scrape.staff.site import StaffScraper

    pages = _pages(args.pages, args.people)
    with _serve(pages) as base:
        staff = [
            {"name": f"d{i}", "department": "cs", "start_urls": [f"{base}/dir/{i}.html"], "person": ".views-row",
             "name_selector": ".info a", "role_selector": None, "role_after_name": True}
            for i in range(args.pages)
        ]  # fmt: skip
        cfg = parse_config({"scrape": {"http": {"allow_private_addresses": True}, "staff": staff}})
        client = HttpClient(cfg.scrape.http, ["127.0.0.1"], lambda host, delay=0.0: nullcontext())
        static_sites = [s.model_copy(update={"render": "static"}) for s in cfg.scrape.staff]
        browser_sites = [s.model_copy(update={"render": "browser"}) for s in cfg.scrape.staff]
        browser = Browser(cfg.scrape.selenium, cfg.scrape.http.user_agent, policy_for(cfg, ["127.0.0.1"]))
        try:
            browser.start()
            scraper = StaffScraper(client, browser, lambda url: None)
            _run(scraper, static_sites[:2])  # warm both paths (imports, connections, the first page load)
            _run(scraper, browser_sites[:2])
            s_wall, s_cpu, s_found = _run(scraper, static_sites)
            b_wall, b_cpu, b_found = _run(scraper, browser_sites)
        finally:
            browser.quit()
    assert s_found == b_found, "the two render modes found different people"
    n = args.pages
    ours, peer = n / s_wall, n / b_wall
    print(f"{n} pages x {args.people} people, same selectors, same people found in both modes")
    print(f"{'mode':<10} {'pages/s':>9} {'CPU ms/page':>12}")
    print(f"{'static':<10} {ours:>9.1f} {1000 * s_cpu / n:>12.1f}")
    print(f"{'browser':<10} {peer:>9.1f} {1000 * b_cpu / n:>12.1f}")
    print(
        json.dumps(
            {
                "bench": "staff_pages",
                "ours": round(ours, 2),
                "peer": round(peer, 2),
                "ratio": round(ours / peer, 2),
                "unit": "pages/s",
                "cpu_ms_per_page_ours": round(1000 * s_cpu / n, 2),
                "cpu_ms_per_page_peer": round(1000 * b_cpu / n, 2),
                "pages": n,
                "people_per_page": args.people,
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
