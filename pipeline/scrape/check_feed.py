"""``python -m pipeline scrape check-feed --config FILE --site NAME``: try one feed site config.

Reads the first page of each of the site's hashtags (or ``--tag T``) exactly as the crawl would: the adapter's own
``first_url``, ``fetch`` (its authentication, pacing, POST bodies), ``parse`` and ``enrich`` (follower lookups),
through the same HTTP client (robots.txt, allowed domains, the address guard). With ``--saved FILE [--as URL]`` it
parses a saved response body with the same adapter as if served at ``URL`` (default: the URL the crawl fetches
first), and fetches nothing: no follower lookups either, and no next page named only in a response header (Mastodon's
``Link``).

Each post is decided by the crawl's own rule (:func:`pipeline.scrape.rows.post_verdict`: an error row, skipped with
the adapter's reason, opted out) and, when its image would be fetched, the image URL is checked against the site's
photo hosts (:func:`pipeline.scrape.net.address.photo_hosts`). It prints, per hashtag, the page URL, how it was read,
the HTTP status and outcome (with a hint naming the setting behind a refusal), the next page's URL (its cursor
inside), the rate-limit headers seen; then one block per post: the row as the crawl writes it (``post_row``: id,
user, account, followers, likes, tags, date, image URL, ...), whether it is young (counts read again later), and
what the crawl does with it (``fetch image``, or why not). ``--json`` prints all of it as one JSON document.

It writes nothing, starts no Ray, and reads the data root only for the opt-out list (when there is one, and the key
here is the root's): an opted-out user or account shows as such. Exit code 0 when every page read gave posts, 1 when
one gave none or could not be read (its outcome says why), 2 for a bad config, an unknown feed site or bad options,
6 when the host could not be reached (connection refused, DNS, timeout, 5xx, a private address not allowed), 7 when
the API wants authentication (401, a failed login): the error line names the settings. Control characters in what
is printed (it comes from the server) are written escaped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import sys
import textwrap
from contextlib import nullcontext
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import Config, ConfigError, FeedSite, load_site_entry, parse_overrides
from pipeline.scrape.staff.check import HINTS, Escaped

EXIT_OK, EXIT_NOTHING, EXIT_CONFIG, EXIT_UNREACHABLE, EXIT_AUTH = 0, 1, 2, 6, 7
UNREACHABLE = ("connection_error", "timeout", "retries_exhausted", "robots_unavailable", "private_address",
               "too_many_interim_responses", "truncated_body", "request_error")  # fmt: skip
HIDDEN = ("site", "hashtag", "scraped_at", "status", "reason", "item_id")  # row columns the blocks do not repeat
FIRST = ("user_id", "user_acct", "followers", "likes", "reblogs", "tags", "posted_at", "too_young", "image_url")


def load_feed(path: str, name: str, overrides: dict | None = None) -> tuple[Config, FeedSite]:
    """The config and the feed site ``name`` from a config file or a site file. Raises :class:`ConfigError`."""
    return load_site_entry(path, "feeds", name, overrides)


def _kind(reason: str | None, http_status: int | None) -> str:
    """``auth``, ``unreachable`` or ``other``: what a page that could not be read needs."""
    why = reason or ""
    if http_status == 401 or why.startswith("auth_failed") or why == "http_401_auth_required":
        return "auth"
    if why.split(":")[0] in UNREACHABLE or (http_status or 0) >= 500 or why.startswith("http_5"):
        return "unreachable"
    return "other"


def _auth_hint(adapter: Any) -> str:
    """The adapter's settings that name credentials (its options ending in ``_env``), and whether they are set."""
    name = adapter.site.adapter
    fields = [f for f in type(adapter.opts).model_fields if f.endswith("_env")]
    if not fields:
        return "the API wants authentication, and this adapter takes no credentials"
    parts = []
    for f in fields:
        var = getattr(adapter.opts, f)
        state = "not configured" if not var else (f"{var} is set" if os.environ.get(var) else f"{var} is not set")
        parts.append(f"{name}.{f} ({state})")
    return "the API wants authentication: name the environment variables in " + ", ".join(parts)


def _hint(page: dict, adapter: Any) -> str | None:
    reason, http_status = page["reason"], page["http_status"]
    if _kind(reason, http_status) == "auth":
        return _auth_hint(adapter)
    key = (reason or "").split(":")[0]
    if key == "robots_unavailable":
        got = page.get("robots") or "not fetched"
        return f"robots.txt {got}: the crawl reads nothing of a host whose robots.txt cannot be fetched"
    if key in HINTS:
        return HINTS[key]
    if key == "parse_error":
        return "the answer is not what the adapter reads: check base_url and the adapter's options"
    if key == "rate_limited":
        return "the server's rate limit would hold the next request longer than the adapter's max_wait_s"
    return None


def _image_check(url: str | None, client: Any, photos: list[str], site: str) -> str:
    from pipeline.scrape.net.address import photo_host_setting

    refused = client.check_url(url or "", hosts=photos)
    if refused is None:
        return "fetch image"
    reason = refused[1]
    if reason == "outside_photo_hosts":
        return f"no: outside_photo_hosts ({photo_host_setting(site, urlsplit(url or '').hostname)})"
    return f"no: {reason}" + (f" ({HINTS[reason]})" if reason in HINTS else "")


