"""The train/serve parity check: the score stage's rows of a model's test images against its own test pass.

:func:`assert_scores_match_test_pass` reads the model's ``test_predictions.parquet`` (the test pass, one row per
image, written by the export) and the score rows of a data root that scored those images, and asserts that every
test image was scored, with the same class (the same value for a regression), so the accuracy over the scored
images is the test accuracy of ``metrics.json``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from pipeline.store import DataRoot

TIE = 1e-4  # a probability this close to the decision boundary may fall either side (fp32 kernels differ)


def assert_scores_match_test_pass(scored: DataRoot, model_dir: str | Path, test_metrics: dict) -> dict:
    """Assert parity; returns ``{"n", "agree", "accuracy"}`` over the test images."""
    test = {r["image_sha256"]: r for r in pq.read_table(Path(model_dir) / "test_predictions.parquet").to_pylist()}
    rows = {r["image_sha256"]: r for r in scored.read("scores").to_pylist()}
    missing = sorted(set(test) - set(rows))
    assert not missing, f"{len(missing)} test images not scored, e.g. {missing[:2]}"
    bad = {s: rows[s]["status"] for s in test if rows[s]["status"] != "ok"}
    assert not bad, f"test images not scored ok: {bad}"
    regression = "predicted" not in next(iter(test.values()))
    agree, right = 0, 0
    for sha, t in test.items():
        r = rows[sha]
        if regression:
            same = abs(r["score"] - t["score"]) <= 1e-3 * max(1.0, abs(t["score"]))
        else:
            near_tie = abs(t["score"] - 0.5) < TIE if np.isfinite(t["score"]) else False
            same = r["predicted"] == t["predicted"] or near_tie
            right += r["predicted"] == t["label"]
        assert same, f"image {sha[:12]}: scored {r['predicted']} ({r['score']:.6f}), test pass {t}"
        assert abs(r["score"] - t["score"]) <= 1e-3 * max(1.0, abs(t["score"])), (r["score"], t["score"])
        agree += 1
    out = {"n": len(test), "agree": agree}
    if not regression:
        out["accuracy"] = right / len(test)
        assert abs(out["accuracy"] - test_metrics["accuracy"]) < 1e-9, (out, test_metrics["accuracy"])
    return out
