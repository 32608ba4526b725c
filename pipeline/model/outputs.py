"""What a model's raw outputs mean: class probabilities, the score and the predicted class (no torch).

One post-processing for the test pass, the exported model's ``score`` and the score stage: :func:`softmax` over
the logits, and :func:`scores_from_outputs`: P(class 1) for a binary task, the top class's probability for a
multi-class one (with the predicted class index), or the value in target units for a regression.
"""

from __future__ import annotations

import numpy as np


def softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


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
