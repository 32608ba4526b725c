"""The labels stage's entry: posts + staff + faces → every computed task of :mod:`pipeline.labels.tasks`
(``labels/selfie``, ``labels/department``), and the report.

The stage is one vectorised polars process, not a Ray program: it needs no Ray instance (it runs the same inside a
``ray job submit`` job). Each task's output is replaced as a whole, atomically (``DataRoot.replace``), from a
deterministic computation, so a rerun gives the same dataset. ``labels/beauty`` is written only by
``import_scores`` and an imported ``labels/<task>`` only by ``import_classes`` (:mod:`pipeline.labels.imports`);
both are left alone here. The demo's hidden quality reaches the report only as the ``truth`` option
(``python -m pipeline demo`` passes ``DemoServer.truth()``); the stage itself knows nothing of the demo.

Example::

    summary = run(load_config("configs/demo.yaml"))  # {"selfie": {...}, "department": {...}, "notes": [...]}
"""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.labels.io import scan
from pipeline.labels.tasks import TASKS
from pipeline.runtime import stage_entry
from pipeline.store import FACES_DS, LABELS_DS, POSTS_DS, STAFF_DS, DataRoot, MissingDatasetError

__all__ = ["run"]


def _faces(root: DataRoot) -> pl.LazyFrame:
    """The faces lookup the tasks join; raises :class:`MissingDatasetError` without posts and staff, or faces."""
    if not (root.has(POSTS_DS) or root.has(STAFF_DS)):
        raise MissingDatasetError(
            f"input datasets '{POSTS_DS}' and '{STAFF_DS}' are both missing under {root.uri}: "
            "run the 'scrape' stage first"
        )
    root.require(FACES_DS)
    return scan(root, FACES_DS, ["image_sha256", "kept", "reason"])


def _report(root: DataRoot, cfg: Config, truth: Any, summary: dict[str, Any]) -> None:
    """Write the labels report into ``summary`` (its path, and the quality recovery when ``truth`` is given)."""
    from pipeline.labels.report import write_report

    stats = write_report(root, cfg, truth=truth, notes=summary["notes"])
    summary["report"] = root.path(LABELS_DS, "report.html")
    if "selfie" in stats and "truth" in stats["selfie"]:
        summary["quality_recovery"] = stats["selfie"]["truth"]


@stage_entry("labels", uses_ray=False)  # its lock and log lines: pipeline/runtime.py
def run(cfg: Config, *, truth: Any = None) -> dict[str, Any]:
    """Write ``labels/selfie`` and ``labels/department`` from posts, staff and faces; return counts.

    A task whose input is absent (no ``staff`` rows, say) is skipped with a note. Without ``posts`` and ``staff``,
    or without ``faces``, raises :class:`~pipeline.store.MissingDatasetError`. ``truth`` (a table ``item_id,
    quality``, such as the demo's hidden quality) makes the report measure how well the labels recover it.
    """
    root = DataRoot(cfg.data_root)
    faces = _faces(root)
    summary: dict[str, Any] = {"notes": []}
    for task in TASKS.values():  # every task with a builder (pipeline/labels/tasks.py)
        if task.build is not None:
            counts = task.call("build", root, cfg, faces, summary["notes"])
            if counts is not None:
                summary[task.name] = counts
    if cfg.labels.report:
        _report(root, cfg, truth, summary)
    return summary
