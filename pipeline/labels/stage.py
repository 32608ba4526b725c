"""The labels stage's entry: posts + staff + faces → ``labels/selfie``, ``labels/department``, and the report.

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
from pipeline.labels.departments import label_departments
from pipeline.labels.io import arrow_batches, scan
from pipeline.labels.selfie import POST_COLUMNS, label_selfies
from pipeline.runtime import stage_entry
from pipeline.store import FACES_DS, LABELS_DS, POSTS_DS, STAFF_DS, STATUS_OK, DataRoot, MissingDatasetError

__all__ = ["run"]


def _counts(root: DataRoot, dataset: str) -> dict[str, Any]:
    """Rows, kept rows, excluded rows per reason and kept rows per split of a written labels dataset."""
    lf = scan(root, dataset, ["status", "reason", "split"])
    by_reason = lf.group_by("reason").len().collect(engine="streaming")
    by_split = lf.filter(pl.col("status") == STATUS_OK).group_by("split").len().collect(engine="streaming")
    excluded = {r: int(n) for r, n in by_reason.iter_rows() if r is not None}
    ok = int(by_reason.filter(pl.col("reason").is_null())["len"].sum())
    return {
        "rows": ok + sum(excluded.values()),
        "ok": ok,
        "excluded": dict(sorted(excluded.items())),
        "splits": dict(sorted((str(s), int(n)) for s, n in by_split.iter_rows())),
    }


def _is_empty(lf: pl.LazyFrame) -> bool:
    return lf.select(pl.len()).collect().item() == 0


def _faces(root: DataRoot) -> pl.LazyFrame:
    """The faces lookup both tasks join; raises :class:`MissingDatasetError` without posts and staff, or faces."""
    if not (root.has(POSTS_DS) or root.has(STAFF_DS)):
        raise MissingDatasetError(
            f"input datasets '{POSTS_DS}' and '{STAFF_DS}' are both missing under {root.uri}: "
            "run the 'scrape' stage first"
        )
    root.require(FACES_DS)
    return scan(root, FACES_DS, ["image_sha256", "kept", "reason"])


def _selfie(root: DataRoot, cfg: Config, faces: pl.LazyFrame, notes: list[str]) -> dict[str, Any] | None:
    """Write ``labels/selfie`` and return its counts, or note why the task was skipped (None)."""
    if not root.has(POSTS_DS):
        notes.append("selfie: no posts dataset; skipped")
        return None
    posts = scan(root, POSTS_DS, POST_COLUMNS)
    if _is_empty(posts):
        notes.append("selfie: the posts dataset has no rows; skipped")
        return None
    out = root.labels_dataset("selfie")
    chunks = label_selfies(posts, faces, cfg.labels)  # splits from the users its first pass reads
    root.replace(out, arrow_batches(chunks, root.schema(out)))
    return _counts(root, out)


def _class_counts(root: DataRoot, dataset: str) -> dict[str, int]:
    """Kept rows per class of the written department labels."""
    classes = (
        scan(root, dataset, ["status", "class_name"])
        .filter(pl.col("status") == STATUS_OK)
        .group_by("class_name")
        .len()
        .sort("class_name")
        .collect()
    )
    return {c: int(n) for c, n in classes.iter_rows()}


def _department(root: DataRoot, cfg: Config, faces: pl.LazyFrame, notes: list[str]) -> dict[str, Any] | None:
    """Write ``labels/department`` and return its counts and classes, or note why the task was skipped (None)."""
    if not root.has(STAFF_DS):
        notes.append("department: no staff dataset; skipped")
        return None
    staff = scan(root, STAFF_DS)
    if _is_empty(staff):
        notes.append("department: the staff dataset has no rows; skipped")
        return None
    out = root.labels_dataset("department")
    root.replace(out, arrow_batches(label_departments(staff, faces, cfg), root.schema(out)))
    return _counts(root, out) | {"classes": _class_counts(root, out)}


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
    for task, label in (("selfie", _selfie), ("department", _department)):
        counts = label(root, cfg, faces, summary["notes"])
        if counts is not None:
            summary[task] = counts
    if cfg.labels.report:
        _report(root, cfg, truth, summary)
    return summary
