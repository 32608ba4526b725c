"""The model card the export writes (MODEL_CARD.md + ``card`` in model.json): data origin with licence terms or
crawled sites and dates, rows per split and class, metrics with interval and baseline, backbone and weights'
origin, intended use and limits. Driven through ``export_run`` with a checkpoint written by a local Train worker
(no Ray)."""

from __future__ import annotations

import contextlib
import datetime as dt

import numpy as np
import pytest

from helpers.recipe_standins import bitmoji_set
from helpers.train import make_root
from pipeline.config import load_config
from pipeline.labels.imports import import_classes
from pipeline.model.loaded import LoadedModel
from pipeline.model.meta import ModelMeta, model_meta
from pipeline.store import DataRoot
from pipeline.train.card import card_facts, card_markdown
from pipeline.train.data import load_labels
from pipeline.train.export import export_run
from pipeline.train.loop import TrainWorker, _cpu_copy


class _Checkpoint:
    """What ``export_run`` needs of a Ray Train checkpoint: ``as_directory()``."""

    def __init__(self, d: str):
        self.d = d

    @contextlib.contextmanager
    def as_directory(self):
        yield self.d


def _export(cfg, root: DataRoot, labels, run_id: str, tmp_path) -> str:
    """A small_cnn's untrained weights exported as ``run_id`` with its test outputs (every row predicted class 1)."""
    config = {"train": cfg.train.model_dump(), "kind": labels.kind, "num_outputs": labels.num_outputs,
              "class_names": labels.class_names, "class_weights": None, "target_mean": 0.0,
              "target_std": 1.0}  # fmt: skip
    w = TrainWorker.local(config)
    w.set_phase(0)
    w.last_state = w.best_state = _cpu_copy(w.model)
    w.history = [{"epoch": 0, "phase": w.phase, "score": 0.5, "val_loss": 1.0, "train_loss": 1.0, "val": {}}]
    test = labels.split("test")
    y = np.asarray(test["y"].to_pylist())
    d = tmp_path / "ck"
    d.mkdir()
    outputs = [[0.0, 1.0]] * len(y)
    w.save_checkpoint(
        str(d),
        0,
        {"y": y.tolist(), "outputs": outputs, "image_sha256": test["image_sha256"].to_pylist(), "best_epoch": 0},
    )
    export_run(cfg, root, labels, run_id, _Checkpoint(str(d)))
    return root.model_dir(run_id)


def test_imported_set_card_has_licence_rows_metrics_and_limits(tmp_path):
    bitmoji_set(tmp_path / "bm")
    over = {"data_root": str(tmp_path / "data"), "train.image_size": 32, "labels.imported.licence": "CC BY-NC 4.0"}
    cfg = load_config("configs/recipes/bitmoji_gender.yaml", overrides=over)
    import_classes(cfg, "gender", csv=tmp_path / "bm/train.csv", images=tmp_path / "bm/images")
    root = DataRoot(cfg.data_root)
    labels = load_labels(root, cfg.train)
    d = _export(cfg, root, labels, "20260101T000000Z-gender", tmp_path)
    card = root.read_bytes(f"{d}/MODEL_CARD.md").decode()
    meta = model_meta(root, d)
    facts = meta.card
    assert facts["data"]["kind"] == "imported" and facts["data"]["dataset"]["licence"] == "CC BY-NC 4.0"
    assert (
        facts["rows"]["per_split"] == labels.counts()
        and sum(facts["rows"]["per_class"]["test"].values()) == (labels.counts()["test"])
    )
    base = facts["metrics"]["baseline"]
    assert facts["metrics"]["accuracy"] == base["accuracy"]  # every row called 'male': the baseline itself or less
    for text in ("Licence terms: CC BY-NC 4.0", "95% Wilson interval", "Majority-class baseline", "99.3%",
                 "random initialisation", "encode the biases", "not evidence that appearance reveals"):  # fmt: skip
        assert text in card, text
    assert ModelMeta.from_dict(meta.to_dict()).card == facts
    assert LoadedModel.load(d, root).class_names == ["female", "male"]  # the scorer reads the folder as before


def test_kfold_run_card_adds_mean_and_std(tmp_path):
    from pipeline.train.kfold import _publish

    bitmoji_set(tmp_path / "bm")
    cfg = load_config("configs/recipes/bitmoji_gender.yaml", overrides={"data_root": str(tmp_path / "data")})
    import_classes(cfg, "gender", csv=tmp_path / "bm/train.csv", images=tmp_path / "bm/images")
    root = DataRoot(cfg.data_root)
    _export(cfg, root, load_labels(root, cfg.train), "r/folds/fold1", tmp_path)
    table = {"folds": [{}] * 5, "mean": {"accuracy": 0.9}, "std": {"accuracy": 0.05}, "exported_fold": 1}
    _publish(root, "r", 1, table)
    card = root.read_bytes(f"{root.model_dir('r')}/MODEL_CARD.md").decode()
    assert "# Model card: r\n" in card and "5-fold cross validation" in card and "accuracy: 0.9000 ± 0.0500" in card
    assert model_meta(root, root.model_dir("r")).card["kfold"]["folds"] == 5


