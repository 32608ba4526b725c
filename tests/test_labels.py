"""Labels: the group-ranking rule (property tests), bad input, splits, departments, imported scores, run()."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.config import Config, LabelsConfig, SelfieLabelsConfig, SplitConfig
from pipeline.labels import run
from pipeline.labels.beauty import import_scores
from pipeline.labels.departments import label_departments
from pipeline.labels.selfie import EmptyInputError, label_selfies, label_selfies_table, tiebreak_keys
from pipeline.labels.splits import assign_splits, stable_hash
from pipeline.store import FACES, POSTS, STAFF, DataRoot, MissingDatasetError, to_table

NOW = dt.datetime(2026, 6, 1, tzinfo=dt.UTC)
GS = 10
CFG = LabelsConfig(selfie=SelfieLabelsConfig(group_size=GS, min_followers=5, max_followers=900, max_tags=5))


def post(i: int, **kw) -> dict:
    row = dict(
        site="demo",
        item_id=f"p{i:05d}",
        user_id=f"u{i % 17}",
        followers=100 + i,
        likes=i % 13,
        tags=["selfie"],
        posted_at=NOW - dt.timedelta(days=60),
        scraped_at=NOW,
        too_young=False,
        image_sha256=f"{i:064x}",
        status="ok",
    )
    row.update(kw)
    return row


post_rows = st.lists(
    st.fixed_dictionaries(
        {
            "user": st.integers(0, 30),
            "followers": st.integers(0, 1000),
            "likes": st.integers(0, 40),
            "n_tags": st.integers(0, 8),
            "age": st.integers(0, 90),
            "status": st.sampled_from(["ok"] * 8 + ["error", "skipped"]),
            "face": st.sampled_from(["kept"] * 6 + ["no_face", "many_faces", "missing"]),
        }
    ),
    min_size=1,
    max_size=150,
)


def build(rows: list[dict]) -> tuple[pa.Table, pa.Table]:
    posts, faces = [], []
    for i, r in enumerate(rows):
        sha = f"{i:064x}"
        posts.append(
            post(
                i,
                user_id=f"u{r['user']}",
                followers=r["followers"],
                likes=r["likes"],
                tags=["t"] * r["n_tags"],
                posted_at=NOW - dt.timedelta(days=r["age"]),
                too_young=r["age"] < 30,
                status=r["status"],
            )
        )
        if r["face"] != "missing":
            faces.append(
                {"image_sha256": sha, "kept": r["face"] == "kept", "reason": None if r["face"] == "kept" else r["face"]}
            )
    return to_table(posts, POSTS), to_table(faces, FACES)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=post_rows, perm_seed=st.integers(0, 2**32 - 1))
def test_group_ranking_properties(rows, perm_seed):
    posts, faces = build(rows)
    out = label_selfies_table(posts, faces, CFG)
    # one row per input post; every excluded row has a reason, every kept row none
    assert out.height == posts.num_rows
    assert out.filter(pl.col("status") == "excluded")["reason"].null_count() == 0
    assert out.filter(pl.col("status") == "ok")["reason"].null_count() == out.filter(pl.col("status") == "ok").height
    ok = out.filter(pl.col("status") == "ok")
    # every complete group has exactly half of each label
    g = ok.group_by("group_id").agg(pl.len().alias("n"), pl.col("label").sum().alias("good"))
    assert (g["n"] == GS).all() and (g["good"] == GS // 2).all()
    # the likes order holds inside each group and the audience order across groups
    for grp in ok.partition_by("group_id"):
        goods, bads = grp.filter(pl.col("label") == 1), grp.filter(pl.col("label") == 0)
        assert goods["likes"].min() >= bads["likes"].max()
        assert sorted(grp["rank_in_group"].to_list()) == list(range(GS))
    spans = ok.group_by("group_id").agg(pl.col("audience").min().alias("lo"), pl.col("audience").max().alias("hi"))
    spans = spans.sort("group_id")
    assert (spans["hi"].head(-1).to_numpy() <= spans["lo"].tail(-1).to_numpy()).all()
    # every filter respected
    joined = ok.join(pl.from_arrow(posts).select("item_id", "posted_at", "status"), on="item_id", suffix="_in")
    assert (joined["status_in"] == "ok").all()
    assert (joined["posted_at"] <= NOW - dt.timedelta(days=30)).all()
    assert ok["followers"].is_between(5, 900).all() and (ok["n_tags"] <= 5).all()
    kept = set(pl.from_arrow(faces).filter(pl.col("kept"))["image_sha256"])
    assert set(ok["image_sha256"]) <= kept
    # no person in two splits
    assert out.group_by("person_id").agg(pl.col("split").n_unique())["split"].max() <= 1
    # labels do not depend on the input row order
    perm = np.random.default_rng(perm_seed).permutation(posts.num_rows)
    again = label_selfies_table(posts.take(perm), faces.take(np.random.default_rng(1).permutation(faces.num_rows)), CFG)
    assert again.sort("item_id").equals(out.sort("item_id"))


def test_chunked_output_equals_one_chunk_and_a_changing_input_is_refused():
    rows = [post(i, followers=100 + (i * 37) % 500, likes=(i * 11) % 23) for i in range(95)]
    posts = pl.from_arrow(to_table(rows, POSTS))
    one = pl.concat(label_selfies(posts.lazy(), None, CFG, chunk_rows=10_000))
    chunks = list(label_selfies(posts.lazy(), None, CFG, chunk_rows=7))
    assert len(chunks) > 1 and max(c.height for c in chunks) <= 7
    assert pl.concat(chunks).equals(one) and one.height == 95
    assert one["item_id"].to_list() == posts["item_id"].to_list()  # input order, row for row
    # a source whose second scan gives other rows than its first (not a stable order) is an error, not a bad zip
    from pipeline.labels import selfie

    ranking = selfie.rank_posts(posts.lazy(), None, CFG.selfie)
    splits = assign_splits(posts["user_id"].unique(), CFG.split)
    with pytest.raises(ValueError, match="fewer rows"):
        list(selfie._assembled(posts.head(90).lazy(), ranking, splits, CFG.selfie, 7))
    with pytest.raises(ValueError, match="more rows"):
        list(selfie._assembled(pl.concat([posts, posts]).lazy(), ranking, splits, CFG.selfie, 7))


def _reference_ranks(rows: list[dict], gs: int) -> dict[tuple, tuple[int, int]]:
    """(site, item_id) -> (group_id, rank_in_group) by the documented rule, sorting the strings themselves."""
    df = pl.DataFrame(rows).select("site", "item_id", "followers", "likes")
    df = df.sort(["followers", "site", "item_id"]).with_row_index("pos")
    df = df.filter(pl.col("pos") < df.height // gs * gs).with_columns(g=(pl.col("pos") // gs).cast(pl.Int32))
    df = df.sort(["g", "likes", "site", "item_id"], descending=[False, True, False, False])
    df = df.with_columns(r=(pl.int_range(pl.len()) - pl.col("g") * gs).cast(pl.Int32))
    return {(a, b): (g, r) for a, b, g, r in df.select("site", "item_id", "g", "r").iter_rows()}


ID_SETS = {
    "short": ["p1", "p10", "p2", "", "a", "p01"],  # one uint64 key after the common prefix
    "shared_prefix": [f"instagram_post_{i:05d}" for i in (3, 10000, 7, 42, 99999)],  # prefix stripped, one key
    "two_keys": ["Bx9kLmn0QrsT1", "Bx9kLmn0QrsT", "zz", "Cq1-_aaaaaaaaaa", "é-ü-日本"],  # 9..16 bytes: two keys
    "long": ["a" * 30, "a" * 29 + "b", "b", "a" * 17],  # > 16 bytes after the prefix: the string itself
    "nul": ["a\x00", "a", "a\x00\x00", "b"],  # a NUL byte: the string itself
}


@pytest.mark.parametrize("name", list(ID_SETS))
def test_tiebreak_keys_order_like_the_strings(name):
    ids = ID_SETS[name]
    rows = [{"site": site, "item_id": i, "user_id": "u"} for site in ("s2", "s1") for i in ids]
    lf = pl.DataFrame(rows).lazy()
    keys, _ = tiebreak_keys(lf, want_users=False)
    got = lf.with_columns(keys).sort([f"_k{i}" for i in range(len(keys))])
    want = pl.DataFrame(rows).select("site", "item_id").sort(["site", "item_id"])
    assert got.select("site", "item_id").collect().equals(want)
    if name in ("long", "nul"):
        assert str(keys[-1].meta.output_name()) == f"_k{len(keys) - 1}" and len(keys) == 2  # site rank + string
    else:
        assert len(keys) == {"two_keys": 3}.get(name, 2)  # site rank + one or two uint64


id_text = st.one_of(  # mostly ids that pack into one or two uint64 keys; some with NUL bytes or long
    st.text(alphabet=st.sampled_from(["a", "b", "0", "é", "~"]), max_size=10),
    st.text(alphabet=st.sampled_from(["a", "b", "\x00", "é"]), max_size=20),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    prefix=st.sampled_from(["", "post_", "x" * 14]),
    rows=st.lists(
        st.tuples(st.sampled_from(["demo", "alt", "ö"]), id_text, st.integers(0, 2), st.integers(0, 3)),
        min_size=1,
        max_size=60,
        unique_by=lambda r: (r[0], r[1]),
    ),
)
def test_ties_are_broken_by_site_then_item_id(prefix, rows):
    """Audience and likes ties everywhere: group and rank must follow the (site, item_id) string order."""
    posts = [
        post(0, site=site, item_id=prefix + iid, followers=100 + f, likes=lk, tags=["t"]) for site, iid, f, lk in rows
    ]
    out = label_selfies_table(to_table(posts, POSTS), None, LabelsConfig(selfie=SelfieLabelsConfig(group_size=4)))
    want = _reference_ranks(posts, 4)
    ok = out.filter(pl.col("status") == "ok")
    got = {(a, b): (g, r) for a, b, g, r in ok.select("site", "item_id", "group_id", "rank_in_group").iter_rows()}
    assert got == want


def test_last_group_kept_when_large_enough_and_odd_median_excluded():
    rows = [post(i, followers=100 + i, likes=i) for i in range(25)]
    cfg = LabelsConfig(selfie=SelfieLabelsConfig(group_size=10, min_group_size=5))
    out = label_selfies_table(to_table(rows, POSTS), None, cfg)
    last = out.filter(pl.col("group_id") == 2)
    assert last.height == 5
    assert last.filter(pl.col("status") == "ok")["label"].sort().to_list() == [0, 0, 1, 1]
    assert last.filter(pl.col("status") == "excluded")["reason"].to_list() == ["odd_group_median"]
    strict = label_selfies_table(to_table(rows, POSTS), None, LabelsConfig(selfie=SelfieLabelsConfig(group_size=10)))
    assert strict.filter(pl.col("reason") == "incomplete_group").height == 5
    # the top of group 0 (audience ascending: posts 0..9) is the most liked half
    g0 = out.filter(pl.col("group_id") == 0).sort("likes", descending=True)
    assert g0["label"].to_list() == [1] * 5 + [0] * 5
    assert g0["like_percentile"].to_list()[0] == 1.0 and g0["like_percentile"].to_list()[-1] == 0.0


def test_tag_bonus_formula():
    rows = [post(0, followers=1000, tags=["a"] * 3), post(1, followers=1000, tags=[]), post(2, followers=1000)]
    cfg = LabelsConfig(selfie=SelfieLabelsConfig(group_size=2, tag_bonus=0.05))
    out = label_selfies_table(to_table(rows, POSTS), None, cfg).sort("item_id")
    assert out["audience"].to_list() == [1000 * (1 + 0.05 * 2), 1000.0, 1000.0]


def test_bad_input_is_excluded_with_a_reason_never_dropped():
    rows = [post(i) for i in range(24)]
    rows[0]["likes"] = -5
    rows[1]["followers"] = None
    rows[2]["followers"] = -1
    rows[3]["likes"] = None
    rows[4]["user_id"] = None
    rows[5]["posted_at"] = None
    rows[5]["too_young"] = None
    rows[6]["status"] = "error"
    rows.append(dict(rows[7], likes=999, scraped_at=NOW - dt.timedelta(days=1)))  # an older copy of p00007
    rows.append(dict(rows[8]))  # an exact copy of p00008
    out = label_selfies_table(to_table(rows, POSTS), None, LabelsConfig(selfie=SelfieLabelsConfig(group_size=4)))
    assert out.height == len(rows)
    reasons = dict(zip(out["item_id"], out["reason"], strict=True))
    assert reasons["p00000"] == "negative_likes"
    assert reasons["p00001"] == "missing_followers"
    assert reasons["p00002"] == "negative_followers"
    assert reasons["p00003"] == "missing_likes"
    assert reasons["p00004"] == "missing_user_id"
    assert reasons["p00005"] == "missing_posted_at"
    assert reasons["p00006"] == "scrape_error"
    for pid in ("p00007", "p00008"):
        copies = out.filter(pl.col("item_id") == pid)
        assert sorted(copies["reason"].to_list(), key=str) == [None, "duplicate_item_id"]
    # the newest scrape of p00007 is the one kept (likes 7, not the older 999)
    assert out.filter((pl.col("item_id") == "p00007") & pl.col("reason").is_null())["likes"].to_list() == [7]
    with pytest.raises(EmptyInputError):
        label_selfies_table(POSTS.empty_table(), None, CFG)


def test_stable_hash_matches_reference_fnv_and_is_chunk_free():
    def ref(s: str, seed: str) -> int:
        h = 0xCBF29CE484222325
        for b in (seed + "\x1f" + s).encode():
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        for shift, mul in ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB)):
            h = ((h ^ (h >> shift)) * mul) & 0xFFFFFFFFFFFFFFFF
        return h ^ (h >> 31)

    values = ["u1", "", "a much longer person identifier 0123456789", "Zoë", "u2"]
    got = stable_hash(pa.array(values), "s").tolist()
    assert got == [ref(v, "s") for v in values]
    assert stable_hash(pa.array(values[2:]), "s").tolist() == got[2:]
    assert stable_hash(pa.chunked_array([values[:2], values[2:]]), "s").tolist() == got
    s = assign_splits(pl.Series([f"u{i}" for i in range(20000)]), SplitConfig(k_folds=5))
    share = s.group_by("split").len().sort("split")
    assert dict(share.iter_rows()) == pytest.approx({"test": 2000, "train": 14000, "val": 4000}, rel=0.06)
    assert sorted(s["fold"].unique().to_list()) == [0, 1, 2, 3, 4]


def test_departments_classes_weights_and_reasons():
    cfg = Config()
    staff = [
        dict(site="uni", item_id=f"s{i}", department=d, role="Professor", is_academic=True,
             image_sha256=f"{i:064x}", status="ok")
        for i, d in enumerate(["cs"] * 6 + ["econ"] * 3 + ["german"] * 2 + ["mech"] * 1)
    ]  # fmt: skip
    staff.append(dict(staff[0], item_id="sec", role="Department Secretary", is_academic=None))
    staff.append(dict(staff[0], item_id="adm", is_academic=False))
    staff.append(dict(staff[0], item_id="hist", department="history"))
    staff.append(dict(staff[0], item_id="noface", image_sha256="f" * 64))
    faces = [dict(image_sha256=f"{i:064x}", kept=True) for i in range(12)]
    faces.append(dict(image_sha256="f" * 64, kept=False, reason="many_faces"))
    out = label_departments(
        pl.from_arrow(to_table(staff, STAFF)).lazy(), pl.from_arrow(to_table(faces, FACES)).lazy(), cfg
    ).collect()
    reasons = dict(zip(out["item_id"], out["reason"], strict=True))
    assert reasons["sec"] == "non_academic" and reasons["adm"] == "non_academic"
    assert reasons["hist"] == "unknown_department" and reasons["noface"] == "many_faces"
    ok = out.filter(pl.col("status") == "ok")
    assert dict(ok.group_by("class_name").len().iter_rows()) == {"cs": 6, "econ": 3, "german": 2, "mech": 1}
    w = dict(ok.group_by("class_name").agg(pl.col("weight").sum()).iter_rows())
    assert all(v == pytest.approx(3.0) for v in w.values())  # 12 photos / 4 classes each
    assert ok.filter(pl.col("class_name") == "mech")["label"].to_list() == [3]


def _images(d, names):
    d.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(names):
        Image.new("RGB", (16, 16), (i * 20 % 255, 80, 120)).save(d / n)


def test_import_scores_scut_files_and_csv(tmp_path):
    imgs = tmp_path / "Images"
    _images(imgs, [f"AF{i}.jpg" for i in range(1, 9)])
    (imgs / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "train.txt").write_text("AF1.jpg 3.2\nAF2.jpg 2.5\nAF3.jpg  4.0\nAF4.jpg x\nbroken.jpg 3\n")
    (tmp_path / "test.txt").write_text("AF5.jpg 1.5\nAF6.jpg 3.3\nmissing.jpg 2.0\n")
    cfg = Config(data_root=str(tmp_path / "data"))
    root = DataRoot(cfg.data_root)
    s = import_scores(imgs, [tmp_path / "train.txt", tmp_path / "test.txt"], cfg, root, protocol="files")
    assert s["ok"] == 5 and s["splits"] == {"test": 2, "train": 3}
    assert s["excluded"] == {"bad_score": 1, "missing_image": 1, "unreadable_image": 1}
    t = pl.from_arrow(root.read("labels/beauty"))
    row = t.filter(pl.col("item_id") == "AF3.jpg").row(0, named=True)
    assert row["target"] == 4.0 and row["person_id"] == "AF3" and root.has_image(row["image_sha256"])
    # CSV with a header and a person column, 5-fold CV
    (tmp_path / "scores.csv").write_text("file,score,person\n" + "".join(
        f"AF{i}.jpg,{i / 2},p{i % 3}\n" for i in range(1, 9)))  # fmt: skip
    s = import_scores(imgs, tmp_path / "scores.csv", cfg, root, protocol="cv5")
    assert s["ok"] == 8
    t = pl.from_arrow(root.read("labels/beauty"))
    assert t.group_by("person_id").agg(pl.col("fold").n_unique())["fold"].max() == 1
    assert set(t["split"]) <= {"train", "test"}
    assert (t.filter(pl.col("split") == "test")["fold"] == 0).all()
    s = import_scores(imgs, tmp_path / "scores.csv", cfg, root, protocol="split60")
    assert set(s["splits"]) <= {"train", "test"}


def _tiny_root(root: DataRoot, n: int = 90, staff: bool = True) -> None:
    rows = [post(i, followers=50 + (i * 37) % 500, likes=(i * 7) % 23) for i in range(n)]
    rows[3]["posted_at"] = NOW - dt.timedelta(days=2)
    root.write_part("posts", rows)
    root.write_part("faces", [{"image_sha256": f"{i:064x}", "kept": i % 9 != 0, "reason": None if i % 9 else "no_face"}
                              for i in range(n - 2)])  # fmt: skip
    if staff:
        root.write_part("staff", [
            dict(site="uni", item_id=f"s{i}", department=["cs", "econ", "german", "mech"][i % 4], role="Lecturer",
                 is_academic=True, image_sha256=f"{i:064x}", status="ok") for i in range(1, 13)])  # fmt: skip


def test_run_on_a_tiny_data_root(data_root):
    cfg = Config(data_root=str(data_root), labels=LabelsConfig(selfie=SelfieLabelsConfig(group_size=10)))
    root = DataRoot(cfg.data_root)
    with pytest.raises(MissingDatasetError, match="posts"):
        run(cfg)
    _tiny_root(root)
    truth = pa.table({"item_id": [f"p{i:05d}" for i in range(90)], "quality": [((i * 7) % 23) / 23 for i in range(90)]})
    s = run(cfg, truth=truth)
    assert s["selfie"]["rows"] == 90
    assert s["selfie"]["excluded"]["too_young"] == 1 and s["selfie"]["excluded"]["no_faces_row"] == 2
    assert s["selfie"]["ok"] % 10 == 0 and s["selfie"]["ok"] > 0
    sel = pl.from_arrow(root.read("labels/selfie"))
    assert sel.height == 90 and set(sel["status"]) == {"ok", "excluded"}
    assert sum(s["department"]["classes"].values()) == s["department"]["ok"] > 0
    report = json.loads((data_root / "labels" / "report.json").read_text())
    assert report["selfie"]["cascade"][-1]["remaining"] == s["selfie"]["ok"]
    assert report["selfie"]["truth"]["n"] == s["selfie"]["ok"]
    assert "<img src='data:image/png" in (data_root / "labels" / "report.html").read_text()
    first = root.read("labels/selfie")
    run(cfg, truth=truth)  # rerun: the same dataset
    assert root.read("labels/selfie").sort_by("item_id").equals(first.sort_by("item_id"))


def test_run_skips_a_task_without_input_and_needs_faces(data_root, tmp_path):
    cfg = Config(data_root=str(data_root), labels=LabelsConfig(selfie=SelfieLabelsConfig(group_size=10)))
    root = DataRoot(cfg.data_root)
    _tiny_root(root, staff=False)
    s = run(cfg)
    assert "department" not in s and any("staff" in n for n in s["notes"])
    bare = DataRoot(str(tmp_path / "bare"))
    bare.write_part("posts", [post(0)])
    with pytest.raises(MissingDatasetError, match="faces"):
        run(Config(data_root=bare.uri))


def test_the_demo_hands_its_truth_to_labels_and_labels_knows_no_demo():
    """The hidden quality reaches the report only as ``run(cfg, truth=...)``: no config field, no demo import."""
    import ast
    from pathlib import Path

    import pipeline.labels
    from pipeline.config import ConfigError, parse_config
    from pipeline.demo import DemoServer, truth

    assert DemoServer(n_posts=40, seed=3).truth().equals(truth(40, seed=3))  # what `python -m pipeline demo` passes
    with pytest.raises(ConfigError, match="demo_n_posts"):
        parse_config({"labels": {"demo_n_posts": 700}})
    for f in Path(pipeline.labels.__file__).parent.glob("*.py"):
        imported = [n.module or "" for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.ImportFrom)]
        imported += [a.name for n in ast.walk(ast.parse(f.read_text())) if isinstance(n, ast.Import) for a in n.names]
        assert not [m for m in imported if m.startswith("pipeline.demo")], f.name


def test_duplicate_staff_rows_keep_exactly_one_winner_chosen_by_content():
    """Repeated (site, item_id) staff rows: one copy is kept (ok first, then by image, department, role), the same
    one whatever the row order (polars 2.1 gave none or two winners with a sort inside the window)."""
    import random

    import polars as pl

    from pipeline.labels.departments import _with_duplicate_losers

    rows = [
        dict(site="s", item_id="1", status="error", image_sha256="a", department="cs", role="p"),
        dict(site="s", item_id="1", status="ok", image_sha256="b", department="cs", role="p"),
        dict(site="s", item_id="1", status="ok", image_sha256="c", department="cs", role="p"),
        dict(site="s", item_id="2", status="ok", image_sha256="z", department="econ", role="q"),
        dict(site="s", item_id="2", status="ok", image_sha256="y", department="econ", role="q"),
        dict(site="t", item_id="1", status="ok", image_sha256="x", department="mech", role="r"),
    ]
    for seed in range(20):
        shuffled = rows[:]
        random.Random(seed).shuffle(shuffled)
        out = _with_duplicate_losers(pl.LazyFrame(shuffled)).collect()
        winners = sorted(out.filter(~pl.col("_dup_loser"))[["site", "item_id", "image_sha256"]].rows())
        assert winners == [("s", "1", "b"), ("s", "2", "y"), ("t", "1", "x")], seed
        assert out.columns == list(rows[0]) + ["_dup_loser"]
