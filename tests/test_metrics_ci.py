"""Metrics in the studies' terms: accuracy with a 95% Wilson interval beside the majority-class baseline, per-class
precision / recall and the confusion matrix; Pearson / MAE / RMSE beside the training-mean baseline; k-fold mean ±
std; all of it in the model report's table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pipeline.report.html import _metrics_table
from pipeline.train.kfold import kfold_markdown, mean_std
from pipeline.train.metrics import evaluate, majority_baseline, pearson_interval, wilson_interval


def test_wilson_interval_of_the_majors_study():
    """57.1% of ~235 test images: 134 of 235 is 0.570 [0.506, 0.632], so "±6 points", against a 28% majority."""
    lo, hi = wilson_interval(134, 235)
    assert (round(lo, 3), round(hi, 3)) == (0.506, 0.632)
    assert wilson_interval(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))  # the textbook value
    assert wilson_interval(10, 10)[1] == 1.0 and wilson_interval(0, 0) is None
    y = np.array([0] * 66 + [1] * 60 + [2] * 55 + [3] * 54)  # majority class 66 / 235 = 28%
    base = majority_baseline(y, ["cs", "econ", "german", "mech"])
    assert base["class"] == "cs" and base["accuracy"] == pytest.approx(66 / 235)


def test_classification_metrics_hold_interval_baseline_per_class_and_confusion():
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2, 2, 2])
    logits = np.eye(3)[[0, 0, 0, 1, 1, 1, 2, 2, 0, 2]] * 5
    m = evaluate("multiclass", y, logits, ["a", "b", "c"])
    assert m["accuracy"] == 0.8 and m["correct"] == 8
    assert m["accuracy_ci95"] == pytest.approx(list(wilson_interval(8, 10)))
    assert m["baseline"]["class"] == "a" and m["baseline"]["accuracy"] == 0.4 and m["chance"] == pytest.approx(1 / 3)
    assert m["per_class"]["a"] == {"precision": 0.75, "recall": 0.75, "support": 4}
    assert m["confusion"] == [[3, 1, 0], [0, 2, 0], [1, 0, 3]]
    page = _metrics_table({"test": m, "protocol": "the label set's split"})
    assert "0.8 [0.490, 0.943]" in page and "baseline (a)" in page and "Confusion matrix" in page
    assert "<th>b</th><td>0.667</td><td>1.000</td><td>2</td>" in page


def test_regression_metrics_baseline_and_kfold_mean_std():
    rng = np.random.default_rng(0)
    true = rng.uniform(1, 5, 200)
    pred = true + rng.normal(0, 0.3, 200)
    mean, std = 3.0, 1.0
    m = evaluate("regression", (true - mean) / std, ((pred - mean) / std)[:, None], target_mean=mean, target_std=std)
    assert m["pearson"] == pytest.approx(np.corrcoef(true, pred)[0, 1])
    assert m["rmse"] == pytest.approx(math.sqrt(np.mean((pred - true) ** 2)))
    assert m["mae"] == pytest.approx(np.mean(np.abs(pred - true)))
    assert m["baseline"]["rmse"] == pytest.approx(math.sqrt(np.mean((3.0 - true) ** 2)))
    assert m["pearson_ci95"][0] < m["pearson"] < m["pearson_ci95"][1] and pearson_interval(0.5, 3) is None
    rows = [
        {"fold": k, "counts": {"test": 10}, "best_epoch": 1, "val_score": -0.3, "test": {"pearson": p, "mae": 0.2}}
        for k, p in enumerate([0.88, 0.90, 0.89, 0.91, 0.87])
    ]
    mean_, std_ = mean_std(rows)
    assert mean_["pearson"] == pytest.approx(0.89) and std_["pearson"] == pytest.approx(
        np.std([0.88, 0.90, 0.89, 0.91, 0.87], ddof=1)
    )
    table = {"run_id": "r", "task": "beauty", "folds": rows, "mean": mean_, "std": std_, "exported_fold": 3,
             "export_rule": "best val score"}  # fmt: skip
    md = kfold_markdown(table)
    assert "| mean ± std | | | | 0.890 ± 0.016 | 0.200 ± 0.000 |" in md and md.count("\n| ") == 7
    page = _metrics_table({"test": m, "kfold": {"mean": mean_, "std": std_, "exported_fold": 3}})
    assert "0.8900 ± 0.0158" in page and "always the training mean" in page
