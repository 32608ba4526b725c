"""Bad input, fuzzed (hypothesis): random and mutated bytes, JSON trees, YAML text and HTML pages go into every
parser that sees untrusted input. Each must give a result, an error row or its one documented error, never an
unhandled exception: the image decoder, the face detector, the scrape image check, the feed adapters, the config
loader, the staff-page extractor (one reused headless Chromium) and the faces actor pool on Ray.

The number of cases each target ran is in docs/reliability.md (``pytest tests/test_fuzz.py
--hypothesis-show-statistics``).
"""

from __future__ import annotations

import datetime as dt
import io
import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers.http import Handler, serve
from pipeline.config import ConfigError, FacesConfig, FeedSite, load_config
from pipeline.imaging import ImageDecodeError, decode_image
from pipeline.scrape.feeds.base import FeedPage, FeedParseError
from pipeline.scrape.feeds.registry import adapter_for
from pipeline.scrape.net.http import inspect_image
from pipeline.store import FACES, POSTS, STAFF, now, to_table

FAST = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


# ------------------------------------------------------------------------------------------------ seed images
def _encode(fmt: str, mode: str = "RGB", size: tuple[int, int] = (40, 32), **kw) -> bytes:
    rng = np.random.default_rng(len(fmt) + len(mode))
    arr = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    img = Image.fromarray(arr).convert(mode)
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


SEEDS = [
    _encode("JPEG", quality=80),
    _encode("JPEG", progressive=True),
    _encode("PNG"),
    _encode("PNG", mode="RGBA"),
    _encode("PNG", mode="P"),
    _encode("GIF", mode="P"),
    _encode("WEBP"),
    _encode("BMP"),
    _encode("TIFF"),
    _encode("TIFF", mode="CMYK"),
    _encode("PNG", mode="I;16"),
]
DECODE_CODES = {"empty", "not_an_image", "format", "too_large", "truncated", "corrupt"}


@st.composite
def mutated_image(draw) -> bytes:
    """A valid small image with a few bytes overwritten, a slice removed or repeated, or cut short."""
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        op = draw(st.sampled_from(["set", "delete", "insert", "truncate"]))
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        if op == "set":
            data[i] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 64))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[i:]
    return bytes(data)


ANY_BYTES = st.one_of(st.binary(max_size=512), mutated_image())


def _check_decode(data: bytes, max_pixels: int) -> None:
    try:
        img = decode_image(data, max_pixels=max_pixels)
    except ImageDecodeError as err:
        assert err.code in DECODE_CODES and err.reason, err.reason
        return
    assert img.mode == "RGB" and min(img.size) > 0 and img.size[0] * img.size[1] <= max_pixels


@settings(FAST, max_examples=400)
@given(data=ANY_BYTES, max_pixels=st.sampled_from([100, 2000, 40_000_000]))
def test_decode_image_fuzz(data, max_pixels):
    """Any bytes: an RGB image within the pixel guard, or ImageDecodeError with a known reason code."""
    _check_decode(data, max_pixels)


@settings(FAST, max_examples=300)
@given(data=ANY_BYTES, max_pixels=st.sampled_from([100, 40_000_000]))
def test_inspect_image_fuzz(data, max_pixels):
    """The scrape stage's check: (width, height) or ValueError whose message is one of five reasons."""
    try:
        w, h = inspect_image(data, max_pixels)
    except ValueError as err:
        assert str(err) in {"not_an_image", "format_not_allowed", "too_many_pixels", "truncated", "decode_error"}, repr(
            err
        )
        return
    assert w > 0 and h > 0 and w * h <= max_pixels


@pytest.fixture(scope="module")
def detector():
    from pipeline.faces.detector import FaceDetector

    return FaceDetector(FacesConfig(max_side=160, min_image_px=20), device="cpu", num_threads=1)