def test_crawled_set_card_names_sites_and_crawl_dates(tmp_path):
    root, _, _ = make_root(tmp_path, task="selfie", n=20)
    t0 = dt.datetime(2026, 3, 1, tzinfo=dt.UTC)
    root.write_part(
        "posts", [{"site": "t", "item_id": f"p{i}", "scraped_at": t0 + dt.timedelta(days=i)} for i in range(3)]
    )
    cfg = load_config(
        None, overrides={"data_root": str(tmp_path), "train": {"backbone": "small_cnn", "image_size": 32}}
    )
    labels = load_labels(root, cfg.train)
    test = {"n": 4, "accuracy": 0.5, "accuracy_ci95": [0.15, 0.85], "correct": 2,
            "baseline": {"class": "bad", "accuracy": 0.5, "ci95": [0.15, 0.85]}, "chance": 0.5}  # fmt: skip
    facts = card_facts(cfg, root, labels, test, "r1")
    assert facts["data"]["sites"] == ["t"] and facts["data"]["crawled"]["t"]["first"].startswith("2026-03-01")
    md = card_markdown(facts)
    assert "t (posts): crawled 2026-03-01" in md and "Accuracy: 50.0% [15.0%, 85.0%]" in md
    assert "| train | 12 | 6 | 6 |" in md


def test_group_column_gives_per_group_accuracy_gap_and_calibration(tmp_path):
    """An import with ``--group-column`` keeps the group; the export reports accuracy per group with intervals,
    the largest gap between groups large enough to judge, the groups too small to judge, and the calibration
    (ECE and the reliability plot), in metrics.json, model.json's card, MODEL_CARD.md and the report."""
    from pipeline.report.html import _metrics_table

    bitmoji_set(tmp_path / "bm", n=200)
    csv = tmp_path / "bm" / "train.csv"
    lines = csv.read_text().splitlines()
    bands = ["18-29", "30-49", "50+"]  # the third band gets a handful of rows only: too small to judge
    rows = [lines[0] + ",age"] + [
        f"{line},{bands[2] if i % 20 == 0 else bands[i % 2]}" for i, line in enumerate(lines[1:])
    ]
    csv.write_text("\n".join(rows) + "\n")
    over = {"data_root": str(tmp_path / "data"), "train.image_size": 32, "labels.split.test": 0.5,
            "labels.split.train": 0.3, "labels.split.val": 0.2}  # fmt: skip
    cfg = load_config("configs/recipes/bitmoji_gender.yaml", overrides=over)
    import_classes(cfg, "gender", csv=csv, images=tmp_path / "bm/images", group_column="age")
    root = DataRoot(cfg.data_root)
    labels = load_labels(root, cfg.train)
    assert set(labels.split("test")["group"].to_pylist()) == set(bands)
    d = _export(cfg, root, labels, "20260101T000000Z-groups", tmp_path)
    test = root.read_json(f"{d}/metrics.json")["test"]
    g = test["by_group"]
    assert g["column"] == "group" and g["metric"] == "accuracy" and set(g["groups"]) == set(bands)
    assert sum(v["n"] for v in g["groups"].values()) == test["n"]
    assert g["too_small"] == ["50+"] and g["gap"]["between"] and set(g["gap"]["between"]) <= {"18-29", "30-49"}
    for v in g["groups"].values():
        assert v["accuracy_ci95"][0] <= v["accuracy"] <= v["accuracy_ci95"][1]
    cal = test["calibration"]
    assert 0 <= cal["ece"] <= 1 and sum(b["n"] for b in cal["bins"]) == test["n"]
    assert root.fs.get_file_info(f"{d}/plots/reliability.png").size > 0
    card = root.read_bytes(f"{d}/MODEL_CARD.md").decode()
    assert "## Factors" in card and "Too small to judge: 50+" in card and "expected calibration error" in card
    assert model_meta(root, d).card["metrics"]["by_group"] == g
    page = _metrics_table(root.read_json(f"{d}/metrics.json"))
    assert "Per group" in page and "too small to judge" in page


def test_calibration_and_group_metrics_values():
    from pipeline.train.metrics import calibration, group_metrics

    probs = np.array([[0.9, 0.1]] * 10 + [[0.3, 0.7]] * 10)
    y = np.array([0] * 9 + [1] + [1] * 7 + [0] * 3)  # 90% right at 0.9, 70% right at 0.7: calibrated
    cal = calibration(probs, y)
    assert cal["ece"] == pytest.approx(0.0, abs=1e-9) and [b["n"] for b in cal["bins"]] == [10, 10]
    worse = calibration(np.array([[0.99, 0.01]] * 10), np.array([0] * 5 + [1] * 5))
    assert worse["ece"] == pytest.approx(0.49)
    g = group_metrics("binary", ["a"] * 40 + ["b"] * 40 + ["c"] * 3, np.array([1] * 83),
                      np.array([1] * 36 + [0] * 4 + [1] * 20 + [0] * 20 + [1] * 3))  # fmt: skip
    assert g["groups"]["a"]["accuracy"] == 0.9 and g["groups"]["b"]["accuracy"] == 0.5
    assert g["gap"]["value"] == pytest.approx(0.4) and g["gap"]["between"] == ["a", "b"] and g["too_small"] == ["c"]
    r = group_metrics("regression", ["a"] * 30 + ["b"] * 30, np.zeros(60), np.r_[np.ones(30), 2 * np.ones(30)])
    assert r["groups"]["b"]["mae"] == 2.0 and r["gap"]["between"] == ["b", "a"]
    assert group_metrics("binary", ["a"] * 5, np.ones(5), np.ones(5)) is None
