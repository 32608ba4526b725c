"""Erasure on a root with every output (datasets, both reports, temporaries, stray images), the keyed opt-out list
(HMAC key outside the data root, old lists migrated), people keyed by site, and the raw-image retention's entry points.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from helpers.http import Handler, serve
from helpers.images import noise_jpeg
from helpers.score_model import model_recipe_json, write_model
from helpers.traces import scan_for
from pipeline.cli import build_parser, main
from pipeline.config import ConfigError, load_config, parse_config
from pipeline.privacy import KEY_ENV, OptOut, forget, load_key, plain_hash, subject_hash
from pipeline.report.html import write_report
from pipeline.scrape.staff.people import person_id
from pipeline.store import DataRoot, now

RECIPE = model_recipe_json()  # the crops of the models write_model makes are made this way

REPO = Path(__file__).resolve().parents[1]
U = "user-forget-me-4711"  # long enough that no compressed byte run holds it by chance
STAFF_NAME = "Ada Lovelace-Forgetme"
LISTING, PROFILE = "http://uni.example/staff.html", "http://uni.example/people/ada-lovelace-forgetme"
PROFILE_S1 = "http://uni.example/people/grace-hopper-forgetme"
OLD = now() - dt.timedelta(days=60)


def _jpeg(seed: int, size: int = 64) -> bytes:
    return noise_jpeg(size, size, seed)


def _post(root: DataRoot, site: str, item: str, user: str, seed: int, **extra) -> dict:
    sha = root.put_image(_jpeg(seed))
    return {
        "site": site,
        "item_id": item,
        "hashtag": "selfie",
        "user_id": user,
        "followers": 100 + seed,
        "likes": seed,
        "tags": ["selfie"],
        "posted_at": OLD,
        "scraped_at": now(),
        "too_young": False,
        "image_url": f"http://{site}.example/img/{item}.jpg",
        "image_sha256": sha,
        "width": 64,
        "height": 64,
        "status": "ok",
        **extra,
    }


def _scores(shas: list[str], model_id: str) -> list[dict]:
    return [
        {"image_sha256": s, "model_id": model_id, "score": i / len(shas), "status": "ok", "scored_at": now()}
        for i, s in enumerate(shas)
    ]


def _full_root(tmp_path: Path):
    """What every stage and both reports write, plus what killed writers leave; returns (cfg, root, U's things)."""
    from pipeline import labels

    over = {
        "data_root": str(tmp_path / "data"),
        "labels.selfie.group_size": 4,
        "score.report_grid": 4,
        "score.report_tsne_points": 30,
    }
    cfg = load_config(None, overrides=over)
    root = DataRoot(cfg.data_root)
    posts = [_post(root, "fa", f"a{i}", U, i) for i in range(3)]
    posts += [_post(root, "fa", f"o{i}", f"u-other-{i % 3}", 10 + i) for i in range(6)]
    root.write_part("posts", posts)
    staff = []
    for i, dep in enumerate(["cs", "econ", "cs", "econ"]):
        sha = root.put_image(_jpeg(50 + i))
        staff.append({"site": "uni", "item_id": f"s{i}", "department": dep, "name": f"Prof {i}", "role": "Professor"})
        staff[-1].update(is_academic=True, image_sha256=sha, image_url=f"http://uni.example/{i}.jpg", status="ok")
    # the first is keyed by their profile page, as the crawl keys a person the site gives no id (staff.person_id)
    staff[0].update(item_id=person_id("uni", None, None, PROFILE), name=STAFF_NAME, page_url=LISTING)
    staff[1].update(page_url=LISTING, profile_url=PROFILE_S1)  # a site-given id: the row records the profile page
    root.write_part("staff", staff)
    every = [p["image_sha256"] for p in posts + staff]
    fetches = [
        {"url": p["image_url"], "site": p["site"], "kind": "image", "image_sha256": p["image_sha256"]}
        for p in posts + staff
    ]
    fetches.append(
        {"url": "http://fa.example/api/feed?tag=selfie&page=1", "site": "fa", "kind": "page", "status": "ok"}
    )
    fetches += [{"url": u, "site": "uni", "kind": "page", "status": "ok"} for u in (LISTING, PROFILE, PROFILE_S1)]
    root.write_part("fetches", [{**f, "status": "ok", "fetched_at": now()} for f in fetches])
    crops = {s: _jpeg(1000 + i, 48) for i, s in enumerate(every)}
    root.write_part(
        "faces",
        [
            {
                "image_sha256": s,
                "n_faces": 1,
                "kept": True,
                "crop_jpeg": c,
                "processed_at": now(),
                "recipe": RECIPE,
            }
            for s, c in crops.items()
        ],
    )
    for s, c in crops.items():  # faces.write_files
        root.write_bytes_atomic(root.crop_path(s), c)
    labels.run(cfg)  # labels/selfie, labels/department, labels/report.html + report.json
    assert root.exists("labels", "report.html")
    write_model(root, run_id="m-all")
    root.write_part("scores/dt=2026-01-01", _scores(every, "m-all"))
    write_report("m-all", cfg)
    others = [p["image_sha256"] for p in posts[3:7]]  # four: no t-SNE (fewer than 5), a quicker page
    write_model(root, run_id="m-others")
    root.write_part("scores/dt=2026-01-02", _scores(others, "m-others"))
    write_report("m-others", cfg)

    mine_shas = [p["image_sha256"] for p in posts[:3]]
    mine = {
        "ids": [U],
        "shas": set(mine_shas),
        "crops": [crops[s] for s in mine_shas],
        "images": [root.get_image(s) for s in mine_shas],
        "urls": [p["image_url"] for p in posts[:3]],
        "staff": {  # the staff person keyed by their profile page
            "ids": [staff[0]["item_id"]],
            "shas": {staff[0]["image_sha256"]},
            "crops": [crops[staff[0]["image_sha256"]]],
            "images": [root.get_image(staff[0]["image_sha256"])],
            "urls": [PROFILE, staff[0]["image_url"]],
            "names": [STAFF_NAME],
        },
    }
    # killed writers: a posts part in _tmp with a post of U whose image no finished row names, another user's
    # stale part, a torn faces part, a half-moved image, an image no row points to, a half-written report
    root.mkdir("posts", "_tmp")
    stale = _post(root, "fa", "a9", U, 77)
    pq.write_table(pa.Table.from_pylist([stale], schema=root.schema("posts")), root.path("posts", "_tmp", "p1.parquet"))
    other = _post(root, "fa", "o9", "u-other-0", 78)
    pq.write_table(pa.Table.from_pylist([other], schema=root.schema("posts")), root.path("posts", "_tmp", "p2.parquet"))
    root.write_bytes_atomic(root.path("faces", "_tmp", "torn.parquet"), b"PAR1 torn")
    first = mine["images"][0]
    root.write_bytes_atomic(root.path("images", mine_shas[0][:2], ".tmp-killed"), first[: len(first) // 2])
    stray = root.put_image(_jpeg(99))
    b64 = base64.b64encode(mine["crops"][0])
    root.write_bytes_atomic(
        root.path("models", "m-all", ".report-0101.tmp"), b"<img src='data:image/jpeg;base64," + b64
    )
    mine["shas"] |= {stale["image_sha256"], stray}
    mine["images"] += [_jpeg(77), _jpeg(99), first[len(first) // 4 : len(first) // 2]]  # the half-moved part
    return cfg, root, mine


def test_forget_on_a_root_with_every_output_leaves_nothing(tmp_path):
    cfg, root, mine = _full_root(tmp_path)
    assert scan_for(root, mine)  # the scan sees U before
    n_posts = root.read("posts").num_rows
    out = forget(cfg, "user", U)
    assert scan_for(root, mine) == []
    assert out["rows_removed"]["posts"] == 3 and out["rows_removed"]["labels/selfie"] == 3
    assert out["reports_removed"] == 2  # m-all's page (with its sidecar) and the half-written one
    assert out["images_removed"] == 4  # U's three and the one only their stale _tmp row names
    assert out["temporaries_removed"] == 2  # U's stale posts part and the torn faces part (unreadable: unknown)
    # no finished row points to these: the stray image, the half-moved .tmp-killed, the other stale part's image
    assert out["unreferenced_removed"] == 3
    # what is not U's is still there and readable, the other user's stale part included
    assert root.read("posts").num_rows == n_posts - 3 and root.read("staff").num_rows == 4
    for ds in ("fetches", "faces", "labels/selfie", "labels/department", "scores"):
        assert root.read(ds).num_rows > 0
    assert root.exists("posts", "_tmp", "p2.parquet") and root.exists("labels", "report.html")
    assert root.exists("models", "m-others", "report.html") and root.exists("models", "m-others", "report.images.json")
    assert not root.exists("models", "m-all", "report.html") and root.exists("models", "m-all", "model.pt")
    others = {p["image_sha256"] for p in root.read("posts").to_pylist()}
    assert all(root.has_image(s) for s in others)
    assert OptOut(root).blocks("user", U)
    assert {a["dataset"] for a in root.read("audit").to_pylist()} >= {
        "temporaries (_tmp/, .tmp-*)",
        "images (unreferenced)",
    }


def test_forget_a_staff_person_on_a_full_root_leaves_no_name_or_url(tmp_path):
    """A staff person's profile-page URL names them: forget --person erases its fetches row too (and the scan looks
    for their name and URLs), while the listing page every person shares stays."""
    cfg, root, mine = _full_root(tmp_path)
    person = mine["staff"]
    assert scan_for(root, person)
    out = forget(cfg, "person", person["ids"][0], site="uni")
    assert scan_for(root, person) == []
    assert out["rows_removed"]["fetches"] == 2  # the profile page and the photo
    assert LISTING in root.read("fetches").column("url").to_pylist() and root.read("staff").num_rows == 3
    # a person with an id of the site's own (T7): their staff row's profile_url finds their profile-page fetch
    s1 = root.read("staff", filter=pc.field("item_id") == "s1").to_pylist()[0]
    assert PROFILE_S1 in root.read("fetches").column("url").to_pylist() and s1["profile_url"] == PROFILE_S1
    out = forget(cfg, "person", "s1", site="uni")
    assert out["rows_removed"]["fetches"] == 2  # the profile page and the photo
    gone = {"ids": [], "shas": {s1["image_sha256"]}, "images": [], "crops": [], "urls": [PROFILE_S1, s1["image_url"]]}
    assert scan_for(root, gone) == []
    assert LISTING in root.read("fetches").column("url").to_pylist() and root.read("staff").num_rows == 2


def test_a_report_lists_every_face_it_shows(tmp_path):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d"), "score.report_grid": 2})
    root = DataRoot(cfg.data_root)
    shas = [root.put_image(_jpeg(i)) for i in range(8)]
    root.write_part(
        "faces",
        [
            {"image_sha256": s, "kept": True, "crop_jpeg": _jpeg(100 + i, 40), "recipe": RECIPE}
            for i, s in enumerate(shas)
        ],
    )
    write_model(root, run_id="m1")
    root.write_part("scores/dt=2026-01-01", _scores(shas, "m1"))
    page = Path(write_report("m1", cfg)).read_text()
    listed = root.read_json(root.path("models", "m1", "report.images.json"))
    assert listed["report"] == "report.html" and set(listed["image_sha256"]) == set(shas)  # grids + t-SNE
    assert all(s not in page for s in shas)  # the page itself holds no full hash: the sidecar is the list
    # a rerun over fewer faces: the sidecar follows the page
    root.write_part("scores/dt=2026-01-02", _scores(shas[:3], "m2"))
    write_model(root, run_id="m2")
    write_report("m2", cfg)
    assert set(root.read_json(root.path("models", "m2", "report.images.json"))["image_sha256"]) == set(shas[:3])
    out = forget(cfg, "image", shas[7])
    assert out["reports_removed"] == 1 and root.exists("models", "m2", "report.html")
    assert not root.exists("models", "m1", "report.html") and not root.exists("models", "m1", "report.images.json")


def test_a_report_without_a_sidecar_is_removed_when_anyone_with_images_is_forgotten(tmp_path):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d")})
    root = DataRoot(cfg.data_root)
    post = _post(root, "fa", "a0", U, 0)
    root.write_part("posts", [post])
    root.write_bytes_atomic(root.path("models", "old", "report.html"), b"<html>an old report: whose faces?</html>")
    assert forget(cfg, "user", U)["reports_removed"] == 1 and not root.exists("models", "old", "report.html")


# ------------------------------------------------------------------------------------------------ people by site
def test_a_person_is_forgotten_on_one_site_only(tmp_path, capsys):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d")})
    root = DataRoot(cfg.data_root)
    rows = []
    for i, site in enumerate(("uni-a", "uni-b", "uni-c")):
        rows.append({"site": site, "item_id": "42", "image_sha256": root.put_image(_jpeg(i)), "status": "ok"})
    root.write_part("staff", rows)
    with pytest.raises(ValueError, match="site"):
        forget(cfg, "person", "42")
    forget(cfg, "person", "42", site="uni-a")
    left = root.read("staff").to_pylist()
    assert [r["site"] for r in left] == ["uni-b", "uni-c"] and all(root.has_image(r["image_sha256"]) for r in left)
    assert not root.has_image(rows[0]["image_sha256"])
    opt = OptOut(root)
    assert opt.blocks("person", "42", site="uni-a") and not opt.blocks("person", "42", site="uni-b")
    assert not opt.blocks("person", "42")  # no site: not the one forgotten
    # the command line: --person needs --site (exit 2, nothing erased), and then takes it
    assert main(["forget", "--person", "42", "--data-root", cfg.data_root]) == 2
    assert "--site" in capsys.readouterr().err and root.read("staff").num_rows == 2
    assert main(["forget", "--site", "uni-b", "--person", "42", "--data-root", cfg.data_root]) == 0
    assert json.loads(capsys.readouterr().out)["site"] == "uni-b"
    assert [r["site"] for r in root.read("staff").to_pylist()] == ["uni-c"]
    with pytest.raises(SystemExit):
        main(["forget", "--help"])
    forget_help = " ".join(capsys.readouterr().out.split())
    assert "--site SITE" in forget_help and "needs --site" in forget_help


# ------------------------------------------------------------------------------------------------ keyed lists
def test_the_lists_hold_a_keyed_hash_not_sha256_of_the_id(tmp_path):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d")})
    root = DataRoot(cfg.data_root)
    root.write_part("posts", [_post(root, "fa", "a0", "u0042", 0)])
    forget(cfg, "user", "u0042")
    plain = hashlib.sha256(b"user:u0042").hexdigest()
    opt = root.read("optout").to_pylist()
    audit = root.read("audit").to_pylist()
    assert opt and audit and all(r["scheme"] == "hmac-sha256" for r in opt + audit)
    assert plain == plain_hash("user", "u0042") and plain not in {r["subject_hash"] for r in opt + audit}
    key = os.environ[KEY_ENV].encode()
    assert subject_hash("user", "u0042", key) in {r["subject_hash"] for r in opt}


_CHECK = """
import json, os, sys
from pipeline.config import ConfigError, PrivacyConfig
from pipeline.privacy import OptOut
from pipeline.store import DataRoot

out = []
for key_env, key_file, user in json.loads(sys.argv[2]):
    os.environ.pop("FACERANK_OPTOUT_KEY", None)
    if key_env:
        os.environ["FACERANK_OPTOUT_KEY"] = key_env
    try:
        out.append(OptOut(DataRoot(sys.argv[1]), PrivacyConfig(key_file=key_file)).blocks("user", user))
    except ConfigError as err:
        out.append(type(err).__name__ + ": " + str(err))
print(json.dumps(out))
"""


def _blocks_in_a_new_process(data_root: str, cases: list[tuple[str | None, str, str]]) -> list[bool | str]:
    """``OptOut(...).blocks("user", user)`` for each (key in the environment, key file, user), in one new process;
    an error's class and line where building the list fails."""
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    run = [sys.executable, "-c", _CHECK, data_root, json.dumps(cases)]
    out = subprocess.run(run, env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_no_key_is_made_on_first_use_and_another_key_on_one_root_fails_with_one_line(tmp_path, monkeypatch, capsys):
    """Two containers with two keys (or one without any) can no longer disagree silently about the opt-out list."""
    monkeypatch.delenv(KEY_ENV)
    key_file = tmp_path / "home" / ".config" / "facerank" / "optout.key"
    data = str(tmp_path / "d")
    cfg = load_config(None, overrides={"data_root": data, "privacy.key_file": str(key_file)})
    root = DataRoot(cfg.data_root)
    root.write_part("posts", [_post(root, "fa", "a0", "u7", 0)])
    # no key anywhere: forget stops before any work with one line naming the explicit step, and makes no key
    args = ["--data-root", data, "--set", f"privacy.key_file={key_file}"]
    assert main(["forget", "--user", "u7", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no opt-out key" in err and "privacy init-key" in err and KEY_ENV in err
    assert not key_file.exists() and root.read("posts").num_rows == 1 and not root.has("optout")
    # the explicit step makes the key (0600) and records its fingerprint (not the key) in the data root
    assert main(["privacy", "init-key", *args]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["created"] and made["recorded"] and made["key"] == str(key_file)
    key = key_file.read_text().strip()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600 and len(key) == 64
    record = Path(root.optout_key_path()).read_text()
    assert key not in record and made["fingerprint"] in record
    assert main(["privacy", "init-key", *args]) == 0  # again: nothing new
    assert json.loads(capsys.readouterr().out) | {"fingerprint": ""} == {
        "key": str(key_file), "created": False, "recorded": False, "fingerprint": ""
    }  # fmt: skip
    forget(cfg, "user", "u7")
    other = tmp_path / "other.key"
    cases = [
        (None, str(key_file), "u7"),  # the same key file, another process: blocked
        (None, str(key_file), "u8"),
        ("another-key-" + "x" * 40, str(key_file), "u7"),  # another key (the environment wins over the file)
        (None, str(other), "u7"),  # a container without the key file: no key, none made
        (key, str(other), "u7"),  # the first key given in the environment
    ]
    got = _blocks_in_a_new_process(cfg.data_root, cases)
    assert got[:2] == [True, False] and got[4] is True
    assert got[2].startswith("KeyMismatchError: the opt-out key from FACERANK_OPTOUT_KEY") and "\n" not in got[2]
    assert got[3].startswith("ConfigError: no opt-out key") and not other.exists()
    # forget with another key writes nothing: exit 2, one line
    monkeypatch.setenv(KEY_ENV, "another-key-" + "x" * 40)
    root.write_part("posts", [_post(root, "fa", "a1", "u9", 1)])
    assert main(["forget", "--user", "u9", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not the key this data root's opt-out list was made with" in err
    assert root.read("posts").num_rows == 1 and len(OptOut(root, key=key.encode())) == 2  # u7 and their image


def test_a_list_with_keyed_rows_but_no_record_needs_the_key_adopted(tmp_path, monkeypatch, capsys):
    """A root from before the record: its key cannot be checked, so nothing uses it until init-key --adopt."""
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d")})
    root = DataRoot(cfg.data_root)
    root.write_part("posts", [_post(root, "fa", "a0", "u7", 0)])
    forget(cfg, "user", "u7")
    Path(root.optout_key_path()).unlink()  # as written before keys were recorded
    with pytest.raises(ConfigError, match="--adopt"):
        OptOut(root)
    key_file = tmp_path / "k" / "optout.key"
    args = ["--data-root", cfg.data_root, "--set", f"privacy.key_file={key_file}"]
    env_key = os.environ[KEY_ENV]
    monkeypatch.delenv(KEY_ENV)
    assert main(["privacy", "init-key", *args]) == 2  # no key here: a new one could never match the rows
    assert "a new key would never match" in capsys.readouterr().err and not key_file.exists()
    monkeypatch.setenv(KEY_ENV, env_key)
    assert main(["privacy", "init-key", *args]) == 2 and "--adopt" in capsys.readouterr().err
    assert main(["privacy", "init-key", "--adopt", *args]) == 0
    assert json.loads(capsys.readouterr().out)["recorded"] and OptOut(root).blocks("user", "u7")


def test_the_key_must_live_outside_the_data_root_and_be_long(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    inside = load_config(None, overrides={"data_root": str(tmp_path), "privacy.key_file": str(tmp_path / "k")})
    with pytest.raises(ConfigError, match="outside"):
        load_key(inside.privacy, inside.data_root)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match=KEY_ENV):
        load_key()
    assert main(["forget", "--user", "x", "--data-root", str(tmp_path / "d")]) == 2  # one line, exit 2


def test_an_old_unkeyed_list_still_blocks_and_is_rewritten_keyed(tmp_path):
    root = DataRoot(str(tmp_path / "d"))
    img = "ab" * 32
    old_optout = pa.schema(
        [("kind", pa.string()), ("subject_hash", pa.string()), ("added_at", pa.timestamp("us", "UTC"))]
    )
    rows = [{"kind": k, "subject_hash": plain_hash(k, v), "added_at": OLD} for k, v in (("user", "u9"), ("image", img))]
    root.mkdir("optout")
    pq.write_table(pa.Table.from_pylist(rows, schema=old_optout), root.path("optout", "part-old.parquet"))
    audit = [{"action": "forget", "kind": "user", "subject_hash": plain_hash("user", "u9"), "dataset": "posts"}]
    root.write_part("audit", audit)  # a null scheme: the old rows
    opt = OptOut(root)
    assert opt.blocks("user", "u9") and opt.blocks("image", img) and not opt.blocks("user", "u8")
    stored = root.read("optout").to_pylist() + root.read("audit").to_pylist()
    assert all(r["scheme"] == "hmac-sha256" for r in stored)
    assert not {plain_hash("user", "u9"), plain_hash("image", img)} & {r["subject_hash"] for r in stored}
    again = OptOut(root)  # after the migration: the same answers, nothing rewritten twice
    assert again.hashes == opt.hashes and again.blocks("user", "u9")
    cfg = load_config(None, overrides={"data_root": root.uri})
    forget(cfg, "user", "u9")
    assert len(OptOut(root)) == 2  # the migrated row is recognised: no second row for u9


# ------------------------------------------------------------------------------------------------ retention
def _old_image_with_crop(root: DataRoot) -> str:
    sha = root.put_image(_jpeg(5))
    root.write_part("faces", [{"image_sha256": sha, "kept": True, "crop_jpeg": _jpeg(6, 32)}])
    t = (dt.datetime.now() - dt.timedelta(days=11)).timestamp()
    os.utime(root.image_path(sha), (t, t))
    return sha


def test_retention_command(tmp_path, capsys):
    root = DataRoot(str(tmp_path / "d"))
    sha = _old_image_with_crop(root)
    args = ["retention", "--data-root", root.uri]
    assert main(args) == 0 and json.loads(capsys.readouterr().out) == {"images_removed": 0}  # no retention set
    assert main(args + ["--set", "privacy.raw_image_retention_days=10"]) == 0
    assert json.loads(capsys.readouterr().out) == {"images_removed": 1} and not root.has_image(sha)
    assert "retention" in build_parser().format_help()


class _TwoFeeds(Handler):
    """Two feed sites on one server (/fa, /fb), both with a user "u1" (two people) and a user "u2"."""

    def do_GET(self):  # noqa: N802
        u = urlsplit(self.path)
        base = self.base
        if u.path == "/robots.txt":
            return self.send(200, b"User-agent: *\nAllow: /\n", "text/plain")
        site, _, rest = u.path.strip("/").partition("/")
        if rest == "api/feed" and parse_qs(u.query)["page"] == ["1"]:
            posts = [
                {
                    "id": f"{site}-{i}",
                    "image_url": f"{base}/{site}/img/{i}.jpg",
                    "user": {"id": f"u{1 + i % 2}", "followers": 100},
                    "likes": i,
                    "tags": ["selfie"],
                    "posted_at": "2025-01-01T00:00:00Z",
                }
                for i in range(4)
            ]
            return self.send(200, json.dumps({"posts": posts, "next_page": None}).encode(), "application/json")
        i = int(rest.removeprefix("img/").removesuffix(".jpg"))
        return self.send(200, _jpeg({"fa": 0, "fb": 500}[site] + i), "image/jpeg")


@pytest.fixture
def two_feeds():
    with serve(_TwoFeeds) as srv:
        yield srv.base


def test_scrape_applies_retention_and_a_user_forgotten_on_one_site_is_skipped_there_only(
    ray_session, two_feeds, tmp_path
):
    from pipeline import scrape

    feeds = [
        {"name": s, "adapter": "json", "base_url": f"{two_feeds}/{s}", "hashtags": ["selfie"]} for s in ("fa", "fb")
    ]
    http = {"allow_private_addresses": True, "retry": {"attempts": 1}}
    raw = {
        "data_root": str(tmp_path / "d"),
        "privacy": {"raw_image_retention_days": 10},
        "scrape": {"num_actors": 1, "threads_per_actor": 4, "http": http, "feeds": feeds},
    }
    cfg = parse_config(raw, "test")
    root = DataRoot(cfg.data_root)
    old = _old_image_with_crop(root)
    s1 = scrape.run(cfg)
    assert s1["retention"] == {"images_removed": 1} and not root.has_image(old)
    assert sorted(root.read("posts").column("user_id").to_pylist()) == ["u1"] * 4 + ["u2"] * 4
    forget(cfg, "user", "u1", site="fa")
    s2 = scrape.run(cfg)  # the feeds list everything again
    after = {(r["site"], r["user_id"]) for r in root.read("posts").to_pylist()}
    assert ("fa", "u1") not in after and {("fb", "u1"), ("fa", "u2"), ("fb", "u2")} <= after
    assert s2["opted_out"] == 2 and s2["retention"] == {"images_removed": 0}


def test_forget_waits_for_no_stage_it_fails_while_one_runs_and_erases_nothing(tmp_path):
    """Two writers on one root: forget takes every stage's lock, so a running stage makes it exit 4 untouched."""
    from pipeline.locks import StageLockedError, hold

    root = DataRoot(str(tmp_path / "data"))
    root.write_part("posts", [_post(root, "demo", "p1", "u1", 1)])
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "data")})
    taken, release = threading.Event(), threading.Event()

    def running_stage():
        with hold(root, "faces", ttl_s=cfg.locks.ttl_s, heartbeat_s=cfg.locks.heartbeat_s):
            taken.set()
            release.wait(30)

    t = threading.Thread(target=running_stage)
    t.start()
    try:
        assert taken.wait(30)
        with pytest.raises(StageLockedError):
            forget(cfg, "user", "u1")
        assert root.read("posts").num_rows == 1  # nothing erased
        assert not root.has("audit")
    finally:
        release.set()
        t.join(30)
    assert forget(cfg, "user", "u1")["rows_removed"]["posts"] == 1


# ------------------------------------------------------------------------------------------------ fediverse accounts
def _mastodon_root(tmp_path: Path):
    """alice@social.example as account 109 on social.example and 777 on fosstodon.example, bob on both; the walk
    state of each (site, hashtag) as the crawl writes it (pipeline/scrape/cursors.py)."""
    from pipeline.scrape.feeds.cursors import FeedCursors

    feeds = [{"name": n, "adapter": "mastodon", "base_url": f"https://{n}.example", "hashtags": ["selfie", "cats"]}
             for n in ("social", "fosstodon")]  # fmt: skip
    cfg = parse_config({"data_root": str(tmp_path / "d"), "scrape": {"feeds": feeds}}, "test")
    root = DataRoot(cfg.data_root)
    rows = [
        _post(root, "social", "110000000000000042", "109", 0, user_acct="alice@social.example"),
        _post(root, "fosstodon", "550000000000000007", "777", 1, user_acct="Alice@Social.Example"),
        _post(root, "social", "110000000000000043", "110", 2, user_acct="bob@social.example"),
        _post(root, "fosstodon", "550000000000000008", "778", 3, user_acct="bob@social.example"),
    ]
    root.write_part("posts", rows)
    cursors = FeedCursors(cfg, root)
    for site, tag, ids in (("social", "selfie", [0, 2]), ("fosstodon", "selfie", [1, 3]), ("social", "cats", [2])):
        task = cursors.seed(site, tag, f"https://{site}.example/api/v1/timelines/tag/{tag}")[0]
        cursors.page_done(task, [{"item_id": rows[i]["item_id"], "user_id": rows[i]["user_id"]} for i in ids], None)
    cursors.save()
    return cfg, root, rows


def test_forget_an_account_erases_and_opts_it_out_on_every_server(tmp_path, capsys):
    """user_id is server-local; user_acct names the person on every server: forget --acct erases both copies, opts
    out the account (and each server's user id) and audits it by a keyed hash of the account."""
    cfg, root, rows = _mastodon_root(tmp_path)
    data = ["--data-root", cfg.data_root]
    assert main(["forget", "--acct", "alice@social.example", "--site", "social", *data]) == 2
    assert main(["forget", "--acct", "alice", *data]) == 2  # not an account: USER@HOST
    assert capsys.readouterr().err.count("\n") == 2 and root.read("posts").num_rows == 4
    assert main(["forget", "--acct", "@alice@social.example", *data]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["kind"] == "acct" and out["site"] is None and out["rows_removed"]["posts"] == 2
    left = root.read("posts").to_pylist()
    assert sorted(r["user_id"] for r in left) == ["110", "778"]
    assert not root.has_image(rows[0]["image_sha256"]) and not root.has_image(rows[1]["image_sha256"])
    opt = OptOut(root)
    assert opt.blocks("acct", "alice@social.example") and opt.blocks("acct", "ALICE@social.example")
    assert opt.blocks("user", "109", site="social") and opt.blocks("user", "777", site="fosstodon")
    assert not opt.blocks("acct", "bob@social.example") and not opt.blocks("user", "777", site="social")
    audit = root.read("audit").to_pylist()
    key = os.environ[KEY_ENV].encode()
    assert {a["kind"] for a in audit} == {"acct"}
    assert {a["subject_hash"] for a in audit} == {subject_hash("acct", "alice@social.example", key)}
    assert scan_for(root, {"ids": ["alice@", "Alice@"], "shas": set(), "images": [], "crops": []}) == []


def test_forget_erases_the_status_ids_in_the_feed_walk_state(tmp_path):
    """feed_cursors/<site>/<tag>.json lists the status ids of each walk: a state naming one of the person's statuses
    is deleted (the next crawl walks that timeline again), the others stay."""
    from pipeline.scrape.feeds.cursors import STATE_DIR
    from pipeline.store import FEED_CURSORS_DIR

    assert STATE_DIR == FEED_CURSORS_DIR
    cfg, root, rows = _mastodon_root(tmp_path)
    root.write_bytes_atomic(root.path("feed_cursors", "social", "keep.json"), b'{"walks": [], "watermark": "1100"}')
    root.fs.create_dir(root.path("feed_cursors", "social"))
    Path(root.path("feed_cursors", "social", ".tmp-killed")).write_bytes(b'{"walks": [{"pages": [{"ids": ["1100')
    alice = rows[0]["item_id"]
    assert alice.encode() in Path(root.path("feed_cursors", "social", "selfie.json")).read_bytes()
    out = forget(cfg, "user", "109", site="social")
    assert out["feed_cursors_removed"] == 2  # social/selfie.json and the half-written temporary
    left = sorted(str(p.relative_to(root.path("feed_cursors"))) for p in Path(root.path("feed_cursors")).rglob("*.*"))
    assert left == ["fosstodon/selfie.json", "social/cats.json", "social/keep.json"]
    assert scan_for(root, {"ids": [alice], "shas": set(), "images": [], "crops": []}) == []
