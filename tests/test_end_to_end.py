"""End to end, small: the five stages on the demo sites, then real rows and values checked in every output.

The run is the session's one whole-pipeline job (``full_run``: tests/helpers/full_run.py), which tests/test_faults.py
also uses; tests here that write (a rerun, forget) work on a copy of its data root."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pipeline.cli import run_stages
from pipeline.store import DataRoot

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.chromium, pytest.mark.slow]


@pytest.fixture(scope="module")
def finished_run(full_run):
    """The session's whole-pipeline run (``jobs/run_all.py`` submitted with ``ray job submit``:
    tests/helpers/full_run.py), with its config as the job read it."""
    from pipeline.config import load_config

    cfg = load_config(REPO / "configs" / "test.yaml", overrides=full_run.overrides())
    return cfg, DataRoot(cfg.data_root), full_run


def test_scrape_output(finished_run):
    cfg, root, _ = finished_run
    posts = root.read("posts").to_pylist()
    keys = [(p["site"], p["item_id"]) for p in posts]
    assert len(keys) == len(set(keys)), "duplicate post rows"
    demo = [p for p in posts if p["site"] == "demo"]
    assert len(demo) == 240
    status = Counter(p["status"] for p in demo)
    assert status["ok"] >= 200 and status["skipped"] >= 2 and status["error"] >= 1
    reasons = " ".join(p["reason"] or "" for p in demo if p["status"] != "ok")
    assert "robots" in reasons and "noai" in reasons
    assert any(p["too_young"] for p in demo) and not all(p["too_young"] for p in demo)
    ok = [p for p in demo if p["status"] == "ok"]
    assert all(root.has_image(p["image_sha256"]) and p["width"] > 0 for p in ok)
    flaky = [p for p in posts if p["site"] == "demo-flaky"]
    assert len(flaky) == 60 and sum(p["status"] == "ok" for p in flaky) >= 55  # retries got through the 503s
    staff = root.read("staff").to_pylist()
    assert {s["department"] for s in staff} == {"cs", "econ", "german", "mech"}
    assert len(staff) == 48 and all(s["name"] for s in staff)
    assert 4 <= sum(not s["is_academic"] for s in staff) <= 8


def test_faces_output(finished_run):
    _, root, _ = finished_run
    faces = root.read("faces")
    shas = faces.column("image_sha256").to_pylist()
    assert len(shas) == len(set(shas))
    ok_images = set(pc.unique(root.read("posts", filter=pc.field("status") == "ok").column("image_sha256")).to_pylist())
    ok_images |= set(root.read("staff", filter=pc.field("status") == "ok").column("image_sha256").to_pylist())
    assert set(shas) == ok_images
    kept = faces.filter(pc.field("kept"))
    assert kept.num_rows >= 0.8 * len(shas)
    assert all(c[:2] == b"\xff\xd8" for c in kept.column("crop_jpeg").to_pylist())
    not_kept = faces.filter(pc.invert(pc.field("kept"))).column("reason").to_pylist()
    assert not_kept and all(not_kept)  # the no-person demo images: each with a reason


def test_labels_output(finished_run):
    cfg, root, _ = finished_run
    sel = root.read("labels/selfie").to_pylist()
    ok = [r for r in sel if r["status"] == "ok"]
    excluded = [r for r in sel if r["status"] != "ok"]
    assert ok and excluded and all(r["reason"] for r in excluded)
    assert any("young" in r["reason"] for r in excluded)
    size = cfg.labels.selfie.group_size
    groups = Counter(r["group_id"] for r in ok)
    for g, n in groups.items():
        if n == size:
            assert sum(r["label"] for r in ok if r["group_id"] == g) == size // 2
    splits: dict[str, set] = {}
    for r in ok:
        splits.setdefault(r["person_id"], set()).add(r["split"])
    assert all(len(s) == 1 for s in splits.values()), "a person on both sides of a split"
    dep = root.read("labels/department").to_pylist()
    assert {r["class_name"] for r in dep if r["status"] == "ok"} == {"cs", "econ", "german", "mech"}


def test_model_and_scores(finished_run):
    cfg, root, run = finished_run
    model_dir = root.model_dir(run.run_id)
    metrics = json.loads(root.read_bytes(f"{model_dir}/metrics.json"))
    acc = metrics["test"]["accuracy"] if "test" in metrics else metrics["accuracy"]
    assert acc > 0.6, metrics  # the demo's likes rule is learnable: clearly above chance (0.5)
    scores = root.read("scores")
    keys = list(zip(scores.column("image_sha256").to_pylist(), scores.column("model_id").to_pylist(), strict=True))
    assert len(keys) == len(set(keys)) and len(keys) > 0
    vals = [v for v in scores.column("score").to_pylist() if v is not None]
    assert vals and all(0.0 <= v <= 1.0 for v in vals)
    pct = [v for v in scores.column("percentile").to_pylist() if v is not None]
    assert pct and all(0.0 <= v <= 1.0 for v in pct)


def _score_as_files(cfg, root: DataRoot, model_dir: str, tmp_path: Path) -> DataRoot:
    """The model's test images (test_predictions.parquet) copied out as files and scored into a fresh data root
    with the model: every crop made again from the image, by the model's recipe."""
    import pyarrow.parquet as pq

    from pipeline import score

    shas = pq.read_table(f"{model_dir}/test_predictions.parquet")["image_sha256"].to_pylist()
    d = tmp_path / "test-images"
    d.mkdir(parents=True)
    for sha in shas:
        (d / f"{sha}.jpg").write_bytes(root.get_image(sha))
    fresh = cfg.model_copy(update={"data_root": str(tmp_path / "scored")})
    fresh = fresh.model_copy(update={"score": fresh.score.model_copy(update={"model": model_dir})})
    out = score.run(fresh, images=str(d))
    assert out["detected_faces"] == len(shas) and out["reused_faces"] == 0, out
    return DataRoot(fresh.data_root)


