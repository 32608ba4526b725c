"""Selfie labels: the follower-normalised like ranking of the selfie study, vectorised in polars, memory-lean.

Why polars: the rule is a filter, a global sort, a cut into consecutive groups and a rank inside each group.
Polars runs each step multi-threaded in Rust with no Python per row, reads Parquet with projection pushdown and
streams (``engine="streaming"``). pyarrow compute has no multi-key rank or window functions (the group cut would
need hand-written numpy glue), and DuckDB would add a dependency for the same plan. pandas is the benchmark peer
(``benchmarks/bench_labels.py``).

How it stays lean at tens of millions of posts (never the wide table in memory):

* a streaming pass over the ids finds integer tie-break keys (:func:`tiebreak_keys`: the site's rank and the
  id, less the prefix all ids share, packed big-endian into uint64 words, whose order is exactly the
  (site, item_id) string order) and the distinct users (for the splits);
* pass 1 streams every post to 16 bytes: its ``reason`` (Categorical), ``n_tags`` and a hash of (site, item_id);
  rows whose hash repeats are checked exactly for duplicates (:func:`_duplicate_losers`), then the hash is dropped;
* pass 2 streams only the eligible posts' sort columns (row index, audience, likes, keys: ~28 bytes a post);
  :func:`rank_groups` sorts them twice, one step at a time, and the results are scattered back by row index;
* the returned iterator streams the wide columns (ids, user, image hash) from ``posts`` once more, a chunk of
  ``chunk_rows`` at a time, each put beside the matching slice of the ranking (``posts`` must give its rows in
  the same order on every scan, as Parquet scans and in-memory frames do; a count mismatch is an error), and the
  splits are an element-wise lookup, so writing it (``DataRoot.replace``) holds no more than the narrow ranking
  and a few chunks. (polars' own horizontal concat of a scan and a frame materialises the scan: 9 GiB at 50M.)

The rule (every constant is in :class:`pipeline.config.SelfieLabelsConfig`):

1. A post is eligible when none of these holds; the first one that holds is its ``reason`` (one row per post
   always, ``status`` ``excluded``): ``missing_item_id``, ``duplicate_item_id`` (the same (site, item_id) twice:
   one copy is kept, chosen by content, not by row order), ``scrape_<status>`` (the scrape row is not ``ok``),
   ``missing_user_id``, ``missing_followers``, ``negative_followers``, ``missing_likes``, ``negative_likes``,
   ``too_young`` (``scraped_at - posted_at`` under ``min_post_age_days``; the scrape's ``too_young`` flag when a time
   is missing; ``missing_posted_at`` when both are), ``followers_out_of_range`` (outside
   [``min_followers``, ``max_followers``]), ``too_many_tags`` (more than ``max_tags``), with ``counts_from: home``
   ``counts_not_from_home`` (a federated post whose counts were read on another server than its author's, see
   below), and with ``require_face``:
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

Federated feeds (Mastodon): a server's likes and follower counts of a remote post are what that server has seen,
often far below the author's home server's. ``posts.counts_from`` records the serving host, ``user_acct`` the
author's ``user@instance``. ``SelfieLabelsConfig.counts_from`` picks the policy: ``any`` (the default, as before:
every post ranked together; right for a feed read from one non-federated source, and the only choice for posts
without these columns), ``home`` (only posts whose counts come from the author's home instance; posts without
``counts_from`` kept), ``per_instance`` (steps 2-4 run separately per counting instance, so posts are compared
only with posts counted by the same server).

Example::

    chunks = label_selfies(pl.scan_parquet("posts/*.parquet"), pl.scan_parquet("faces/*.parquet"), cfg.labels)
    out = root.labels_dataset("selfie")
    root.replace(out, arrow_batches(chunks, root.schema(out)))  # one row per post, streamed
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import polars as pl

from pipeline.config import Config, LabelsConfig, SelfieLabelsConfig
from pipeline.labels.splits import assign_splits
from pipeline.store import POSTS_DS, STATUS_EXCLUDED, STATUS_OK, DataRoot

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
    "user_acct",  # FEDERATED_COLUMNS: read by the stage (null in older posts parts), used only with counts_from
    "counts_from",
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
    "counts_not_from_home",
    "no_image",
    "no_faces_row",
    "face_*",
    "incomplete_group",
    "odd_group_median",
]
_US_PER_DAY = 86_400 * 1_000_000
CHUNK_ROWS = 1_000_000  # output rows per chunk: bounds the writer's memory, large enough for fast Parquet pages


class EmptyInputError(ValueError):
    """The input holds no rows at all: nothing to label (a clear error rather than an empty output)."""


def audience_expr(tag_bonus: float) -> pl.Expr:
    """``followers * (1 + tag_bonus * max(n_tags - 1, 0))`` as a Float64 expression."""
    extra = (pl.col("n_tags") - 1).clip(lower_bound=0).cast(pl.Float64)
    return (pl.col("followers").cast(pl.Float64) * (1.0 + tag_bonus * extra)).alias("audience")


def faces_lookup(faces: pl.LazyFrame) -> pl.LazyFrame:
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


def _face_verdict(faces: pl.LazyFrame) -> pl.Expr:
    """Per post, from its ``image_sha256``: null (no faces row), ``""`` (kept) or the faces stage's reason.

    An element-wise lookup in a table with one row per image (not a join), so the posts keep their order.
    """
    t = faces_lookup(faces).collect(engine="streaming")
    reason = pl.col("_face_reason")
    verdict = t.select(
        pl.when(pl.col("_face_kept"))
        .then(pl.lit(""))
        .when(reason.is_null() | (reason == ""))
        .then(pl.lit("face_not_kept"))
        .otherwise(reason)
    ).to_series()
    return pl.col("image_sha256").replace_strict(t.get_column("image_sha256"), verdict, default=None)


def _dedupe(lf: pl.LazyFrame) -> pl.LazyFrame:
    """Mark every copy of a duplicated (site, item_id) but one (``_dup_loser``); the kept copy is chosen by content."""
    key = ["site", "item_id"]
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
    return lf.sort(
        [*key, *tiebreak],
        descending=[False, False, True, True, True, True, True, False, False, False],
        nulls_last=True,
    ).with_columns(_dup_loser=~pl.struct(key).is_first_distinct())


FEDERATED_COLUMNS = ["user_acct", "counts_from"]
_BASE_COLUMNS = [c for c in POST_COLUMNS if c not in FEDERATED_COLUMNS]


def _fed_columns(cfg: SelfieLabelsConfig | None) -> list[str]:
    """The posts columns the counting-instance option reads (none by default, so older posts datasets work)."""
    return FEDERATED_COLUMNS if cfg is not None and cfg.counts_from != "any" else []


def home_instance_expr() -> pl.Expr:
    """Whether a post's counts come from its author's home instance (``user@instance`` vs ``counts_from``); true
    where the feed records no counting instance (non-federated feeds)."""
    home = pl.col("user_acct").str.split("@").list.last().str.to_lowercase()
    return pl.col("counts_from").is_null() | (home == pl.col("counts_from").str.to_lowercase()).fill_null(False)


def _with_n_tags(posts: pl.LazyFrame, extra: list[str] | None = None) -> pl.LazyFrame:
    return (
        posts.select(_BASE_COLUMNS + (extra or []))
        .with_columns(n_tags=pl.col("tags").list.len().fill_null(0).cast(pl.Int32))
        .drop("tags")
    )


def reason_expr(cfg: SelfieLabelsConfig, faces: bool) -> pl.Expr:
    """The first per-row filter that holds (null when none does); duplicates are marked separately."""
    age_us = (pl.col("scraped_at") - pl.col("posted_at")).dt.total_microseconds()
    too_young = (
        pl.when(age_us.is_not_null()).then(age_us < cfg.min_post_age_days * _US_PER_DAY).otherwise(pl.col("too_young"))
    )
    reason = (
        pl.when(pl.col("item_id").is_null())
        .then(pl.lit("missing_item_id"))
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
    if cfg.counts_from == "home":
        reason = reason.when(~home_instance_expr()).then(pl.lit("counts_not_from_home"))
    if faces:
        reason = (
            reason.when(pl.col("image_sha256").is_null())
            .then(pl.lit("no_image"))
            .when(pl.col("_face").is_null())
            .then(pl.lit("no_faces_row"))
            .when(pl.col("_face") != "")
            .then(pl.col("_face"))
        )
    return reason.otherwise(pl.lit(None, pl.String)).alias("reason")


def _common_prefix(a: str, b: str) -> str:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return a[:n]


def tiebreak_keys(posts: pl.LazyFrame, want_users: bool) -> tuple[list[pl.Expr], pl.Series | None]:
    """Integer columns whose order is exactly the (site, item_id) order, from one streaming pass over the ids.

    ``site`` becomes its rank among the distinct sites (dropped when there is one site). ``item_id`` loses the
    prefix every id shares (the common prefix of the smallest and the largest id), and the rest, NUL-padded to 8
    or 16 bytes, is read as one or two big-endian uint64: unsigned comparison of those is byte-wise comparison of
    the strings, i.e. the string order. Ids with a NUL byte or more than 16 bytes after the prefix keep the string
    itself as the key (correct, only slower). Returns the key expressions (named ``_k0``, ``_k1``, ...) and, when
    ``want_users``, the distinct user ids (the same pass reads them, for the splits).
    """
    aggs = [
        pl.col("item_id").min().alias("lo"),
        pl.col("item_id").max().alias("hi"),
        pl.col("item_id").str.len_bytes().max().alias("maxlen"),
        pl.col("item_id").str.contains("\x00", literal=True).any().alias("nul"),
        pl.col("site").drop_nulls().unique().sort().implode().alias("sites"),
    ]
    if want_users:
        aggs.append(pl.col("user_id").unique().implode().alias("users"))
    st = posts.select(aggs).collect(engine="streaming").row(0, named=True)
    users = pl.Series("user_id", st["users"], dtype=pl.String) if want_users else None
    keys: list[pl.Expr] = []
    sites = st["sites"] or []
    if len(sites) > 1:
        keys.append(pl.col("site").replace_strict(sites, range(len(sites)), default=None, return_dtype=pl.UInt32))
    if st["lo"] is None:  # no ids at all: every row is excluded, nothing is sorted
        return [k.alias(f"_k{i}") for i, k in enumerate(keys)], users
    prefix = _common_prefix(st["lo"], st["hi"])
    rest = st["maxlen"] - len(prefix.encode())
    if st["nul"] or rest > 16:
        keys.append(pl.col("item_id"))
    else:
        width = 8 if rest <= 8 else 16
        padded = pl.concat_str([pl.col("item_id").str.slice(len(prefix)), pl.lit("\x00" * width)]).cast(pl.Binary)
        for off in range(0, width, 8):
            keys.append(padded.bin.slice(off, 8).bin.reinterpret(dtype=pl.UInt64, endianness="big"))
    return [k.alias(f"_k{i}") for i, k in enumerate(keys)], users


def rank_groups(eligible: pl.DataFrame, cfg: SelfieLabelsConfig, tiebreak: list[str]) -> pl.DataFrame:
    """Cut eligible posts (sorted by audience) into groups and rank likes inside each group.

    ``eligible`` holds ``_idx, audience, likes`` and the ``tiebreak`` columns, which order ties like
    (site, item_id) (see :func:`tiebreak_keys`); every row must be eligible. Returns ``_idx, group_id,
    rank_in_group, label, like_percentile, reason`` (``incomplete_group`` / ``odd_group_median`` for the posts
    the cut leaves out, else null). Eager, one step at a time, so that each sort's input is freed as soon as
    its output exists.
    """
    gs = cfg.group_size
    n = eligible.height
    n_full = n // gs
    rem = n - n_full * gs
    keep_last = bool(cfg.min_group_size and rem >= cfg.min_group_size)
    df = eligible.sort(["audience", *tiebreak]).drop("audience")
    del eligible
    df = df.with_columns(group_id=(pl.int_range(pl.len(), dtype=pl.UInt64) // gs).cast(pl.Int32))
    df = df.sort(["group_id", "likes", *tiebreak], descending=[False, True] + [False] * len(tiebreak))
    df = df.drop(tiebreak)
    full = pl.col("group_id") < n_full
    gsize = pl.when(full).then(pl.lit(gs)).otherwise(pl.lit(rem)).cast(pl.Int32)
    r = (pl.int_range(pl.len(), dtype=pl.Int64) - pl.col("group_id").cast(pl.Int64) * gs).cast(pl.Int32)
    df = df.with_columns(rank_in_group=r, _gsize=gsize)
    # Rows are in (group, likes desc) order, so tied likes form runs: their average rank (``rank("average")``,
    # 0-based, ascending) is the mean of the run's first and last position, found without a hash group-by.
    g, likes, r = pl.col("group_id"), pl.col("likes"), pl.col("rank_in_group")
    starts = ((g != g.shift(1)) | (likes != likes.shift(1))).fill_null(True)
    ends = ((g != g.shift(-1)) | (likes != likes.shift(-1))).fill_null(True)
    first, last = pl.when(starts).then(r).forward_fill(), pl.when(ends).then(r).backward_fill()
    size1 = (pl.col("_gsize") - 1).cast(pl.Float64)
    pct = (size1 - (first + last).cast(pl.Float64) / 2) / size1
    half = pl.col("_gsize") // 2
    in_group = full | keep_last
    reason = (
        pl.when(~in_group)
        .then(pl.lit("incomplete_group"))
        .when((pl.col("_gsize") % 2 == 1) & (r == half))
        .then(pl.lit("odd_group_median"))
        .otherwise(pl.lit(None, pl.String))
    )
    return df.with_columns(reason=reason, like_percentile=pct).select(
        "_idx",
        "group_id",
        "reason",
        pl.when(pl.col("reason").is_null()).then((r < half).cast(pl.Int8)).alias("label"),
        pl.when(pl.col("reason").is_null()).then(pl.col("like_percentile")).alias("like_percentile"),
        pl.when(in_group).then(r).alias("rank_in_group"),
    )


def _rank_per_instance(eligible: pl.DataFrame, cfg: SelfieLabelsConfig, tiebreak: list[str]) -> pl.DataFrame:
    """``counts_from: per_instance``: :func:`rank_groups` within each counting instance (its own groups, its own
    incomplete last group), group ids numbered on across instances in instance order."""
    parts, offset = [], 0
    for (_inst,), part in sorted(eligible.partition_by("_inst", as_dict=True).items()):
        r = rank_groups(part.drop("_inst"), cfg, tiebreak)
        parts.append(r.with_columns(pl.col("group_id") + offset))
        offset += (part.height + cfg.group_size - 1) // cfg.group_size
    if not parts:
        return rank_groups(eligible.drop("_inst"), cfg, tiebreak)
    return pl.concat(parts)


def _duplicate_losers(posts: pl.LazyFrame, hashes: pl.Series) -> pl.Series:
    """Row positions of the duplicate copies to exclude: exact (site, item_id) check on rows whose hash repeats."""
    s = hashes.sort()
    repeated = s.filter(s == s.shift(1)).unique()
    if repeated.is_empty():
        return pl.Series("_idx", [], dtype=pl.UInt32)
    cand = hashes.is_in(repeated.implode()).arg_true()
    rows = _with_n_tags(posts).with_row_index("_idx").filter(pl.col("_idx").is_in(cand.implode()))
    return _dedupe(rows).filter(pl.col("_dup_loser")).select("_idx").collect().get_column("_idx")


def rank_posts(posts: pl.LazyFrame, faces: pl.LazyFrame | None, cfg: SelfieLabelsConfig) -> pl.DataFrame:
    """The ranking of every post, one row per input row in input order, holding only narrow columns.

    Columns: ``reason`` (Categorical, null for labelled posts), ``n_tags``, ``group_id``, ``rank_in_group``,
    ``label`` (Int8), ``like_percentile``. Memory: one streaming pass keeps ~40 bytes a post (reason, n_tags,
    audience, likes, an id hash and the integer tie-break keys), the sort then works on the eligible posts'
    narrow columns only; the wide columns (ids, image hashes) are never held. See :func:`tiebreak_keys`.
    """
    keys, _ = tiebreak_keys(posts, want_users=False)
    return _rank_with_keys(posts, faces, cfg, keys)


def _rank_with_keys(
    posts: pl.LazyFrame, faces: pl.LazyFrame | None, cfg: SelfieLabelsConfig, keys: list[pl.Expr]
) -> pl.DataFrame:
    use_faces = faces is not None and cfg.require_face
    lf = _with_n_tags(posts, _fed_columns(cfg))
    if use_faces:
        lf = lf.with_columns(_face=_face_verdict(faces))
    # pass 1 (all rows, 16 bytes each): the reason, the tag count and a hash of (site, item_id) for duplicates
    base = lf.select(
        reason_expr(cfg, use_faces).cast(pl.Categorical),
        "n_tags",
        pl.struct("site", "item_id").hash(seed=0).alias("_h"),
    ).collect(engine="streaming")
    losers = _duplicate_losers(posts, base.get_column("_h"))
    base = base.drop("_h")
    if losers.len():
        is_loser = pl.int_range(pl.len(), dtype=pl.UInt32).is_in(losers.implode())
        is_loser = is_loser & (pl.col("reason") != "missing_item_id").fill_null(True)
        base = base.with_columns(
            reason=pl.when(is_loser).then(pl.lit("duplicate_item_id", pl.Categorical)).otherwise("reason")
        )
    n_rows = base.height
    # pass 2 (eligible rows only, ~28 bytes each): the sort columns, read beside the reasons row for row
    key_names = [f"_k{i}" for i in range(len(keys))]
    per_instance = cfg.counts_from == "per_instance"
    inst = [pl.col("counts_from").fill_null("")] if per_instance else []
    eligible = (
        pl.concat(
            [posts.select("site", "item_id", "followers", "likes", *_fed_columns(cfg)), base.lazy()], how="horizontal"
        )
        .with_row_index("_idx")
        .filter(pl.col("reason").is_null())
        .select("_idx", audience_expr(cfg.tag_bonus), "likes", *keys, *[e.alias("_inst") for e in inst])
        .collect(engine="streaming")
    )
    if eligible.height and eligible.get_column("likes").max() < 2**32:  # likes >= 0 here
        eligible = eligible.with_columns(pl.col("likes").cast(pl.UInt32))
    ranked = _rank_per_instance(eligible, cfg, key_names) if per_instance else rank_groups(eligible, cfg, key_names)
    del eligible
    idx = ranked.get_column("_idx")
    cols = {"reason": base.get_column("reason").scatter(idx, ranked.get_column("reason").cast(pl.Categorical))}
    for name, dtype in [
        ("group_id", pl.Int32),
        ("rank_in_group", pl.Int32),
        ("label", pl.Int8),
        ("like_percentile", pl.Float64),
    ]:
        col = ranked.drop_in_place(name)
        full = pl.Series(name, [None], dtype=dtype).extend_constant(None, n_rows - 1) if n_rows else col
        cols[name] = full.scatter(idx, col) if n_rows else col
    return base.with_columns(**cols)


def label_selfies(
    posts: pl.LazyFrame,
    faces: pl.LazyFrame | None,
    cfg: LabelsConfig,
    splits: pl.DataFrame | None = None,
    chunk_rows: int = CHUNK_ROWS,
) -> Iterator[pl.DataFrame]:
    """The full selfie labels: one row per post, in input order, in the store's SELFIE_LABELS columns, in chunks.

    The ranking (:func:`rank_posts`) runs now, on narrow columns; the returned iterator then streams the wide
    columns (ids, user, image hash, counts) from ``posts`` again, ``chunk_rows`` at a time, and puts each chunk
    beside the matching slice of the ranking, so consuming it never holds the wide table. ``posts`` must give its
    rows in the same order on every scan (Parquet scans and in-memory frames do). ``faces`` None skips the face
    policy (benchmarks, tests of the ranking alone). ``splits`` is a precomputed ``person_id, split, fold`` table
    (from :func:`pipeline.labels.splits.assign_splits`); None computes it from the posts' user ids.
    """
    keys, users = tiebreak_keys(posts, want_users=splits is None)
    ranking = _rank_with_keys(posts, faces, cfg.selfie, keys)
    if splits is None:
        splits = assign_splits(users, cfg.split)
    return _assembled(posts, ranking, splits, cfg.selfie, chunk_rows)


def _assembled(
    posts: pl.LazyFrame, ranking: pl.DataFrame, splits: pl.DataFrame, scfg: SelfieLabelsConfig, chunk_rows: int
) -> Iterator[pl.DataFrame]:
    """Chunks of output rows: ``posts``' wide columns streamed (in order) beside ``ranking``'s matching rows.

    A Python loop over chunks, not rows: polars' horizontal concat of a scan and a frame is not streamed (it
    materialises the scan), so the zip is done here, one bounded chunk at a time.
    """
    wide = posts.select("site", "item_id", "user_id", "image_sha256", "followers", "likes")
    person = splits.get_column("person_id")
    lookup = {
        "split": pl.col("user_id").replace_strict(person, splits.get_column("split"), default=None),
        "fold": pl.col("user_id").replace_strict(person, splits.get_column("fold"), default=None),
    }  # element-wise lookups, not joins: each chunk keeps its order
    out = _output_columns(scfg)
    offset = 0
    for chunk in wide.collect_batches(chunk_size=chunk_rows, maintain_order=True, engine="streaming"):
        n = chunk.height
        if offset + n > ranking.height:
            raise ValueError("posts gave more rows on its second scan than on its first: its order is not stable")
        yield chunk.hstack(ranking.slice(offset, n)).with_columns(**lookup).select(out)
        offset += n
    if offset != ranking.height:
        raise ValueError("posts gave fewer rows on its second scan than on its first: its order is not stable")


def _output_columns(scfg: SelfieLabelsConfig) -> list[pl.Expr]:
    ok = pl.col("reason").is_null()
    label = pl.col("label").cast(pl.Int32)
    return [
        pl.col("item_id"),
        pl.col("site"),
        pl.col("user_id").alias("person_id"),
        pl.col("image_sha256"),
        pl.when(ok).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_EXCLUDED)).alias("status"),
        pl.col("reason").cast(pl.String),
        label.alias("label"),
        label.replace_strict(CLASS_NAMES, default=None, return_dtype=pl.String).alias("class_name"),
        label.cast(pl.Float64).alias("target"),
        pl.col("split"),
        pl.col("fold").cast(pl.Int32),
        pl.when(ok).then(pl.lit(1.0)).alias("weight"),  # the halves are equal by construction
        pl.col("followers"),
        pl.col("likes"),
        pl.col("n_tags"),
        audience_expr(scfg.tag_bonus),
        pl.col("group_id"),
        pl.col("rank_in_group"),
        pl.col("like_percentile"),
        pl.when(pl.col("followers") > 0)
        .then(pl.col("likes").cast(pl.Float64) / pl.col("followers").cast(pl.Float64))
        .alias("likes_per_follower"),
    ]


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
    return pl.concat(label_selfies(p.lazy(), f, cfg))


def build(root: DataRoot, cfg: Config, faces: pl.LazyFrame, notes: list[str]) -> dict[str, Any] | None:
    """The selfie task's builder (pipeline/labels/tasks.py): write ``labels/selfie`` and return its counts, or note
    why it was skipped (None)."""
    from pipeline.labels.io import arrow_batches, counts, is_empty, scan

    if not root.has(POSTS_DS):
        notes.append("selfie: no posts dataset; skipped")
        return None
    posts = scan(root, POSTS_DS, POST_COLUMNS)
    if is_empty(posts):
        notes.append("selfie: the posts dataset has no rows; skipped")
        return None
    out = root.labels_dataset("selfie")
    chunks = label_selfies(posts, faces, cfg.labels)  # splits from the users its first pass reads
    root.replace(out, arrow_batches(chunks, root.schema(out)))
    return counts(root, out)
