"""Department labels: a staff photo's class is its department (through the configurable department map).

Excluded rows keep a reason (first that holds): ``missing_item_id``, ``duplicate_item_id``, ``scrape_<status>``,
``non_academic`` (``is_academic`` false, or a role matching ``scrape.non_academic_roles`` when the flag is missing),
``missing_department``, ``unknown_department`` (not in ``labels.departments``), and with ``require_face``:
``no_image``, ``no_faces_row`` or the faces stage's reason. Class indices follow the sorted class names; the
``weight`` column is class-balanced, ``n / (n_classes * n_class)``, so every class carries the same total weight
(the majors study's smallest class was the one its model ignored).

Example::

    out = label_departments(pl.from_arrow(staff).lazy(), pl.from_arrow(faces).lazy(), cfg).collect()
"""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.labels.selfie import faces_lookup
from pipeline.labels.splits import assign_splits
from pipeline.store import STAFF_DS, STATUS_EXCLUDED, STATUS_OK, DataRoot

STAFF_COLUMNS = ["site", "item_id", "department", "role", "is_academic", "image_sha256", "status"]
_OK = pl.col("reason").is_null()  # a row is kept when no exclusion reason holds


def class_names(cfg: Config) -> list[str]:
    """The class names in label-index order (sorted)."""
    return sorted(set(cfg.labels.departments.values()))


def label_departments(staff: pl.LazyFrame, faces: pl.LazyFrame | None, cfg: Config) -> pl.LazyFrame:
    """One row per staff row in DEPARTMENT_LABELS columns (lazy)."""
    lcfg = cfg.labels
    lf = _with_duplicate_losers(staff.select(STAFF_COLUMNS))
    with_faces = faces is not None
    if with_faces:
        lf = lf.join(faces_lookup(faces), on="image_sha256", how="left")
    reason = _reason(cfg, with_faces and lcfg.department.require_face)
    lf = lf.with_columns(
        reason=reason.otherwise(pl.lit(None, pl.String)),
        person_id=pl.col("item_id"),
        _class=_department().replace_strict(lcfg.departments, default=None, return_dtype=pl.String),
    )
    index = {n: i for i, n in enumerate(class_names(cfg))}
    lf = lf.with_columns(
        class_name=pl.when(_OK).then(pl.col("_class")),
        label=pl.when(_OK).then(pl.col("_class").replace_strict(index, default=None, return_dtype=pl.Int32)),
    )
    return (
        lf.with_columns(weight=pl.when(_OK).then(_weight(lcfg.department.class_weights)))
        .join(_splits(staff, cfg), on="person_id", how="left")
        .select(_output_columns())
    )


def _with_duplicate_losers(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Flag ``_dup_loser``: every copy of a repeated (site, item_id) but one, chosen by content, not row order.

    The winner is the first of its key after a sort by (ok first, image_sha256, department, role; nulls last);
    a sort inside the window (``int_range().sort_by().first().over()``) gave wrong winners in polars 2.1.
    """
    key = ["site", "item_id"]
    order = [*key, "_ok", "image_sha256", "department", "role"]
    return (
        lf.with_row_index("_row")
        .with_columns(_ok=(pl.col("status") == STATUS_OK).fill_null(False))
        .sort(order, descending=[False, False, True, False, False, False], nulls_last=True, maintain_order=True)
        .with_columns(_dup_loser=pl.int_range(pl.len()).over(key) > 0)
        .sort("_row")
        .drop("_row", "_ok")
    )


def _academic(cfg: Config) -> pl.Expr:
    """``is_academic``, or when it is missing: the role matches none of ``scrape.non_academic_roles``."""
    role_hit = pl.lit(False)
    for r in (r.lower() for r in cfg.scrape.non_academic_roles):  # a handful of configured role words, not rows
        role_hit = role_hit | pl.col("role").str.to_lowercase().str.contains(r, literal=True).fill_null(False)
    return pl.col("is_academic").fill_null(~role_hit)


def _department() -> pl.Expr:
    return pl.col("department").str.strip_chars().str.to_lowercase()


def _reason(cfg: Config, require_face: bool) -> pl.Expr:
    """The first exclusion reason that holds (an open ``when`` chain: the caller adds ``otherwise``)."""
    dept = _department()
    reason = (
        pl.when(pl.col("item_id").is_null())
        .then(pl.lit("missing_item_id"))
        .when(pl.col("_dup_loser"))
        .then(pl.lit("duplicate_item_id"))
        .when(pl.col("status").fill_null("missing") != STATUS_OK)
        .then(pl.lit("scrape_") + pl.col("status").fill_null("status_missing"))
        .when(~_academic(cfg))
        .then(pl.lit("non_academic"))
        .when(dept.is_null() | (dept == ""))
        .then(pl.lit("missing_department"))
        .when(~dept.is_in(list(cfg.labels.departments)))
        .then(pl.lit("unknown_department"))
    )
    if not require_face:
        return reason
    return (
        reason.when(pl.col("image_sha256").is_null())
        .then(pl.lit("no_image"))
        .when(pl.col("_face_row").is_null())
        .then(pl.lit("no_faces_row"))
        .when(~pl.col("_face_kept"))
        .then(pl.col("_face_reason").fill_null("face_not_kept"))
    )


def _weight(class_weights: str) -> pl.Expr:
    """Balanced: ``n / (n_classes * n_class)`` over the kept rows, so every class carries the same total; else 1."""
    if class_weights != "balanced":
        return pl.lit(1.0)
    n_class = _OK.sum().over("class_name")
    return _OK.sum().cast(pl.Float64) / (pl.col("class_name").drop_nulls().n_unique() * n_class).cast(pl.Float64)


def _splits(staff: pl.LazyFrame, cfg: Config) -> pl.LazyFrame:
    """``person_id, split, fold`` for every staff person (person-hash splits)."""
    persons = staff.select("item_id").unique().collect(engine="streaming").get_column("item_id")
    return assign_splits(persons, cfg.labels.split).lazy()


def _output_columns() -> list[str | pl.Expr]:
    """The DEPARTMENT_LABELS columns, in order."""
    return [
        "item_id",
        "site",
        "person_id",
        "image_sha256",
        pl.when(_OK).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_EXCLUDED)).alias("status"),
        "reason",
        "label",
        "class_name",
        pl.col("label").cast(pl.Float64).alias("target"),
        "split",
        pl.col("fold").cast(pl.Int32),
        "weight",
        "department",
    ]


def build(root: DataRoot, cfg: Config, faces: pl.LazyFrame, notes: list[str]) -> dict[str, Any] | None:
    """The department task's builder (pipeline/labels/tasks.py): write ``labels/department`` and return its counts
    and classes, or note why it was skipped (None)."""
    from pipeline.labels.io import arrow_batches, class_counts, counts, is_empty, scan

    if not root.has(STAFF_DS):
        notes.append("department: no staff dataset; skipped")
        return None
    staff = scan(root, STAFF_DS)
    if is_empty(staff):
        notes.append("department: the staff dataset has no rows; skipped")
        return None
    out = root.labels_dataset("department")
    root.replace(out, arrow_batches(label_departments(staff, faces, cfg), root.schema(out)))
    return counts(root, out) | {"classes": class_counts(root, out)}
