"""Selfie labels: the follower-normalised like ranking of the selfie study, as one lazy polars plan.

Why polars: the rule is a filter, a global sort, a cut into consecutive groups and a rank inside each group.
Polars expresses all of it as one lazy query (window functions for the in-group rank and percentile), runs it
multi-threaded in Rust with no Python per row, reads Parquet with projection pushdown (only the ~12 columns the
rule needs, never the image URL or the raw bytes), and streams the result out in batches (``collect_batches``), so
the only full-length state it holds is the sort of the eligible rows' narrow columns. pyarrow compute has no
window functions or multi-key rank (the group cut would need hand-written numpy glue), and DuckDB would add a
dependency for the same plan. pandas is the benchmark peer (``benchmarks/bench_labels.py``).

The rule (every constant is in :class:`pipeline.config.SelfieLabelsConfig`):

1. A post is eligible when none of these holds; the first one that holds is its ``reason`` (one row per post
   always, ``status`` ``excluded``): ``missing_item_id``, ``duplicate_item_id`` (the same (site, item_id) twice:
   one copy is kept, chosen by content, not by row order), ``scrape_<status>`` (the scrape row is not ``ok``),
   ``missing_user_id``, ``missing_followers``, ``negative_followers``, ``missing_likes``, ``negative_likes``,
   ``too_young`` (``scraped_at - posted_at`` under ``min_post_age_days``; the scrape's ``too_young`` flag when a time
   is missing; ``missing_posted_at`` when both are), ``followers_out_of_range`` (outside
   [``min_followers``, ``max_followers``]), ``too_many_tags`` (more than ``max_tags``), and with ``require_face``:
   ``no_image``, ``no_faces_row`` (the faces stage has not seen the image) or the faces stage's own reason
   (``no_face``, ``low_prob``, ``many_faces``, ...) when ``faces.kept`` is false.
2. Eligible posts are sorted by the audience their author reaches,
   ``audience = followers * (1 + tag_bonus * max(n_tags - 1, 0))``: a post with more tags is found by people
   beyond the author's followers, so each tag beyond the first widens its reach by ``tag_bonus`` (1% by default)
   of the follower count; multiplicative so the bonus means the same at 100 and at 100,000 followers. Ties are
   broken by (site, item_id).
3. The sorted list is cut into consecutive groups of ``group_size``. The last, incomplete group is excluded
   (``incomplete_group``) unless it has at least ``min_group_size`` posts.
4. Inside each group posts are ranked by likes, most first (ties by site, item_id): ``rank_in_group`` 0 is the most
   liked. The top half gets label 1 (``good``), the bottom half 0 (``not_good``); in a kept odd-sized last group the
   middle post is excluded (``odd_group_median``) so both halves stay equal. ``like_percentile`` is the
   within-group percentile of likes (0 = fewest, 1 = most; tied likes share the average), ``likes_per_follower``
   the raw ratio: two continuous targets beside the label.

Example::

    out = label_selfies(pl.scan_parquet("posts/*.parquet"), pl.scan_parquet("faces/*.parquet"), cfg.labels)
    out.collect()  # one row per post, SELFIE_LABELS columns
"""

from __future__ import annotations

import polars as pl

from pipeline.config import LabelsConfig, SelfieLabelsConfig
from pipeline.labels.splits import assign_splits
from pipeline.store import SELFIE_LABELS, STATUS_EXCLUDED, STATUS_OK

POST_COLUMNS = [
    "site",
    "item_id",
    "user_id",
    "followers",
    "likes",
    "tags",
    "posted_at",
    "scraped_at",
    "too_young",
    "image_sha256",
    "status",
]
FACE_COLUMNS = ["image_sha256", "kept", "reason"]
CLASS_NAMES = {1: "good", 0: "not_good"}
# The order in which filters are applied (and reported): a post's reason is the first that holds.
FILTER_ORDER = [
    "missing_item_id",
    "duplicate_item_id",
    "scrape_*",
    "missing_user_id",
    "missing_followers",
    "negative_followers",
    "missing_likes",
    "negative_likes",
    "too_young",
    "missing_posted_at",
    "followers_out_of_range",
    "too_many_tags",
    "no_image",
    "no_faces_row",
    "face_*",
    "incomplete_group",
    "odd_group_median",
]
_US_PER_DAY = 86_400 * 1_000_000


class EmptyInputError(ValueError):
    """The input holds no rows at all: nothing to label (a clear error rather than an empty output)."""


def audience_expr(tag_bonus: float) -> pl.Expr:
    """``followers * (1 + tag_bonus * max(n_tags - 1, 0))`` as a Float64 expression."""
    extra = (pl.col("n_tags") - 1).clip(lower_bound=0).cast(pl.Float64)
    return (pl.col("followers").cast(pl.Float64) * (1.0 + tag_bonus * extra)).alias("audience")