def test_selfie_and_department_models_score_as_they_tested(finished_run, ray_session, tmp_path):
    """Train/serve parity on the whole pipeline's own data: the selfie model of the run, and a department model
    trained on a copy of its faces and labels, score their test images (as files, into a fresh data root) with
    the predictions of their test passes (tests/helpers/parity.py)."""
    import shutil

    from helpers.parity import assert_scores_match_test_pass
    from pipeline.train import run

    cfg, root, full = finished_run
    selfie = root.model_dir(full.run_id)
    metrics = json.loads(root.read_bytes(f"{selfie}/metrics.json"))
    assert_scores_match_test_pass(_score_as_files(cfg, root, selfie, tmp_path / "s"), selfie, metrics["test"])

    copy = tmp_path / "dept"
    for ds in ("faces", "labels"):
        shutil.copytree(Path(root.base) / ds, copy / ds)
    small = {"task": "department", "backbone": "small_cnn", "image_size": 32, "epochs": 2, "run_id": "dept",
             "num_workers": 1, "cpus_per_worker": 1.0}  # fmt: skip
    dcfg = cfg.model_copy(update={"data_root": str(copy), "train": cfg.train.model_copy(update=small)})
    out = run(dcfg)
    d = out["model_dir"]
    meta = json.loads(DataRoot(str(copy)).read_bytes(f"{d}/model.json"))
    assert meta["task"] == "department" and meta["inputs"]["crop"]["mode"] == "detect"
    assert_scores_match_test_pass(_score_as_files(dcfg, root, d, tmp_path / "d"), d, out["test"])


def test_rerun_adds_nothing(finished_run, ray_session, tmp_path):
    import shutil

    cfg, original, _ = finished_run
    shutil.copytree(original.base, tmp_path / "data")
    cfg = cfg.model_copy(update={"data_root": str(tmp_path / "data")})
    root = DataRoot(cfg.data_root)
    before = {ds: root.dataset(ds).count_rows() for ds in ("posts", "staff", "faces", "scores")}
    run_stages(cfg, ("scrape", "faces", "score"))
    after = {ds: root.dataset(ds).count_rows() for ds in ("posts", "staff", "faces", "scores")}
    assert after == before


def test_forget_on_the_root_of_a_full_run_leaves_nothing_of_the_person(finished_run, tmp_path):
    """forget on a copy of what every stage and both reports write; then every file is read for a trace of them."""
    import shutil

    from helpers.traces import scan_for
    from pipeline.labels.report import write_report as write_labels_report
    from pipeline.privacy import OptOut, forget
    from pipeline.report.html import write_report

    cfg, original, run = finished_run
    shutil.copytree(original.base, tmp_path / "data")
    score = cfg.score.model_copy(update={"report_tsne_points": 60})  # a quicker t-SNE
    cfg = cfg.model_copy(update={"data_root": str(tmp_path / "data"), "score": score})
    root = DataRoot(cfg.data_root)
    write_labels_report(root, cfg)
    run_id = run.run_id
    write_report(run_id, cfg)
    kept = root.read("faces", filter=pc.field("kept"), columns=["image_sha256", "crop_jpeg"]).to_pylist()
    crops = {r["image_sha256"]: r["crop_jpeg"] for r in kept}
    shown = set(root.read_json(root.path("models", run_id, "report.images.json"))["image_sha256"])
    posts = root.read("posts", filter=pc.field("site") == "demo").to_pylist()
    # the user with the most faces among those the model report shows
    user = Counter(p["user_id"] for p in posts if p["image_sha256"] in shown).most_common(1)[0][0]
    shas = {p["image_sha256"] for p in posts if p["user_id"] == user and p["image_sha256"]}
    mine = {
        "ids": [user],
        "shas": shas,
        "crops": [crops[s] for s in shas if s in crops],
        "images": [root.get_image(s) for s in shas if root.has_image(s)],
    }
    assert mine["crops"] and mine["images"] and scan_for(root, mine)
    out = forget(cfg, "user", user)
    assert scan_for(root, mine) == []
    assert out["rows_removed"]["posts"] == sum(p["user_id"] == user for p in posts) and out["reports_removed"] == 1
    for ds in ("fetches", "posts", "staff", "faces", "labels/selfie", "labels/department", "scores"):
        assert root.read(ds).num_rows > 0, ds  # every dataset still reads
    assert root.exists("labels", "report.html") and root.exists("models", run_id, "model.pt")
    assert OptOut(root, cfg.privacy).blocks("user", user)
