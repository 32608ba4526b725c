"""Erasure: after `forget`, nothing of the person is left anywhere under the data root; the audit holds no id."""

from __future__ import annotations

import datetime as dt
import os

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from helpers.images import solid_jpeg
from helpers.score_model import model_recipe_json, write_model
from pipeline.config import Config, load_config
from pipeline.privacy import OptOut, apply_retention, forget
from pipeline.report.html import write_report
from pipeline.store import DataRoot

RECIPE = model_recipe_json()  # the crops of the models write_model makes are made this way


def _crop(i: int) -> bytes:
    """A small real JPEG (a face crop stand-in the report can decode), one colour per image."""
    return solid_jpeg(48, 48, (40 * i % 256, 90, 200 - 30 * i % 200))


def _build(root: DataRoot, report_cfg: Config | None = None) -> dict[str, list[str]]:
    """Every dataset with two users and a staff person; with ``report_cfg`` also a real model report (write_report)."""
    shas = {u: [root.put_image(f"{u}-photo-{i}".encode()) for i in range(2)] for u in ("u1", "u2")}
    staff_sha = root.put_image(b"staff-photo")
    posts = [
        {
            "site": "demo",
            "item_id": f"{u}-p{i}",
            "user_id": u,
            "image_sha256": s,
            "image_url": f"http://x/{u}{i}.jpg",
            "status": "ok",
        }
        for u, ss in shas.items()
        for i, s in enumerate(ss)
    ]
    root.write_part("posts", posts[:3])
    root.write_part("posts", posts[3:])
    root.write_part("staff", [{"site": "uni", "item_id": "prof-7", "image_sha256": staff_sha, "status": "ok"}])
    root.write_part(
        "fetches", [{"url": p["image_url"], "image_sha256": p["image_sha256"], "status": "ok"} for p in posts]
    )
    every = [s for ss in shas.values() for s in ss] + [staff_sha]
    root.write_part(
        "faces",
        [{"image_sha256": s, "kept": True, "crop_jpeg": _crop(i), "recipe": RECIPE} for i, s in enumerate(every)],
    )
    for s in every:
        root.write_bytes_atomic(root.crop_path(s), b"crop file")
    root.replace(
        "labels/selfie",
        [
            {"item_id": p["item_id"], "person_id": p["user_id"], "image_sha256": p["image_sha256"], "status": "ok"}
            for p in posts
        ],
    )
    root.replace("labels/department", [{"item_id": "prof-7", "person_id": "prof-7", "image_sha256": staff_sha}])
    root.write_part(
        root.scores_partition(dt.date(2026, 11, 1)),
        [{"image_sha256": s, "model_id": "m1", "score": i / 5, "status": "ok"} for i, s in enumerate(every)],
    )
    # a model's per-image test records: the export's test pass and a training checkpoint's test outputs
    test = pa.table({"image_sha256": every, "label": ["good"] * len(every), "predicted": ["bad"] * len(every)})
    buf = pa.BufferOutputStream()
    pq.write_table(test, buf)
    root.write_bytes_atomic(root.path("models", "m1", "test_predictions.parquet"), buf.getvalue().to_pybytes())
    ckpt = {"y": [1] * len(every), "outputs": [[0.1, 0.9]] * len(every), "image_sha256": every, "best_epoch": 0}
    root.write_json(root.path("models", "m1", "checkpoints", "checkpoint_0", "test.json"), ckpt)
    if report_cfg is not None:  # the real report: every crop above inlined, listed in report.images.json
        write_model(root, run_id="m1")
        write_report("m1", report_cfg)
    return {"u1": shas["u1"], "u2": shas["u2"], "staff": [staff_sha]}


