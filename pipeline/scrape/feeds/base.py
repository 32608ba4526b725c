"""The feed adapter contract, and the readers of a post's fields that every adapter shares.

An adapter is one small class per site kind (:class:`FeedAdapter`): ``first_url(hashtag)`` and
``parse(body, page_url, hashtag, page)`` → :class:`FeedPage` (normalised posts plus the next page's URL), its own
options model, and optional hooks for pacing, follower lookups, incremental reruns and count refresh. The adapters
by name: :mod:`pipeline.scrape.feeds.registry`. Adding a site kind is one module with its adapter class and one line
in the registry; adding a site of a known kind is a YAML entry.

A post that cannot be parsed becomes a post dict with ``error`` set (``bad_post:<field>``: a missing id, a dict
where text is expected, a string or a float with a fraction where a count is expected, tags that are not a list of
text). A page that the adapter cannot read raises :class:`FeedParseError` (``code``: the page's reason, such as
``not_json``), never a silent "0 posts, ok".

Counts (``likes``, ``followers``) must be JSON integers in 0..2^63-1, as a real API sends them; an integral float
(``12.0``, ``1e3``) is taken too. A count that is a string (``"12"``), a bool, null, a float with a fraction or
infinity, negative, or out of the int64 range makes that post an error row ``bad_post:<field>`` (``bad_post:likes``);
the other posts of the page are kept. The page is parsed with a ``parse_int`` hook (:func:`load_json`): an integer
literal longer than :data:`MAX_INT_DIGITS` digits is never converted (Python refuses int() of 4300+ digits, which
used to fail the whole page) and stays a :class:`LongInt`, which no field accepts as a number.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import urljoin

from pydantic import BaseModel, ConfigDict
from requests.utils import parse_header_links

from pipeline.scrape.feeds.fieldpath import MISSING, FieldPath

if TYPE_CHECKING:
    from pipeline.config import FeedSite

INT64_MAX = 2**63 - 1
MAX_INT_DIGITS = 19  # as many as INT64_MAX has: a longer integer literal is out of range whatever its digits


class LongInt:
    """A JSON integer literal of more than :data:`MAX_INT_DIGITS` digits, kept as its text and never converted."""

    __slots__ = ("text",)

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return f"LongInt({len(self.text)} characters)"

    def __str__(self) -> str:
        return self.text


def _parse_int(text: str) -> int | LongInt:
    """json's ``parse_int`` hook: bounded work per literal, whatever its length."""
    return LongInt(text) if len(text.lstrip("-")) > MAX_INT_DIGITS else int(text)


class FeedParseError(ValueError):
    """A feed page that is not what the adapter expects; ``code`` is the page's short reason."""

    def __init__(self, code: str, detail: str = ""):
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code


@dataclasses.dataclass
class FeedPage:
    posts: list[dict]  # item_id, image_url, user_id, followers, likes, tags, posted_at; or item_id + error / skip
    next_url: str | None
    bad_posts: dict[str, int] = dataclasses.field(default_factory=dict)  # posts without an id: a count by reason


# An API's HTTP error as the reason of its page's row: what the JSON APIs of Bluesky and Misskey answer (an adapter
# whose API means something else by a status keeps its own table, as Mastodon's 404 "unknown tag")
API_ERRORS = {
    400: "http_400_bad_request",
    401: "http_401_auth_required",
    403: "http_403_forbidden",
    404: "http_404_not_found",
    410: "http_410_gone",
    429: "http_429_rate_limited",
}
# the columns a count refresh reads again (every adapter's refresh_counts; feeds/refresh.py rewrites them)
REFRESHED = ("likes", "followers", "reblogs", "replies", "quotes", "reactions", "counts_from")
MAX_REACTIONS = 100  # the largest reactions a post's map keeps (a map of every custom emoji could be huge)
MAX_ITEMS_PER_PAGE = 1000  # more items on one feed page is an error page (too_many_items): no API pages that many


def page_posts(items: list, parse_one: Callable[[Any], dict]) -> tuple[list[dict], dict[str, int]]:
    """``items`` parsed one by one: (posts with an id, counts by reason of those without one: no dict is kept for
    those). More than :data:`MAX_ITEMS_PER_PAGE` items: :class:`FeedParseError` ``too_many_items``."""
    if len(items) > MAX_ITEMS_PER_PAGE:
        raise FeedParseError("too_many_items", f"{len(items)} items, at most {MAX_ITEMS_PER_PAGE}")
    posts: list[dict] = []
    bad: collections.Counter[str] = collections.Counter()
    for item in items:
        p = parse_one(item)
        if p.get("item_id") is None:
            bad[p.get("error") or "bad_post"] += 1
        else:
            posts.append(p)
    return posts, dict(bad)


