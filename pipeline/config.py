"""Typed settings for every stage, loaded from YAML: the only place defaults live, but for the feed adapters' options.

A feed adapter's options are its own pydantic model in its own module (``pipeline/scrape/feeds/``); a feed entry's
section named like its adapter is checked with that model when the config is loaded (:class:`FeedSite`), found
through the adapter registry, which imports nothing until asked.

A config file is YAML read with ``yaml.safe_load``. ``${VAR}`` and ``${VAR:-default}`` in any string of the main config
are replaced from the environment before validation, so one file serves a laptop and a cluster (``data_root:
${FACERANK_DATA_ROOT:-data}``); a ``${VAR}`` without a default that is not set is an error naming it. A site file
(``sites: [...]``, written for one site and often copied from elsewhere) may read ``FACERANK_*`` variables only, and
``mastodon.access_token_env`` must name a ``FACERANK_…TOKEN`` or ``MASTODON_…TOKEN`` variable: a site file cannot send
the crawl's other secrets (cloud keys, the Ray token) to its host. Unknown keys and wrong types are errors:
:func:`load_config` raises :class:`ConfigError` with one readable line, and the job entrypoints turn it into exit code 2
before any work.

Example::

    from pipeline.config import load_config
    cfg = load_config("configs/demo.yaml", overrides={"data_root": "/tmp/run1"})
    cfg.labels.group_size  # 100
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)


class ConfigError(ValueError):
    """A config that cannot be used; ``str(err)`` is one line meant for a person."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class Placement(_Section):
    """Where one stage's actors (or Ray Train workers) run: docs/cluster.md "Placement"; applied by
    :mod:`pipeline.placement`. ``resources``: custom resources each one asks for (only nodes started with them,
    e.g. ``ray start --resources '{"worker_node": 1}'``, can take it); ``labels``: node labels it needs (``ray start
    --labels``); ``soft``: the labels are a preference, so when no such node is alive it runs anywhere."""

    resources: dict[str, float] = {}
    labels: dict[str, str] = {}
    soft: bool = False
    node_wait_s: float = Field(600.0, ge=0)  # a stage waits this long for a node offering it, then fails (one line)

    @model_validator(mode="after")
    def _custom_only(self) -> Placement:
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU", "memory", "object_store_memory"):
                raise ValueError(f"resources: {name} comes from the stage's own settings (num_cpus, num_gpus)")
            if amount <= 0:
                raise ValueError(f"resources: {name} must be > 0")
        return self


class PlacementConfig(_Section):
    """``ray.placement``: one :class:`Placement` per stage that starts actors or workers (empty: anywhere)."""

    scrape: Placement = Placement()  # the HTTP and browser crawl actors
    faces: Placement = Placement()  # the MTCNN actor pool (Ray Data)
    train: Placement = Placement()  # the Ray Train workers
    score: Placement = Placement()  # the scoring actor pool (Ray Data)

    @model_validator(mode="after")
    def _train_hard(self) -> PlacementConfig:
        if self.train.soft and self.train.labels:
            raise ValueError("train: Ray Train's label_selector is always required; soft labels apply to actors")
        return self


class RayConfig(_Section):
    address: str | None = None  # None: connect to RAY_ADDRESS when set (ray job submit), else start a local Ray
    num_cpus: int | None = None  # only for a local Ray started by the pipeline
    placement: PlacementConfig = PlacementConfig()


# ---------------------------------------------------------------- scrape
class RetryConfig(_Section):
    attempts: int = Field(4, ge=1, le=20)
    backoff_s: float = Field(0.5, ge=0)  # base of the exponential backoff (urllib3 Retry backoff_factor)
    backoff_max_s: float = Field(30.0, ge=0)
    jitter_s: float = Field(0.25, ge=0)
    max_retry_after_s: float = Field(60.0, ge=0)  # a server's Retry-After is honoured up to this many seconds


class HttpConfig(_Section):
    user_agent: str = "facerank-bot/0.1 (+https://github.com/facerank/facerank)"
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(15.0, gt=0)
    # one hop's whole exchange (connect, status line, headers, body, retries and their sleeps): a trickle of headers
    # or body ends as `timeout` here
    total_timeout_s: float = Field(60.0, gt=0)
    max_interim_responses: int = Field(8, ge=0)  # `100 Continue` responses read before the real one
    max_image_bytes: int = Field(10_000_000, gt=0)
    max_image_pixels: int = Field(40_000_000, gt=0)  # Pillow's decompression-bomb guard
    max_page_bytes: int = Field(20_000_000, gt=0)  # staff pages (HTML) and robots.txt
    # feed API pages (JSON): well under the image cap, as a parsed JSON page costs many times its size in memory
    max_feed_page_bytes: int = Field(2_000_000, gt=0)
    max_redirects: int = Field(5, ge=0)
    requests_per_second_per_host: float = Field(20.0, gt=0)
    max_concurrency_per_host: int = Field(4, ge=1)
    # robots.txt Crawl-delay is the host's minimum interval between requests up to this many seconds; a larger one
    # is applied as this cap (a hostile robots.txt cannot stall the crawl); 0 ignores Crawl-delay
    max_crawl_delay_s: float = Field(10.0, ge=0)
    allow_private_addresses: bool = False  # loopback/private/link-local hosts are refused unless True
    allowed_content_types: list[str] = ["image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp"]
    retry: RetryConfig = RetryConfig()


# a photo host (``photo_hosts``): a host name (it and its subdomains), a glob over the whole name (``*.cloudfront.net``,
# ``*`` also spans dots) or ``*`` alone (any public host); no scheme, port or path
_PHOTO_HOST = re.compile(r"^(\*|(\*\.|\*-)?[a-z0-9*]([a-z0-9*.-]*[a-z0-9*])?)$")


def _photo_hosts(hosts: list[str]) -> list[str]:
    out = []
    for h in hosts:
        host = str(h).strip().lower().rstrip(".")
        if not _PHOTO_HOST.match(host):
            raise ValueError(f"{h!r} is not a host name or a glob such as *.cloudfront.net (no scheme, port or path)")
        out.append(host)
    return list(dict.fromkeys(out))


