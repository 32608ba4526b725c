"""Lazy polars scans of data-root datasets (local folders natively, object stores through pyarrow.fs), and the
counts every labels task reports.

Example::

    lf = scan(DataRoot("data"), "posts", columns=["item_id", "likes"])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.store import STATUS_OK, DataRoot, to_table


def scan(root: DataRoot, dataset: str, columns: list[str] | None = None) -> pl.LazyFrame:
    """A lazy frame over a dataset's part files (raises MissingDatasetError when absent)."""
    root.require(dataset)
    if isinstance(root.fs, pafs.LocalFileSystem):
        lf = pl.scan_parquet(root.part_files(dataset), missing_columns="insert", extra_columns="ignore")
    else:  # s3:// and friends: pyarrow's filesystem layer, still lazy with projection pushdown
        lf = pl.scan_pyarrow_dataset(root.dataset(dataset))
    return lf.select(columns) if columns else lf


def arrow_batches(
    frames: pl.LazyFrame | Iterable[pl.DataFrame], schema: pa.Schema, chunk_rows: int = 1_000_000
) -> Iterator[pa.Table]:
    """A lazy frame's result (streamed) or chunks of frames as Arrow tables in ``schema`` (for DataRoot.replace)."""
    if isinstance(frames, pl.LazyFrame):
        frames = frames.collect_batches(chunk_size=chunk_rows, engine="streaming")
    for df in frames:
        yield to_table(df.to_arrow(), schema)


def is_empty(lf: pl.LazyFrame) -> bool:
    return lf.select(pl.len()).collect().item() == 0


def counts(root: DataRoot, dataset: str) -> dict[str, Any]:
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


def class_counts(root: DataRoot, dataset: str) -> dict[str, int]:
    """Kept rows per class of a written labels dataset."""
    classes = (
        scan(root, dataset, ["status", "class_name"])
        .filter(pl.col("status") == STATUS_OK)
        .group_by("class_name")
        .len()
        .sort("class_name")
        .collect()
    )
    return {c: int(n) for c, n in classes.iter_rows()}
