"""The exported model: what ``models/<run_id>/`` holds, how it is written, and how the scorer loads it.

``export_run`` takes the finished run's last checkpoint (which carries the best epoch's weights, that model's
test-set outputs and the run's history; its ``state.pt`` is not read) and writes, through the data root's
filesystem (local or ``s3://``)::

    models/<run_id>/model.pt          state dict of the best epoch by validation metric
    models/<run_id>/metrics.json      test metrics, best epoch, per-epoch history, label counts
    models/<run_id>/test_scores.json  sorted test-set scores (percentiles of new scores are taken against them)
    models/<run_id>/test_predictions.parquet  the test pass per image (image_sha256, label, predicted, score):
                                      what scoring the same images through the score stage must give
    models/<run_id>/plots/*.png       training curve; confusion matrix + ROC (classification);
                                      predicted-vs-true scatter + histograms (regression)
    models/<run_id>/MODEL_CARD.md     the model card (:mod:`pipeline.train.card`): data origin and licence,
                                      rows per split and class, metrics with intervals and baseline, backbone
                                      and weights' origin, intended use and limits
    models/<run_id>/model.json        :class:`pipeline.model.meta.ModelMeta`: task, kind, backbone, num_outputs,
                                      class_names, image_size, mean/std, target_mean/std, model_id, the train
                                      config, ``card`` (the model card's facts), ``inputs`` (how its inputs
                                      are made: the crop recipe of its training crops, the pixel size and
                                      resize); written last, by
                                      :func:`pipeline.model.meta.write_model_meta`: marks the export complete

``pipeline.model.meta.resolve_model_dir(root, spec)`` turns ``latest`` / ``latest:<task>`` / a run id / a path into a
model folder and ``pipeline.model.meta.model_meta`` reads its ``model.json`` (no torch needed for either);
``LoadedModel.load(model_dir)`` gives ``score`` (scores, test-set percentiles and class names: what the score
stage, ``rate`` and the report use), ``predict``, ``embed`` and ``percentile`` over PIL crops.

Example::

    m = LoadedModel.load(resolve_model_dir(root, "latest"), root)
    scores, percentiles, names = m.score([Image.open("face.jpg")])
"""

from __future__ import annotations

import io
import json
import logging
import os
import posixpath

import numpy as np
import pyarrow.fs as pafs
import torch

from pipeline.config import Config
from pipeline.model.backbones import backbone
from pipeline.model.meta import CHECKPOINT_TEST, TEST_PREDICTIONS, ModelMeta, write_model_meta
from pipeline.model.outputs import scores_from_outputs, softmax
from pipeline.store import DataRoot
from pipeline.train import metrics as M
from pipeline.train.card import CARD_FILE, card_facts, card_markdown
from pipeline.train.data import LabelSet

log = logging.getLogger("facerank.train")


# ------------------------------------------------------------------------------------------------ export
def export_run(cfg: Config, root: DataRoot, labels: LabelSet, run_id: str, checkpoint) -> dict:
    """Write the best epoch of a finished run to ``models/<run_id>/``; returns the test metrics."""
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, "best_model.pt"), "rb") as f:
            weights = f.read()
        with open(os.path.join(d, CHECKPOINT_TEST)) as f:
            test = json.load(f)
        if "history" in test:  # the last epoch's test.json carries the history: state.pt (weights and optimiser,
            history = test["history"]  # three times model.pt's size) is not read
        else:  # a checkpoint written before test.json held it
            state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
            history = json.loads(state["history"])
    y, outputs = np.asarray(test["y"]), np.asarray(test["outputs"], dtype=np.float64)
    kind = labels.kind
    test_metrics = M.evaluate(kind, y, outputs, labels.class_names, labels.target_mean, labels.target_std)
    scores, pred = scores_from_outputs(kind, outputs, labels.target_mean, labels.target_std)
    keys = test.get("image_sha256") or [None] * len(y)
    truth = y.astype(float) * labels.target_std + labels.target_mean if kind == "regression" else y
    test_metrics["by_group"] = by_group(labels, keys, kind, truth, scores if kind == "regression" else pred)
    if kind != "regression":
        test_metrics["calibration"] = M.calibration(softmax(outputs), y)
    metric = "rmse" if kind == "regression" else "accuracy"
    model_dir = root.model_dir(run_id)

    plots = {"training_curve.png": M.curve_png(history, metric)}
    if kind == "regression":
        plots["scatter.png"] = M.scatter_png(truth, scores)
        plots["histograms.png"] = M.histograms_png(truth, scores)
    else:
        plots["confusion.png"] = M.confusion_png(test_metrics["confusion"], labels.class_names)
        if test_metrics["calibration"]:
            plots["reliability.png"] = M.reliability_png(test_metrics["calibration"])
        if kind == "binary" and len(set(y.tolist())) == 2:
            plots["roc.png"] = M.roc_png(y, scores)
    for name, png in plots.items():
        root.write_bytes_atomic(posixpath.join(model_dir, "plots", name), png)

    root.write_bytes_atomic(posixpath.join(model_dir, "model.pt"), weights)
    root.write_json(posixpath.join(model_dir, "test_scores.json"), sorted(float(s) for s in scores))
    root.write_bytes_atomic(posixpath.join(model_dir, TEST_PREDICTIONS), test_predictions(labels, keys, y, outputs))
    summary = {
        "run_id": run_id,
        "task": labels.task,
        "kind": kind,
        "best_epoch": test.get("best_epoch"),
        "selection_metric": f"val {metric}",
        "test": test_metrics,
        "counts": labels.counts(),
        "history": history,
    }
    facts = card_facts(cfg, root, labels, test_metrics, run_id)
    summary.update(protocol=facts["protocol"], model_card=CARD_FILE)
    root.write_json(posixpath.join(model_dir, "metrics.json"), summary)
    root.write_bytes_atomic(posixpath.join(model_dir, CARD_FILE), card_markdown(facts).encode())
    write_model_meta(root, model_dir, _model_meta(cfg, labels, run_id, test.get("best_epoch"), facts))
    if not cfg.train.keep_checkpoints:
        ckpts = posixpath.join(model_dir, "checkpoints")
        if root.fs.get_file_info(ckpts).type != pafs.FileType.NotFound:
            root.fs.delete_dir(ckpts)
    return test_metrics