PhotoHosts = Annotated[list[str], AfterValidator(_photo_hosts)]


class FeedSite(_Section):
    """A hashtag feed. ``adapter`` names its adapter (a name in the registry, pipeline/scrape/feeds/registry.py:
    ``demo``, ``json``, ``mastodon``, ...); that adapter's own options are the entry's section of the same name
    (``mastodon: {limit: 40}``, ``json: {fields: ...}``), checked by the adapter's options model when the config is
    loaded and kept as ``options``."""

    name: str
    adapter: str = "demo"
    base_url: str
    hashtags: list[str] = ["selfie"]
    max_pages: int = Field(100, ge=1)
    # more hosts this feed's images may come from (a media host, a CDN): pipeline.scrape.net.address.photo_hosts
    photo_hosts: PhotoHosts = []
    options: Any = Field(None, exclude=True)  # the adapter's options model, from its section

    @model_validator(mode="before")
    @classmethod
    def _adapter_section(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        from pipeline.scrape.feeds.registry import ADAPTERS, options_model  # imports nothing until asked

        raw = dict(raw)
        adapter = raw.get("adapter", "demo")
        if not isinstance(adapter, str) or adapter not in ADAPTERS:
            raise ValueError(f"adapter: {adapter!r} is not a feed adapter (one of: {', '.join(sorted(ADAPTERS))})")
        if "options" in raw:
            raise ValueError(f"options: unknown key (the adapter's options go under `{adapter}:`)")
        model = options_model(adapter)
        own = set(cls.model_fields)
        for key in raw:
            if key in own or key == adapter:
                continue
            if key in model.model_fields:
                raise ValueError(f"{key}: an option of adapter {adapter!r}: put it under `{adapter}:`")
            if key in ADAPTERS:
                raise ValueError(f"{key}: the options of adapter {key!r}, but this feed's adapter is {adapter!r}")
            raise ValueError(f"{key}: unknown key")
        try:
            raw["options"] = model.model_validate(raw.pop(adapter, None) or {})
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in (adapter, *first["loc"]))
            msg = "unknown key" if first["type"] == "extra_forbidden" else " ".join(str(first["msg"]).split())
            msg = msg.removeprefix("Value error, ")
            raise ValueError(f"{where}: {msg}") from None
        return raw

    @model_serializer(mode="wrap")
    def _with_section(self, handler: Any) -> dict[str, Any]:
        """Dumped as it is written: the adapter's options under the adapter's name (so a dump validates again)."""
        out = handler(self)
        out[self.adapter] = self.options.model_dump() if self.options is not None else {}
        return out


# a site's "no photo" image by its URL (pipeline/scrape/staff/placeholders.py): the patterns every site has; a site's
# own placeholder_patterns are added to them (placeholder_patterns_replace: true uses the site's alone)
DEFAULT_PLACEHOLDER_PATTERNS = (
    r"placeholder",
    r"no[-_ ]?(?:photo|image|picture|pic|avatar|headshot)",
    r"(?:photo|image)[-_ ]?(?:not[-_ ]?)?(?:available|unavailable|coming)",
    r"default[-_ ]?(?:avatar|user|profile|photo|image|person)",
    r"silhouette",
    r"(?:avatar|person|user|profile)[-_ ]?(?:default|blank|generic)",
    r"blank\.(?:gif|png|jpe?g)",
    r"spacer\.gif",
    r"mystery[-_ ]?(?:man|person)",
)


class StaffSite(_Section):
    """A university department's staff directory (docs/sites.md). Selectors are CSS, or XPath after ``xpath:``;
    the same selectors read the page fetched by HTTP (``render: static``) and the one Chromium rendered."""

    name: str
    department: str
    start_urls: list[str]
    # auto: fetch with the HTTP client and parse; Chromium only when the page needs scripts (no person found and
    # scripts present) or has a load_more or next_button button. static: never Chromium. browser: always Chromium.
    render: Literal["auto", "static", "browser"] = "auto"
    wait_for: str | None = None  # (browser) element whose presence means the list has rendered; None: `person`
    person: str = ".person"
    name_selector: str | None = ".name"
    name_attr: str | None = None  # the photo's attribute holding the name (alt, title) when name_selector has none
    role_selector: str | None = ".role"
    role_after_name: bool = False  # the role is the text after the name inside the card (bare text nodes)
    role_lines: Literal["all", "first"] = "all"  # all: the role's lines joined by "; "; first: its first line only
    role_exclude: str | None = None  # elements inside the role (or card) whose text is never part of the role
    photo_selector: str = "img"
    # photo attributes tried in order (srcset: its largest candidate, with <picture><source>; style: CSS url())
    photo_attrs: list[str] = [
        "data-srcset", "data-lazy-srcset", "data-src", "data-lazy-src", "data-original", "data-lazy", "data-url",
        "data-bg", "data-background", "data-background-image", "srcset", "src", "style", "data-facerank-bg",
    ]  # fmt: skip
    # a link in each card to the person's own page: their key, and (follow_profiles) the photo/role they lack
    profile_link: str | None = Field(None, validation_alias=AliasChoices("profile_link", "profile_selector"))
    # None (default): follow when a profile selector says what to read there (follows_profiles); true without one
    # is a config error (a bare `img` would take the site's logo for every face); false: never
    follow_profiles: bool | None = None
    max_profiles: int = Field(200, ge=0)  # profile pages followed per site and run
    profile_photo_selector: str | None = None  # the photo on a person's own page (no default: never the logo)
    profile_role_selector: str | None = None
    # regular expressions (case-insensitive, on the percent-decoded photo URL) that mark the site's "no photo" image:
    # the site's own, added to DEFAULT_PLACEHOLDER_PATTERNS; validated, the field holds both (defaults first)
    placeholder_patterns: list[str] = Field(default_factory=list)
    placeholder_patterns_replace: bool = False  # true: the site's placeholder_patterns alone, without the defaults
    placeholder_min_people: int = Field(3, ge=0)  # the same image bytes for this many people: a placeholder (0: off)
    load_more: str | None = None  # a button to click until it disappears; the page is read once, after the clicks
    # a button that replaces the list in place (a JavaScript pager): clicked while it is shown and enabled, the
    # people of every state the list goes through collected (by key), at most max_pages states
    next_button: str | None = None
    next_page: str | None = None  # a link to follow for the next page
    scroll_for_lazy_images: bool = True
    max_pages: int = Field(20, ge=1)
    # more hosts this site's photos may come from (a CDN): pipeline.scrape.net.address.photo_hosts
    photo_hosts: PhotoHosts = []

    @property
    def profile_selector(self) -> str | None:
        """The old name of :attr:`profile_link`."""
        return self.profile_link

    @property
    def wait_selector(self) -> str:
        """What the browser waits for: ``wait_for``, else the ``person`` selector."""
        return self.wait_for or self.person

    @property
    def follows_profiles(self) -> bool:
        """Whether profile pages are followed: ``follow_profiles``, a ``profile_link`` and a profile selector."""
        wanted = self.follow_profiles is not False and self.profile_link and self.max_profiles
        return bool(wanted and (self.profile_photo_selector or self.profile_role_selector))

    @property
    def clicks(self) -> str | None:
        """The button the browser clicks on a listing page (``load_more`` or ``next_button``), if any."""
        return self.load_more or self.next_button

    @model_validator(mode="after")
    def _clicks_and_profiles(self) -> StaffSite:
        if self.load_more and self.next_button:
            raise ValueError(
                "load_more and next_button: give one (load_more appends to the list, next_button replaces it)"
            )
        if self.follow_profiles is True and not (self.profile_photo_selector or self.profile_role_selector):
            raise ValueError(
                "follow_profiles: true needs profile_photo_selector (the photo on a person's own page, e.g. "
                "'.profile img'; a bare img can take the site's logo) or profile_role_selector"
            )
        return self

    @model_validator(mode="after")
    def _patterns_compile(self) -> StaffSite:
        if not self.placeholder_patterns_replace:  # defaults first, each once (a dump validates to the same list)
            own = [p for p in self.placeholder_patterns if p not in DEFAULT_PLACEHOLDER_PATTERNS]
            self.placeholder_patterns = [*DEFAULT_PLACEHOLDER_PATTERNS, *dict.fromkeys(own)]
        for p in self.placeholder_patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"placeholder_patterns: {p!r} is not a regular expression ({e})") from None
        return self


