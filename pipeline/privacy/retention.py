"""Retention: drop raw images older than ``privacy.raw_image_retention_days`` once their face crop is stored.

Run by ``python -m pipeline retention`` and at the end of every scrape; each run that removes files writes one
``audit/`` row.
"""

from __future__ import annotations

import datetime as dt
import logging
import posixpath

from pipeline.config import Config
from pipeline.privacy.erasure import audit_row, walk_files
from pipeline.store import AUDIT_DS, FACES_DS, IMAGES_DIR, DataRoot, now

log = logging.getLogger("facerank")


def apply_retention(cfg: Config) -> dict[str, int]:
    """Drop raw images older than ``privacy.raw_image_retention_days`` whose face crop is already stored."""
    days = cfg.privacy.raw_image_retention_days
    root = DataRoot(cfg.data_root)
    if days is None or not root.has(FACES_DS):
        return {"images_removed": 0}
    t = root.read(FACES_DS, columns=["image_sha256", "crop_jpeg"])
    cropped = {s for s, c in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True) if c}
    cutoff = now() - dt.timedelta(days=days)
    removed = 0
    for info in walk_files(root, IMAGES_DIR):
        sha = posixpath.basename(info.path)
        mtime = info.mtime
        if sha in cropped and mtime is not None and mtime.replace(tzinfo=mtime.tzinfo or dt.UTC) < cutoff:
            root.fs.delete_file(info.path)
            removed += 1
    if removed:
        root.write_part(AUDIT_DS, [audit_row("retention", "", IMAGES_DIR, 0, removed, now())])
    log.info("retention: %d raw images older than %d days (with a stored crop) removed", removed, days)
    return {"images_removed": removed}
