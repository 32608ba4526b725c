"""Person-level train/val/test splits and k-fold indices from a stable hash of (seed, person id).

The split of a row depends only on its person id and ``SplitConfig.seed``, never on row order, the number of
workers, the machine or the library version: the hash is 64-bit FNV-1a over the UTF-8 bytes of
``seed + "\\x1f" + person_id``, finished with the splitmix64 mixer, computed with numpy over whole Arrow string
buffers (one vectorised pass per byte position, no Python loop over rows). Its top 53 bits give ``u`` in [0, 1):
``u < train`` → train, ``u < train + val`` → val, else test. The fold (when ``k_folds`` is set) uses an independent
hash (seed suffixed ``/fold``), so folds and splits are not aligned.

Example::

    assign_splits(pl.Series(["u1", "u2"]), SplitConfig())  # DataFrame person_id, split, fold
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline.config import SplitConfig

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_SEP = "\x1f"


def _fnv_state(prefix: bytes) -> np.uint64:
    h = int(_FNV_OFFSET)
    for b in prefix:  # the seed only: a handful of bytes, once per call
        h = ((h ^ b) * int(_FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def _splitmix(z: np.ndarray) -> np.ndarray:
    z = z ^ (z >> np.uint64(30))
    z = z * np.uint64(0xBF58476D1CE4E5B9)
    z = z ^ (z >> np.uint64(27))
    z = z * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def stable_hash(values: pa.Array | pa.ChunkedArray | pl.Series, seed: str) -> np.ndarray:
    """64-bit hashes (uint64) of strings, identical on every machine; nulls hash like the empty string."""
    if isinstance(values, pl.Series):
        values = values.to_arrow()
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.large_string())
    arr = values.cast(pa.large_string())
    if arr.null_count:
        arr = arr.fill_null("")
    n = len(arr)
    h = np.full(n, _fnv_state((seed + _SEP).encode()), dtype=np.uint64)
    if n == 0:
        return h
    bufs = arr.buffers()
    offsets = np.frombuffer(bufs[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
    data = np.frombuffer(bufs[2], dtype=np.uint8) if bufs[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = np.diff(offsets)
    order = np.argsort(-lengths, kind="stable")  # longest first: position j touches a prefix of `order`
    sorted_len = lengths[order]
    hs = h[order]
    st = starts[order]
    maxlen = int(sorted_len[0]) if n else 0
    # active[j] = how many strings are longer than j
    active = np.searchsorted(-sorted_len, -np.arange(maxlen), side="left")
    with np.errstate(over="ignore"):
        for j in range(maxlen):  # a loop over byte positions, not rows: each step is one numpy pass
            k = int(active[j])
            hs[:k] = (hs[:k] ^ data[st[:k] + j].astype(np.uint64)) * _FNV_PRIME
        hs = _splitmix(hs)
    h[order] = hs
    return h


def unit_interval(values: pa.Array | pa.ChunkedArray | pl.Series, seed: str) -> np.ndarray:
    """A uniform number in [0, 1) per string, from :func:`stable_hash`."""
    return (stable_hash(values, seed) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def split_of(u: np.ndarray, train: float, val: float) -> np.ndarray:
    """Split names for uniform numbers ``u``."""
    return np.where(u < train, "train", np.where(u < train + val, "val", "test"))


def assign_splits(persons: pl.Series, cfg: SplitConfig) -> pl.DataFrame:
    """One row per distinct person id: ``person_id``, ``split`` and ``fold`` (null without k-fold)."""
    uniq = persons.drop_nulls().unique().sort().rename("person_id")
    u = unit_interval(uniq, cfg.seed)
    cols = {"person_id": uniq, "split": pl.Series("split", split_of(u, cfg.train, cfg.val), dtype=pl.String)}
    if cfg.k_folds:
        uf = unit_interval(uniq, cfg.seed + "/fold")
        cols["fold"] = pl.Series("fold", np.minimum((uf * cfg.k_folds).astype(np.int32), cfg.k_folds - 1))
    else:
        cols["fold"] = pl.Series("fold", [None] * len(uniq), dtype=pl.Int32)
    return pl.DataFrame(cols)


def with_splits(lf: pl.LazyFrame, cfg: SplitConfig, person_col: str = "person_id") -> pl.LazyFrame:
    """Add ``split`` and ``fold`` to a lazy frame by its person column (distinct persons are hashed once)."""
    persons = lf.select(pl.col(person_col).alias("person_id")).unique().collect(engine="streaming")
    table = assign_splits(persons.get_column("person_id"), cfg)
    if person_col != "person_id":
        table = table.rename({"person_id": person_col})
    return lf.join(table.lazy(), on=person_col, how="left")