def _everything(root: DataRoot) -> tuple[list[str], list[object], bytes]:
    """Every file name, every Parquet cell, and the bytes of every other file under the root."""
    files, cells, other = [], [], []
    for info in root.fs.get_file_info(pafs.FileSelector(root.base, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        files.append(info.path)
        if info.path.endswith(".parquet"):
            for col in pq.read_table(info.path, filesystem=root.fs).columns:
                cells += col.to_pylist()
        else:
            other.append(root.read_bytes(info.path))
    return files, cells, b"\n".join(other)


def test_forget_user_leaves_nothing(tmp_path):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d")})
    root = DataRoot(cfg.data_root)
    shas = _build(root, report_cfg=cfg)
    report = root.path("models", "m1", "report.html")
    assert set(shas["u1"]) <= set(root.read_json(root.path("models", "m1", "report.images.json"))["image_sha256"])
    out = forget(cfg, "user", "u1")
    assert out["images_removed"] == 2 and out["crops_removed"] == 2 and out["reports_removed"] == 1
    assert out["rows_removed"]["posts"] == 2 and out["rows_removed"]["labels/selfie"] == 2
    assert not root.exists("models", "m1", "report.html") and not root.exists("models", "m1", "report.images.json")
    files, cells, other = _everything(root)
    assert report not in files
    names = " ".join(files)
    text = repr(cells)
    for s in shas["u1"]:
        assert s not in names and s not in text and s.encode() not in other
    assert "u1" not in text.replace("'u1-", "")  # no id, in any column of any dataset (audit holds a hash)
    assert not any("u1-p" in str(c) for c in cells)
    # the others are untouched
    for s in shas["u2"] + shas["staff"]:
        assert root.has_image(s)
    assert root.read("posts").num_rows == 2 and root.read("faces").num_rows == 3
    left = pq.read_table(root.path("models", "m1", "test_predictions.parquet"), filesystem=root.fs)
    ckpt = root.read_json(root.path("models", "m1", "checkpoints", "checkpoint_0", "test.json"))
    assert left["image_sha256"].to_pylist() == ckpt["image_sha256"] == shas["u2"] + shas["staff"]
    assert len(ckpt["y"]) == len(ckpt["outputs"]) == 3  # the test records keep the others, aligned
    assert OptOut(root).blocks("user", "u1") and not OptOut(root).blocks("user", "u2")
    audit = root.read("audit").to_pylist()
    assert {a["dataset"] for a in audit} >= {"posts", "faces", "labels/selfie", "fetches", "scores/dt=2026-11-01"}
    assert all(len(a["subject_hash"]) == 64 for a in audit)
    again = forget(cfg, "user", "u1")  # idempotent
    assert again["rows_removed"] == {} and len(OptOut(root)) == 3  # the user and their two images


def test_forget_person_and_image(tmp_path):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d")})
    root = DataRoot(cfg.data_root)
    shas = _build(root)
    forget(cfg, "person", "prof-7", site="uni")
    assert not root.has("staff") and not root.has("labels/department")
    assert not root.has_image(shas["staff"][0])
    forget(cfg, "image", shas["u2"][0])
    assert not root.has_image(shas["u2"][0]) and root.has_image(shas["u2"][1])
    left = root.read("posts").column("image_sha256").to_pylist()
    assert len(left) == 3 and shas["u2"][0] not in left


def test_retention_drops_old_raw_images_with_crops(tmp_path):
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d"), "privacy.raw_image_retention_days": 10})
    root = DataRoot(cfg.data_root)
    shas = _build(root)
    old = root.image_path(shas["u1"][0])
    t = (dt.datetime.now() - dt.timedelta(days=11)).timestamp()
    os.utime(old, (t, t))
    assert apply_retention(cfg) == {"images_removed": 1}
    assert not root.has_image(shas["u1"][0]) and root.has_image(shas["u1"][1])


def test_forget_image_reaches_an_imported_label_set(tmp_path):
    """labels/<task> of an imported set (labels import-classes) is walked like the built-in tasks."""
    cfg = load_config(None, overrides={"data_root": str(tmp_path / "d")})
    root = DataRoot(cfg.data_root)
    shas = [root.put_image(f"bitmoji-{i}".encode()) for i in range(3)]
    rows = [
        {"item_id": f"img{i}.jpg", "person_id": f"img{i}.jpg", "image_sha256": s, "file": f"img{i}.jpg"}
        for i, s in enumerate(shas)
    ]
    root.replace("labels/gender", rows)
    out = forget(cfg, "image", shas[1])
    assert out["rows_removed"]["labels/gender"] == 1
    left = root.read("labels/gender").column("image_sha256").to_pylist()
    assert left == [shas[0], shas[2]] and not root.has_image(shas[1])
