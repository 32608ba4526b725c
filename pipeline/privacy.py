"""Privacy: erase a person from every output, keep the opt-out list, and drop old raw images (retention).

``forget(cfg, "user", "u0042")`` removes every row about that person (posts, staff, fetches, faces, labels, scores),
their raw images and crops, and reports that embed their faces; it adds them to ``optout/`` so that later scrapes
skip them, and appends one line per dataset to ``audit/`` holding what was done, when and how many rows. Neither
list holds the erased id itself, only the sha256 of ``kind:id``.

Kinds: ``user`` (a feed user id), ``person`` (a staff person id or the person column of imported scores),
``image`` (an image sha256). Trained models are not retrained: ``docs/security.md`` says what that means.

Example::

    from pipeline.privacy import OptOut, forget
    forget(cfg, "user", "u0042")
    OptOut(DataRoot(cfg.data_root)).blocks("user", "u0042")  # True
"""

from __future__ import annotations

import datetime as dt
import hashlib
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import Config
from pipeline.store import DataRoot, now

KINDS = ("user", "person", "image")


def _person_cols(dataset: str, kind: str) -> tuple[str, ...]:
    """The columns of ``dataset`` that hold the id of a subject of this kind."""
    top, _, task = dataset.partition("/")
    if kind == "user":
        return {"posts": ("user_id",), "labels": ("person_id",) if task == "selfie" else ()}.get(top, ())
    if kind == "person":
        return {"staff": ("item_id",), "labels": ("person_id",) if task != "selfie" else ()}.get(top, ())
    return ()


def subject_hash(kind: str, value: str) -> str:
    return hashlib.sha256(f"{kind}:{value}".encode()).hexdigest()


class OptOut:
    """The opt-out list of a data root; ``blocks(kind, id)`` tells a scraper to skip that user, person or image."""

    def __init__(self, root: DataRoot):
        self.hashes: set[str] = set()
        if root.has("optout"):
            self.hashes = set(root.read("optout", columns=["subject_hash"]).column(0).to_pylist())

    def blocks(self, kind: str, value: str | None) -> bool:
        return bool(value) and subject_hash(kind, value) in self.hashes

    def __len__(self) -> int:
        return len(self.hashes)


def _datasets(root: DataRoot) -> list[str]:
    names = ["fetches", "posts", "staff", "faces"]
    names += [f"labels/{t}" for t in root.list_dir("labels")]
    names += [f"scores/{p}" for p in root.list_dir("scores") if p.startswith("dt=")]
    return [n for n in names if root.has(n)]


def _images_of(root: DataRoot, kind: str, value: str) -> set[str]:
    """Every image sha256 that shows the subject."""
    if kind == "image":
        return {value}
    shas: set[str] = set()
    for ds in ["posts", "staff"] + [f"labels/{t}" for t in root.list_dir("labels")]:
        for col in _person_cols(ds, kind):
            if root.has(ds):
                t = root.read(ds, columns=[col, "image_sha256"], filter=pc.field(col) == value)
                shas |= {s for s in t.column("image_sha256").to_pylist() if s}
    return shas


def _row_mask(table: pa.Table, dataset: str, kind: str, value: str, shas: set[str], urls: set[str]) -> pa.Array:
    """True for rows to remove."""
    mask = pa.array([False] * table.num_rows)
    for col in _person_cols(dataset, kind):
        if col in table.column_names:
            mask = pc.or_(mask, pc.fill_null(pc.equal(table.column(col), value), False))
    value_set = pa.array(sorted(shas), pa.string())
    if "image_sha256" in table.column_names and len(value_set):
        mask = pc.or_(mask, pc.fill_null(pc.is_in(table.column("image_sha256"), value_set=value_set), False))
    if "url" in table.column_names and urls:
        mask = pc.or_(mask, pc.fill_null(pc.is_in(table.column("url"), value_set=pa.array(sorted(urls))), False))
    return mask


def _image_urls(root: DataRoot, shas: set[str]) -> set[str]:
    urls: set[str] = set()
    for ds in ("posts", "staff"):
        if root.has(ds) and shas:
            t = root.read(ds, columns=["image_url", "image_sha256"])
            keep = pc.fill_null(pc.is_in(t.column("image_sha256"), value_set=pa.array(sorted(shas))), False)
            urls |= {u for u in t.filter(keep).column("image_url").to_pylist() if u}
    return urls


