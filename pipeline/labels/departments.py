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

import polars as pl

from pipeline.config import Config
from pipeline.labels.selfie import _faces_lookup
from pipeline.labels.splits import assign_splits
from pipeline.store import STATUS_EXCLUDED, STATUS_OK

STAFF_COLUMNS = ["site", "item_id", "department", "role", "is_academic", "image_sha256", "status"]


def class_names(cfg: Config) -> list[str]:
    """The class names in label-index order (sorted)."""
    return sorted(set(cfg.labels.departments.values()))


def label_departments(staff: pl.LazyFrame, faces: pl.LazyFrame | None, cfg: Config) -> pl.LazyFrame:
    """One row per staff row in DEPARTMENT_LABELS columns (lazy)."""
    lcfg = cfg.labels
    names = class_names(cfg)
    index = {n: i for i, n in enumerate(names)}
    key = ["site", "item_id"]
    lf = staff.select(STAFF_COLUMNS).with_columns(
        _dup_loser=pl.when(pl.len().over(key) > 1)
        .then(
            pl.int_range(pl.len()).over(key)
            != pl.int_range(pl.len())
            .sort_by(
                [(pl.col("status") == STATUS_OK).fill_null(False), "image_sha256", "department", "role"],
                descending=[True, False, False, False],
                nulls_last=True,
            )
            .first()
            .over(key)
        )
        .otherwise(False)
    )
    if faces is not None:
        lf = lf.join(_faces_lookup(faces), on="image_sha256", how="left")
    roles = [r.lower() for r in cfg.scrape.non_academic_roles]
    role_hit = pl.lit(False)
    for r in roles:  # a handful of configured role words, not rows
        role_hit = role_hit | pl.col("role").str.to_lowercase().str.contains(r, literal=True).fill_null(False)
    academic = pl.col("is_academic").fill_null(~role_hit)
    dept = pl.col("department").str.strip_chars().str.to_lowercase()
    reason = (
        pl.when(pl.col("item_id").is_null())
        .then(pl.lit("missing_item_id"))
        .when(pl.col("_dup_loser"))
        .then(pl.lit("duplicate_item_id"))
        .when(pl.col("status").fill_null("missing") != STATUS_OK)
        .then(pl.lit("scrape_") + pl.col("status").fill_null("status_missing"))
        .when(~academic)
        .then(pl.lit("non_academic"))
        .when(dept.is_null() | (dept == ""))
        .then(pl.lit("missing_department"))
        .when(~dept.is_in(list(lcfg.departments)))
        .then(pl.lit("unknown_department"))
    )
    if faces is not None and lcfg.department.require_face:
        reason = (
            reason.when(pl.col("image_sha256").is_null())
            .then(pl.lit("no_image"))
            .when(pl.col("_face_row").is_null())
            .then(pl.lit("no_faces_row"))
            .when(~pl.col("_face_kept"))
            .then(pl.col("_face_reason").fill_null("face_not_kept"))
        )
    lf = lf.with_columns(
        reason=reason.otherwise(pl.lit(None, pl.String)),
        person_id=pl.col("item_id"),
        _class=dept.replace_strict(lcfg.departments, default=None, return_dtype=pl.String),
    )
    ok = pl.col("reason").is_null()
    lf = lf.with_columns(
        class_name=pl.when(ok).then(pl.col("_class")),
        label=pl.when(ok).then(pl.col("_class").replace_strict(index, default=None, return_dtype=pl.Int32)),
    )
    n_ok = ok.sum()
    n_class = ok.sum().over("class_name")
    if lcfg.department.class_weights == "balanced":
        weight = n_ok.cast(pl.Float64) / (pl.col("class_name").drop_nulls().n_unique() * n_class).cast(pl.Float64)
    else:
        weight = pl.lit(1.0)
    persons = staff.select("item_id").unique().collect(engine="streaming").get_column("item_id")
    splits = assign_splits(persons, lcfg.split).lazy()
    return (
        lf.with_columns(weight=pl.when(ok).then(weight))
        .join(splits, on="person_id", how="left")
        .select(
            "item_id",
            "site",
            "person_id",
            "image_sha256",
            pl.when(ok).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_EXCLUDED)).alias("status"),
            "reason",
            "label",
            "class_name",
            pl.col("label").cast(pl.Float64).alias("target"),
            "split",
            pl.col("fold").cast(pl.Int32),
            "weight",
            "department",
        )
    )


def class_counts(labels: pl.DataFrame) -> dict[str, int]:
    """Rows per class among the kept (``ok``) rows."""
    ok = labels.filter(pl.col("status") == STATUS_OK).group_by("class_name").len().sort("class_name")
    return {r["class_name"]: int(r["len"]) for r in ok.iter_rows(named=True)}