def dig(obj: Any, path: str) -> Any:
    """Follow a dotted path (``user.id``, ``data.items.0``) into nested dicts/lists; None when absent."""
    v = FieldPath(path).get(obj)
    return None if v is MISSING else v


def link_next(headers: dict | None, page_url: str) -> str | None:
    """The ``Link`` header's ``rel="next"`` URL (resolved against ``page_url``), or None."""
    value = (headers or {}).get("link")
    if not value:
        return None
    for link in parse_header_links(value):
        if "next" in str(link.get("rel", "")).split() and link.get("url"):
            return urljoin(page_url, link["url"])
    return None


def parse_time(value: Any) -> dt.datetime:
    """ISO-8601 text (``Z`` allowed) or epoch seconds → an aware UTC datetime."""
    if isinstance(value, bool):
        raise ValueError("bool is not a time")
    if isinstance(value, int | float):
        return dt.datetime.fromtimestamp(float(value), dt.UTC)
    if isinstance(value, str):
        t = dt.datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=dt.UTC)
    raise ValueError(f"not a time: {type(value).__name__}")


def parse_time_field(value: Any, field: str = "posted_at") -> dt.datetime:
    """:func:`parse_time`, its error named by ``field`` (``ValueError("posted_at: why")``)."""
    try:
        return parse_time(value)
    except (ValueError, TypeError, OverflowError, OSError) as e:
        raise ValueError(f"{field}: {e}") from None


def parse_count(value: Any, field: str) -> int:
    """A like/follower count as the module docstring says; ``ValueError("<field>: why")`` otherwise."""
    if isinstance(value, LongInt):
        raise ValueError(f"{field}: too many digits")
    if isinstance(value, bool) or not isinstance(value, int | float):  # "12", null, lists, objects
        raise ValueError(f"{field}: not a JSON integer")
    if isinstance(value, float):
        if not value.is_integer():  # 1.9, inf, nan
            raise ValueError(f"{field}: not an integer")
        if not -INT64_MAX <= value <= INT64_MAX:
            raise ValueError(f"{field}: too large")
        value = int(value)
    if value < 0:
        raise ValueError(f"{field}: negative")
    if value > INT64_MAX:  # the posts schema is int64: a larger count would fail the whole batch write
        raise ValueError(f"{field}: too large")
    return value


def parse_optional_count(value: Any, field: str) -> int | None:
    """:func:`parse_count` of a count an API may leave out: absent or null is None (unknown, not 0)."""
    return None if value is None or value is MISSING else parse_count(value, field)


def parse_text(value: Any, field: str, *, required: bool = False) -> str | None:
    """An id or a URL: JSON text or an integer (as text); None when absent; ``ValueError(field)`` for another type
    (an object, a list, a bool, a float) or, when ``required``, for an absent or empty value."""
    if value is MISSING or value is None or value == "":
        if required:
            raise ValueError(f"{field}: missing")
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int | LongInt) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{field}: not text ({type(value).__name__})")


def parse_tags(value: Any, field: str = "tags") -> list[str]:
    """A list of text (or integers); one text is one tag (``tags.0.name``); absent or null is no tags; anything else
    (objects, a number, a list holding objects) ``ValueError``."""
    if value is MISSING or value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise ValueError(f"{field}: not a list ({type(value).__name__})")
    out = []
    for t in value:
        if isinstance(t, bool) or not isinstance(t, str | int | LongInt):
            raise ValueError(f"{field}: an element is not text ({type(t).__name__})")
        out.append(str(t))
    return out