def _valid_faces_rows(rows: list[dict], n: int) -> None:
    assert len(rows) == n
    for r in rows:
        if r["kept"]:
            assert r["reason"] is None and r["crop_jpeg"][:2] == b"\xff\xd8"
        else:
            assert r["reason"] and r["reason"].split(":", 1)[0] in {
                "decode_error", "missing_image", "image_too_small", "no_face", "low_prob", "too_small",
                "many_faces", "detect_error", "crop_error",
            }, r["reason"]  # fmt: skip
    to_table([{**r, "image_sha256": str(i), "processed_at": now()} for i, r in enumerate(rows)], FACES)


@settings(FAST, max_examples=60)
@given(batch=st.lists(st.one_of(ANY_BYTES, st.none()), min_size=1, max_size=4))
def test_face_detector_process_fuzz(detector, batch):
    """FaceDetector.process: one schema-valid FACES row per input, each kept or with a reason; never raises."""
    _valid_faces_rows(detector.process(batch), len(batch))


# ------------------------------------------------------------------------------------------------ feeds
JSON_SCALAR = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=12)
JSON_TREE = st.recursive(
    JSON_SCALAR,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=15,
)
FIELD_VALUES = {
    "id": st.one_of(st.text(max_size=8), st.integers(), JSON_TREE),
    "image_url": st.one_of(
        st.sampled_from(["/img/1.jpg", "http://127.0.0.1:1/a.jpg", "http://[::1", "//x", "javascript:1", ""]),
        st.text(max_size=20),
        JSON_TREE,
    ),
    "user": st.one_of(
        st.fixed_dictionaries({"id": JSON_TREE, "followers": st.one_of(st.integers(), JSON_TREE)}), JSON_TREE
    ),
    "likes": st.one_of(st.integers(-(10**30), 10**30), st.floats(), st.text(max_size=25), JSON_TREE),
    "tags": st.one_of(st.lists(JSON_SCALAR, max_size=4), JSON_TREE),
    "posted_at": st.one_of(
        st.integers(-(10**20), 10**20),
        st.floats(),
        st.sampled_from(["2026-01-01T00:00:00Z", "0001-01-01", "9999-12-31T23:59:59+14:00", "yesterday"]),
        st.text(max_size=25),
        JSON_TREE,
    ),
}
GOOD_POST = {"id": "p1", "image_url": "/img/1.jpg", "user": {"id": "u1", "followers": 5}, "likes": 3,
             "tags": ["selfie"], "posted_at": "2026-01-02T03:04:05Z"}  # fmt: skip


@st.composite
def post_one_field_off(draw) -> dict:
    """A valid post with one or two fields replaced (or removed): reaches the checks after the first field."""
    post = json.loads(json.dumps(GOOD_POST))
    for key in draw(st.lists(st.sampled_from(sorted(FIELD_VALUES)), min_size=1, max_size=2, unique=True)):
        if key == "user" and draw(st.booleans()):
            post["user"]["followers"] = draw(st.integers(-(10**30), 10**30) | JSON_TREE)
        elif draw(st.integers(0, 9)) == 0:
            post.pop(key)
        else:
            post[key] = draw(FIELD_VALUES[key])
    return post


POST = st.one_of(st.fixed_dictionaries({}, optional=FIELD_VALUES), post_one_field_off())
PAGE = st.one_of(
    st.fixed_dictionaries(
        {"posts": st.one_of(st.lists(st.one_of(POST, JSON_TREE), max_size=5), JSON_TREE)},
        optional={"next_page": st.one_of(st.integers(), st.text(max_size=20), JSON_TREE)},
    ),
    JSON_TREE,
)
SITES = [
    FeedSite(name="demo", adapter="demo", base_url="http://127.0.0.1:1"),
    FeedSite(
        name="j", adapter="json", base_url="http://127.0.0.1:1/x", json={"fields": {"items": "data.0", "id": "pk"}}
    ),
]


