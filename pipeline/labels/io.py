"""Lazy polars scans of data-root datasets (local folders natively, object stores through pyarrow.fs).

Example::

    lf = scan(DataRoot("data"), "posts", columns=["item_id", "likes"])
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.store import DataRoot, to_table


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
