"""``labels import-classes``: CSV and ImageFolder sets into faces/ and labels/<task>, bad rows kept with a reason,
person-level and shipped splits; ``train.task`` takes the imported set, its kind read from the labels (no Ray)."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from helpers.recipe_standins import SCUT_CV, bitmoji_set, colour_face, imagefolder_set, scut_set
from pipeline.cli import main
from pipeline.config import load_config
from pipeline.labels.beauty import import_scores
from pipeline.labels.imports import ImportInputError, import_classes, import_info
from pipeline.store import DataRoot
from pipeline.train.data import label_folds, load_labels

BITMOJI = {"file_column": "image_id", "label_column": "is_male", "label_map": "-1=female,1=male"}


def _cfg(tmp_path, **overrides):
    return load_config(None, overrides={"data_root": str(tmp_path / "data"), **overrides})


def test_bitmoji_csv_rows_reasons_faces_and_kind(tmp_path):
    bad = bitmoji_set(tmp_path / "bm")
    cfg = _cfg(tmp_path, **{"labels.imported.licence": "see the download page", "train.task": "gender"})
    s = import_classes(cfg, "gender", csv=tmp_path / "bm/train.csv", images=tmp_path / "bm/images", detect=False,
                       **BITMOJI)  # fmt: skip
    assert s["rows"] == 44 and s["ok"] == 40 and s["excluded"] == bad["bad"]
    assert s["class_names"] == ["female", "male"] and s["faces"] == {"processed": 40, "kept": 40, "reasons": {}}
    assert sum(s["splits"].values()) == 40 and sum(sum(c.values()) for c in s["classes"].values()) == 40
    root = DataRoot(cfg.data_root)
    t = pl.from_arrow(root.read("labels/gender"))
    row = t.filter(pl.col("item_id") == "0000.jpg").row(0, named=True)
    assert (row["label"], row["class_name"], row["raw_label"], row["status"]) == (1, "male", "1", "ok")
    assert row["person_id"] == row["image_sha256"]  # no person column: the split key is the image
    assert t.filter(pl.col("item_id") == "../train.csv")["reason"].to_list() == ["outside_images_dir"]
    faces = pl.from_arrow(root.read("faces", columns=["image_sha256", "kept", "crop_jpeg"]))
    assert faces.height == 40 and faces["kept"].all()
    assert import_info(root, "gender")["dataset"]["licence"] == "see the download page"
    labels = load_labels(root, cfg.train)  # train.task: any labels/<task>; kind from the labels
    assert labels.kind == "binary" and labels.class_names == ["female", "male"]
    again = import_classes(cfg, "gender", csv=tmp_path / "bm/train.csv", images=tmp_path / "bm/images",
                           detect=False, **BITMOJI)  # fmt: skip
    assert again["faces"]["processed"] == 0 and again["ok"] == 40  # faces already there are not redone


def test_person_column_split_column_and_bad_options(tmp_path):
    d = tmp_path / "set"
    (d / "img").mkdir(parents=True)
    lines = ["path,cls,who,part"]
    for i in range(30):
        colour_face(i / 30, np.random.default_rng(i)).save(d / "img" / f"{i}.png")
        lines.append(f"{i}.png,{'ab'[i % 2]},p{i // 3},{'test' if i >= 27 else ''}")
    lines.append("7.png,b,p2,")  # listed twice
    lines.append("8.png,a,p2,holdout")  # not a split name
    (d / "l.csv").write_text("\n".join(lines) + "\n")
    cfg = _cfg(tmp_path)
    s = import_classes(cfg, "abc", csv=d / "l.csv", images=d / "img", file_column="path", label_column="cls",
                       person_column="who", split_column="part", detect=False)  # fmt: skip
    assert s["excluded"] == {"duplicate_file": 1, "unknown_split": 1} and s["class_names"] == ["a", "b"]
    t = pl.from_arrow(DataRoot(cfg.data_root).read("labels/abc")).filter(pl.col("status") == "ok")
    assert t.group_by("person_id").agg(pl.col("split").n_unique())["split"].max() == 1  # person-level
    assert set(t.filter(pl.col("item_id").is_in(["27.png", "28.png", "29.png"]))["split"]) == {"test"}  # kept
    for kwargs, message in [
        ({"csv": d / "l.csv", "images": d / "img", "file_column": "path", "label_column": "nope"}, "no column nope"),
        ({"csv": d / "l.csv", "folders": d}, "exactly one"),
        ({"csv": d / "missing.csv", "images": d / "img"}, "file not found"),
        ({"folders": d / "img"}, "no <class>/<image> files"),
        ({"csv": d / "l.csv", "images": d / "img", "label_map": "a:b"}, "expected RAW=NAME"),
    ]:
        with pytest.raises(ImportInputError, match=message):
            import_classes(cfg, "abc", **kwargs)
    with pytest.raises(ImportInputError, match="written by another command"):
        import_classes(cfg, "beauty", folders=d)


def test_imagefolder_keeps_the_test_folder_and_detects_faces(tmp_path, capsys):
    from helpers.score_model import face_images

    imagefolder_set(tmp_path / "if", train=10, test=3)
    (tmp_path / "if/train/male/astronaut.jpg").write_bytes(face_images(1)[0])
    rc = main(
        [
            "labels",
            "import-classes",
            "--task",
            "gender",
            "--folders",
            str(tmp_path / "if"),
            "--data-root",
            str(tmp_path / "data"),
        ]
    )  # fmt: skip  (MTCNN: the squares hold no face)
    s = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rc == 0 and s["rows"] == 27 and s["ok"] == 1 and s["excluded"] == {"no_face": 26}
    assert s["faces"]["kept"] == 1
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "other")})  # faces rows are kept per image
    s = import_classes(cfg, "gender", folders=tmp_path / "if", detect=False)
    assert s["ok"] == 27 and s["classes"]["test"] == {"female": 3, "male": 3}
    assert s["splits"]["train"] + s["splits"]["val"] == 21 and s["splits"]["val"] > 0
    assert main(["labels", "import-classes", "--task", "x", "--data-root", str(tmp_path / "data")]) == 2


def test_scut_cv5_recipe_import_gives_the_shipped_folds(tmp_path):
    from pipeline.config import Config

    scut_set(tmp_path / "scut", n=20)
    cfg = load_config("configs/recipes/scut_fbp5500_cv5.yaml", overrides={"data_root": str(tmp_path / "data")})
    files = sorted((tmp_path / "scut" / SCUT_CV).rglob("*.txt"))
    s = import_scores(tmp_path / "scut/Images", files, cfg, detect=False)
    root = DataRoot(cfg.data_root)
    assert s["ok"] == 20 and s["protocol"] == "files" and label_folds(root, "beauty") == [0, 1, 2, 3, 4]
    fold = load_labels(root, cfg.train, fold=2)
    assert fold.kind == "regression" and fold.counts()["test"] == 4
    assert "non-commercial" in import_info(root, "beauty")["dataset"]["licence"]
    with pytest.raises(ValueError, match="task"):
        Config.model_validate({"train": {"task": "../x"}})


def test_a_huge_listed_file_is_never_read(tmp_path):
    """A listed "image" over labels.imported.max_file_mb (here a 300 MB sparse file: no disk blocks) is excluded as
    file_too_large without being read; the other rows import."""
    import resource

    bitmoji_set(tmp_path / "bm", n=6)
    with (tmp_path / "bm/images/huge.jpg").open("wb") as f:
        f.truncate(300 * 1024 * 1024)
    csv = tmp_path / "bm/train.csv"
    csv.write_text(csv.read_text() + "huge.jpg,1,0,0\n")
    cfg = load_config("configs/recipes/bitmoji_gender.yaml", overrides={"data_root": str(tmp_path / "data")})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = import_classes(cfg, "gender", csv=csv, images=tmp_path / "bm/images")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert out["excluded"]["file_too_large"] == 1 and out["ok"] == 6
    assert grown_mib < 100, grown_mib  # 300 MB were not read


def test_a_forgotten_image_or_person_is_not_imported_again(tmp_path):
    """After ``forget --image`` (and ``forget --person`` of a person column's value on this task), running the same
    import again stores nothing of them: their rows are excluded as ``opted_out`` with no file name, no image, no
    crop, no label; everyone else imports as before."""
    from pipeline.privacy import forget
    from pipeline.store import sha256_bytes

    bitmoji_set(tmp_path / "bm", n=8)
    csv = tmp_path / "bm/train.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([lines[0] + ",who"] + [f"{ln},p{i}" for i, ln in enumerate(lines[1:])]) + "\n")
    cfg = load_config("configs/recipes/bitmoji_gender.yaml", overrides={"data_root": str(tmp_path / "data")})
    kw = {"csv": csv, "images": tmp_path / "bm/images", "person_column": "who"}
    first = import_classes(cfg, "gender", **kw)
    root = DataRoot(cfg.data_root)
    sha0 = sha256_bytes((tmp_path / "bm/images/0000.jpg").read_bytes())
    sha1 = sha256_bytes((tmp_path / "bm/images/0001.jpg").read_bytes())
    forget(cfg, "image", sha0)
    forget(cfg, "person", "p1", site="gender")
    again = import_classes(cfg, "gender", **kw)
    assert again["ok"] == first["ok"] - 2
    rows = root.read("labels/gender").to_pylist()
    gone = [r for r in rows if r["reason"] == "opted_out"]
    # p0's image, p1, and the set's second (bad) row of p1's image: forgetting a person also opts out their images
    assert {r["person_id"] for r in gone} == {"p0", "p1", "p9"} and again["excluded"]["opted_out"] == 3
    assert all(r["file"] is None and r["image_sha256"] is None for r in gone)
    assert not root.has_image(sha0) and not root.has_image(sha1)
    faces = {r["image_sha256"] for r in root.read("faces").to_pylist()}
    assert sha0 not in faces and sha1 not in faces