def _check_feed_page(body: bytes, site: FeedSite) -> None:
    try:
        page = adapter_for(site).parse(body, f"{site.base_url}/api/feed?tag=t&page=1", "t", 1)
    except FeedParseError:
        return  # the crawl turns it into a fetches row with reason parse_error
    assert isinstance(page, FeedPage) and (page.next_url is None or isinstance(page.next_url, str))
    scraped = now()
    rows = []
    for p in page.posts:
        assert p.get("item_id") is None or isinstance(p["item_id"], str)
        if not p.get("item_id"):
            assert p.get("error", "").startswith("bad_post")
            continue
        fields = ("user_id", "followers", "likes", "tags", "posted_at", "image_url")
        rows.append(
            {"site": site.name, "item_id": p["item_id"], "scraped_at": scraped, **{k: p.get(k) for k in fields}}
        )
        if p.get("error"):
            assert p["error"].startswith("bad_post:")
        else:
            assert isinstance(p["posted_at"], dt.datetime) and p["posted_at"].tzinfo is not None
            _ = scraped - p["posted_at"]  # the crawl computes the post's age
    to_table(rows, POSTS)  # every row the crawl would write fits the schema (no int64 overflow, no bad types)


@settings(FAST, max_examples=400)
@given(doc=PAGE, site=st.sampled_from(SITES))
def test_feed_parser_random_json(doc, site):
    """Random JSON trees and posts with wrong types: posts, error posts or FeedParseError; rows fit POSTS."""
    _check_feed_page(json.dumps(doc).encode(), site)


@settings(FAST, max_examples=300)
@example(posts=[{**GOOD_POST, "likes": 2**63}], nxt=2)  # found by this test: one post used to fail the whole write
@given(posts=st.lists(post_one_field_off(), min_size=1, max_size=4), nxt=st.one_of(st.integers(), st.text(max_size=20)))
def test_feed_parser_posts_with_bad_fields(posts, nxt):
    """Valid demo posts with one or two fields wrong (types, ranges, huge numbers, odd times and URLs)."""
    _check_feed_page(json.dumps({"posts": posts, "next_page": nxt}).encode(), SITES[0])


def _demo_page() -> bytes:
    base = "http://127.0.0.1:1"
    posts = [
        {"id": f"p{i}", "image_url": f"{base}/img/{i}.jpg", "user": {"id": f"u{i}", "followers": 10 + i},
         "likes": i, "tags": ["selfie"], "posted_at": "2026-01-02T03:04:05Z"}
        for i in range(3)
    ]  # fmt: skip
    return json.dumps({"posts": posts, "next_page": 2}).encode()


DEMO_PAGE = _demo_page()


@st.composite
def mutated_text(draw, seed: bytes) -> bytes:
    data = bytearray(seed)
    for _ in range(draw(st.integers(1, 8))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "delete", "insert", "dup"]))
        if op == "set":
            data[i] = draw(st.sampled_from(list(b'{}[]",:0123456789-e.ntfaZ\\ \x00\xff')))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 16))]
        elif op == "insert":
            data[i:i] = draw(st.binary(min_size=1, max_size=8))
        else:
            j = draw(st.integers(i, min(len(data), i + 40)))
            data[i:i] = data[i:j] * draw(st.integers(1, 4))
    return bytes(data)


@settings(FAST, max_examples=300)
@given(body=st.one_of(mutated_text(DEMO_PAGE), st.binary(max_size=64), st.just(b"[" * 100_000 + b"]" * 100_000)))
def test_feed_parser_mutated_demo_page(body):
    """Byte-level mutations of a real demo page (and a JSON nesting bomb) through the demo adapter."""
    _check_feed_page(body, SITES[0])


# ------------------------------------------------------------------------------------------------ config YAML
CONFIG_SEED = (
    b"data_root: /tmp/x\nscrape:\n  num_actors: 2\n  http: {allow_private_addresses: true, retry: {attempts: 3}}\n"
    b"  feeds:\n    - {name: demo, adapter: demo, base_url: 'http://127.0.0.1:1', hashtags: [selfie]}\n"
    b"faces: {batch_size: 16, policy: largest}\nlabels:\n  selfie: {group_size: 40}\n  split: {train: 0.7, val: 0.2, "
    b"test: 0.1}\ntrain: {epochs: 2, backbone: small_cnn, lr: 0.001}\nscore: {model: latest}\n"
)