def _crawl_says(p: dict, optout: Any, client: Any, photos: list[str], site: str) -> str:
    """What the crawl does with post ``p`` (:func:`~pipeline.scrape.rows.post_verdict`), in words."""
    from pipeline.scrape.rows import FETCH, OPTED_OUT, post_verdict

    verdict, reason = post_verdict(p, optout, site)
    if not p.get("item_id"):
        return f"no row: {reason} (counted in the crawl's page_errors_by_reason)"
    if verdict == OPTED_OUT:
        return f"no row: opted out ({'the account' if reason == 'acct' else 'the user'} is on the opt-out list)"
    if verdict != FETCH:
        return f"{verdict}: {reason}"
    return _image_check(p.get("image_url"), client, photos, site)


def _jsonable(v: Any) -> Any:
    return v.isoformat() if isinstance(v, dt.datetime) else v


def _read_page(adapter: Any, client: Any, url: str, tag: str, saved: Path | None) -> tuple[dict, list[dict]]:
    """One first page: (its page record, its parsed posts)."""
    from pipeline.scrape.feeds.base import FeedParseError

    page: dict[str, Any] = {"hashtag": tag, "url": url, "http_status": None, "status": "ok", "reason": None}
    if saved is not None:
        page["read"], body, headers = f"saved file {saved}", saved.read_bytes(), {}
    else:
        res = adapter.fetch(client, url)
        page.update(read="fetched", http_status=res.http_status, status=res.status, reason=res.reason)
        robots = [r for r in (client.robots.drain() if client.robots else []) if not r.ok and r.reason]
        if res.reason == "robots_unavailable" and robots:  # what became of the robots.txt request
            page["robots"] = f"{robots[-1].url}: {robots[-1].reason}"
        body, headers = res.data or b"", res.headers or {}
    page["rate_limit"] = {k: v for k, v in headers.items() if k != "link"}
    page["link"] = headers.get("link")
    posts: list[dict] = []
    if page["status"] == "ok":
        try:
            parsed = adapter.parse(body, url, tag, 1, headers)
            posts, page["next_url"], page["bad_posts"] = parsed.posts, parsed.next_url, parsed.bad_posts
            if saved is None:
                adapter.enrich(client, posts)  # follower lookups, as the crawl does
        except FeedParseError as e:
            page["status"], page["reason"] = "error", f"parse_error:{e.code}"
    page.setdefault("next_url", None)
    page.setdefault("bad_posts", {})
    page["posts"] = len(posts)
    return page, posts


def report(
    cfg: Config, site: FeedSite, tags: list[str], client: Any, *, saved: Path | None = None, as_url: str | None = None
) -> tuple[dict, list[str]]:
    """What check-feed found, as a JSON-able dict, and the kinds of the pages that could not be read."""
    from pipeline.privacy import OptOut
    from pipeline.scrape.feeds.registry import adapter_for
    from pipeline.scrape.net.address import photo_hosts
    from pipeline.scrape.rows import post_row
    from pipeline.store import DataRoot, now

    adapter = adapter_for(site)
    try:
        optout, why = OptOut.peek(DataRoot(cfg.data_root), cfg.privacy)
    except (OSError, ValueError) as err:  # an unreachable object store: the check goes on without the list
        optout, why = None, f"not read ({type(err).__name__}: {str(err)[:80]})"
    photos = photo_hosts(cfg, site.name, client.allowed_domains)
    pages, posts, kinds = [], [], []
    for tag in tags:
        url = as_url or adapter.first_url(tag)
        page, parsed = _read_page(adapter, client, url, tag, saved)
        page["hint"] = None if page["status"] == "ok" else _hint(page, adapter)
        if page["status"] != "ok":
            kinds.append(_kind(page["reason"], page["http_status"]))
        elif not parsed:
            kinds.append("other")
        pages.append(page)
        scraped = now()
        for p in parsed:
            row = post_row(site.name, tag, p, scraped, cfg.scrape.min_post_age_days * 86400)
            row = {k: _jsonable(v) for k, v in row.items()}
            if p.get("lookup_followers"):  # left for enrich, which a saved page does not run
                row["followers_lookup"] = "not made (saved page)"
            row["crawl"] = _crawl_says(p, optout, client, photos, site.name)
            posts.append(row)
    rep = {
        "site": site.name,
        "adapter": site.adapter,
        "base_url": site.base_url,
        "opt_out": f"read ({len(optout)} entries)" if optout is not None else f"not read: {why}",
        "allowed_domains": client.allowed_domains,
        "photo_hosts": photos,
        "pages": pages,
        "posts": posts,
    }
    return rep, kinds


def _block(label: str, value: Any, width: int) -> str:
    head = f"     {label + ':':<13}"
    text = (
        "-" if value is None or value == [] else ", ".join(map(str, value)) if isinstance(value, list) else str(value)
    )
    return textwrap.fill(
        text, width, initial_indent=head, subsequent_indent=" " * len(head), break_long_words=True,
        break_on_hyphens=False,
    )  # fmt: skip


