"""The data root: where every dataset lives, its Parquet schema, atomic writes, and "what is already done".

This is the one module that spells a path under the data root or a column type. Every stage reads its inputs and
writes its output through a :class:`DataRoot`, so the same code runs on a local folder and on ``s3://bucket/prefix``
(pyarrow's filesystem layer).

Layout (``root`` is a local folder or an ``s3://`` URI)::

    images/<aa>/<sha256>          raw image bytes, content-addressed, written once
    crops/<aa>/<sha256>.jpg       face crops as files, only when faces.write_files is on
    fetches/part-*.parquet        one row per (site, fetched URL) (page, image, robots.txt): status and reason
    posts/part-*.parquet          one row per feed post            key (site, item_id)
    staff/part-*.parquet          one row per staff person         key (site, item_id)
    faces/part-*.parquet          one row per image                key image_sha256
    labels/<task>/labels.parquet  one row per labelled item        key item_id  (task: selfie, department, beauty)
    models/<run_id>/              model.pt, model.json, metrics.json, plots; checkpoints/ while training
    scores/dt=YYYY-MM-DD/part-*   one row per (image, model)       key (image_sha256, model_id)
    optout/part-*.parquet         people who asked to be forgotten
    optout/_key.json              the fingerprint of the key the opt-out list is made with (pipeline/privacy/key.py)
    audit/part-*.parquet          what was erased when (never the erased data)
    _locks/<stage>.lock           the run of a stage that holds the data root (pipeline/locks.py)
    feed_cursors/<site>/<tag>.json  where incremental feed walks stand (pipeline/scrape/feeds/cursors.py)
    <dataset>/_quarantine/        part files found unreadable (torn), moved out of the readers' way

Writes are atomic: a part file is written under ``<dataset>/_tmp/`` and then moved into place, so a killed job
leaves no half-written Parquet file where readers look (pyarrow ignores names starting with ``_`` or ``.``). On a
local folder the file is fsynced before the rename and its folder after it, so a crash cannot leave a renamed but
empty or torn part. Reruns resume by key: :meth:`DataRoot.done_keys` reads only the key columns of what is already
there. A stage runs only while holding its lock (:mod:`pipeline.locks`, which sits above this module), which first
has the ``_tmp/`` leftovers of that stage's own datasets removed (:meth:`DataRoot.clean_stage_tmp`,
:data:`STAGE_TEMPS`); it never touches another stage's.

Readers skip a part file that cannot be read: locally each part's footer is checked once per process (cheap; a
torn or empty file fails it), and a read that still fails on corrupt data checks every part; an unreadable part is
moved to ``<dataset>/_quarantine/`` with a warning naming the reason, and the read goes on with the other parts.

Example::

    root = DataRoot("data")
    root.append("posts", [{"site": "demo", "item_id": "p1", ...}])
    table = root.read("posts", columns=["item_id", "likes"])
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import posixpath
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq

log = logging.getLogger("facerank.store")


class MissingDatasetError(RuntimeError):
    """A stage's input dataset does not exist yet (run the stage that writes it first)."""


class InputError(ValueError):
    """A stage's or command's input exists but cannot be used (a bad label set, a model that cannot be scored the
    way it was trained, a bad import); ``str(err)`` says why in one line. The CLI prints it and exits with 3."""


TS = pa.timestamp("us", tz="UTC")
STATUS_OK, STATUS_SKIPPED, STATUS_ERROR, STATUS_EXCLUDED = "ok", "skipped", "error", "excluded"

# ------------------------------------------------------------------------------------------------ schemas
FETCHES = pa.schema(
    [
        ("url", pa.string()),
        ("site", pa.string()),
        ("kind", pa.string()),  # page | image | robots
        ("host", pa.string()),
        ("status", pa.string()),  # ok | skipped | error
        ("http_status", pa.int32()),
        ("reason", pa.string()),
        ("attempts", pa.int32()),
        ("bytes", pa.int64()),
        ("image_sha256", pa.string()),
        ("fetched_at", TS),
    ]
)