def by_group(labels: LabelSet, keys: list, kind: str, truth: np.ndarray, pred: np.ndarray) -> dict | None:
    """:func:`pipeline.train.metrics.group_metrics` of the test rows (``keys``: their image sha256s) by the labels'
    ``group`` column, else by ``site`` when the test set spans several sites that are not one class each (a
    department set's sites are its classes); None without groups."""
    test = labels.split("test").to_pylist()
    rows = {r["image_sha256"]: r for r in test}
    column = "group" if any(r.get("group") is not None for r in test) else "site"
    groups = [rows.get(k, {}).get(column) for k in keys]
    if column == "site":
        classes = {r["site"]: set() for r in test}
        for r in test:
            classes[r["site"]].add(r.get("label"))
        if len(classes) < 2 or (kind != "regression" and all(len(c) == 1 for c in classes.values())):
            return None
    out = M.group_metrics(kind, groups, truth, pred)
    return {"column": column, **out} if out else None


def test_predictions(labels: LabelSet, keys: list, y: np.ndarray, outputs: np.ndarray) -> bytes:
    """``test_predictions.parquet``: one row per test image of the model's own test pass: ``image_sha256``, the
    true ``label`` and the ``predicted`` class name (classification) or the true ``target`` and predicted ``value``
    (regression), and ``score`` as the score stage writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    scores, pred = scores_from_outputs(labels.kind, outputs, labels.target_mean, labels.target_std)
    cols: dict = {"image_sha256": pa.array(keys, pa.string()), "score": pa.array(np.asarray(scores, np.float64))}
    if labels.kind == "regression":
        cols["target"] = pa.array(np.asarray(y, np.float64) * labels.target_std + labels.target_mean)
    else:
        names = labels.class_names
        cols["label"] = pa.array([names[int(i)] for i in y], pa.string())
        cols["predicted"] = pa.array([names[int(i)] for i in pred], pa.string())
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf)
    return buf.getvalue()


def model_inputs(cfg: Config, labels: LabelSet) -> dict:
    """``model.json``'s ``inputs``: the crop recipe of the training crops and how crops become pixels."""
    crop = json.loads(labels.recipe) if labels.recipe else None
    return {"crop": crop, "pixels": {"size": cfg.train.image_size, "resize": "bilinear", "colour": "RGB"}}


def _model_meta(
    cfg: Config, labels: LabelSet, run_id: str, best_epoch: int | None, card: dict | None = None
) -> ModelMeta:
    """The ``model.json`` of a run trained with ``cfg`` on ``labels``."""
    mean, std = backbone(cfg.train.backbone).normalisation
    return ModelMeta(
        model_id=run_id,
        task=labels.task,
        kind=labels.kind,
        backbone=cfg.train.backbone,
        num_outputs=labels.num_outputs,
        class_names=labels.class_names,
        image_size=cfg.train.image_size,
        mean=mean,
        std=std,
        target_mean=labels.target_mean,
        target_std=labels.target_std,
        best_epoch=best_epoch,
        train_config=cfg.train.model_dump(),
        card=card,
        inputs=model_inputs(cfg, labels),
    )