@st.composite
def mutated_yaml(draw) -> bytes:
    data = bytearray(CONFIG_SEED)
    for _ in range(draw(st.integers(1, 6))):
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["set", "delete", "insert"]))
        if op == "set":
            data[i] = draw(st.sampled_from(list(b"{}[]:-,'\"&*!%|>#\n\t 0aZ\xff")))
        elif op == "delete":
            del data[i : i + draw(st.integers(1, 12))]
        else:
            data[i:i] = draw(
                st.sampled_from([b"!!python/object/apply:os.system ['true']", b"&a [*a]", b"${X:-", b"\x00", b": :"])
                | st.binary(min_size=1, max_size=6)
            )
    return bytes(data)


@settings(FAST, max_examples=300)
@given(text=st.one_of(mutated_yaml(), st.binary(max_size=200)))
def test_config_loader_mutated_yaml(tmp_path_factory, text):
    """Mutated YAML files through load_config: a Config, or a one-line ConfigError (never a Python object tag)."""
    p = tmp_path_factory.mktemp("yaml", numbered=True) / "c.yaml"
    p.write_bytes(text)
    try:
        cfg = load_config(p)
    except ConfigError as err:
        assert "\n" not in str(err) and str(err)
        return
    assert cfg.faces.batch_size >= 1 and isinstance(cfg.data_root, str)


# ------------------------------------------------------------------------------------------------ staff pages
STAFF_PAGE = (
    "<!doctype html><html><body><div id='people'>"
    "<div class='person' data-id='a1'><img class='photo' src='/p/a1.jpg'><span class='name'>Ada A</span>"
    "<span class='role'>Professor</span></div>"
    "<div class='person'><img class='photo' data-src='p/b2.jpg'><span class='name'>Bo B</span>"
    "<span class='role'>Secretary</span></div>"
    "<div class='person' data-id='c3'><img class='photo' src='data:image/png;base64,AA'>"
    "<span class='name'> Cy C </span></div>"
    "</div></body></html>"
)
HTML_BITS = [
    "<div class='person'>", "</div>", "<img class='photo' src='http://[::1'>", "<img class='photo' src='//'>",
    "<span class='name'>", "<script>document.body.innerHTML='';</script>", "<!--", "data-id=''",
    "<img class='photo' src='javascript:alert(1)'>", "\x00", "<table>", "<span class='role'>Technician</span>",
    "<script>throw new Error('x')</script>", "<meta http-equiv='refresh' content='0;url=http://10.0.0.1/'>",
]  # fmt: skip


@st.composite
def mutated_html(draw) -> str:
    s = STAFF_PAGE
    for _ in range(draw(st.integers(1, 5))):
        i = draw(st.integers(0, len(s)))
        op = draw(st.sampled_from(["insert", "delete", "text"]))
        if op == "insert":
            s = s[:i] + draw(st.sampled_from(HTML_BITS)) + s[i:]
        elif op == "delete":
            s = s[:i] + s[i + draw(st.integers(1, 30)) :]
        else:
            s = s[:i] + draw(st.text(max_size=10)) + s[i:]
    return s


class _Pages(Handler):
    body = b""

    def do_GET(self):  # noqa: N802
        body = _Pages.body if self.path.startswith("/staff") else b""
        self.send(200 if body else 404, body, "text/html; charset=utf-8")


@pytest.fixture(scope="module")
def browser_and_server():
    from pipeline.config import SeleniumConfig
    from pipeline.scrape.staff.browser import Browser

    with serve(_Pages) as srv:
        b = Browser(SeleniumConfig(page_load_timeout_s=5, wait_timeout_s=1.0), "facerank-test")
        try:
            yield b, srv.base
        finally:
            b.quit()