class SeleniumConfig(_Section):
    chromium_path: str = "/usr/bin/chromium"
    chromedriver_path: str = "/usr/bin/chromedriver"
    remote_url: str | None = None  # also from the SELENIUM_REMOTE_URL environment variable
    page_load_timeout_s: float = Field(20.0, gt=0)
    wait_timeout_s: float = Field(10.0, gt=0)
    max_clicks: int = Field(50, ge=0)
    num_browsers: int = Field(1, ge=1)  # browser actors (one headless Chromium each) for the staff pages
    no_sandbox: bool = False  # Chromium without its sandbox (a container without user namespaces); always as root
    # Chromium's only way out: the egress proxy (pipeline/scrape/net/egress.py). It listens on proxy_host; a remote
    # browser (remote_url) needs an address of the crawl actor it can reach, else its pages fail (closed, not open).
    proxy_host: str = "127.0.0.1"
    proxy_max_connections: int = Field(64, ge=1)
    proxy_idle_timeout_s: float = Field(30.0, gt=0)
    proxy_max_lifetime_s: float = Field(300.0, gt=0)


class ScrapeConfig(_Section):
    num_actors: int = Field(2, ge=1)
    threads_per_actor: int = Field(8, ge=1)  # concurrent downloads inside one actor
    cpus_per_actor: float = Field(0.5, gt=0)  # Ray CPUs reserved per crawl actor (the work is mostly I/O)
    tasks_per_call: int = Field(16, ge=1)  # frontier items handed to an actor per call
    # the driver abandons an HTTP batch still running after this long: its tasks become error rows `batch_timeout`
    # and its actor is killed and replaced. None: derived from the http deadlines (ScrapeConfig.batch_timeout)
    batch_timeout_s: float | None = Field(None, gt=0)
    # the same for a browser batch (one staff site); None: derived from the site's pages and the timeouts
    # (ScrapeConfig.staff_batch_timeout), with staff_parse_budget_s per page for reading it
    staff_batch_timeout_s: float | None = Field(None, gt=0)
    staff_parse_budget_s: float = Field(10.0, gt=0)
    batch_rows: int = Field(200, ge=1)  # rows per atomically written Parquet part
    retry_errors: bool = False  # rerun: drop earlier status=error rows and fetch those items again
    min_post_age_days: int = Field(30, ge=0)
    # the count refresh of young posts (in the driver, before the workers start) starts no request after this long
    refresh_timeout_s: float = Field(600.0, gt=0)
    # hosts (each with its subdomains) that pages, API calls and their redirects may reach, added to the configured
    # sites' own hosts (always allowed); robots.txt goes with them. Photos: the same hosts and photo_hosts
    allowed_domains: list[str] = []
    # more hosts every site's photos may come from (docs/sites.md "Where photos may come from"): a host name, a glob
    # (*.cloudfront.net) or * (any public host); a site's own photo_hosts add to these for that site
    photo_hosts: PhotoHosts = []
    http: HttpConfig = HttpConfig()
    selenium: SeleniumConfig = SeleniumConfig()
    feeds: list[FeedSite] = []
    staff: list[StaffSite] = []
    non_academic_roles: list[str] = [
        "secretary",
        "administrator",
        "administrative",
        "assistant to",
        "office manager",
        "receptionist",
        "technician",
    ]

    def batch_timeout(self) -> float:
        """``batch_timeout_s``, or the worst case of a healthy batch: its tasks in rounds of ``threads_per_actor``,
        each task at most a robots.txt hop and ``max_redirects + 1`` hops, each hop its deadline plus a crawl delay
        and a minute of slack for the rate limiter."""
        if self.batch_timeout_s is not None:
            return self.batch_timeout_s
        h = self.http
        rounds = math.ceil(self.tasks_per_call / self.threads_per_actor)
        return rounds * (h.max_redirects + 2) * (h.total_timeout_s + h.max_crawl_delay_s) + 60.0

    def staff_batch_timeout(self, site: StaffSite) -> float:
        """``staff_batch_timeout_s``, or the worst case of a healthy staff site: its listing pages (``max_pages`` per
        start URL) and profile pages (``max_profiles``), each page a load (the longer of Chromium's page-load
        timeout with its wait and ``load_more`` or ``next_button`` clicks, and a static fetch's hops) plus a crawl
        delay and ``staff_parse_budget_s``, and a minute of slack."""
        if self.staff_batch_timeout_s is not None:
            return self.staff_batch_timeout_s
        h, s = self.http, self.selenium
        listing = site.max_pages * max(1, len(site.start_urls))
        profiles = site.max_profiles if site.follows_profiles else 0
        clicks = s.max_clicks * s.wait_timeout_s if site.load_more else 0.0
        if site.next_button:  # each state: the list's change, its settling and its lazy photos, each one wait at most
            clicks = min(s.max_clicks, site.max_pages - 1) * 3 * s.wait_timeout_s
        load = max(s.page_load_timeout_s + s.wait_timeout_s + clicks, (h.max_redirects + 2) * h.total_timeout_s)
        return (listing + profiles) * (load + h.max_crawl_delay_s + self.staff_parse_budget_s) + 60.0


