"""k-fold training: one model per fold of the labels' ``fold`` column and a per-fold table with mean ± std.

With ``train.kfold`` the labels must carry folds (``labels.split.k_folds``, or the beauty import's ``cv5``
protocol). For fold ``k`` the test set is fold ``k``; the other folds' persons go to ``val`` when their stable
person hash falls below ``train.kfold_val``, else to ``train`` (:func:`pipeline.train.data.fold_splits`). Every fold's
label set is validated before any training starts. Layout under the data root::

    models/<run_id>/folds/fold<k>/   each fold's full export (model.json, metrics.json, plots, checkpoints)
    models/<run_id>/kfold.json       per-fold rows (counts, best epoch, val score, test metrics), mean and std
    models/<run_id>/kfold.md         the same as a short Markdown table
    models/<run_id>/model.json ...   a copy of the exported fold's model (``train.kfold_export``, or the fold with
                                     the best validation score), so the scorer finds it like any other run

``--resume`` skips folds already exported and continues a fold from its checkpoints.

Example::

    summary = run_kfold(cfg, root, "20261123T183000Z-beauty", resume=False)
    summary["kfold"]["mean"]["pearson"], summary["kfold"]["std"]["pearson"]
"""

from __future__ import annotations

import logging
import math
import posixpath

import numpy as np
import pyarrow.fs as pafs

from pipeline.config import Config
from pipeline.model.meta import is_file
from pipeline.store import DataRoot
from pipeline.train.data import LabelSet, TrainInputError, label_folds, load_labels

log = logging.getLogger("facerank.train")

SCALARS = ("accuracy", "roc_auc", "pearson", "mae", "rmse")


def fold_run_id(run_id: str, fold: int) -> str:
    """The run id (a path under ``models/``) of one fold of a k-fold run."""
    return f"{run_id}/folds/fold{fold}"


def flat_metrics(test: dict) -> dict[str, float | None]:
    """The scalar test metrics of one model: accuracy / ROC-AUC / Pearson / MAE / RMSE and per-class
    ``precision[<class>]`` / ``recall[<class>]`` (counts and the confusion matrix are left out)."""
    out: dict[str, float | None] = {k: test[k] for k in SCALARS if k in test}
    for name, pc in (test.get("per_class") or {}).items():
        out[f"precision[{name}]"] = pc["precision"]
        out[f"recall[{name}]"] = pc["recall"]
    return out


def mean_std(rows: list[dict]) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) per metric over the folds, skipping
    folds where a metric is undefined (e.g. ROC-AUC of a one-class test fold)."""
    keys = list(dict.fromkeys(k for r in rows for k in r["test"]))
    mean, std = {}, {}
    for k in keys:
        v = np.asarray([r["test"][k] for r in rows if r["test"].get(k) is not None], dtype=np.float64)
        mean[k] = float(v.mean()) if len(v) else None
        std[k] = (float(v.std(ddof=1)) if len(v) > 1 else 0.0) if len(v) else None
    return mean, std


def _fmt(x: float | None) -> str:
    return "–" if x is None or not math.isfinite(x) else f"{x:.3f}"


def kfold_markdown(table: dict) -> str:
    """A short Markdown table: one row per fold, then mean ± std."""
    keys = [k for k in table["mean"] if k in SCALARS] or list(table["mean"])
    head = ["fold", "n test", "best epoch", "val score", *keys]
    lines = [
        f"# k-fold run {table['run_id']} ({table['task']}, {len(table['folds'])} folds)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for r in table["folds"]:
        cells = [str(r["fold"]), str(r["counts"]["test"]), str(r["best_epoch"]), _fmt(r["val_score"])]
        lines.append("| " + " | ".join(cells + [_fmt(r["test"].get(k)) for k in keys]) + " |")
    ms = [f"{_fmt(table['mean'][k])} ± {_fmt(table['std'][k])}" for k in keys]
    lines.append("| mean ± std | | | | " + " | ".join(ms) + " |")
    lines += ["", f"Exported fold: {table['exported_fold']} ({table['export_rule']}).", ""]
    return "\n".join(lines)


def _fold_row(root: DataRoot, fold: int, fold_dir: str) -> dict:
    m = root.read_json(posixpath.join(fold_dir, "metrics.json"))
    best = next((h for h in m["history"] if h["epoch"] == m["best_epoch"]), None)
    return {
        "fold": fold,
        "model_dir": fold_dir,
        "counts": m["counts"],
        "best_epoch": m["best_epoch"],
        "val_score": best["score"] if best else None,
        "test": flat_metrics(m["test"]),
    }


def _publish(root: DataRoot, run_id: str, fold: int, table: dict) -> None:
    """Copy fold ``fold``'s export to ``models/<run_id>/``; ``model.json`` last (marks the export complete)."""
    src = root.model_dir(fold_run_id(run_id, fold))
    dst = root.model_dir(run_id)
    sel = pafs.FileSelector(src, recursive=True)
    for info in root.fs.get_file_info(sel):
        rel = posixpath.relpath(info.path, src)
        if info.type != pafs.FileType.File or rel.split("/")[0] in ("checkpoints", "model.json", "metrics.json"):
            continue
        root.fs.create_dir(posixpath.dirname(posixpath.join(dst, rel)), recursive=True)
        root.fs.copy_file(info.path, posixpath.join(dst, rel))
    metrics = root.read_json(posixpath.join(src, "metrics.json"))
    metrics.update(run_id=run_id, fold=fold, kfold={k: table[k] for k in ("mean", "std", "exported_fold")})
    root.write_json(posixpath.join(dst, "metrics.json"), metrics)
    meta = root.read_json(posixpath.join(src, "model.json"))
    meta.update(model_id=run_id, fold=fold, fold_model_dir=src)
    if meta.get("card"):  # the card of the run: the exported fold's facts plus every fold's mean ± std
        from pipeline.train.card import CARD_FILE, card_markdown

        folds = len(table["folds"])
        meta["card"] |= {"model_id": run_id, "kfold": {k: table[k] for k in ("mean", "std", "exported_fold")}}
        meta["card"]["kfold"]["folds"] = folds
        root.write_bytes_atomic(posixpath.join(dst, CARD_FILE), card_markdown(meta["card"]).encode())
    root.write_json(posixpath.join(dst, "model.json"), meta)


