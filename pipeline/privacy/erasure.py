"""Erase a person (or one image) from every output under the data root, under every stage's lock.

``forget(cfg, "user", "u0042")`` removes every row about that person (posts, staff, fetches, faces, labels, scores),
their raw images and crops, every model report that shows one of their images (each report lists the full sha256 of
every image it inlines in a sidecar ``report.images.json``), their images in every model's per-image test records
(``test_predictions.parquet``, each checkpoint's ``test.json``), their rows in stale temporaries (``<dataset>/_tmp/``),
and every image or crop file that no row points to (``images/aa/.tmp-*`` leftovers included: nobody can say whose
they are). It adds them to ``optout/`` (:mod:`pipeline.privacy.optout`) so that later scrapes skip them, and appends
one line per dataset to ``audit/`` holding what was done, when and how many rows, with a keyed hash of the subject,
never the id. The datasets it walks are the store's (:data:`pipeline.store.SCHEMAS`, one per labels task, one per
scores partition), never guessed from folders.

Subjects: ``user`` (a feed user id), ``person`` (a staff person id or the person column of imported scores: always
with its ``site``, as one id may name two people on two sites), ``image`` (an image sha256), ``acct`` (a fediverse
account ``user@host``, the posts' ``user_acct``: the same person through every server, whose ``user_id`` differs per
server; opted out as the account and as each (site, user id) it was seen as). A user may be given a site too;
without one, that user id is erased on every site. Trained models are not retrained: ``docs/security.md`` says what
that means.

Beyond rows: a person's profile-page fetch (a person the site gives no id is keyed by that URL, so the URL is found
from the id; for one with a site-given id it is their staff row's ``profile_url``), and every feed walk state
(``feed_cursors/``) that names one of their status ids: deleted whole, the next crawl walks that timeline again.

Example::

    from pipeline.privacy import forget
    forget(cfg, "person", "prof-7", site="uni-cs")
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import posixpath
import re
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline import locks
from pipeline.config import Config
from pipeline.model.meta import CHECKPOINT_TEST, TEST_PREDICTIONS
from pipeline.privacy.key import SCHEME_KEYED, root_key
from pipeline.privacy.optout import LISTS, OptOut, migrate_lists, normal_acct, subject_hash
from pipeline.store import (
    AUDIT_DS,
    CROPS_DIR,
    FEED_CURSORS_DIR,
    FETCHES_DS,
    IMAGES_DIR,
    LABELS_DS,
    MODELS_DS,
    OPTOUT_DS,
    POSTS_DS,
    SCHEMAS,
    SCORES_DS,
    STAFF_DS,
    STAGE_TEMPS,
    DataRoot,
    now,
    sub_dataset,
)

log = logging.getLogger("facerank")

KINDS = ("user", "person", "image", "acct")
SIDECAR_SUFFIX = ".images.json"  # <report>.html → <report>.images.json: the full sha256 of every inlined image


# ---------------------------------------------------------------------------------------------------- what to walk
def _person_cols(dataset: str, kind: str) -> tuple[str, ...]:
    """The columns of ``dataset`` that hold the id of a subject of this kind."""
    top, _, task = dataset.partition("/")
    if kind == "acct":
        return ("user_acct",) if top == POSTS_DS else ()
    if kind == "user":
        return {POSTS_DS: ("user_id",), LABELS_DS: ("person_id",) if task == "selfie" else ()}.get(top, ())
    if kind == "person":
        return {STAFF_DS: ("item_id",), LABELS_DS: ("person_id",) if task != "selfie" else ()}.get(top, ())
    return ()


def _units(root: DataRoot) -> list[tuple[str, list[str]]]:
    """(dataset name, its part files) for every dataset the store defines: labels per task, scores per partition."""
    names = [n for n in SCHEMAS if n not in LISTS]
    units = [(n, root.part_files(n)) for n in names]
    by_part: dict[str, list[str]] = {}
    for top in (SCORES_DS, LABELS_DS):  # every task's labels (imported sets too) and every scores partition
        base = root.path(top)
        for p in root.part_files(top):
            rel = posixpath.relpath(p, base)
            by_part.setdefault(sub_dataset(top, rel.split("/")[0]) if "/" in rel else top, []).append(p)
    return [(n, files) for n, files in units + sorted(by_part.items()) if files]


def _is_temporary(rel: str) -> bool:
    """A store write in flight or left by a killed writer (under ``_tmp/``, or named ``.tmp-*``), or a part that
    a reader set aside as unreadable (under ``_quarantine/``: its rows cannot be filtered, so it goes whole)."""
    parts = rel.split("/")
    return "_tmp" in parts[:-1] or "_quarantine" in parts[:-1] or parts[-1].startswith(".tmp-")


def _temporaries(root: DataRoot) -> list[tuple[str, str]]:
    """(dataset name, path) of every temporary in a dataset folder (labels per task, scores per partition)."""
    out = []
    for top in [n for n in SCHEMAS if n not in LISTS] + [LABELS_DS, SCORES_DS]:
        base = root.path(top)
        for info in walk_files(root, top):
            rel = posixpath.relpath(info.path, base)
            if _is_temporary(rel):
                nested = top in (LABELS_DS, SCORES_DS) and "/" in rel
                out.append((sub_dataset(top, rel.split("/")[0]) if nested else top, info.path))
    return out


def _columns(root: DataRoot, path: str, wanted: list[str], strict: bool = False) -> pa.Table | None:
    """Only the ``wanted`` columns the file has; ``None`` when it cannot be read (a torn temporary), unless
    ``strict`` (a dataset's own part file: an unreadable one is an error, not something to skip)."""
    try:
        names = pq.read_schema(path, filesystem=root.fs).names
        return pq.read_table(path, columns=[c for c in wanted if c in names], filesystem=root.fs)
    except (OSError, pa.ArrowException):
        if strict:
            raise
        return None


def walk_files(root: DataRoot, top: str) -> list[pafs.FileInfo]:
    """Every file under ``<root>/<top>`` (none when it is missing)."""
    base = root.path(top)
    if root.fs.get_file_info(base).type != pafs.FileType.Directory:
        return []
    return [i for i in root.fs.get_file_info(pafs.FileSelector(base, recursive=True)) if i.type == pafs.FileType.File]


# ---------------------------------------------------------------------------------------------------- matching
MATCH_COLUMNS = [
    "user_id", "user_acct", "item_id", "person_id", "site", "image_sha256", "url", "image_url", "profile_url"
]  # fmt: skip


class _Subject:
    """What identifies the person's rows: the id (and site), their image hashes, the URLs of those images and of
    their profile page, their posts' (site, item_id) and, for an account, the (site, user_id) it was seen as."""

    def __init__(self, kind: str, value: str, site: str | None):
        self.kind, self.value, self.site = kind, value, site
        self.shas: set[str] = {value} if kind == "image" else set()
        self.urls: set[str] = set()
        self.posts: set[tuple[str, str]] = set()  # (site, item_id) of their posts: status ids in feed_cursors/
        self.users: set[tuple[str, str]] = set()  # (site, user_id) of an account's posts

    def id_mask(self, table: pa.Table, dataset: str) -> pa.Array:
        mask = pa.array([False] * table.num_rows)
        for col in _person_cols(dataset, self.kind):
            if col in table.column_names:
                values = table.column(col)
                hit = pc.equal(pc.utf8_lower(values) if self.kind == "acct" else values, self.value)
                if self.site is not None and "site" in table.column_names:
                    hit = pc.and_(hit, pc.equal(table.column("site"), self.site))
                mask = pc.or_(mask, pc.fill_null(hit, False))
        return mask

    def mask(self, table: pa.Table, dataset: str) -> pa.Array:
        """True for rows to remove: the person's id, one of their images, or the URL of one."""
        mask = self.id_mask(table, dataset)
        for col, values in (("image_sha256", self.shas), ("url", self.urls)):
            if col in table.column_names and values:
                hit = pc.is_in(table.column(col), value_set=pa.array(sorted(values), pa.string()))
                mask = pc.or_(mask, pc.fill_null(hit, False))
        return mask

    def find(self, root: DataRoot, files: list[tuple[str, str]]) -> None:
        """Collect the person's image hashes, then those images' URLs, from ``(dataset, path)`` files."""
        tables = [(ds, _columns(root, p, MATCH_COLUMNS)) for ds, p in files if _person_cols(ds, self.kind)]
        for ds, t in tables:
            if t is not None and "image_sha256" in t.column_names:
                mine = t.filter(self.id_mask(t, ds))
                self.shas |= {s for s in mine.column("image_sha256").to_pylist() if s}
                if ds == STAFF_DS and "profile_url" in mine.column_names:  # their own page: its fetches row
                    self.urls |= {u for u in mine.column("profile_url").to_pylist() if u}
                if ds == POSTS_DS and {"site", "item_id", "user_id"} <= set(mine.column_names):
                    sites, items = mine.column("site").to_pylist(), mine.column("item_id").to_pylist()
                    self.posts |= {(s, i) for s, i in zip(sites, items, strict=True) if s and i}
                    if self.kind == "acct":
                        users = mine.column("user_id").to_pylist()
                        self.users |= {(s, u) for s, u in zip(sites, users, strict=True) if s and u}
        if self.kind == "person":
            self.urls |= self._profile_pages(root, [p for ds, p in files if ds == FETCHES_DS])
        wanted = pa.array(sorted(self.shas), pa.string())
        for ds, p in files:
            t = _columns(root, p, ["image_sha256", "image_url"]) if ds in (POSTS_DS, STAFF_DS) and self.shas else None
            if t is not None and {"image_url", "image_sha256"} <= set(t.column_names):
                hit = pc.fill_null(pc.is_in(t.column("image_sha256"), value_set=wanted), False)
                self.urls |= {u for u in t.filter(hit).column("image_url").to_pylist() if u}

    def _profile_pages(self, root: DataRoot, files: list[str]) -> set[str]:
        """The site's page fetches whose URL is this person's profile page: the URL the crawl keyed them by (a
        person without a site-given id is ``person_id(site, profile_url=URL)``)."""
        from pipeline.scrape.staff.people import person_id

        found: set[str] = set()
        for path in files:
            t = _columns(root, path, ["url", "site", "kind"])
            if t is None or not {"url", "site", "kind"} <= set(t.column_names):
                continue
            for url, site, kind in zip(*(t.column(c).to_pylist() for c in ("url", "site", "kind")), strict=True):
                if url and site == self.site and kind == "page" and person_id(site, None, None, url) == self.value:
                    found.add(url)
        return found


def _erase_rows(root: DataRoot, who: _Subject, ds: str, files: list[str]) -> tuple[int, int]:
    """Rewrite each part file of ``ds`` without the person's rows; returns (rows, files) changed."""
    rows = changed = 0
    for path in files:
        n = pc.sum(who.mask(_columns(root, path, MATCH_COLUMNS, strict=True), ds)).as_py() or 0
        if n:
            table = pq.read_table(path, filesystem=root.fs)
            root.rewrite_part(path, table.filter(pc.invert(who.mask(table, ds))))
            rows += n
            changed += 1
    return rows, changed


def _remove_temporaries(root: DataRoot, who: _Subject, temps: list[tuple[str, str]]) -> int:
    """Delete temporaries that hold the person's rows, and those that cannot be read (torn: contents unknown)."""
    removed = 0
    for ds, path in temps:
        table = _columns(root, path, MATCH_COLUMNS)
        if table is None or (pc.sum(who.mask(table, ds)).as_py() or 0):
            root.fs.delete_file(path)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------------------------- files
def _referenced(root: DataRoot) -> set[str]:
    """Every image sha256 some row of some dataset points to."""
    shas: set[str] = set()
    for _, files in _units(root):
        for p in files:
            t = _columns(root, p, ["image_sha256"])
            if t is not None and t.num_columns:
                shas |= set(pc.unique(t.column(0).drop_null()).to_pylist())
    return shas


def _sweep_unreferenced(root: DataRoot) -> int:
    """Delete image and crop files no row points to (``.tmp-*`` leftovers included): whose they are is unknown."""
    keep = _referenced(root)
    removed = 0
    for top, suffix in ((IMAGES_DIR, ""), (CROPS_DIR, ".jpg")):
        for info in walk_files(root, top):
            name = posixpath.basename(info.path)
            if name.startswith(".") or name.removesuffix(suffix) not in keep:
                root.fs.delete_file(info.path)
                removed += 1
    return removed


def _delete_files(root: DataRoot, shas: set[str]) -> tuple[int, int]:
    """Delete the raw images and crop files of ``shas``; returns (images, crops)."""
    images = sum(root.delete_image(s) for s in shas)
    crops = 0
    for s in shas:
        if root.fs.get_file_info(root.crop_path(s)).type == pafs.FileType.File:
            root.fs.delete_file(root.crop_path(s))
            crops += 1
    return images, crops


def _remove_cursors(root: DataRoot, posts: set[tuple[str, str]]) -> int:
    """Delete every feed walk state (``feed_cursors/<site>/<tag>.json``) that names one of the person's status ids
    (in a page's ids, a ``top``/``watermark`` or a paging URL), and ``.tmp-*`` leftovers there (contents unknown). A
    lost state file only costs the next crawl a full walk of that timeline (pipeline/scrape/cursors.py)."""
    by_site: dict[str, set[str]] = {}
    for site, item in posts:
        by_site.setdefault(quote(site, safe=""), set()).add(item)
    removed = 0
    for info in walk_files(root, FEED_CURSORS_DIR):
        rel = posixpath.relpath(info.path, root.path(FEED_CURSORS_DIR))
        ids = by_site.get(rel.split("/")[0], set())
        if posixpath.basename(rel).startswith(".tmp-") or (ids and _names_any(root.read_bytes(info.path), ids)):
            root.fs.delete_file(info.path)
            removed += 1
    return removed


def _names_any(data: bytes, ids: set[str]) -> bool:
    """Whether ``data`` holds one of ``ids`` as a whole token (not inside a longer id)."""
    text = data.decode("utf-8", "replace")
    return any(re.search(rf"(?<![0-9A-Za-z_-]){re.escape(i)}(?![0-9A-Za-z_-])", text) for i in ids)


def report_sidecar(html_path: str) -> str:
    """The sidecar of a report page: ``x/report.html`` → ``x/report.images.json``."""
    return html_path.removesuffix(".html") + SIDECAR_SUFFIX


def _listed(root: DataRoot, sidecar: str) -> set[str] | None:
    """The image hashes a report's sidecar lists; ``None`` when it is missing or unreadable."""
    try:
        return set(root.read_json(sidecar)["image_sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _remove_reports(root: DataRoot, shas: set[str]) -> int:
    """Delete every report under models/ that shows one of these images (its sidecar says; no sidecar: it may)."""
    if not shas:
        return 0
    files = {i.path for i in walk_files(root, MODELS_DS)}
    removed = 0
    for path in sorted(files):
        name = posixpath.basename(path)
        page = path.removesuffix(SIDECAR_SUFFIX) + ".html" if path.endswith(SIDECAR_SUFFIX) else path
        if name.startswith(".report-"):  # a page a killed writer left half-written
            root.fs.delete_file(path)
            removed += 1
        elif path.endswith(".html") or (path.endswith(SIDECAR_SUFFIX) and page not in files):
            side = report_sidecar(page)
            listed = _listed(root, side) if side in files else None
            if listed is None or listed & shas:
                for p in sorted({path, side} & files):
                    root.fs.delete_file(p)
                removed += 1
    return removed


def _scrub_test_records(root: DataRoot, shas: set[str]) -> tuple[int, int]:
    """Remove these images from every model's per-image test records: an export's ``test_predictions.parquet`` and
    each training checkpoint's ``test.json`` (rewritten whole, atomically; the metrics already computed stay).
    Returns (rows removed, files rewritten)."""
    if not shas:
        return 0, 0
    rows = files = 0
    for info in walk_files(root, MODELS_DS):
        name = posixpath.basename(info.path)
        if name == TEST_PREDICTIONS:
            table = pq.read_table(pa.BufferReader(root.read_bytes(info.path)))
            mine = pc.is_in(table["image_sha256"], value_set=pa.array(sorted(shas), pa.string()))
            n = pc.sum(mine).as_py() or 0
            if n:
                buf = pa.BufferOutputStream()
                pq.write_table(table.filter(pc.invert(pc.fill_null(mine, False))), buf)
                root.write_bytes_atomic(info.path, buf.getvalue().to_pybytes())
                rows, files = rows + n, files + 1
        elif name == CHECKPOINT_TEST:
            test = json.loads(root.read_bytes(info.path))
            keys = test.get("image_sha256") or []
            keep = [i for i, k in enumerate(keys) if k not in shas]
            if len(keep) < len(keys):
                for col in ("y", "outputs", "image_sha256"):
                    if isinstance(test.get(col), list) and len(test[col]) == len(keys):
                        test[col] = [test[col][i] for i in keep]
                root.write_bytes_atomic(info.path, json.dumps(test).encode())
                rows, files = rows + len(keys) - len(keep), files + 1
    return rows, files


# ---------------------------------------------------------------------------------------------------- forget
def forget(cfg: Config, kind: str, value: str, site: str | None = None) -> dict[str, Any]:
    """Erase a person (or one image) from everything under the data root; returns counts per dataset.

    It holds every stage's lock and every tool's (:data:`pipeline.locks.TOOLS`: imports, report, retention)
    meanwhile (:mod:`pipeline.locks`), so no stage or tool writes, cleans or resumes under it; one that runs now
    makes it fail with :class:`~pipeline.locks.StageLockedError` (exit 4). The locks
    are taken without the stages' own clean-up: forget reads the temporaries first (the images their rows name
    join the opt-out list), then deletes them.
    """
    root = DataRoot(cfg.data_root)
    with contextlib.ExitStack() as held:
        for stage in (*STAGE_TEMPS, *locks.TOOLS):
            held.enter_context(locks.hold(root, stage, ttl_s=cfg.locks.ttl_s, heartbeat_s=cfg.locks.heartbeat_s))
        return _forget(cfg, root, kind, value, site)


def _forget(cfg: Config, root: DataRoot, kind: str, value: str, site: str | None) -> dict[str, Any]:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    if kind == "person" and not site:
        raise ValueError("a person is keyed by (site, id): give the site")
    site = None if kind in ("image", "acct") else site
    value = normal_acct(value) if kind == "acct" else value
    key = root_key(root, cfg.privacy)
    migrate_lists(root, key)
    blocked = OptOut(root, key=key)
    who = _Subject(kind, value, site)
    units, temps = _units(root), _temporaries(root)
    who.find(root, [(ds, p) for ds, files in units for p in files] + [(ds, p) for ds, p in temps])
    at, subject = now(), subject_hash(kind, value, key, site)
    audit: list[dict[str, Any]] = []

    def note(dataset: str, rows: int, files: int) -> None:
        if rows or files:
            audit.append(audit_row(kind, subject, dataset, rows, files, at))

    for ds, files in units:
        note(ds, *_erase_rows(root, who, ds, files))
    temporaries = _remove_temporaries(root, who, temps)
    note("temporaries (_tmp/, .tmp-*)", 0, temporaries)
    images, crops = _delete_files(root, who.shas)
    note(IMAGES_DIR, 0, images + crops)
    unreferenced = _sweep_unreferenced(root)
    note(f"{IMAGES_DIR} (unreferenced)", 0, unreferenced)
    reports = _remove_reports(root, who.shas)
    note(f"{MODELS_DS}/*/report.html", 0, reports)
    note(f"{MODELS_DS}/*/test records", *_scrub_test_records(root, who.shas))
    cursors = _remove_cursors(root, who.posts)
    note(FEED_CURSORS_DIR, 0, cursors)
    _opt_out(root, blocked, who, at)
    if not audit:
        audit.append(audit_row(kind, subject, "(none)", 0, 0, at))
    root.write_part(AUDIT_DS, audit)
    return {
        "kind": kind,
        "site": site,
        "subject_hash": subject,
        "images_removed": images,
        "crops_removed": crops,
        "reports_removed": reports,
        "feed_cursors_removed": cursors,
        "temporaries_removed": temporaries,
        "unreferenced_removed": unreferenced,
        "rows_removed": {a["dataset"]: a["rows_removed"] for a in audit if a["rows_removed"]},
    }


def _opt_out(root: DataRoot, blocked: OptOut, who: _Subject, at: dt.datetime) -> None:
    """Add the subject and every image of them to the opt-out list (a later scrape must not store their photo
    again under another post), unless already there."""
    wanted = [(who.kind, who.value, who.site)]
    wanted += [("image", s, None) for s in sorted(who.shas) if (who.kind, who.value) != ("image", s)]
    wanted += [("user", u, site) for site, u in sorted(who.users)]  # an account as each server's user id
    hashes = [(k, subject_hash(k, v, blocked.key, site)) for k, v, site in wanted]
    new = [{"kind": k, "subject_hash": h, "scheme": SCHEME_KEYED, "added_at": at} for k, h in hashes]
    root.write_part(OPTOUT_DS, [r for r in new if r["subject_hash"] not in blocked.hashes])


def audit_row(kind: str, subject_hash: str, dataset: str, rows: int, files: int, at: dt.datetime) -> dict:
    return {
        "action": "forget",
        "kind": kind,
        "subject_hash": subject_hash,
        "scheme": SCHEME_KEYED if subject_hash else None,
        "dataset": dataset,
        "rows_removed": rows,
        "files_removed": files,
        "at": at,
    }