# ---------------------------------------------------------------- faces
class FacesConfig(_Section):
    num_actors: int = Field(2, ge=1)  # Ray Data actor pool size (one MTCNN per actor)
    num_cpus_per_actor: float = Field(1.0, gt=0)  # also the actor's torch thread count (rounded, at least 1)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    batch_size: int = Field(16, ge=1)  # images per actor call; same-size images inside it share one MTCNN pass
    part_rows: int = Field(500, ge=1)  # rows per atomically written faces/ part file
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_side: int = Field(800, ge=64)  # detection runs on a copy whose long side is at most this
    max_pixels: int = Field(40_000_000, gt=0)  # decompression-bomb guard: larger images are rejected unread
    max_decode_mib: int = Field(256, ge=16)  # one image's decoder memory, estimated from its header: above, too_large
    decode_max_side: int = Field(2048, ge=64)  # images are decoded to a working copy at most this long (JPEG draft,
    # PNG row bands; max_side when larger); recheck and crops use it, boxes stay in original pixels
    batch_mib: int = Field(128, ge=1)  # working copies + MTCNN activations one actor holds at once (then MTCNN runs)
    image_formats: list[str] = ["JPEG", "PNG", "WEBP", "GIF"]  # the only Pillow decoders run on untrusted bytes
    min_image_px: int = Field(20, ge=12)  # images with a shorter side are rejected (reason image_too_small)
    detect_min_px: int = Field(20, ge=12)  # MTCNN min_face_size, in pixels of the detection copy
    # ... raised to this share of the detection copy's shorter side (0: off): the pyramid then starts at a coarser
    # scale, skipping P-Net's most expensive passes; faces much smaller than it are not found
    detect_min_share: float = Field(0.06, ge=0, le=0.5)
    # who runs MTCNN's three nets: torch, ONNX Runtime (onnx: facenet-pytorch's weights exported at first use,
    # pipeline/faces/onnx_nets.py; CPU only), or auto: onnx on a cpu when onnxruntime and onnx are installed
    runtime: Literal["auto", "torch", "onnx"] = "auto"
    onnx_cache_dir: str | None = None  # where the exported nets are kept (None: ~/.cache/facerank/mtcnn-onnx)
    pyramid_factor: float = Field(0.709, gt=0.1, lt=1.0)  # MTCNN scale-pyramid factor
    thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7)  # MTCNN P-/R-/O-net thresholds
    recheck_below: float = Field(0.99, ge=0, le=1)  # faces found on a downscaled copy with a lower probability
    # are confirmed on a full-resolution crop around them (0 disables); removes small false faces
    min_prob: float = Field(0.9, ge=0, le=1)
    min_face_px: int = Field(20, ge=1)  # shorter box side in original pixels
    policy: Literal["exactly_one", "at_least_one", "largest"] = "largest"
    margin: float = Field(0.2, ge=0)  # fraction of the box side added on each side of the square crop
    crop_size: int = Field(224, ge=16)
    # none: the square as cut; eyes: rotated so the eyes are level; similarity: the five landmarks mapped onto the
    # standard 112 x 112 five-point template (pipeline/faces/crop.py); true/false as older configs wrote it
    align: Literal["none", "eyes", "similarity"] = "none"
    jpeg_quality: int = Field(90, ge=50, le=100)
    write_files: bool = False  # also write crops as files under crops/
    progress_every_s: float = Field(10.0, gt=0)  # a "done / total, rate, ETA" line at most this often

    @field_validator("align", mode="before")
    @classmethod
    def _align_bool(cls, v: Any) -> Any:
        return {True: "eyes", False: "none"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _known_image_formats(self) -> FacesConfig:
        self.image_formats = [f.upper() for f in self.image_formats]
        if not self.image_formats:
            raise ValueError("image_formats: name at least one Pillow format (JPEG, PNG, WEBP, GIF, BMP, ...)")
        if set(self.image_formats) - {"JPEG", "PNG", "WEBP", "GIF"}:
            from PIL import Image

            Image.init()
            if bad := sorted(set(self.image_formats) - set(Image.OPEN)):
                raise ValueError(f"image_formats: {', '.join(bad)} not a Pillow format (JPEG, PNG, WEBP, GIF, ...)")
        return self


# ---------------------------------------------------------------- labels
class SelfieLabelsConfig(_Section):
    """The group-ranking rule of the selfie study (see pipeline/labels/selfie.py for the exact rule)."""

    min_post_age_days: int = Field(30, ge=0)  # younger posts (scraped_at - posted_at) have unstable likes
    min_followers: int = Field(0, ge=0)
    max_followers: int = Field(10**12, ge=0)
    max_tags: int = Field(30, ge=0)
    tag_bonus: float = Field(0.01, ge=0)  # audience = followers * (1 + tag_bonus * max(n_tags - 1, 0))
    group_size: int = Field(100, ge=2)  # even: the top half of a group is "good", the bottom half not
    min_group_size: int | None = Field(None, ge=2)  # keep the last, incomplete group when it has this many posts
    require_face: bool = True  # the face policy (faces.kept) must say kept
    # federated feeds (posts.counts_from): any = rank every post together (default); home = only posts whose counts
    # come from the author's home instance; per_instance = groups formed within each counting instance
    counts_from: Literal["any", "home", "per_instance"] = "any"

    @model_validator(mode="after")
    def _bounds(self) -> SelfieLabelsConfig:
        if self.min_followers > self.max_followers:
            raise ValueError("min_followers must not exceed max_followers")
        if self.group_size % 2:
            raise ValueError("group_size must be even (top half / bottom half)")
        if self.min_group_size is not None and self.min_group_size > self.group_size:
            raise ValueError("min_group_size must not exceed group_size")
        return self


class SplitConfig(_Section):
    """Person-level splits: a hash of (seed, person id) decides, so one person never lands on two sides."""

    train: float = Field(0.7, ge=0, le=1)
    val: float = Field(0.2, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)
    k_folds: int | None = Field(None, ge=2)  # also write a fold column 0..k-1 (an independent hash)
    seed: str = "facerank"

    @model_validator(mode="after")
    def _sum(self) -> SplitConfig:
        if abs(self.train + self.val + self.test - 1.0) > 1e-6:
            raise ValueError("split fractions train + val + test must sum to 1")
        return self


class DepartmentLabelsConfig(_Section):
    require_face: bool = True
    class_weights: Literal["balanced", "none"] = "balanced"  # weight = n / (n_classes * n_class)


class BeautyLabelsConfig(_Section):
    # hash: the person-hash split of labels.split; split60: person-hash 60/40 train/test (the SCUT-FBP5500
    # benchmark's holdout protocol); cv5: person-hash 5-fold cross validation (fold column; split is "test" for
    # cv_fold, "train" otherwise); files: the split named by each scores file (train*.txt / test*.txt / val*.txt,
    # a trailing number in a test file name gives the fold), as shipped with SCUT-FBP5500.
    protocol: Literal["hash", "split60", "cv5", "files"] = "hash"
    cv_fold: int = Field(0, ge=0, le=4)
    min_score: float | None = None  # scores outside [min_score, max_score] are excluded with a reason
    max_score: float | None = None


class ImportConfig(_Section):
    """Where an imported labelled data set comes from (``labels import-classes`` / ``import-scores`` record it in
    ``labels/<task>/import.json``; the model card repeats it): a recipe sets it for its study."""

    name: str | None = None  # e.g. "SCUT-FBP5500"
    url: str | None = None  # where to download it
    licence: str | None = None  # the licence terms as the data set states them
    citation: str | None = None
    published: str | None = None  # the study's published figure to compare with, as a sentence
    # import-classes defaults (its command-line options win): the CSV's columns, raw label -> class name, and
    # whether the images go through face detection (False: they are faces already, e.g. cartoons)
    file_column: str = "file"
    label_column: str = "label"
    person_column: str | None = None
    split_column: str | None = None
    group_column: str | None = None  # a group accuracy is reported per (age band, skin type, gender...)
    max_file_mb: float = Field(50.0, gt=0)  # a listed file larger than this is never read (reason file_too_large)
    label_map: dict[str, str] | None = None
    detect: bool = True


class LabelsConfig(_Section):
    imported: ImportConfig = ImportConfig()
    selfie: SelfieLabelsConfig = SelfieLabelsConfig()
    departments: dict[str, str] = {"cs": "cs", "econ": "econ", "german": "german", "mech": "mech"}
    department: DepartmentLabelsConfig = DepartmentLabelsConfig()
    beauty: BeautyLabelsConfig = BeautyLabelsConfig()
    split: SplitConfig = SplitConfig()
    report: bool = True  # write labels/report.html and labels/report.json
    report_sample_rows: int = Field(1_000_000, ge=1000)  # histograms are drawn from at most this many rows


# ---------------------------------------------------------------- train
class TrainConfig(_Section):
    # any labels/<task> dataset (selfie, department, beauty, or one made by `labels import-classes --task NAME`);
    # classification or regression follows from its rows (class names, or a numeric target)
    task: str = Field("selfie", pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    backbone: str = "resnet18"  # a record of pipeline/model/backbones.py (BACKBONES)
    # a local weights file, or a named set already in torch.hub's cache (imagenet, vggface2, casia-webface);
    # nothing is downloaded
    pretrained: str | None = None
    image_size: int = Field(112, ge=16)
    epochs: int = Field(5, ge=1)
    freeze_epochs: int = Field(0, ge=0)  # phase one: train the head with the backbone frozen
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    finetune_lr: float = Field(1e-4, gt=0)
    # per-group learning rates: with a scale, the head learns at lr and the backbone at lr x backbone_lr_scale
    # whenever it trains (after freeze_epochs); None: the whole network at finetune_lr after freeze_epochs (at lr
    # with freeze_epochs 0)
    backbone_lr_scale: float | None = Field(None, gt=0, le=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)  # classification only
    mixup: float = Field(0.0, ge=0)  # Beta(a, a) mixup of training batches (0: off)
    weight_decay: float = Field(1e-4, ge=0)
    # constant: every step at the phase's learning rate; cosine: times half a cosine from 1 at the start of the run
    # to 0 at its end, per step (warm restarts none; the same in both phases of fine-tuning)
    lr_schedule: Literal["constant", "cosine"] = "constant"
    # the layout (TrainConfig.layout): None picks it from the cluster when training starts: without use_gpu one
    # worker holding the biggest node's CPUs less data_cpus (measured faster than DDP over one-thread workers on
    # a CPU node: docs/benchmarks.md, bench_train), with use_gpu one worker per GPU of the cluster holding its
    # share of the CPUs (less data_cpus). A set value is kept. Torch threads per worker = ceil(cpus_per_worker).
    num_workers: int | None = Field(None, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float | None = Field(None, gt=0)
    # autocast of the forward passes (weights and optimiser stay fp32; pipeline.train.loop.amp_dtype): auto is
    # bfloat16 on CUDA GPUs with bf16 and fp32 on CPUs (on an AMX-BF16 CPU bf16 epochs ran at about twice the fp32
    # rate, bench_train, but cost accuracy on real faces: docs/benchmarks.md); no: fp32; bf16: always (opt-in on a
    # CPU); fp16: GPUs only (with a grad scaler)
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    class_weights: bool = False
    augment: bool = True
    max_failures: int = Field(2, ge=0)
    seed: int = 0
    run_id: str | None = None  # None: a timestamped id
    jitter: float = Field(0.2, ge=0, lt=1)  # colour jitter strength (brightness, contrast, saturation ±)
    # > 0: shuffle every epoch (a cached train set: all of the worker's rows; a streamed one: a local buffer of
    # this many rows); 0: no shuffle
    shuffle_buffer: int = Field(256, ge=0)
    # "precise BN": after each epoch that trains the backbone, its batch-norm statistics are recomputed with the
    # epoch's final weights over up to this many of the epoch's training crops per worker (averaged over the
    # workers), instead of the running averages of the earlier steps' weights; 0 keeps the running averages.
    # 256: a forward pass over 1024 crops per epoch cost a ResNet-18 epoch of 3,200 crops 8% (bench_train).
    precise_bn: int = Field(256, ge=0)
    data_cpus: float = Field(0.25, gt=0)  # CPUs per Ray Data read/join task (kept free beside the workers)
    cache_data: bool = True  # materialize the joined crops in the object store once (False: stream every epoch)
    # cache_data with a faces table of at most this many MB (its Parquet files): read and joined in the driver
    # (pyarrow) and handed to Ray as Arrow blocks, 0.1 s for 100 crops where Ray Data's read tasks take 2-5 s to
    # start on 2 cores; larger tables are read by Ray Data tasks on the cluster; 0: always Ray Data
    driver_ingest_mb: float = Field(128.0, ge=0)
    allow_missing_crops: bool = False  # True: drop labelled rows without a face crop instead of failing
    # a label set shipped with train and test only (SCUT-FBP5500's 60/40 files, a train/test folder pair): this
    # share of the train persons (stable person hash) becomes the val split; None: an empty val split is an error
    val_from_train: float | None = Field(None, gt=0, lt=1)
    keep_checkpoints: bool = True  # False: delete models/<run>/checkpoints/ after export (no --resume then)
    # k-fold: one model per fold of the labels' fold column (labels.split.k_folds, or labels.beauty cv5); fold k
    # is the test set, the other folds' persons go to val when their hash falls below kfold_val, else train.
    # Each fold exports to models/<run>/folds/fold<k>/; kfold.json / kfold.md hold the per-fold table with
    # mean ± std; models/<run>/ itself holds the exported model of kfold_export (None: best val score).
    kfold: bool = False
    kfold_val: float = Field(0.2, gt=0, lt=1)
    kfold_export: int | None = Field(None, ge=0)

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, v: str) -> str:
        from pipeline.model.backbones import BACKBONES

        if v not in BACKBONES:
            raise ValueError(f"unknown backbone {v!r}; known: {', '.join(BACKBONES)} (pipeline/model/backbones.py)")
        return v

    def layout(self, node_cpus: float, cluster_cpus: float, cluster_gpus: float) -> TrainConfig:
        """This config with ``num_workers`` and ``cpus_per_worker`` filled in for a cluster whose biggest node has
        ``node_cpus`` CPUs (``cluster_cpus``, ``cluster_gpus`` in all); values set in the config are kept.

        Workers: one without ``use_gpu`` (measured faster on a CPU node than DDP over one-thread workers), one per
        GPU with it. CPUs per worker: an equal share of the cluster's CPUs less ``data_cpus`` (so Ray Data's tasks
        keep theirs), at most the biggest node's less ``data_cpus``, in quarters; torch threads round it up."""
        workers = self.num_workers
        if workers is None:
            workers = max(1, int(cluster_gpus)) if self.use_gpu else 1
        cpus = self.cpus_per_worker
        if cpus is None:
            cpus = min((cluster_cpus - self.data_cpus) / workers, node_cpus - self.data_cpus)
            cpus = max(0.25, math.floor(cpus * 4) / 4)  # quarter CPUs: Ray's resource arithmetic stays exact
        return self.model_copy(update={"num_workers": workers, "cpus_per_worker": cpus})

    @property
    def torch_threads(self) -> int:
        """Torch intra-op threads of a Train worker: its CPU reservation rounded up (at least 1)."""
        return max(1, math.ceil(self.cpus_per_worker or 1))


# ---------------------------------------------------------------- score
class ScoreConfig(_Section):
    model: str = "latest"  # a run id under models/, a path, or "latest"
    num_actors: int = Field(1, ge=1)
    num_gpus_per_actor: float = Field(0.0, ge=0)
    batch_size: int = Field(32, ge=1)
    schedule: str = "0 3 * * *"  # cron expression for the scheduler service
    ray_address: str = "http://127.0.0.1:8265"  # job API the scheduler submits to
    num_cpus_per_actor: float = Field(1.0, gt=0)
    # torch intra-op threads per scoring actor; None: num_cpus_per_actor rounded up (Ray's OMP_NUM_THREADS rule).
    # More threads than reserved CPUs is a choice for a node the scorer has to itself (Ray Data's file listing
    # task needs a whole CPU, so the actors cannot reserve every core).
    torch_threads: int | None = Field(None, ge=1)
    optimize: bool = True  # fold batch norms into convolutions and run channels-last (checked against eager)
    # fp32: the trainer's numbers; bf16: autocast to bfloat16 (GPUs, CPUs with AVX512-BF16/AMX: faster, scores
    # move by about 1e-2)
    precision: Literal["fp32", "bf16"] = "fp32"
    # a model whose model.json does not record how its input crops were made (trained before models recorded it):
    # refuse (one line, exit 1) or faces_config (crop with this config's faces detection, as such models were
    # scored before: its scores may not match its metrics)
    unrecorded_inputs: Literal["refuse", "faces_config"] = "refuse"
    progress_every_s: float = Field(10.0, gt=0)  # a "done / total, rate, ETA" line at most this often
    # where crops are decoded and resized: "read" in the read tasks (uint8 pixels travel to the actors, decoding
    # overlaps with the model: for GPU actors, whose own CPU should only feed the GPU), "actor" in the scoring
    # actor beside the model (JPEG bytes travel: less CPU in all, what a CPU-only node wants); auto: read when the
    # actors have GPUs, else actor
    decode: Literal["auto", "actor", "read"] = "auto"
    # batches in one scoring actor at once, each in its own thread (one model in memory): on a CPU up to
    # torch_threads forward passes run side by side with torch_threads // calls_per_actor threads each (at least 1),
    # and a call beyond those waits with its crops decoded, so a core never waits for Ray to hand over the next
    # batch (3 on two cores: about 4% over 2, docs/benchmarks.md); on a GPU the passes take turns and the others
    # decode meanwhile. 1: one batch after another with all the threads
    calls_per_actor: int = Field(3, ge=1)
    read_num_cpus: float = Field(0.25, gt=0)  # CPUs reserved per Parquet read task of the face rows (I/O bound)
    read_unit_mb: float = Field(8.0, gt=0)  # face rows (uncompressed MiB) per read task: bounds each task's memory
    # read tasks at once (None: as many as the CPUs allow). Each is a worker process beside the scoring actors; one
    # reads a CPU actor's crops (about 1.2 MB/s at its ceiling here) many times over: 1 measured 4-5 s faster than 2
    # on 5,000 images (docs/benchmarks.md, score). Raise it for GPU actors (thousands of crops a second)
    read_concurrency: int | None = Field(1, ge=1)
    # actors that read the face files' Parquet footers while Ray Data lists them (each a worker process started for
    # the listing; Ray Data's default is 32): one, with its 128 I/O threads, reads thousands of footers
    read_footer_actors: int = Field(1, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the actor was given a GPU
    part_rows: int = Field(256, ge=1)  # score rows per atomically written Parquet part
    # streaming bounds of the scoring pipeline: face rows (crops) flow in Ray Data blocks of about block_mb, and
    # the pipeline's operators buffer at most object_store_mb of blocks between them, whatever the image count
    block_mb: float = Field(2.0, gt=0)
    object_store_mb: float = Field(64.0, gt=0)
    # scheduler: working_dir shipped with each job, paths left out of it, and a pause after a run ends
    job_working_dir: str | None = None  # None: the repository root
    job_excludes: list[str] = [".venv", ".git", "data", "**/__pycache__", ".pytest_cache", "shared"]
    min_gap_s: float = Field(0.0, ge=0)  # do not start a run sooner than this after the previous one ended
    # rate / best-crop (the selfie study's crop experiment)
    best_crop_k: int = Field(24, ge=1)
    best_crop_scale: tuple[float, float] = (0.75, 1.35)  # crop side relative to the face stage's crop
    best_crop_shift: float = Field(0.15, ge=0, le=0.5)  # max centre shift, as a fraction of the crop side
    seed: int = 0
    # report
    report_grid: int = Field(12, ge=1)  # faces in each of the top and bottom grids
    report_tsne_points: int = Field(300, ge=5)

    @property
    def decode_in_read(self) -> bool:
        """Whether crops are decoded in the read tasks (``decode``; auto: when the actors have GPUs)."""
        return self.decode == "read" or (self.decode == "auto" and self.num_gpus_per_actor > 0)

    @property
    def actor_threads(self) -> int:
        """Torch threads of a scoring actor: ``torch_threads``, else its CPU reservation rounded up."""
        return self.torch_threads or max(1, math.ceil(self.num_cpus_per_actor))

    @model_validator(mode="after")
    def _scale(self) -> ScoreConfig:
        lo, hi = self.best_crop_scale
        if not 0 < lo <= hi:
            raise ValueError("best_crop_scale must be (low, high) with 0 < low <= high")
        return self


# ---------------------------------------------------------------- privacy
class PrivacyConfig(_Section):
    raw_image_retention_days: int | None = Field(None, ge=0)
    # The HMAC key of the opt-out list and the audit (generated on first use; must live outside the data root).
    # The environment variable FACERANK_OPTOUT_KEY, when set, is the key itself and takes precedence.
    key_file: str = "~/.config/facerank/optout.key"


# ---------------------------------------------------------------- stage locks (pipeline/locks.py)
class LocksConfig(_Section):
    # A stage's lock on the data root is taken over when its holder's process is gone (same host) or, from another
    # host, when its heartbeat is older than ttl_s; the holder refreshes it every heartbeat_s.
    ttl_s: float = Field(300.0, ge=5)
    heartbeat_s: float = Field(30.0, gt=0)

    @model_validator(mode="after")
    def _beats_within_ttl(self) -> LocksConfig:
        if self.heartbeat_s * 2 > self.ttl_s:
            raise ValueError("heartbeat_s must be at most half of ttl_s")
        return self


class Config(_Section):
    data_root: str = "data"
    ray: RayConfig = RayConfig()
    scrape: ScrapeConfig = ScrapeConfig()
    faces: FacesConfig = FacesConfig()
    labels: LabelsConfig = LabelsConfig()
    train: TrainConfig = TrainConfig()
    score: ScoreConfig = ScoreConfig()
    privacy: PrivacyConfig = PrivacyConfig()
    locks: LocksConfig = LocksConfig()


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
SITE_FILE_VARS = re.compile(r"FACERANK_[A-Z0-9_]+")  # the only variables a site file may read


def _expand(value: Any, source: str, allowed: re.Pattern | None = None) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` from the environment; ``allowed``: the names that may be read."""

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        if allowed is not None and not allowed.fullmatch(name):
            raise ConfigError(f"{source}: ${{{name}}}: a site file may read FACERANK_* variables only")
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise ConfigError(f"{source}: ${{{name}}} is not set (set it, or give a default: ${{{name}:-…}})")
        return default

    if isinstance(value, str):
        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, source, allowed) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, source, allowed) for k, v in value.items()}
    return value


_OVERRIDE_PART = re.compile(r"\.?([^.\[\]]+)|\[([^\[\]]+)\]")


def _override_keys(dotted: str) -> list[str | tuple[str]]:
    """``scrape.staff[maths].person`` -> ``["scrape", "staff", ("maths",), "person"]`` (a 1-tuple: a list item)."""
    keys: list[str | tuple[str]] = []
    pos = 0
    while pos < len(dotted):
        m = _OVERRIDE_PART.match(dotted, pos)
        if not m or (m.group(0).startswith(".") and not keys):
            raise ConfigError(f"override {dotted!r}: expected dotted keys, a list item as [name] or [index]")
        keys.append(m.group(1) if m.group(1) is not None else (m.group(2),))
        pos = m.end()
    if not keys or isinstance(keys[0], tuple):
        raise ConfigError(f"override {dotted!r}: expected dotted keys, a list item as [name] or [index]")
    return keys


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """``tree`` with ``dotted`` set to ``value``; ``[name]`` picks the list item with that ``name`` (a staff site, a
    feed), ``[0]`` by position: ``scrape.staff[maths].person=.card``."""
    keys = _override_keys(dotted)
    node: Any = tree
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        if isinstance(k, tuple):
            if not isinstance(node, list):
                raise ConfigError(f"override {dotted!r}: [{k[0]}] needs a list")
            names = [x.get("name") for x in node if isinstance(x, dict)]
            if k[0].isdigit() and int(k[0]) < len(node):
                at = int(k[0])
            elif k[0] in names:
                at = next(j for j, x in enumerate(node) if isinstance(x, dict) and x.get("name") == k[0])
            else:
                known = ", ".join(str(n) for n in names if n is not None) or "none"
                raise ConfigError(f"override {dotted!r}: no item [{k[0]}] (names: {known})")
            if last:
                node[at] = value
            else:
                node = node[at]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not in a section")
        if last:
            node[k] = value
        else:
            node = node.setdefault(k, [] if isinstance(keys[i + 1], tuple) else {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {dotted!r}: {k!r} is not a section")


def _one_line(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    where = ".".join(p if isinstance(p, str) and p.isidentifier() else repr(p) for p in first["loc"]) or "(top level)"
    msg = " ".join(str(first["msg"]).split()).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{source}: {where}: {msg}{more}"


def _include_site_files(raw: dict, source: str) -> dict:
    """Top-level ``sites: [glob, ...]`` (relative to the config file): each file's ``staff:`` and ``feeds:`` lists are
    appended to ``scrape.staff`` / ``scrape.feeds`` (one site per file under ``configs/sites/``, docs/sites.md)."""
    globs = raw.pop("sites", None)
    if globs is None:
        return raw
    if isinstance(globs, str):
        globs = [globs]
    if not isinstance(globs, list) or not all(isinstance(g, str) for g in globs):
        raise ConfigError(f"{source}: sites: must be a list of file patterns")
    here = Path(source).parent if Path(source).is_file() else Path.cwd()
    scrape = raw.setdefault("scrape", {})
    if not isinstance(scrape, dict):
        raise ConfigError(f"{source}: scrape: must be a mapping")
    for g in globs:
        files = sorted(Path(g).parent.glob(Path(g).name)) if Path(g).is_absolute() else sorted(here.glob(g))
        if not files:
            raise ConfigError(f"{source}: sites: no file matches {g!r}")
        for f in files:
            try:
                tree = yaml.safe_load(f.read_text(encoding="utf-8"))
            except (yaml.YAMLError, UnicodeDecodeError):
                raise ConfigError(f"{f}: not valid YAML") from None
            if not isinstance(tree, dict) or not set(tree) <= {"staff", "feeds"} or not tree:
                raise ConfigError(f"{f}: a site file holds `staff:` and/or `feeds:` lists only")
            for key in ("staff", "feeds"):
                items = _expand(tree.get(key) or [], str(f), SITE_FILE_VARS)
                if not isinstance(items, list):
                    raise ConfigError(f"{f}: {key}: must be a list")
                scrape.setdefault(key, [])
                scrape[key] = list(scrape[key] or []) + items
    return raw


def parse_config(raw: Any, source: str = "config", overrides: dict[str, Any] | None = None) -> Config:
    """Validate an already-parsed YAML tree (a dict) into a :class:`Config`."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, not {type(raw).__name__}")
    raw = _expand(raw, source)
    raw = _include_site_files(raw, source)
    for key, value in (overrides or {}).items():
        _set_dotted(raw, key, value)
    try:
        return Config.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_one_line(err, source)) from None


def load_config(path: str | os.PathLike | None, overrides: dict[str, Any] | None = None) -> Config:
    """Read and validate a YAML config; ``path=None`` gives the defaults. Raises :class:`ConfigError`."""
    if path is None:
        return parse_config({}, "defaults", overrides)
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        line = getattr(getattr(err, "problem_mark", None), "line", None)
        at = f" (line {line + 1})" if line is not None else ""
        reason = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"{p}: not valid YAML{at}: {reason}") from None
    return parse_config(raw, str(p), overrides)


def load_config_or_site_file(path: str, overrides: dict[str, Any] | None = None) -> Config:
    """A whole config, or a site file (``staff:`` and/or ``feeds:`` lists only, as under ``configs/sites/``) read
    with the defaults (the check tools take either). Raises :class:`ConfigError`."""
    p = Path(path)
    raw = None
    if p.is_file():
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError):
            raw = None
    if isinstance(raw, dict) and raw and set(raw) <= {"staff", "feeds"}:
        return parse_config({"sites": [str(p.resolve())]}, str(p), overrides)
    return load_config(path, overrides)


def load_site_entry(path: str, kind: Literal["staff", "feeds"], name: str, overrides: dict[str, Any] | None = None):
    """The config and its ``kind`` site entry named ``name`` (a whole config or a site file, as
    :func:`load_config_or_site_file`). Raises :class:`ConfigError` naming the sites there are."""
    cfg = load_config_or_site_file(path, overrides)
    sites = {s.name: s for s in getattr(cfg.scrape, kind)}
    if name not in sites:
        word = "staff" if kind == "staff" else "feed"
        known = ", ".join(sorted(sites)) or "none"
        raise ConfigError(f"{path}: no {word} site named {name!r} ({word} sites: {known})")
    return cfg, sites[name]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as overrides (each value read as YAML). Raises :class:`ConfigError`."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        out[key] = yaml.safe_load(value)
    return out
