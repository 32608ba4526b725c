"""Metrics and plots of a run: what ``metrics.json`` and the PNGs under ``models/<run_id>/plots/`` hold.

Classification: accuracy with its 95% Wilson score interval (:func:`wilson_interval`), the majority-class
baseline beside it (always predicting the test set's most common class: the best any constant guess does there,
with its own interval) and the chance level ``1/k``, per-class precision / recall / support, the confusion matrix
and, for a binary task, ROC-AUC. A study that reports 57.1% on ~235 test images against "chance 25%" when its
majority class holds 28% shows here as 0.570 [0.506, 0.632] (134 of 235) against a 0.28 baseline
(``tests/test_metrics_ci.py::test_wilson_interval_of_the_majors_study``).
Regression: Pearson correlation (with a 95% Fisher-z interval), MAE and RMSE (the three of the SCUT-FBP5500 paper),
in target units, beside the baseline of predicting the training mean for every face.
Per group (:func:`group_metrics`, a model card's "factors"): when the labels carry a group (an imported set's
``group`` column: age band, skin type, gender; else the site when the test set spans several), the same accuracy
with its interval (or MAE with a normal interval) per group, the largest gap between groups large enough to judge
(at least ``min_n`` test rows), and the groups too small to judge. Calibration (:func:`calibration`): scores are
read as probabilities, so the expected calibration error of the predicted class's probability over equal-width
bins, and the reliability diagram (:func:`reliability_png`).
Plots are PNG bytes drawn with matplotlib's Agg backend (no display needed; :mod:`pipeline.plots`), written by the
exporter.

Example::

    m = evaluate("binary", y_true, logits, ["bad", "good"])
    m["accuracy"], m["roc_auc"]
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.model.outputs import softmax
from pipeline.plots import png_bytes, pyplot


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """The Wilson score interval of a binomial proportion (95% by default); None when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the ends (rounding would miss 0 and 1)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return lo, hi


def majority_baseline(y_true: np.ndarray, class_names: list[str]) -> dict | None:
    """Accuracy of always predicting the most common class of ``y_true`` (ties: the lower index), with its
    interval; None without rows."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return None
    counts = np.bincount(y_true, minlength=len(class_names))
    top = int(np.argmax(counts))
    ci = wilson_interval(int(counts[top]), len(y_true))
    return {
        "class": class_names[top] if top < len(class_names) else str(top),
        "accuracy": float(counts[top] / len(y_true)),
        "ci95": list(ci) if ci else None,
        "rule": "always the test set's most common class",
    }


def pearson_interval(r: float | None, n: int, z: float = 1.959964) -> tuple[float, float] | None:
    """A 95% interval of a Pearson correlation by Fisher's z transform; None when undefined (n < 4)."""
    if r is None or n < 4 or not -1 < r < 1:
        return None
    f, se = math.atanh(r), 1 / math.sqrt(n - 3)
    return math.tanh(f - z * se), math.tanh(f + z * se)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, per-class precision/recall, confusion matrix (rows true, columns predicted), ROC-AUC if binary."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, roc_auc_score

    y_true = np.asarray(y_true, dtype=np.int64)
    k = len(class_names)
    pred = probs.argmax(axis=1)
    labels = list(range(k))
    p, r, _, sup = precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    out: dict = {
        "n": int(len(y_true)),
        "accuracy": float(np.mean(pred == y_true)) if len(y_true) else None,
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "support": int(sup[i])}
            for i, name in enumerate(class_names)
        },
        "confusion": confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
    correct = int(np.sum(pred == y_true))
    ci = wilson_interval(correct, len(y_true))
    out.update(
        correct=correct,
        accuracy_ci95=list(ci) if ci else None,
        baseline=majority_baseline(y_true, class_names),
        chance=1.0 / k if k else None,
    )
    if k == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, probs[:, 1])) if len(set(y_true.tolist())) == 2 else None
    return out


def calibration(probs: np.ndarray, y_true: np.ndarray, bins: int = 10) -> dict | None:
    """Expected calibration error (ECE) of the predicted class's probability: over ``bins`` equal-width bins of
    that probability, the row-weighted mean of |accuracy - mean probability|; with the bins (lo, hi, n, mean
    probability, accuracy) for the reliability diagram. None without rows."""
    y_true = np.asarray(y_true, dtype=np.int64)
    if len(y_true) == 0:
        return None
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    right = (pred == y_true).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        m = which == b
        if not m.any():
            continue
        acc, mean_conf = float(right[m].mean()), float(conf[m].mean())
        ece += m.sum() / len(conf) * abs(acc - mean_conf)
        rows.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int(m.sum()), "confidence": mean_conf,
                     "accuracy": acc})  # fmt: skip
    return {"ece": float(ece), "bins": rows, "binning": f"{bins} equal-width bins of the predicted class's probability"}


