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

from pipeline.store import resolve_model_dir
from pipeline.train.data import TrainInputError
from pipeline.train.export import LoadedModel
from pipeline.train.stage import new_run_id, run

__all__ = ["run", "LoadedModel", "resolve_model_dir", "TrainInputError", "new_run_id"]