@pytest.mark.chromium
@pytest.mark.slow  # 15 pages through one Chromium
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(html=mutated_html())
def test_staff_extractor_mutated_pages(browser_and_server, html):
    """Mutated staff pages rendered by one reused Chromium: pages with people or an error reason; rows fit STAFF."""
    from pipeline.config import StaffSite

    browser, base = browser_and_server
    _Pages.body = html.encode("utf-8", "surrogatepass")
    site = StaffSite(name="u", department="cs", start_urls=[f"{base}/staff.html"], scroll_for_lazy_images=False)
    pages = browser.scrape_site(site, lambda url: None if url.startswith(base) else ("error", "outside"))
    assert pages
    rows = []
    for p in pages:
        assert p.status in ("ok", "error") and (p.status == "ok" or p.reason)
        for person in p.people:
            assert isinstance(person["item_id"], str) and person["item_id"]
            rows.append({"site": site.name, "department": site.department, "scraped_at": now(), **person})
    to_table(rows, STAFF)


# ------------------------------------------------------------------------------------------------ Ray task level
@pytest.mark.slow  # MTCNN actors on Ray, twice
def test_faces_actor_pool_survives_garbage(ray_session):
    """Garbage bytes through the faces actor pool (Ray Data map_batches): one row each, and the pool still works."""
    from pipeline.faces.stage import detect_faces

    cfg = FacesConfig(num_actors=1, batch_size=3, max_side=160, num_cpus_per_actor=0.5)
    rng = np.random.default_rng(0)
    garbage = [b"", b"<html>nope</html>", SEEDS[0][:100], bytes(rng.integers(0, 255, 300, dtype=np.uint8)), None]
    garbage += [SEEDS[2][:20] + b"\xff" * 50 + SEEDS[2][70:], _encode("PNG", size=(8, 8)), SEEDS[0]]
    items = [{"image_sha256": f"g{i}", "image": g} for i, g in enumerate(garbage)]
    ds = ray_session.data.from_arrow(pa.Table.from_pylist(items, pa.schema([("image_sha256", pa.string()),
                                                                             ("image", pa.binary())])))  # fmt: skip
    rows = {r["image_sha256"]: r for r in detect_faces(ds, cfg).take_all()}
    assert sorted(rows) == sorted(it["image_sha256"] for it in items)
    assert rows["g0"]["reason"].startswith("decode_error: empty")
    assert rows["g1"]["reason"].startswith("decode_error: not_an_image")
    assert rows["g4"]["reason"].startswith("missing_image")
    assert rows["g6"]["reason"].startswith("image_too_small")
    assert all(r["kept"] or r["reason"] for r in rows.values())
    # the same pool definition runs again on a clean batch: nothing was left broken
    again = detect_faces(ray_session.data.from_items([{"image_sha256": "ok", "image": SEEDS[0]}]), cfg).take_all()
    assert len(again) == 1 and (again[0]["kept"] or again[0]["reason"].startswith("no_face"))


@pytest.mark.chromium
def test_staff_page_with_one_malformed_photo_url_keeps_the_others(browser_and_server):
    """A photo URL the browser cannot parse costs that one photo, not every person on the page."""
    from pipeline.config import StaffSite

    browser, base = browser_and_server
    bad = "<div class='person' data-id='z9'><img class='photo' src='http://[::1'><span class='name'>Zed</span></div>"
    _Pages.body = STAFF_PAGE.replace("</div></body>", bad + "</div></body>").encode()
    site = StaffSite(name="u", department="cs", start_urls=[f"{base}/staff.html"], scroll_for_lazy_images=False)
    [page] = browser.scrape_site(site, lambda url: None)
    assert page.status == "ok", page.reason
    by_id = {p["item_id"]: p for p in page.people}
    assert len(by_id) == 4 and by_id["a1"]["image_url"] == f"{base}/p/a1.jpg"
    assert by_id["z9"]["image_url"] is None and by_id["c3"]["image_url"] is None  # data: URLs are never fetched
