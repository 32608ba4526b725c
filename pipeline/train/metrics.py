"""Metrics and plots of a run: what ``metrics.json`` and the PNGs under ``models/<run_id>/plots/`` hold.

Classification: accuracy, per-class precision / recall / support, the confusion matrix and, for a binary task,
ROC-AUC. Regression: Pearson correlation, MAE and RMSE (the three of the SCUT-FBP5500 paper), in target units.
Plots are PNG bytes drawn with matplotlib's Agg backend (no display needed), written by the exporter.

Example::

    m = evaluate("binary", y_true, logits, ["bad", "good"])
    m["accuracy"], m["roc_auc"]
"""

from __future__ import annotations

import io
import math

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _num(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


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
    if k == 2:
        out["roc_auc"] = float(roc_auc_score(y_true, probs[:, 1])) if len(set(y_true.tolist())) == 2 else None
    return out


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict:
    """Pearson correlation, MAE and RMSE."""
    y_true, y_pred = np.asarray(y_true, float), np.asarray(y_pred, float)
    err = y_pred - y_true
    pearson = None
    if len(y_true) > 1 and y_true.std() > 0 and y_pred.std() > 0:
        pearson = _num(np.corrcoef(y_true, y_pred)[0, 1])
    return {
        "n": int(len(y_true)),
        "pearson": pearson,
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
    }


def scores_from_outputs(kind: str, outputs: np.ndarray, target_mean: float = 0.0, target_std: float = 1.0):
    """Model outputs → (scores, predicted class index or None): P(class 1), max probability, or the value."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if kind == "regression":
        return outputs.reshape(-1) * target_std + target_mean, None
    probs = softmax(outputs)
    pred = probs.argmax(axis=1)
    if kind == "binary":
        return probs[:, 1], pred
    return probs.max(axis=1), pred


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
        return regression_metrics(true, outputs.reshape(-1) * target_std + target_mean)
    return classification_metrics(np.asarray(y), softmax(outputs), class_names or [])


def selection_score(kind: str, metrics: dict) -> float:
    """The validation number the best epoch maximises: accuracy, or minus RMSE for regression."""
    if kind == "regression":
        return -float(metrics["rmse"])
    return float(metrics["accuracy"])


# ------------------------------------------------------------------------------------------------ plots
def _png(fig) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_png(confusion: list[list[int]], class_names: list[str], title: str = "test") -> bytes:
    plt = _plt()
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
    return _png(fig)


def roc_png(y_true: np.ndarray, scores: np.ndarray) -> bytes:
    from sklearn.metrics import roc_curve

    plt = _plt()
    fpr, tpr, _ = roc_curve(y_true, scores)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(fpr, tpr)
    ax.plot([0, 1], [0, 1], "--", color="gray")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (test)")
    return _png(fig)


def scatter_png(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.scatter(y_true, y_pred, s=8, alpha=0.6)
    lo, hi = float(min(np.min(y_true), np.min(y_pred))), float(max(np.max(y_true), np.max(y_pred)))
    ax.plot([lo, hi], [lo, hi], "--", color="gray")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title("predicted vs true (test)")
    return _png(fig)


def histograms_png(y_true: np.ndarray, y_pred: np.ndarray) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5, 3.5))
    bins = np.histogram_bin_edges(np.concatenate([y_true, y_pred]), bins=20)
    ax.hist(y_true, bins=bins, alpha=0.6, label="true")
    ax.hist(y_pred, bins=bins, alpha=0.6, label="predicted")
    ax.legend()
    ax.set_title("distribution (test)")
    return _png(fig)


def curve_png(history: list[dict], metric: str) -> bytes:
    """Training curve: train and validation loss, and the validation metric, per epoch."""
    plt = _plt()
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
    return _png(fig)
