"""The train stage: labels + face crops → a model under ``models/<run_id>/`` (Ray Train, Ray Data).

Modules: ``stage`` (``run``: the run id, input checks, train then export), ``data`` (label set checks, Ray Data
ingest, transforms), ``models`` (backbones and heads), ``loop`` (the TorchTrainer and its per-worker training
class, checkpoints), ``metrics`` (numbers and plots), ``export`` (the model folder and ``LoadedModel``, what the
score stage uses), ``kfold`` (one model per fold of the labels, with ``train.kfold``).

Example::

    from pipeline.train import run
    summary = run(cfg)                 # a new run
    summary = run(cfg, resume=True)    # continue the newest (or cfg.train.run_id) run from its checkpoint
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.model.loaded import LoadedModel
    from pipeline.model.meta import resolve_model_dir
    from pipeline.train.data import TrainInputError
    from pipeline.train.stage import new_run_id, run

# Imported on first use: a Ray Data task that unpickles a function of pipeline.train.data (the ingest's label
# join) would otherwise import torch, torchvision and Ray Train with this package, 2-3 s of CPU per worker process.
_WHERE = {
    "run": "pipeline.train.stage",
    "new_run_id": "pipeline.train.stage",
    "LoadedModel": "pipeline.model.loaded",
    "TrainInputError": "pipeline.train.data",
    "resolve_model_dir": "pipeline.model.meta",
}
__all__ = ["run", "LoadedModel", "resolve_model_dir", "TrainInputError", "new_run_id"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'pipeline.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value