def group_metrics(kind: str, groups: list, y_true: np.ndarray, pred: np.ndarray, min_n: int = 30) -> dict | None:
    """Per-group test metrics: ``groups`` names each row's group (None: no group), ``pred`` the predicted class
    index (classification) or value (regression, ``y_true`` in target units). Each group: n and accuracy with its
    Wilson interval, or MAE with a normal 95% interval; ``gap``: the largest difference between groups with at
    least ``min_n`` rows (and which two); ``too_small``: the groups below ``min_n``. None when fewer than two
    groups."""
    g = np.asarray(["(none)" if x is None else str(x) for x in groups], dtype=object)
    names = sorted(set(g.tolist()))
    if len(names) < 2:
        return None
    y_true, pred = np.asarray(y_true), np.asarray(pred)
    per: dict[str, dict] = {}
    for name in names:
        m = g == name
        n = int(m.sum())
        if kind == "regression":
            err = np.abs(pred[m].astype(float) - y_true[m].astype(float))
            half = 1.959964 * float(err.std(ddof=1)) / math.sqrt(n) if n > 1 else None
            mae = float(err.mean())
            per[name] = {"n": n, "mae": mae, "mae_ci95": [mae - half, mae + half] if half is not None else None}
        else:
            right = int(np.sum(pred[m] == y_true[m]))
            ci = wilson_interval(right, n)
            per[name] = {"n": n, "accuracy": right / n, "accuracy_ci95": list(ci) if ci else None}
    metric = "mae" if kind == "regression" else "accuracy"
    judged = {k: v for k, v in per.items() if v["n"] >= min_n}
    gap = None
    if len(judged) >= 2:
        lo = min(judged, key=lambda k: judged[k][metric])
        hi = max(judged, key=lambda k: judged[k][metric])
        gap = {"metric": metric, "value": judged[hi][metric] - judged[lo][metric], "between": [hi, lo]}
    return {"metric": metric, "min_n": min_n, "groups": per, "gap": gap,
            "too_small": sorted(k for k, v in per.items() if v["n"] < min_n)}  # fmt: skip


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray, baseline_value: float | None = None) -> dict:
    """Pearson correlation (and its 95% interval), MAE and RMSE; with ``baseline_value`` (the training mean) also
    the MAE and RMSE of predicting it for every row."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    err = y_pred - y_true
    pearson = None
    if len(y_true) > 1 and y_true.std() > 0 and y_pred.std() > 0:
        pearson = _num(np.corrcoef(y_true, y_pred)[0, 1])
    ci = pearson_interval(pearson, len(y_true))
    out = {
        "n": int(len(y_true)),
        "pearson": pearson,
        "pearson_ci95": list(ci) if ci else None,
        "mae": float(np.mean(np.abs(err))) if len(err) else None,
        "rmse": float(np.sqrt(np.mean(err**2))) if len(err) else None,
    }
    if baseline_value is not None and len(y_true):
        base = baseline_value - y_true
        out["baseline"] = {
            "value": float(baseline_value),
            "mae": float(np.mean(np.abs(base))),
            "rmse": float(np.sqrt(np.mean(base**2))),
            "rule": "always the training mean",
        }
    return out


def evaluate(
    kind: str,
    y: np.ndarray,
    outputs: np.ndarray,
    class_names: list[str] | None = None,
    target_mean: float = 0.0,
    target_std: float = 1.0,
) -> dict:
    """Metrics of raw model outputs against ``y`` (class index, or the standardised regression target)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if kind == "regression":
        true = np.asarray(y, float).reshape(-1) * target_std + target_mean
        return regression_metrics(true, outputs.reshape(-1) * target_std + target_mean, target_mean)
    return classification_metrics(np.asarray(y), softmax(outputs), class_names or [])


def selection_score(kind: str, metrics: dict) -> float:
    """The validation number the best epoch maximises: accuracy, or minus RMSE for regression."""
    if kind == "regression":
        return -float(metrics["rmse"])
    return float(metrics["accuracy"])


# ------------------------------------------------------------------------------------------------ plots
PLOT_DPI = 100  # the training plots' resolution


def reliability_png(cal: dict) -> bytes:
    """The reliability diagram of :func:`calibration`: accuracy against mean probability per bin."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    bins = cal["bins"]
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=[b["hi"] - b["lo"] for b in bins],
           align="edge", alpha=0.6, edgecolor="C0", label="accuracy")  # fmt: skip
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C1", label="per bin")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="calibrated")
    ax.set_xlabel("predicted class probability")
    ax.set_ylabel("accuracy")
    ax.set_title(f"reliability (test), ECE {cal['ece']:.3f}")
    ax.legend(loc="upper left")
    return png_bytes(fig, dpi=PLOT_DPI)


def confusion_png(confusion: list[list[int]], class_names: list[str], title: str = "test") -> bytes:
    plt = pyplot()
    cm = np.asarray(confusion)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(class_names), 1 + 0.8 * len(class_names)))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    ax.set_yticks(range(len(class_names)), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"confusion matrix ({title})")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", color="black")
    return png_bytes(fig, dpi=PLOT_DPI)


def roc_png(y_true: np.ndarray, scores: np.ndarray) -> bytes:
    from sklearn.metrics import roc_curve

    plt = pyplot()
    fpr, tpr, _ = roc_curve(y_true, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (test)")
    return png_bytes(fig, dpi=PLOT_DPI)


def scatter_png(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y_true, y_pred, s=8, alpha=0.6)
    lo, hi = float(min(np.min(y_true), np.min(y_pred))), float(max(np.max(y_true), np.max(y_pred)))
    ax.plot([lo, hi], [lo, hi], "--", color="gray")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("predicted vs true (test)")
    return png_bytes(fig, dpi=PLOT_DPI)


def histograms_png(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.histogram_bin_edges(np.concatenate([y_true, y_pred]), bins=20)
    ax.hist(y_true, bins=bins, alpha=0.6, label="true")
    ax.hist(y_pred, bins=bins, alpha=0.6, label="predicted")
    ax.legend()
    ax.set_title("distribution (test)")
    return png_bytes(fig, dpi=PLOT_DPI)


def curve_png(history: list[dict], metric: str) -> bytes:
    """Training curve: train and validation loss, and the validation metric, per epoch."""
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    a.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    a.set_xlabel("epoch")
    a.set_ylabel("loss")
    a.legend()
    b.plot(epochs, [h["val"].get(metric) for h in history], "o-", color="C2")
    b.set_xlabel("epoch")
    b.set_ylabel(f"val {metric}")
    fig.suptitle("training curve")
    return png_bytes(fig, dpi=PLOT_DPI)