def _remove_reports(root: DataRoot, shas: set[str]) -> int:
    """Delete HTML reports under models/ that show any of these images (they embed thumbnails)."""
    base = root.path("models")
    if root.fs.get_file_info(base).type == pafs.FileType.NotFound or not shas:
        return 0
    removed = 0
    for info in root.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type == pafs.FileType.File and info.path.endswith(".html"):
            text = root.read_bytes(info.path).decode("utf-8", "replace")
            if any(s in text for s in shas):
                root.fs.delete_file(info.path)
                removed += 1
    return removed


def forget(cfg: Config, kind: str, value: str) -> dict[str, Any]:
    """Erase a person (or one image) from every dataset under the data root; returns counts per dataset."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    root = DataRoot(cfg.data_root)
    shas = _images_of(root, kind, value)
    urls = _image_urls(root, shas)
    at = now()
    subject = subject_hash(kind, value)
    audit: list[dict[str, Any]] = []
    for ds in _datasets(root):
        rows = files = 0
        for path in root.part_files(ds):
            table = pq.read_table(path, filesystem=root.fs)
            mask = _row_mask(table, ds, kind, value, shas, urls)
            n = pc.sum(mask).as_py() or 0
            if n:
                root.rewrite_part(path, table.filter(pc.invert(mask)))
                rows += n
                files += 1
        if rows:
            audit.append(_audit_row(kind, subject, ds, rows, files, at))
    images = sum(root.delete_image(s) for s in shas)
    crops = 0
    for s in shas:
        p = root.crop_path(s)
        if root.fs.get_file_info(p).type == pafs.FileType.File:
            root.fs.delete_file(p)
            crops += 1
    if images or crops:
        audit.append(_audit_row(kind, subject, "images", 0, images + crops, at))
    reports = _remove_reports(root, shas)
    if reports:
        audit.append(_audit_row(kind, subject, "models/*/report.html", 0, reports, at))
    # The subject and every image of them: a later scrape must not store their photo again under another post.
    blocked = OptOut(root)
    wanted = [(kind, value)] + [("image", s) for s in sorted(shas) if (kind, value) != ("image", s)]
    new = [
        {"kind": k, "subject_hash": subject_hash(k, v), "added_at": at} for k, v in wanted if not blocked.blocks(k, v)
    ]
    root.write_part("optout", new)
    if not audit:
        audit.append(_audit_row(kind, subject, "(none)", 0, 0, at))
    root.write_part("audit", audit)
    return {
        "kind": kind,
        "subject_sha256": subject,
        "images_removed": images,
        "crops_removed": crops,
        "reports_removed": reports,
        "rows_removed": {a["dataset"]: a["rows_removed"] for a in audit if a["rows_removed"]},
    }


def _audit_row(kind: str, subject_hash: str, dataset: str, rows: int, files: int, at: dt.datetime) -> dict:
    return {
        "action": "forget",
        "kind": kind,
        "subject_hash": subject_hash,
        "dataset": dataset,
        "rows_removed": rows,
        "files_removed": files,
        "at": at,
    }


def apply_retention(cfg: Config) -> dict[str, int]:
    """Drop raw images older than ``privacy.raw_image_retention_days`` whose face crop is already stored."""
    days = cfg.privacy.raw_image_retention_days
    root = DataRoot(cfg.data_root)
    if days is None or not root.has("faces"):
        return {"images_removed": 0}
    t = root.read("faces", columns=["image_sha256", "crop_jpeg"])
    cropped = {s for s, c in zip(t.column(0).to_pylist(), t.column(1).to_pylist(), strict=True) if c}
    cutoff = now() - dt.timedelta(days=days)
    removed = 0
    base = root.path("images")
    if root.fs.get_file_info(base).type == pafs.FileType.NotFound:
        return {"images_removed": 0}
    for info in root.fs.get_file_info(pafs.FileSelector(base, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        sha = posixpath.basename(info.path)
        mtime = info.mtime
        if sha in cropped and mtime is not None and mtime.replace(tzinfo=mtime.tzinfo or dt.UTC) < cutoff:
            root.fs.delete_file(info.path)
            removed += 1
    if removed:
        root.write_part("audit", [_audit_row("retention", "", "images", 0, removed, now())])
    return {"images_removed": removed}