def print_report(rep: dict, out, width: int | None = None) -> None:
    """The report as text: one section per page, one block per post (whole values, wrapped), the counts."""
    width = width or max(60, min(shutil.get_terminal_size((100, 24)).columns, 160))
    print(f"site: {rep['site']} (adapter {rep['adapter']}, {rep['base_url']})", file=out)
    print(f"opt-out list: {rep['opt_out']}", file=out)
    print(_block("photo hosts", rep["photo_hosts"], width).strip(), file=out)
    for pg in rep["pages"]:
        print(f"\n#{pg['hashtag']}: {pg['url']}", file=out)
        print(f"  read: {pg['read']}   http status: {pg['http_status'] or '-'}", file=out)
        why = f": {pg['reason']}" if pg["reason"] else ""
        print(f"  outcome: {pg['status']}{why}   posts: {pg['posts']}", file=out)
        if pg["hint"]:
            print(f"  hint: {pg['hint']}", file=out)
        if pg["bad_posts"]:
            print(f"  posts without an id (no row, counted): {pg['bad_posts']}", file=out)
        nxt = pg["next_url"] or ("- (a saved body holds no Link header)" if pg["read"] != "fetched" else "-")
        print(f"  next page: {nxt}", file=out)
        seen = " ".join(f"{k}={v}" for k, v in pg["rate_limit"].items()) or "none seen"
        print(f"  rate limit: {seen}", file=out)
    for i, r in enumerate(rep["posts"], 1):
        print(f"\n{i:>3}  {r['item_id'] or '(no id)'}   #{r['hashtag']}", file=out)
        order = [k for k in FIRST if k in r] + [k for k in r if k not in FIRST and k != "crawl"]
        for k in order:
            v = r[k]
            if k in HIDDEN:
                continue
            if k == "too_young":
                v = "yes (counts read again once old enough)" if v else "no" if v is not None else None
            print(_block(k, v, width), file=out)
        print(_block("crawl", r["crawl"], width), file=out)
    if rep["posts"]:
        fetch = sum(1 for r in rep["posts"] if r["crawl"] == "fetch image")
        print(f"\n{len(rep['posts'])} posts on {len(rep['pages'])} page(s): {fetch} images would be fetched", file=out)


def check(
    cfg: Config,
    site: FeedSite,
    out=None,
    *,
    tag: str | None = None,
    saved: str | None = None,
    as_url: str | None = None,
    as_json: bool = False,
) -> int:
    """Read the first page of each hashtag of ``site`` (or ``tag``; live, or ``saved`` as if served at ``as_url``)
    and print the report to ``out``; returns the exit code."""
    from pipeline.scrape.net.address import allowed_domains
    from pipeline.scrape.net.http import HttpClient

    out = Escaped(out or sys.stdout)  # ids, names, URLs and reasons come from the server
    saved_path = None
    if saved is not None:
        saved_path = Path(saved)
        if not saved_path.is_file():
            raise ConfigError(f"--saved {saved}: no such file (a saved response body, e.g. page.json)")
        if as_url is not None and (urlsplit(as_url).scheme not in ("http", "https") or not urlsplit(as_url).hostname):
            raise ConfigError(f"--as {as_url!r}: the http(s) URL the page was served at")
    tags = [tag] if tag else list(site.hashtags)
    if saved is not None:
        tags = tags[:1]  # one saved body is one page
    client = HttpClient(cfg.scrape.http, allowed_domains(cfg), lambda host, delay=0.0: nullcontext())
    try:
        rep, kinds = report(cfg, site, tags, client, saved=saved_path, as_url=as_url)
    finally:
        client.close()
    if as_json:
        print(json.dumps(rep, indent=1, default=str), file=out)
    else:
        print_report(rep, out)
    for kind, code in (("auth", EXIT_AUTH), ("unreachable", EXIT_UNREACHABLE)):
        if kind in kinds:
            page = next(p for p in rep["pages"] if p["status"] != "ok" and _kind(p["reason"], p["http_status"]) == kind)
            hint = f" ({page['hint']})" if page["hint"] else ""
            print(f"error: {page['url']}: {page['reason']}{hint}", file=sys.stderr)
            return code
    return EXIT_NOTHING if kinds else EXIT_OK


def main(args: argparse.Namespace) -> int:
    """The ``scrape check-feed`` command (``args``: config, site, set, tag, saved, as_url, json)."""
    cfg, site = load_feed(args.config, args.site, parse_overrides(getattr(args, "set", None)))
    if getattr(args, "as_url", None) and not getattr(args, "saved", None):
        raise ConfigError("--as URL goes with --saved FILE (the saved response served at URL)")
    return check(
        cfg,
        site,
        tag=getattr(args, "tag", None),
        saved=getattr(args, "saved", None),
        as_url=getattr(args, "as_url", None),
        as_json=bool(getattr(args, "json", False)),
    )
