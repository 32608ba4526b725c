"""The model card the export writes (MODEL_CARD.md + ``card`` in model.json): data origin with licence terms or
crawled sites and dates, rows per split and class, metrics with interval and baseline, backbone and weights'
origin, intended use and limits. Driven through ``export_run`` with a checkpoint written by a local Train worker
(no Ray)."""

from __future__ import annotations

import contextlib
import datetime as dt

import numpy as np

from helpers.recipe_standins import bitmoji_set
from helpers.train import make_root
from pipeline.config import load_config
from pipeline.labels.imports import import_classes
from pipeline.store import DataRoot, ModelMeta, model_meta
from pipeline.train.card import card_facts, card_markdown
from pipeline.train.data import load_labels
from pipeline.train.export import LoadedModel, export_run
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
    y = np.asarray(labels.split("test")["y"].to_pylist())
    d = tmp_path / "ck"
    d.mkdir()
    w.save_checkpoint(str(d), 0, {"y": y.tolist(), "outputs": [[0.0, 1.0]] * len(y), "best_epoch": 0})
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