def _faces_lookup(faces: pl.LazyFrame) -> pl.LazyFrame:
    """One row per image: kept if any faces row says kept; the smallest reason otherwise (order-free)."""
    return (
        faces.select(FACE_COLUMNS)
        .group_by("image_sha256")
        .agg(
            pl.col("kept").fill_null(False).any().alias("_face_kept"),
            pl.col("reason").min().alias("_face_reason"),
            pl.lit(True).alias("_face_row"),
        )
    )


def _dedupe(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Mark every copy of a duplicated (site, item_id) but one; the kept copy is chosen by content."""
    key = ["site", "item_id"]
    lf = lf.with_columns(_n_copies=pl.len().over(key))
    single = lf.filter(pl.col("_n_copies") == 1).with_columns(_dup_loser=pl.lit(False))
    tiebreak = [
        (pl.col("status") == STATUS_OK).fill_null(False),
        "scraped_at",
        "posted_at",
        "likes",
        "followers",
        "n_tags",
        "user_id",
        "image_sha256",
    ]
    multi = (
        lf.filter(pl.col("_n_copies") > 1)
        .sort(
            [*key, *tiebreak],
            descending=[False, False, True, True, True, True, True, False, False, False],
            nulls_last=True,
        )
        .with_columns(_dup_loser=~pl.struct(key).is_first_distinct())
    )
    return pl.concat([single, multi], how="vertical").drop("_n_copies")


def prepare(posts: pl.LazyFrame, faces: pl.LazyFrame | None, cfg: SelfieLabelsConfig) -> pl.LazyFrame:
    """Every post with ``n_tags``, ``audience`` and ``reason`` (null when eligible for ranking)."""
    lf = (
        posts.select(POST_COLUMNS)
        .with_columns(n_tags=pl.col("tags").list.len().fill_null(0).cast(pl.Int32))
        .drop("tags")
    )
    lf = _dedupe(lf)
    if faces is not None:
        lf = lf.join(_faces_lookup(faces), on="image_sha256", how="left")
    age_us = (pl.col("scraped_at") - pl.col("posted_at")).dt.total_microseconds()
    too_young = (
        pl.when(age_us.is_not_null()).then(age_us < cfg.min_post_age_days * _US_PER_DAY).otherwise(pl.col("too_young"))
    )
    reason = (
        pl.when(pl.col("item_id").is_null())
        .then(pl.lit("missing_item_id"))
        .when(pl.col("_dup_loser"))
        .then(pl.lit("duplicate_item_id"))
        .when(pl.col("status").fill_null("missing") != STATUS_OK)
        .then(pl.lit("scrape_") + pl.col("status").fill_null("status_missing"))
        .when(pl.col("user_id").is_null())
        .then(pl.lit("missing_user_id"))
        .when(pl.col("followers").is_null())
        .then(pl.lit("missing_followers"))
        .when(pl.col("followers") < 0)
        .then(pl.lit("negative_followers"))
        .when(pl.col("likes").is_null())
        .then(pl.lit("missing_likes"))
        .when(pl.col("likes") < 0)
        .then(pl.lit("negative_likes"))
        .when(too_young.is_null())
        .then(pl.lit("missing_posted_at"))
        .when(too_young)
        .then(pl.lit("too_young"))
        .when((pl.col("followers") < cfg.min_followers) | (pl.col("followers") > cfg.max_followers))
        .then(pl.lit("followers_out_of_range"))
        .when(pl.col("n_tags") > cfg.max_tags)
        .then(pl.lit("too_many_tags"))
    )
    if faces is not None and cfg.require_face:
        reason = (
            reason.when(pl.col("image_sha256").is_null())
            .then(pl.lit("no_image"))
            .when(pl.col("_face_row").is_null())
            .then(pl.lit("no_faces_row"))
            .when(~pl.col("_face_kept"))
            .then(pl.col("_face_reason").fill_null("face_not_kept"))
        )
    return lf.with_columns(audience_expr(cfg.tag_bonus), reason.otherwise(pl.lit(None, pl.String)).alias("reason"))


def rank_groups(eligible: pl.LazyFrame, cfg: SelfieLabelsConfig) -> pl.LazyFrame:
    """Cut eligible posts (sorted by audience) into groups and rank likes inside each group.

    Adds ``group_id``, ``rank_in_group``, ``label``, ``like_percentile`` and ``reason`` (``incomplete_group`` /
    ``odd_group_median`` for the posts the cut leaves out, else null). Input rows must all be eligible.
    """
    gs = cfg.group_size
    n = pl.len()
    full_end = (n // gs) * gs
    rem = n - full_end
    keep_last = (rem >= cfg.min_group_size) if cfg.min_group_size else pl.lit(False)
    ranked = (
        eligible.sort(["audience", "site", "item_id"])
        .with_row_index("_pos")
        .with_columns(
            group_id=(pl.col("_pos") // gs).cast(pl.Int32),
            _in_group=(pl.col("_pos") < full_end) | keep_last,
            _gsize=pl.when(pl.col("_pos") < full_end).then(pl.lit(gs)).otherwise(rem).cast(pl.Int32),
        )
        .sort(["group_id", "likes", "site", "item_id"], descending=[False, True, False, False])
        .with_row_index("_pos2")
        .with_columns(rank_in_group=(pl.col("_pos2") - pl.col("group_id").cast(pl.UInt64) * gs).cast(pl.Int32))
    )
    half = pl.col("_gsize") // 2
    median = (pl.col("_gsize") % 2 == 1) & (pl.col("rank_in_group") == half)
    pct = (pl.col("likes").rank("average").over("group_id") - 1.0) / (pl.col("_gsize") - 1).cast(pl.Float64)
    return (
        ranked.with_columns(
            reason=pl.when(~pl.col("_in_group"))
            .then(pl.lit("incomplete_group"))
            .when(median)
            .then(pl.lit("odd_group_median"))
            .otherwise(pl.lit(None, pl.String)),
            label=pl.when(pl.col("rank_in_group") < half).then(1).otherwise(0).cast(pl.Int32),
            like_percentile=pct,
        )
        .with_columns(
            label=pl.when(pl.col("reason").is_null()).then(pl.col("label")),
            like_percentile=pl.when(pl.col("reason").is_null()).then(pl.col("like_percentile")),
            rank_in_group=pl.when(pl.col("_in_group")).then(pl.col("rank_in_group")),
        )
        .drop("_pos", "_pos2", "_in_group", "_gsize")
    )


def label_selfies(
    posts: pl.LazyFrame,
    faces: pl.LazyFrame | None,
    cfg: LabelsConfig,
    splits: pl.DataFrame | None = None,
) -> pl.LazyFrame:
    """The full selfie labels (lazy): one row per post in :data:`SELFIE_LABELS` columns.

    ``faces`` None skips the face policy (benchmarks, tests of the ranking alone). ``splits`` is a precomputed
    ``person_id, split, fold`` table (from :func:`pipeline.labels.splits.assign_splits`); None computes it from
    the posts' user ids.
    """
    scfg = cfg.selfie
    base = prepare(posts, faces, scfg)
    ranked = rank_groups(base.filter(pl.col("reason").is_null()), scfg)
    excluded = base.filter(pl.col("reason").is_not_null()).with_columns(
        group_id=pl.lit(None, pl.Int32),
        rank_in_group=pl.lit(None, pl.Int32),
        label=pl.lit(None, pl.Int32),
        like_percentile=pl.lit(None, pl.Float64),
    )
    cols = [
        "site", "item_id", "user_id", "image_sha256", "followers", "likes", "n_tags", "audience",
        "group_id", "rank_in_group", "label", "like_percentile", "reason",
    ]  # fmt: skip
    out = pl.concat([ranked.select(cols), excluded.select(cols)], how="vertical")
    if splits is None:
        splits = assign_splits(
            posts.select(pl.col("user_id")).unique().collect(engine="streaming").get_column("user_id"), cfg.split
        )
    out = out.join(splits.lazy(), left_on="user_id", right_on="person_id", how="left")
    ok = pl.col("reason").is_null()
    return out.select(
        "item_id",
        "site",
        pl.col("user_id").alias("person_id"),
        "image_sha256",
        pl.when(ok).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_EXCLUDED)).alias("status"),
        "reason",
        "label",
        pl.col("label").replace_strict(CLASS_NAMES, default=None, return_dtype=pl.String).alias("class_name"),
        pl.col("label").cast(pl.Float64).alias("target"),
        "split",
        pl.col("fold").cast(pl.Int32),
        pl.when(ok).then(pl.lit(1.0)).alias("weight"),  # the halves are equal by construction
        "followers",
        "likes",
        "n_tags",
        "audience",
        "group_id",
        "rank_in_group",
        "like_percentile",
        pl.when(pl.col("followers") > 0)
        .then(pl.col("likes").cast(pl.Float64) / pl.col("followers").cast(pl.Float64))
        .alias("likes_per_follower"),
    )


def label_selfies_table(posts, faces=None, cfg: LabelsConfig | None = None) -> pl.DataFrame:
    """Eager convenience: Arrow tables / polars frames in, a polars DataFrame with the SELFIE_LABELS schema out.

    Raises :class:`EmptyInputError` when ``posts`` has no rows.
    """
    cfg = cfg or LabelsConfig()
    p = posts if isinstance(posts, pl.DataFrame) else pl.from_arrow(posts)
    if p.height == 0:
        raise EmptyInputError("posts: the input has no rows, nothing to label")
    f = None
    if faces is not None:
        f = (faces if isinstance(faces, pl.DataFrame) else pl.from_arrow(faces)).lazy()
    return label_selfies(p.lazy(), f, cfg).collect()


SCHEMA = SELFIE_LABELS
