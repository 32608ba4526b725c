"""Look for what is left of a person on a data root: every file read in full, Parquet also cell by cell.

Used by the erasure tests (tests/test_privacy_full.py, tests/test_end_to_end.py) after ``forget``.
"""

from __future__ import annotations

import base64

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.store import DataRoot


def scan_for(root: DataRoot, mine: dict) -> list[str]:
    """Every file under the root, read in full (Parquet also cell by cell): where a trace of the person is left.

    ``mine``: ``ids`` (strings), ``shas`` (image sha256s), ``images`` and ``crops`` (bytes, also looked for in
    base64, as reports inline them), and optionally ``urls`` (their image, post and profile-page URLs) and
    ``names`` (what they are called on a staff page).
    """
    names = [*mine["ids"], *mine["shas"], *mine.get("urls", ()), *mine.get("names", ())]
    needles = [n.encode() for n in names] + list(mine["images"]) + list(mine["crops"])
    needles += [base64.b64encode(b) for b in [*mine["crops"], *mine["images"]]]
    found = []
    for info in root.fs.get_file_info(pafs.FileSelector(root.base, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        if any(n in info.path for n in names):
            found.append(f"name {info.path}")
        blobs = [root.read_bytes(info.path)]
        try:
            cols = pq.read_table(info.path, filesystem=root.fs).columns if info.path.endswith(".parquet") else []
        except pa.ArrowInvalid:  # a torn part: its raw bytes are scanned
            cols = []
        for col in cols:
            blobs += [v if isinstance(v, bytes) else repr(v).encode() for v in col.to_pylist()]
        found += [f"bytes {info.path}" for b in blobs if any(n in b for n in needles)][:1]
    return found