POSTS = pa.schema(
    [
        ("site", pa.string()),
        ("item_id", pa.string()),
        ("hashtag", pa.string()),
        ("user_id", pa.string()),
        ("followers", pa.int64()),
        ("likes", pa.int64()),
        ("tags", pa.list_(pa.string())),
        ("posted_at", TS),
        ("scraped_at", TS),
        ("too_young", pa.bool_()),  # younger than min_post_age_days when scraped: likes not yet stable
        ("image_url", pa.string()),
        ("user_acct", pa.string()),  # user@instance (Mastodon); null where the feed has none
        ("reblogs", pa.int64()),
        ("post_url", pa.string()),
        ("counts_from", pa.string()),  # the host whose counts these are (a federated server's view of the post)
        ("replies", pa.int64()),  # replies counted by the feed (null where it has none; older parts read as null)
        ("quotes", pa.int64()),  # quote posts (Bluesky's quoteCount)
        ("reactions", pa.string()),  # the reactions map as JSON text, {"emoji": count} (Misskey, Akkoma)
        ("image_sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)

STAFF = pa.schema(
    [
        ("site", pa.string()),
        (
            "item_id",
            pa.string(),
        ),  # stable person id on the site (a hash of page URL and name when none is given)
        ("department", pa.string()),
        ("name", pa.string()),
        ("role", pa.string()),
        ("is_academic", pa.bool_()),
        ("page_url", pa.string()),
        ("profile_url", pa.string()),  # the person's own page on the site (forget --person erases its fetches)
        ("image_url", pa.string()),
        ("image_sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("scraped_at", TS),
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)

FACES = pa.schema(
    [
        ("image_sha256", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("n_faces", pa.int32()),  # faces with probability >= faces.min_prob, any size (boxes etc. hold them)
        ("boxes", pa.list_(pa.list_(pa.float32(), 4))),  # x1, y1, x2, y2 in original pixels, by probability
        ("probs", pa.list_(pa.float32())),
        ("landmarks", pa.list_(pa.list_(pa.float32(), 10))),  # 5 points (x, y): eyes, nose, mouth corners
        ("face_share", pa.float32()),  # the kept (or largest) face's box area / image area
        ("kept", pa.bool_()),
        # why not kept, "<code>: <detail>"; codes: decode_error, missing_image, image_too_small, no_face, low_prob,
        # too_small, many_faces, detect_error, crop_error
        ("reason", pa.string()),
        ("face_index", pa.int32()),  # index into boxes/probs/landmarks of the cropped face (null when not kept)
        ("crop_box", pa.list_(pa.float32(), 4)),  # the square cut, in original pixels (may extend past the edges)
        ("crop_jpeg", pa.binary()),
        ("processed_at", TS),
        # how the crop was made: a pipeline.faces.recipe.CropRecipe as canonical JSON (null: written before rows
        # recorded it); models record the recipe they trained on and scoring reuses only rows made the same way
        ("recipe", pa.string()),
    ]
)

# Every labels/<task> table has these columns first; a task may add its own after them.
LABELS_BASE = [
    ("item_id", pa.string()),
    ("site", pa.string()),
    ("person_id", pa.string()),  # the split key: one person never lands on two splits
    ("image_sha256", pa.string()),
    ("status", pa.string()),  # ok | excluded
    ("reason", pa.string()),
    ("label", pa.int32()),  # class index (classification); null for regression and excluded rows
    ("class_name", pa.string()),
    ("target", pa.float64()),  # regression target (or the label as a float)
    ("split", pa.string()),  # train | val | test
    ("fold", pa.int32()),  # k-fold index when k-fold is configured, else null
    ("weight", pa.float64()),  # class-balanced sampling weight
    ("group", pa.string()),  # a group the model's accuracy is reported per (age band, skin type...); null: none
]

SELFIE_LABELS = pa.schema(
    LABELS_BASE
    + [
        ("followers", pa.int64()),
        ("likes", pa.int64()),
        ("n_tags", pa.int32()),
        ("audience", pa.float64()),
        ("group_id", pa.int32()),
        ("rank_in_group", pa.int32()),  # 0 = most likes in the group
        ("like_percentile", pa.float64()),  # within-group percentile of likes, 0..1
        ("likes_per_follower", pa.float64()),
    ]
)
DEPARTMENT_LABELS = pa.schema(LABELS_BASE + [("department", pa.string())])
BEAUTY_LABELS = pa.schema(LABELS_BASE + [("file", pa.string())])
# labels/<task> written by `labels import-classes` (any other task name): the source file and its raw label
IMPORTED_LABELS = pa.schema(LABELS_BASE + [("file", pa.string()), ("raw_label", pa.string())])
LABEL_SCHEMAS = {"selfie": SELFIE_LABELS, "department": DEPARTMENT_LABELS, "beauty": BEAUTY_LABELS}
IMPORT_JSON = "import.json"  # labels/<task>/import.json: where an imported label set came from (see labels/imports)

SCORES = pa.schema(
    [
        ("image_sha256", pa.string()),
        ("model_id", pa.string()),
        ("score", pa.float64()),  # probability of the positive class, predicted class probability, or value
        ("predicted", pa.string()),  # predicted class name (classification) or null
        ("percentile", pa.float64()),  # share of the model's test-set scores below this score, 0..1
        ("face_found", pa.bool_()),
        ("status", pa.string()),
        ("reason", pa.string()),
        ("run_id", pa.string()),
        ("scored_at", TS),
    ]
)

OPTOUT = pa.schema(
    [
        ("kind", pa.string()),  # user | person | image
        ("subject_hash", pa.string()),  # keyed hash of the subject (pipeline.privacy): never the id itself
        ("added_at", TS),
        ("scheme", pa.string()),  # hmac-sha256; null: an old unkeyed sha256 row, rewritten keyed on first use
    ]
)
AUDIT = pa.schema(
    [
        ("action", pa.string()),
        ("kind", pa.string()),
        ("subject_hash", pa.string()),  # keyed hash of the subject id: the audit never holds the erased id itself
        ("dataset", pa.string()),
        ("rows_removed", pa.int64()),
        ("files_removed", pa.int64()),
        ("at", TS),
        ("scheme", pa.string()),  # as in OPTOUT
    ]
)

# ------------------------------------------------------------------------------------------------ dataset names
# Every dataset's name, spelled only here: other modules use these constants, and name a label task's dataset with
# DataRoot.labels_dataset(task), a day's scores with DataRoot.scores_partition(day), a sub-folder found on disk
# (``labels/<task>``, ``scores/dt=<day>``) with sub_dataset(top, folder).
FETCHES_DS, POSTS_DS, STAFF_DS, FACES_DS = "fetches", "posts", "staff", "faces"
LABELS_DS, MODELS_DS, SCORES_DS = "labels", "models", "scores"
OPTOUT_DS, AUDIT_DS = "optout", "audit"
IMAGES_DIR, CROPS_DIR = "images", "crops"  # files by sha256 (raw bytes; face crops on request), not Parquet
FEED_CURSORS_DIR = (
    "feed_cursors"  # <site>/<hashtag>.json: the feed walks' status ids (pipeline/scrape/feeds/cursors.py)
)


def sub_dataset(top: str, folder: str) -> str:
    """The dataset in ``folder`` below ``top``: a label task (``labels/selfie``) or a scores partition."""
    return f"{top}/{folder}"


SCHEMAS: dict[str, pa.Schema] = {
    FETCHES_DS: FETCHES,
    POSTS_DS: POSTS,
    STAFF_DS: STAFF,
    FACES_DS: FACES,
    OPTOUT_DS: OPTOUT,
    AUDIT_DS: AUDIT,
}
KEYS: dict[str, tuple[str, ...]] = {
    FETCHES_DS: ("site", "url"),  # two site entries that share a page URL get a page row each
    POSTS_DS: ("site", "item_id"),
    STAFF_DS: ("site", "item_id"),
    FACES_DS: ("image_sha256",),
    SCORES_DS: ("image_sha256", "model_id"),
}
# Which stage writes which dataset: used to name the missing input in errors.
WRITTEN_BY = {
    POSTS_DS: "scrape",
    STAFF_DS: "scrape",
    FETCHES_DS: "scrape",
    FACES_DS: "faces",
    LABELS_DS: "labels",
    MODELS_DS: "train",
    SCORES_DS: "score",
}
# The datasets whose ``_tmp/`` each stage owns: it removes their leftovers when it starts, under its lock
# (``scores`` with its ``dt=`` partitions). ``labels/beauty`` belongs to ``labels import-scores``, not the stage.
STAGE_TEMPS: dict[str, tuple[str, ...]] = {
    "scrape": (POSTS_DS, STAFF_DS, FETCHES_DS),
    "faces": (FACES_DS,),
    "labels": (sub_dataset(LABELS_DS, "selfie"), sub_dataset(LABELS_DS, "department")),
    "train": (),
    "score": (SCORES_DS,),
}
_STAGE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")
_WHOLE: dict[str, tuple[int, int]] = {}  # local part files whose footer was read: path → (size, mtime_ns)


def _fsync(path: str, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _corrupt(err: BaseException, local: bool) -> bool:
    """Whether a read error means the bytes are bad (not a missing file, a permission or a lost connection)."""
    if isinstance(err, pa.ArrowInvalid):
        return True
    return local and isinstance(err, OSError) and err.errno is None and not isinstance(err, FileNotFoundError)


def _one_line(err: BaseException) -> str:
    lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()]
    return lines[-1] if lines else type(err).__name__


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def to_table(rows: Sequence[dict[str, Any]] | pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows (dicts) or a table → a table with exactly ``schema`` (missing columns null, extra columns an error)."""
    if isinstance(rows, pa.Table):
        extra = set(rows.column_names) - set(schema.names)
        if extra:
            raise ValueError(f"columns not in the schema: {sorted(extra)}")
        cols = [
            rows.column(f.name).cast(f.type) if f.name in rows.column_names else pa.nulls(len(rows), f.type)
            for f in schema
        ]
        return pa.Table.from_arrays(cols, schema=schema)
    for r in rows:
        extra = set(r) - set(schema.names)
        if extra:
            raise ValueError(f"columns not in the schema: {sorted(extra)}")
    return pa.Table.from_pylist(list(rows), schema=schema)


_FENCES: list = []  # callables(root) that raise when a lock this process holds on the root was lost (pipeline.locks)


def register_fence(check) -> None:
    """Have :meth:`DataRoot.fence` call ``check(root)`` before every write (``pipeline.locks`` registers its own)."""
    if check not in _FENCES:
        _FENCES.append(check)


class DataRoot:
    """A data root on a local folder or an object store; all dataset I/O goes through it."""

    def __init__(self, root: str):
        self.uri = str(root)
        if "://" in self.uri:
            self.fs, self.base = pafs.FileSystem.from_uri(self.uri)
        else:
            self.fs, self.base = pafs.LocalFileSystem(), os.path.abspath(self.uri)
        self.base = self.base.rstrip("/")
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    # ---------------------------------------------------------------- paths
    def path(self, *parts: str) -> str:
        return posixpath.join(self.base, *parts)

    def image_path(self, sha: str) -> str:
        return self.path(IMAGES_DIR, sha[:2], sha)

    def crop_path(self, sha: str) -> str:
        """Face crops written as files on request (``faces.write_files``), beside the Parquet copy."""
        return self.path(CROPS_DIR, sha[:2], f"{sha}.jpg")

    def labels_dataset(self, task: str) -> str:
        return sub_dataset(LABELS_DS, task)

    def model_dir(self, run_id: str) -> str:
        return self.path(MODELS_DS, run_id)

    def scores_partition(self, day: dt.date) -> str:
        return sub_dataset(SCORES_DS, f"dt={day.isoformat()}")

    def lock_path(self, stage: str) -> str:
        if not _STAGE_NAME.fullmatch(stage):
            raise ValueError(f"not a stage name: {stage!r}")
        return self.path("_locks", f"{stage}.lock")

    def optout_key_path(self) -> str:
        """Where the fingerprint of the opt-out list's key is kept (``_``: no reader takes it for a part)."""
        return self.path(OPTOUT_DS, "_key.json")

    def exists(self, *parts: str) -> bool:
        return self.fs.get_file_info(self.path(*parts)).type != pafs.FileType.NotFound

    def mkdir(self, *parts: str) -> str:
        p = self.path(*parts)
        self.fs.create_dir(p, recursive=True)
        return p

    # ---------------------------------------------------------------- atomic bytes
    def write_bytes_atomic(self, path: str, data: bytes) -> None:
        """Write ``data`` to the absolute ``path`` under this root: a temp name beside it, then a rename. Locally with
        plain system calls (the crawl stores every image here): the folder is made only when the temp file cannot
        be created without it, and the file is fsynced through the descriptor that wrote it."""
        parent = posixpath.dirname(path)
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}")
        if not self.local:
            self.fs.create_dir(parent, recursive=True)
            with self.fs.open_output_stream(tmp) as out:
                out.write(data)
            self._commit(tmp, path)
            return
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(tmp, flags, 0o666)
        except FileNotFoundError:  # the folder is not there yet
            os.makedirs(parent, exist_ok=True)
            fd = os.open(tmp, flags, 0o666)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)  # its bytes reach the disk before the rename
            finally:
                os.close(fd)
            self.fence()
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync(parent, directory=True)  # the rename, after it

    def fence(self) -> None:
        """Raise :class:`~pipeline.locks.LockLostError` when a lock this process holds on this root was taken over
        (or not renewed within its ttl): called before every write and commit, so a fenced-off run stops writing.
        The checks are the ones :mod:`pipeline.locks` registers (:func:`register_fence`): locks sit above the store,
        and a process that holds no lock has imported none."""
        for check in _FENCES:
            check(self)

    def _commit(self, tmp: str, final: str) -> None:
        """Move a written temp file into place; locally its bytes reach the disk before the rename, the rename after."""
        self.fence()
        if self.local:
            _fsync(tmp)
        self.fs.move(tmp, final)
        if self.local:
            _fsync(posixpath.dirname(final), directory=True)

    def create_once(self, path: str, data: bytes) -> bool:
        """Write ``data`` to ``path`` unless it exists; whether this call wrote it. Locally atomic (a ``link()``
        of a whole temp file: of two writers exactly one wins); on other filesystems a check, then a write."""
        self.fence()
        parent = posixpath.dirname(path)
        self.fs.create_dir(parent, recursive=True)
        if not self.local:
            if self.fs.get_file_info(path).type != pafs.FileType.NotFound:
                return False
            self.write_bytes_atomic(path, data)
            return True
        tmp = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}")
        with open(tmp, "wb") as out:
            out.write(data)
        _fsync(tmp)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        _fsync(parent, directory=True)
        return True

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as f:
            return f.read()

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes_atomic(path, json.dumps(obj, indent=2, default=str).encode())

    def read_json(self, path: str) -> Any:
        return json.loads(self.read_bytes(path))

    # ---------------------------------------------------------------- images
    def has_image(self, sha: str) -> bool:
        if self.local:  # a stat, without pyarrow's FileInfo (once per stored image in the crawl)
            return os.path.isfile(self.image_path(sha))
        return self.fs.get_file_info(self.image_path(sha)).type == pafs.FileType.File

    def put_image(self, data: bytes, sha: str | None = None) -> str:
        """Store image bytes under their sha256 (once) and return the hash; ``sha``: the caller already hashed them."""
        sha = sha or sha256_bytes(data)
        self.put_image_new(data, sha)
        return sha

    def put_image_new(self, data: bytes, sha: str) -> bool:
        """Store image bytes whose sha256 is ``sha`` unless stored already; whether they were new."""
        if self.has_image(sha):
            return False
        self.write_bytes_atomic(self.image_path(sha), data)
        return True

    def get_image(self, sha: str) -> bytes:
        return self.read_bytes(self.image_path(sha))

    def delete_image(self, sha: str) -> bool:
        self.fence()
        if self.has_image(sha):
            self.fs.delete_file(self.image_path(sha))
            return True
        return False

    # ---------------------------------------------------------------- datasets
    def schema(self, dataset: str) -> pa.Schema:
        top = dataset.split("/")[0]
        if top == LABELS_DS:
            return LABEL_SCHEMAS.get(dataset.split("/")[1], IMPORTED_LABELS)
        if top == SCORES_DS:
            return SCORES
        return SCHEMAS[top]

    def has(self, dataset: str) -> bool:
        return bool(self.part_files(dataset))

    def part_files(self, dataset: str) -> list[str]:
        """The dataset's visible part files; locally a part whose footer cannot be read is quarantined and left out."""
        return [f.path for f in self.part_infos(dataset)]

    def part_infos(self, dataset: str) -> list[pafs.FileInfo]:
        """:meth:`part_files` as ``FileInfo`` entries (path, size, mtime), sorted by path, from the same listing."""
        d = self.path(dataset)
        info = self.fs.get_file_info(d)
        if info.type == pafs.FileType.NotFound:
            return []
        sel = pafs.FileSelector(d, recursive=True)
        files = [
            f
            for f in self.fs.get_file_info(sel)
            if f.type == pafs.FileType.File
            and f.path.endswith(".parquet")
            and not any(part.startswith(("_", ".")) for part in posixpath.relpath(f.path, d).split("/"))
        ]
        if self.local:  # on an object store a part appears whole or not at all
            files = [f for f in files if self._footer_ok(dataset, f)]
        return sorted(files, key=lambda f: f.path)

    def _footer_ok(self, dataset: str, f: pafs.FileInfo) -> bool:
        stamp = (f.size, f.mtime_ns)
        if _WHOLE.get(f.path) == stamp:
            return True
        try:
            pq.read_metadata(f.path, filesystem=self.fs)
        except FileNotFoundError:
            return False  # removed in between (a replace, another reader's quarantine)
        except (pa.ArrowInvalid, OSError) as err:
            if not _corrupt(err, self.local):
                raise
            self.quarantine(dataset, f.path, _one_line(err))
            return False
        _WHOLE[f.path] = stamp
        return True

    def quarantine(self, dataset: str, path: str, reason: str) -> str | None:
        """Move an unreadable part file to ``<dataset>/_quarantine/`` (readers skip it); returns where it went."""
        d = self.path(dataset)
        dest = posixpath.join(d, "_quarantine", posixpath.relpath(path, d))
        if self.fs.get_file_info(dest).type != pafs.FileType.NotFound:
            dest = f"{dest}.{uuid.uuid4().hex[:8]}"
        self.fs.create_dir(posixpath.dirname(dest), recursive=True)
        try:
            self.fs.move(path, dest)
        except FileNotFoundError:
            return None  # another reader moved it first
        log.warning("%s: unreadable part file %s moved to %s: %s", dataset, path, dest, reason)
        return dest

    def quarantine_unreadable(self, dataset: str) -> int:
        """Read every part of ``dataset`` in full and quarantine those whose data is corrupt; returns how many."""
        n = 0
        for path in self.part_files(dataset):
            try:
                pq.read_table(path, filesystem=self.fs)
            except (pa.ArrowInvalid, OSError) as err:
                if _corrupt(err, self.local) and self.quarantine(dataset, path, _one_line(err)):
                    n += 1
        return n

    def require(self, dataset: str) -> None:
        """Raise :class:`MissingDatasetError` naming the dataset and the stage that writes it."""
        if not self.has(dataset):
            stage = WRITTEN_BY.get(dataset.split("/")[0], "?")
            raise MissingDatasetError(
                f"input dataset '{dataset}' is missing under {self.uri}: run the '{stage}' stage first"
            )

    def dataset(self, dataset: str) -> pads.Dataset:
        """A lazily read pyarrow dataset over the part files (hive partitions such as ``dt=`` become columns).

        Unpartitioned datasets are read with their schema, so a part written before a column was added reads that
        column as nulls."""
        self.require(dataset)
        top = dataset.split("/")[0]
        schema = self.schema(dataset) if top in SCHEMAS or top == LABELS_DS else None
        return pads.dataset(
            self.part_files(dataset),
            schema=schema,
            filesystem=self.fs,
            format="parquet",
            partitioning=None if schema is not None else pads.HivePartitioning.discover(infer_dictionary=False),
            partition_base_dir=None if schema is not None else self.path(dataset),
        )

    def read(self, dataset: str, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
        """Read ``dataset`` (some columns, filtered); a corrupt part is quarantined and the read done without it."""
        try:
            return self.dataset(dataset).to_table(columns=columns, filter=filter)
        except (pa.ArrowInvalid, OSError) as err:
            if not (_corrupt(err, self.local) and self.quarantine_unreadable(dataset)):
                raise
        return self.dataset(dataset).to_table(columns=columns, filter=filter)

    def done_keys(self, dataset: str, key: Sequence[str] | None = None) -> set:
        """The keys already written to ``dataset`` (one column: a set of values; several: a set of tuples)."""
        key = tuple(key or KEYS[dataset.split("/")[0]])
        if not self.has(dataset):
            return set()
        t = self.read(dataset, columns=list(key))
        cols = [t.column(k).to_pylist() for k in key]
        return set(cols[0]) if len(key) == 1 else set(zip(*cols, strict=True))

    def write_part(self, dataset: str, rows: Sequence[dict] | pa.Table, name: str | None = None) -> str | None:
        """Write one Parquet part file atomically (temp file in ``_tmp/``, then a rename). Returns its path."""
        table = to_table(rows, self.schema(dataset))
        if table.num_rows == 0:
            return None
        self.fence()
        d = self.path(dataset)
        self.fs.create_dir(posixpath.join(d, "_tmp"), recursive=True)
        name = name or f"part-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:12]}.parquet"
        tmp = posixpath.join(d, "_tmp", name)
        pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        final = posixpath.join(d, name)
        self._commit(tmp, final)
        return final

    append = write_part

    def replace(
        self, dataset: str, tables: Iterable[pa.Table] | pa.Table | list[dict], name: str = "data.parquet"
    ) -> str:
        """Replace a whole derived dataset with one file, streamed, atomically: readers see old or new, never half.

        ``tables`` may be an iterable of record-batch tables, written one by one, so the data need not fit in
        memory. Other part files of the dataset are removed after the new file is in place.
        """
        schema = self.schema(dataset)
        self.fence()
        d = self.path(dataset)
        self.fs.create_dir(posixpath.join(d, "_tmp"), recursive=True)
        tmp = posixpath.join(d, "_tmp", f"{uuid.uuid4().hex}-{name}")
        if isinstance(tables, pa.Table) or (isinstance(tables, list) and tables and isinstance(tables[0], dict)):
            tables = [tables]  # one table, or one list of row dicts
        with pq.ParquetWriter(tmp, schema, filesystem=self.fs, compression="zstd") as w:
            for t in tables:
                w.write_table(to_table(t, schema))
        final = posixpath.join(d, name)
        old = [p for p in self.part_files(dataset) if p != final]
        self._commit(tmp, final)
        for p in old:
            self.fs.delete_file(p)
        return final

    def rewrite_part(self, path: str, table: pa.Table) -> None:
        """Atomically replace one existing part file with ``table`` (used by ``forget``); empty → delete."""
        self.fence()
        if table.num_rows == 0:
            self.fs.delete_file(path)
            return
        tmp = posixpath.join(posixpath.dirname(path), "_tmp", f"{uuid.uuid4().hex}.parquet")
        self.fs.create_dir(posixpath.dirname(tmp), recursive=True)
        pq.write_table(table, tmp, filesystem=self.fs, compression="zstd")
        self._commit(tmp, path)

    def clean_tmp(self, dataset: str) -> int:
        """Remove temp files a killed job left behind; returns how many."""
        d = posixpath.join(self.path(dataset), "_tmp")
        if self.fs.get_file_info(d).type == pafs.FileType.NotFound:
            return 0
        n = len(self.fs.get_file_info(pafs.FileSelector(d, recursive=True)))
        self.fs.delete_dir(d)
        return n

    def clean_stage_tmp(self, stage: str) -> int:
        """Remove the ``_tmp/`` leftovers of ``stage``'s own datasets (:data:`STAGE_TEMPS`); returns how many files.

        Call it only while holding the stage's lock (:func:`pipeline.locks.hold` does), or it may delete a live run's
        part.
        """
        n = 0
        for ds in STAGE_TEMPS.get(stage, ()):
            n += self.clean_tmp(ds)
            for sub in self.list_dir(ds):
                if "=" in sub:  # a hive partition (scores/dt=…) with its own _tmp/
                    n += self.clean_tmp(f"{ds}/{sub}")
        if n:
            log.info("stage %s: removed %d leftover temporary files of a run that did not finish", stage, n)
        return n

    def list_dir(self, *parts: str) -> list[str]:
        d = self.path(*parts)
        if self.fs.get_file_info(d).type == pafs.FileType.NotFound:
            return []
        return sorted(posixpath.basename(f.path) for f in self.fs.get_file_info(pafs.FileSelector(d)))
