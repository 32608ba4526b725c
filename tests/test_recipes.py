"""Each recipe of configs/recipes/ end to end on a tiny generated stand-in with its data set's file layout: import,
train (the recipe's schedule, only the network's size and the epochs made small), metrics, model card, report.

The stand-ins plant a colour signal (tests/helpers/recipe_standins.py) that a small CNN learns in a few epochs, so
the trained model must beat the majority-class baseline (or, for SCUT's regression, the training-mean baseline) by
a wide margin. One Ray (the session's) serves the three runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.recipe_standins import SCUT_60_40, bitmoji_set, imagefolder_set, scut_set
from pipeline.config import load_config
from pipeline.labels.beauty import import_scores
from pipeline.labels.imports import import_classes
from pipeline.store import DataRoot

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "recipes"
SMALL = {"train.backbone": "small_cnn", "train.pretrained": None, "train.image_size": 32, "faces.crop_size": 40,
         "train.num_workers": 1, "train.cpus_per_worker": 1.0}  # fmt: skip


def _cfg(recipe: str, root: Path, **overrides):
    return load_config(RECIPES / recipe, overrides={"data_root": str(root), **SMALL, **overrides})


def _score_test_files(cfg, summary: dict, files: list[Path], tmp_path: Path) -> None:
    """Train/serve parity of a faces-as-given model: its test images, copied as files and scored by the score stage
    into a fresh data root (every crop made again from the file), get the test pass's predictions
    (tests/helpers/parity.py)."""
    from helpers.parity import assert_scores_match_test_pass
    from pipeline import score

    d = tmp_path / "test-images"
    d.mkdir()
    for i, f in enumerate(files):
        (d / f"{i:03d}{f.suffix}").write_bytes(f.read_bytes())
    scored = cfg.model_copy(update={"data_root": str(tmp_path / "scored")})
    scored = scored.model_copy(update={"score": scored.score.model_copy(update={"model": summary["model_dir"],
                                                                                "num_actors": 1})})  # fmt: skip
    out = score.run(scored, images=str(d))
    assert out["detected_faces"] == out["to_score"] == len(files) and out["ok"] == len(files), out
    assert_scores_match_test_pass(DataRoot(scored.data_root), summary["model_dir"], summary["test"])


def _test_files(cfg, base: Path) -> list[Path]:
    """The image files of the labels' test split (the import's ``file`` column, relative to ``base``)."""
    t = DataRoot(cfg.data_root).read(f"labels/{cfg.train.task}", columns=["file", "split", "status"]).to_pylist()
    return [base / r["file"] for r in t if r["split"] == "test" and r["status"] == "ok"]


def _check_export(cfg, summary: dict, licence_word: str) -> dict:
    """The model folder holds the card and model.json's card; the report links the card; returns metrics.json."""
    from pipeline.report.html import write_report

    root = DataRoot(cfg.data_root)
    d = summary["model_dir"]
    card = root.read_bytes(f"{d}/MODEL_CARD.md").decode()
    meta = root.read_json(f"{d}/model.json")
    assert licence_word in card and licence_word in json.dumps(meta["card"]["data"])
    assert "not evidence that appearance reveals" in card and meta["card"]["rows"]["per_split"] == summary["rows"]
    page = Path(write_report(d, cfg)).read_text()
    assert "href='MODEL_CARD.md'" in page and "baseline" in page
    return root.read_json(f"{d}/metrics.json")


@pytest.mark.slow
def test_bitmoji_csv_recipe_beats_the_majority_baseline(ray_session, tmp_path):
    from pipeline.train import run

    bad = bitmoji_set(tmp_path / "BitmojiDataset")
    cfg = _cfg("bitmoji_gender.yaml", tmp_path / "data", **{"train.epochs": 2, "train.batch_size": 8})
    imp = import_classes(
        cfg, cfg.train.task, csv=tmp_path / "BitmojiDataset/train.csv", images=tmp_path / "BitmojiDataset/images"
    )
    assert imp["ok"] == 40 and imp["excluded"] == bad["bad"] and imp["class_names"] == ["female", "male"]
    out = run(cfg)
    test = out["test"]
    print("bitmoji stand-in:", {k: test[k] for k in ("n", "accuracy", "accuracy_ci95", "baseline")})
    assert test["accuracy"] >= test["baseline"]["accuracy"] + 0.25, test
    metrics = _check_export(cfg, out, "download page")
    assert metrics["test"]["accuracy_ci95"][0] <= test["accuracy"] <= metrics["test"]["accuracy_ci95"][1]
    _score_test_files(cfg, out, _test_files(cfg, tmp_path / "BitmojiDataset/images"), tmp_path)


@pytest.mark.slow
def test_imagefolder_recipe_two_phase_beats_the_majority_baseline(ray_session, tmp_path):
    from pipeline.train import run

    imagefolder_set(tmp_path / "faces-gender")
    assert load_config(RECIPES / "gender_resnet50.yaml").train.freeze_epochs == 2
    short = {"train.epochs": 2, "train.freeze_epochs": 1, "train.batch_size": 8}  # one epoch of each phase
    cfg = _cfg("gender_resnet50.yaml", tmp_path / "data", **short)
    assert cfg.train.backbone_lr_scale == 0.1 and cfg.train.label_smoothing == 0.1  # the recipe's schedule is kept
    imp = import_classes(cfg, cfg.train.task, folders=tmp_path / "faces-gender", detect=False)  # squares, not photos
    assert imp["splits"]["test"] == 16 and imp["classes"]["test"] == {"female": 8, "male": 8}
    out = run(cfg)
    test = out["test"]
    print("imagefolder stand-in:", {k: test[k] for k in ("n", "accuracy", "accuracy_ci95", "baseline")})
    assert test["n"] == 16 and test["accuracy"] >= test["baseline"]["accuracy"] + 0.3, test
    metrics = _check_export(cfg, out, "data set you downloaded")
    assert [h["phase"] for h in metrics["history"]] == ["head", "full"]
    _score_test_files(cfg, out, _test_files(cfg, tmp_path / "faces-gender"), tmp_path)


@pytest.mark.slow
def test_scut_60_40_recipe_beats_the_mean_baseline(ray_session, tmp_path):
    from pipeline.train import run

    scut_set(tmp_path / "SCUT-FBP5500_v2")
    cfg = _cfg("scut_fbp5500_60_40.yaml", tmp_path / "data", **{"train.epochs": 2, "train.batch_size": 8})
    split = tmp_path / "SCUT-FBP5500_v2" / SCUT_60_40
    imp = import_scores(
        tmp_path / "SCUT-FBP5500_v2/Images", [split / "train.txt", split / "test.txt"], cfg, detect=False
    )
    assert imp["splits"] == {"test": 24, "train": 36} and imp["faces"]["kept"] == 60
    out = run(cfg)
    test = out["test"]
    print("scut stand-in:", {k: test[k] for k in ("n", "pearson", "pearson_ci95", "mae", "rmse", "baseline")})
    assert test["n"] == 24 and test["pearson"] >= 0.6, test
    assert test["rmse"] <= 0.8 * test["baseline"]["rmse"], test
    metrics = _check_export(cfg, out, "non-commercial research")
    assert metrics["protocol"] == "files" and metrics["counts"]["val"] > 0  # val carved out of the 60% train
