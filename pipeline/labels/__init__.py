"""The labels stage: posts + staff + faces → ``labels/selfie``, ``labels/department`` (and the report).

Modules: :mod:`~pipeline.labels.selfie` (the group-ranking rule), :mod:`~pipeline.labels.departments` (classes and
balanced weights), :mod:`~pipeline.labels.beauty` (imported scores, ``labels/beauty``), :mod:`~pipeline.labels.splits`
(person-hash splits), :mod:`~pipeline.labels.report` (HTML/JSON report), :mod:`~pipeline.labels.io` (lazy scans).

The stage is one vectorised polars process, not a Ray program: it needs no Ray instance (it runs the same inside a
``ray job submit`` job). Each task's output is replaced as a whole, atomically (``DataRoot.replace``), from a
deterministic computation, so a rerun gives the same dataset. ``labels/beauty`` is written only by
``import_scores`` and left alone here.

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
from pipeline.locks import locked_stage
from pipeline.store import STATUS_OK, DataRoot, MissingDatasetError

__all__ = ["run"]


def _counts(root: DataRoot, dataset: str) -> dict[str, Any]:
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


def _truth(cfg: Config, notes: list[str]):
    if cfg.labels.demo_n_posts is None:
        return None
    try:
        from pipeline.demo import truth
    except ImportError as err:
        notes.append(f"demo truth not available ({err}); report without quality recovery")
        return None
    return truth(n_posts=cfg.labels.demo_n_posts, seed=cfg.labels.demo_seed)


@locked_stage("labels")  # one run per data root; cleans its own _tmp/ leftovers first
def run(cfg: Config, truth: Any = None) -> dict[str, Any]:
    """Write ``labels/selfie`` and ``labels/department`` from posts, staff and faces; return counts.

    A task whose input is absent (no ``staff`` rows, say) is skipped with a note. Without ``posts`` and ``staff``,
    or without ``faces``, raises :class:`~pipeline.store.MissingDatasetError`. ``truth`` (``item_id, quality``)
    overrides the demo truth for the report.
    """
    root = DataRoot(cfg.data_root)
    have_posts, have_staff = root.has("posts"), root.has("staff")
    if not (have_posts or have_staff):
        raise MissingDatasetError(
            f"input datasets 'posts' and 'staff' are both missing under {root.uri}: run the 'scrape' stage first"
        )
    root.require("faces")
    faces = scan(root, "faces", ["image_sha256", "kept", "reason"])
    summary: dict[str, Any] = {"notes": []}
    notes: list[str] = summary["notes"]

    if have_posts:
        posts = scan(root, "posts", POST_COLUMNS)
        n_posts = posts.select(pl.len()).collect().item()
        if n_posts == 0:
            notes.append("selfie: the posts dataset has no rows; skipped")
        else:
            chunks = label_selfies(posts, faces, cfg.labels)  # splits from the users its first pass reads
            root.replace("labels/selfie", arrow_batches(chunks, root.schema("labels/selfie")))
            summary["selfie"] = _counts(root, "labels/selfie")
    else:
        notes.append("selfie: no posts dataset; skipped")

    if have_staff:
        staff = scan(root, "staff")
        if staff.select(pl.len()).collect().item() == 0:
            notes.append("department: the staff dataset has no rows; skipped")
        else:
            lf = label_departments(staff, faces, cfg)
            root.replace("labels/department", arrow_batches(lf, root.schema("labels/department")))
            summary["department"] = _counts(root, "labels/department")
            classes = (
                scan(root, "labels/department", ["status", "class_name"])
                .filter(pl.col("status") == STATUS_OK)
                .group_by("class_name")
                .len()
                .sort("class_name")
                .collect()
            )
            summary["department"]["classes"] = {c: int(n) for c, n in classes.iter_rows()}
    else:
        notes.append("department: no staff dataset; skipped")

    if cfg.labels.report:
        from pipeline.labels.report import write_report

        if truth is None:
            truth = _truth(cfg, notes)
        stats = write_report(root, cfg, truth=truth, notes=notes)
        summary["report"] = root.path("labels", "report.html")
        if "selfie" in stats and "truth" in stats["selfie"]:
            summary["quality_recovery"] = stats["selfie"]["truth"]
    return summary
