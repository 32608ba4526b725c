"""The train stage's entry: ``run(cfg, *, resume=False)`` picks the run id, checks the inputs, trains and exports.

Owns the run id (a fresh timestamped one, the configured one, or with ``resume`` the newest run of the task with
checkpoints) and the stage's summary. Training itself is :mod:`pipeline.train.loop`, the model folder
:mod:`pipeline.train.export`, k-fold runs :mod:`pipeline.train.kfold`.

Example::

    from pipeline.train.stage import run
    summary = run(cfg)                 # a new run
    summary = run(cfg, resume=True)    # continue the newest (or cfg.train.run_id) run from its checkpoint
"""

from __future__ import annotations

import os
import threading
import time

from pipeline.config import Config
from pipeline.placement import require_node
from pipeline.runtime import log, stage_entry
from pipeline.store import FACES_DS, MODELS_DS, DataRoot, now
from pipeline.train.data import TrainInputError, label_folds, load_labels


def new_run_id(task: str) -> str:
    """A sortable run id: ``20261123T183000Z-selfie``."""
    return f"{now():%Y%m%dT%H%M%SZ}-{task}"


def _has_checkpoints(root: DataRoot, run_id: str) -> bool:
    """The run (or, for a k-fold run, one of its folds) has a checkpoint to continue from."""
    if any(n.startswith("checkpoint") for n in root.list_dir(MODELS_DS, run_id, "checkpoints")):
        return True
    return any(_has_checkpoints(root, f"{run_id}/folds/{f}") for f in root.list_dir(MODELS_DS, run_id, "folds"))


def pick_run_id(cfg: Config, root: DataRoot, resume: bool) -> str:
    """The configured run id, the newest resumable run of the task (``resume``), or a fresh timestamped one."""
    task = cfg.train.task
    if resume:
        if cfg.train.run_id:
            run_id = cfg.train.run_id
        else:
            runs = [r for r in root.list_dir(MODELS_DS) if r.endswith(f"-{task}") and _has_checkpoints(root, r)]
            if not runs:
                raise TrainInputError(
                    f"--resume: no run of task {task!r} with checkpoints under {root.uri}/{MODELS_DS}"
                )
            run_id = sorted(runs)[-1]
        if not _has_checkpoints(root, run_id):
            raise TrainInputError(f"--resume: run {run_id!r} has no checkpoints under {root.uri}/{MODELS_DS}/{run_id}")
        return run_id
    run_id = cfg.train.run_id or new_run_id(task)
    if root.exists(MODELS_DS, run_id):
        raise TrainInputError(
            f"run {run_id!r} already exists under {root.uri}/{MODELS_DS}: use --resume or a new run id"
        )
    return run_id


def _warm_export() -> None:
    """While the workers train: import what the export needs (matplotlib above all) and draw one throwaway figure,
    at the lowest CPU priority (Linux sets it per thread), so the export after training starts warm and the
    training threads lose nothing to it."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    except (AttributeError, OSError):
        pass
    try:
        import sklearn.metrics  # noqa: F401 (the test metrics and the ROC plot)

        import pipeline.train.export  # noqa: F401
        from pipeline.plots import png_bytes, pyplot

        fig, ax = pyplot().subplots(figsize=(1, 1))
        ax.plot([0, 1], [0, 1])
        ax.set_title("warm")
        png_bytes(fig, dpi=10)
    except Exception as e:  # only a head start: the export imports and draws for itself
        log.debug("train: warming the export failed: %s", e)


@stage_entry("train")  # its lock (one run per data root), its log lines, Ray: pipeline/runtime.py
def run(cfg: Config, *, resume: bool = False) -> dict:
    """Train (or with ``resume`` continue) a model and export its best epoch; returns a JSON-able summary."""
    from pipeline.train.export import export_run
    from pipeline.train.loop import check_cluster, fit, with_layout

    cfg = with_layout(cfg)  # None num_workers / cpus_per_worker: picked for the cluster (TrainConfig.layout)
    root = DataRoot(cfg.data_root)
    root.require(root.labels_dataset(cfg.train.task))
    root.require(FACES_DS)
    require_node("train", cfg.ray.placement.train)  # bounded: Ray Train would wait for such a node without end
    if cfg.train.kfold:
        from pipeline.train.kfold import run_kfold

        label_folds(root, cfg.train.task)  # a clear error before a run id is taken
        return run_kfold(cfg, root, pick_run_id(cfg, root, resume), resume)
    labels = load_labels(root, cfg.train)
    check_cluster(cfg.train)
    run_id = pick_run_id(cfg, root, resume)
    log.info("train %s: %s %s, rows %s", run_id, labels.kind, labels.class_names, labels.counts())
    warm = threading.Thread(target=_warm_export, name="warm-export", daemon=True)
    warm.start()
    result = fit(cfg, root, labels, run_id)
    if result.error is not None:
        raise result.error
    t0 = time.perf_counter()
    warm.join()
    test = export_run(cfg, root, labels, run_id, result.checkpoint)
    log.info("train %s: exported in %.1fs", run_id, time.perf_counter() - t0)
    return {
        "run_id": run_id,
        "model_dir": root.model_dir(run_id),
        "task": labels.task,
        "kind": labels.kind,
        "class_names": labels.class_names,
        "rows": labels.counts(),
        "epochs": cfg.train.epochs,
        "resumed": resume,
        "test": test,
    }