def parse_reactions(value: Any, field: str = "reactions") -> tuple[int, str | None]:
    """A reactions map ``{"emoji": count}`` → (the sum of its counts, the map as compact JSON text with sorted keys,
    or None when empty). The :data:`MAX_REACTIONS` largest are kept in the text (the sum counts them all); a map that
    is not an object, or a count that is not one (:func:`parse_count`), ``ValueError`` naming ``field``."""
    if value is None or value is MISSING:
        return 0, None
    if not isinstance(value, dict):
        raise ValueError(f"{field}: not an object")
    counts = {str(k)[:200]: parse_count(v, field) for k, v in value.items()}
    total = parse_count(sum(counts.values()), field)  # ≤ int64
    if not counts:
        return total, None
    kept = dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:MAX_REACTIONS])
    return total, json.dumps(kept, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def load_json(body: bytes) -> Any:
    """A page's JSON (integers bounded by :func:`_parse_int`); :class:`FeedParseError` ``not_json`` otherwise."""
    try:
        return json.loads(body, parse_int=_parse_int)
    except (ValueError, UnicodeDecodeError) as e:
        raise FeedParseError("not_json", str(e)[:80]) from None
    except RecursionError:  # a nesting bomb such as [[[[...]]]]
        raise FeedParseError("not_json", "nested too deeply") from None


class NoOptions(BaseModel):
    """The options section of an adapter that has none: it must be empty."""

    model_config = ConfigDict(extra="forbid")


class FeedAdapter:
    """The contract of a feed adapter: one subclass per site kind, in its own module, named in the registry.

    Required: :meth:`first_url` and :meth:`parse`. ``Options``: the pydantic model of the adapter's own config section
    (the feed entry's key named like the adapter: ``mastodon: {...}``; validated when the config is loaded, then
    ``self.opts``). Optional hooks, each with a default that does nothing, so that no module outside an adapter names
    one:

    * :meth:`fetch` (headers, pacing) and :meth:`enrich` (more requests per page: follower lookups);
    * incremental reruns and resume cursors: :attr:`incremental` true and :meth:`incremental_since` (a feed whose ids
      are ordered by :meth:`id_key` and whose parser stops at a ``since`` id): its walks are recorded, resumed after
      a kill, and a rerun walks down to the newest stored post only (:mod:`pipeline.scrape.feeds.cursors`);
    * count refresh: :attr:`refresh_max` > 0 and :meth:`refresh_counts` (posts too young when scraped get their
      counts read again once old enough, :mod:`pipeline.scrape.feeds.refresh`).

    ``share``: how many worker processes split the adapter's request budget (one adapter instance per process).
    """

    Options: ClassVar[type[BaseModel]] = NoOptions

    def __init__(self, site: FeedSite, share: int = 1):
        self.site = site
        self.share = share
        opts = site.options
        self.opts: Any = opts if isinstance(opts, self.Options) else self.Options.model_validate(opts or {})

    # ---------------------------------------------------------------- required
    def first_url(self, hashtag: str) -> str:  # pragma: no cover
        """The URL of ``hashtag``'s first (newest) page."""
        raise NotImplementedError

    def parse(
        self, body: bytes, page_url: str, hashtag: str, page: int, headers: dict | None = None
    ) -> FeedPage:  # pragma: no cover
        """One fetched page (its body and the kept response headers) → :class:`FeedPage`; :class:`FeedParseError`
        when the page is not what the adapter expects."""
        raise NotImplementedError

    # ---------------------------------------------------------------- optional hooks
    def fetch(self, client: Any, url: str) -> Any:
        """GET one feed page with ``client`` (:class:`~pipeline.scrape.net.http.HttpClient`, its feed page byte cap):
        a ``FetchResult``."""
        return client.fetch_feed_page(url)

    def enrich(self, client: Any, posts: list[dict]) -> None:
        """Complete parsed posts with what needs more requests (follower lookups); nothing by default."""

    incremental: bool = False  # walks recorded, resumed and stopped at the newest stored post (needs the two below)

    def id_key(self, item_id: str) -> tuple[int, str]:
        """The order of the feed's ids, newest largest: numeric text by length then digits (Mastodon's snowflakes);
        other text as it sorts (Bluesky's TIDs, Misskey's aids)."""
        return (len(item_id), item_id) if item_id.isdigit() else (0, item_id)

    def incremental_since(self, url: str, since_id: str) -> str:  # pragma: no cover
        """``url`` (a walk's first page) made into a walk that stops at ``since_id``: the parser keeps only newer
        posts and gives no next page once it reaches it. Used only when :attr:`incremental`."""
        raise NotImplementedError

    @property
    def refresh_max(self) -> int:
        """How many matured young posts :meth:`refresh_counts` may read again a run (0, the default: none)."""
        return 0

    def refresh_counts(
        self, client: Any, ids: list[str], deadline: float | None = None
    ) -> dict[str, dict]:  # pragma: no cover
        """Fresh counts (``likes``, ``followers``, ``reblogs``, ``replies``, ``quotes``, ``reactions``,
        ``counts_from``) by item id for the posts ``ids`` that
        could be read again; the others are left out. No request may start after ``deadline`` (``time.monotonic()``;
        the crawl driver runs this before its workers start). Used only when :attr:`refresh_max` > 0."""
        raise NotImplementedError