def _train_fold(
    cfg: Config, root: DataRoot, run_id: str, k: int, folds: list[int], labels: LabelSet, resume: bool
) -> dict:
    """Train and export fold ``k`` (with ``resume``, skipped when already exported); returns its table row."""
    from pipeline.train.export import export_run
    from pipeline.train.loop import fit

    fid = fold_run_id(run_id, k)
    fold_dir = root.model_dir(fid)
    if resume and is_file(root.fs, posixpath.join(fold_dir, "model.json")):
        log.info("train %s: fold %d already exported; skipped", run_id, k)
    else:
        log.info("train %s: fold %d of %s, rows %s", run_id, k, folds, labels.counts())
        result = fit(cfg, root, labels, fid)
        if result.error is not None:
            raise result.error
        export_run(cfg, root, labels, fid, result.checkpoint)
    return _fold_row(root, k, fold_dir)


def _choose_fold(export: int | None, rows: list[dict]) -> tuple[int, str]:
    """The fold to publish and why: ``train.kfold_export``, else the best validation score (ties: lower fold)."""
    if export is not None:
        return export, "train.kfold_export"
    scored = [r for r in rows if r["val_score"] is not None] or rows
    return max(scored, key=lambda r: (r["val_score"] or -math.inf, -r["fold"]))["fold"], "best val score"


def run_kfold(cfg: Config, root: DataRoot, run_id: str, resume: bool = False) -> dict:
    """Train one model per fold, write the per-fold table and export the chosen fold; returns a summary."""
    from pipeline.train.loop import check_cluster

    tc = cfg.train
    folds = label_folds(root, tc.task)
    if tc.kfold_export is not None and tc.kfold_export not in folds:
        raise TrainInputError(f"train.kfold_export={tc.kfold_export}: the labels' folds are {folds}")
    labelsets: dict[int, LabelSet] = {k: load_labels(root, tc, fold=k) for k in folds}  # all checked up front
    check_cluster(tc)
    rows = [_train_fold(cfg, root, run_id, k, folds, labelsets[k], resume) for k in folds]
    mean, std = mean_std(rows)
    chosen, rule = _choose_fold(tc.kfold_export, rows)
    table = {
        "run_id": run_id,
        "task": tc.task,
        "kind": labelsets[folds[0]].kind,
        "folds": rows,
        "mean": mean,
        "std": std,
        "std_ddof": 1,
        "exported_fold": chosen,
        "export_rule": rule,
        "val_rule": f"persons of the other folds with hash(kfold-val/{tc.seed}, person_id) < {tc.kfold_val}",
    }
    model_dir = root.model_dir(run_id)
    root.write_json(posixpath.join(model_dir, "kfold.json"), table)
    root.write_bytes_atomic(posixpath.join(model_dir, "kfold.md"), kfold_markdown(table).encode())
    _publish(root, run_id, chosen, table)
    chosen_labels = labelsets[chosen]
    return {
        "run_id": run_id,
        "model_dir": model_dir,
        "task": chosen_labels.task,
        "kind": chosen_labels.kind,
        "class_names": chosen_labels.class_names,
        "rows": chosen_labels.counts(),
        "epochs": tc.epochs,
        "resumed": resume,
        "test": root.read_json(posixpath.join(model_dir, "metrics.json"))["test"],
        "kfold": {"folds": len(folds), "exported_fold": chosen, "mean": mean, "std": std},
    }
