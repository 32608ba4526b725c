"""Train/serve parity: scoring a model's own test images through the score stage gives its test pass's predictions.

A model records how its input crops were made (``model.json``'s ``inputs.crop``, :mod:`pipeline.faces.recipe`);
every scoring path makes crops that way. The check is end to end with real face photos (``../shared/faces``):
import with MTCNN crops (here aligned by the five landmarks), train, then score the test images *as files into a
fresh data root* (so every crop is made again from the image, nothing reused), and compare with the model's
``test_predictions.parquet`` image by image. The faces-as-given paths are checked the same way in
tests/test_recipes.py (CSV and folders), the selfie and department tasks in tests/test_end_to_end.py.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from helpers.parity import assert_scores_match_test_pass
from pipeline.config import load_config
from pipeline.faces.recipe import CropRecipe
from pipeline.labels.imports import import_classes
from pipeline.model.meta import RecipeError
from pipeline.store import DataRoot

SHARED_FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"
pytestmark = pytest.mark.skipif(not SHARED_FACES.is_dir(), reason="needs ../shared/faces (real photos)")
SMALL = {"train.backbone": "small_cnn", "train.image_size": 32, "train.epochs": 1, "train.batch_size": 8,
         "train.num_workers": 1, "train.cpus_per_worker": 1.0, "faces.crop_size": 64, "faces.max_side": 480,
         "score.num_actors": 1, "faces.num_actors": 1}  # fmt: skip


def _photos() -> list[tuple[str, str, str]]:
    """(path, class, split) of the single-person photos: obama or other, every third photo of each class in test."""
    rows = list(csv.DictReader((SHARED_FACES / "MANIFEST.csv").open()))
    single = [(r["path"], "obama" if r["people"] == "obama" else "other") for r in rows if r["faces"] == "1"]
    seen: dict[str, int] = {}
    out = []
    for path, cls in single:
        seen[cls] = seen.get(cls, 0) + 1
        out.append((path, cls, "test" if seen[cls] % 3 == 0 else "train"))
    return out


def _folders(d: Path) -> Path:
    for path, cls, split in _photos():
        dst = d / split / cls / path.replace("/", "_")
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_FACES / path, dst)
    return d


def _cfg(root: Path, **more):
    return load_config(None, overrides={"data_root": str(root), "train.task": "who", **SMALL, **more})


@pytest.mark.slow
def test_detected_and_aligned_crops_score_as_the_model_tested(ray_session, tmp_path):
    from pipeline import score
    from pipeline.train import run

    cfg = _cfg(tmp_path / "data", **{"faces.align": "similarity", "labels.split.seed": "parity"})
    imp = import_classes(cfg, "who", folders=_folders(tmp_path / "set"), detect=True)
    assert imp["faces"]["kept"] >= 20, imp
    out = run(cfg)
    d = Path(out["model_dir"])
    meta = json.loads((d / "model.json").read_text())
    recipe = CropRecipe.from_dict(meta["inputs"]["crop"])
    assert recipe.mode == "detect" and recipe.values["align"] == "similarity" and recipe.values["crop_size"] == 64

    # a scoring config whose own faces settings differ: the model's recipe decides, not the config
    other = _cfg(tmp_path / "scored", **{"faces.align": "none", "faces.margin": 0.5, "faces.crop_size": 160,
                                         "score.model": str(d)})  # fmt: skip
    summary = score.run(other, images=str(tmp_path / "set" / "test"))
    assert summary["detected_faces"] == summary["to_score"] > 0 and summary["reused_faces"] == 0
    assert_scores_match_test_pass(DataRoot(other.data_root), d, out["test"])


def test_csv_and_folder_imports_make_the_same_crops(tmp_path):
    """The CSV and the folder listing of one set give the same face rows (recipe and crop bytes), so the parity
    of one import path is the parity of the other."""
    cfg = _cfg(tmp_path / "a")
    photos = [p for p in _photos() if p[0].startswith("examples/knn_examples/train")][:4]
    with (tmp_path / "set.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "who"])
        w.writerows((p, c) for p, c, _ in photos)
    import_classes(cfg, "who", csv=tmp_path / "set.csv", images=SHARED_FACES, file_column="file",
                   label_column="who", detect=True)  # fmt: skip
    d = tmp_path / "folders"
    for path, cls, _ in photos:
        (d / cls).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(SHARED_FACES / path, d / cls / Path(path).name)
    cfg_b = _cfg(tmp_path / "b")
    import_classes(cfg_b, "who", folders=d, detect=True)
    a = {r["image_sha256"]: r for r in DataRoot(cfg.data_root).read("faces").to_pylist()}
    b = {r["image_sha256"]: r for r in DataRoot(cfg_b.data_root).read("faces").to_pylist()}
    assert a.keys() == b.keys() and len(a) == 4
    for sha in a:
        assert a[sha]["recipe"] == b[sha]["recipe"] == CropRecipe.of(cfg.faces, detect=True).to_json()
        assert a[sha]["crop_jpeg"] == b[sha]["crop_jpeg"] and a[sha]["kept"]


def test_a_model_without_recorded_inputs_is_refused_with_one_line(ray_session, tmp_path):
    """A model.json that does not say how its crops were made is refused before any scoring (unless the config
    says to score it with its own faces settings)."""
    from helpers.score_model import write_model
    from pipeline.cli import main

    root = tmp_path / "data"
    model_dir = write_model(DataRoot(str(root)), inputs=None)
    (tmp_path / "img").mkdir()
    shutil.copyfile(SHARED_FACES / "examples/obama.jpg", tmp_path / "img" / "a.jpg")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data_root: {root}\nscore: {{model: {model_dir}, num_actors: 1}}\n")
    with pytest.raises(RecipeError, match="does not say how its input crops were made"):
        from pipeline.score.stage import plan

        plan(load_config(str(cfg)), DataRoot(str(root)), images=str(tmp_path / "img"))
    rc = main(["stage", "score", "--config", str(cfg), "--images", str(tmp_path / "img")])
    assert rc == 3 and not (root / "scores").exists()
    rc = main(["stage", "score", "--config", str(cfg), "--images", str(tmp_path / "img"),
               "--set", "score.unrecorded_inputs=faces_config"])  # fmt: skip
    assert rc == 0
    rows = pq.read_table(root / "scores").to_pylist()
    assert len(rows) == 1 and rows[0]["status"] == "ok"
