"""Import a labelled face data set as ``labels/<task>``: a CSV of file + class, or a folder per class.

``python -m pipeline labels import-classes --task NAME`` takes either

* a CSV (``--csv FILE --images DIR --file-column C --label-column C [--person-column C] [--split-column C]
  [--group-column C] [--label-map=-1=female,1=male]``): one row per image, e.g. the Bitmoji set's
  ``image_id,is_male,…`` with 1/-1 (other columns, such as landmarks, are ignored), or
* an ImageFolder tree (``--folders DIR``): ``DIR/train/<class>/*.jpg`` and optionally ``DIR/val/<class>/…`` and
  ``DIR/test/<class>/…`` (kept as those splits), or ``DIR/<class>/*.jpg`` without split folders.

Every listed image is checked and stored by sha256 (:func:`store_images`), goes through the face step
(:func:`pipeline.faces.folder.face_rows`: MTCNN crop, or with ``detect=False`` the image taken as a face already)
into ``faces/`` (images already there are not redone), and gets one row of ``labels/<task>`` (the
``IMPORTED_LABELS`` schema: class index ``label``, ``class_name``, the source ``file`` and ``raw_label``).

A ``--group-column`` (age band, skin type, gender, site...) is kept as the labels' ``group``: the model card and
``metrics.json`` then report accuracy per group (:func:`pipeline.train.metrics.group_metrics`).

Splits: a shipped split (``--split-column``, or the ``test``/``val`` folders) is kept as given; the other rows are
split by person (``--person-column``) or, without one, by image hash, with :func:`pipeline.labels.splits
.assign_splits` (``labels.split``); rows of a ``train`` folder are divided between train and val in the ratio of
``labels.split.train`` to ``labels.split.val``.

Rows that cannot be used stay, excluded with a reason, and are counted in the summary: ``missing_file_name``,
``missing_label``, ``unknown_label`` (not in ``--label-map``), ``unknown_split``, ``duplicate_file``,
``outside_images_dir`` (``../x``, ``/etc/x`` or a link out of ``--images``: never opened), ``missing_image``,
``file_too_large`` (over ``labels.imported.max_file_mb``: never read), ``opted_out`` (the image, or the person of
``--person-column`` on this task, is on the opt-out list: never stored, as the crawl skips them; the row keeps no
file name), ``unreadable_image`` (:func:`pipeline.imaging.check_image`), ``duplicate_image`` (the same bytes under
a second name: it would otherwise sit on both sides of a split), or the face step's reason code (``no_face``,
``low_prob``, ``decode_error``…). ``labels/<task>/import.json`` records where the set came from
(``labels.imported``: name, URL, licence terms), the options and the counts; the model card repeats it.

Example::

    import_classes(cfg, "gender", csv="BitmojiDataset/train.csv", images="BitmojiDataset/images",
                   file_column="image_id", label_column="is_male", label_map="-1=female,1=male", detect=False)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pipeline.config import Config, FacesConfig
from pipeline.faces.detector import reason_code
from pipeline.faces.folder import face_rows
from pipeline.imaging import ImageDecodeError, check_image
from pipeline.labels.splits import assign_splits, unit_interval
from pipeline.store import (
    FACES_DS,
    IMPORT_JSON,
    OPTOUT_DS,
    STATUS_EXCLUDED,
    STATUS_OK,
    DataRoot,
    now,
    sha256_bytes,
    to_table,
)

RESERVED_TASKS = ("selfie", "department", "beauty")  # written by the labels stage and import-scores
SPLIT_FOLDERS = ("train", "val", "test")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


class ImportInputError(ValueError):
    """The import cannot start (a missing file or column, a bad option); ``str(err)`` says why in one line."""


# ------------------------------------------------------------------------------------------------ shared steps
def inside(base: Path, name: str) -> Path | None:
    """``base / name`` resolved (symlinks followed) when it stays inside ``base``; None for ``../x``, ``/etc/x``,
    a link pointing out, or a path that cannot be resolved."""
    try:
        path = (base / name).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None
    return path if path.is_relative_to(base) else None


def store_images(
    images_dir: Path,
    files: list[str | None],
    root: DataRoot,
    faces: FacesConfig,
    max_mb: float = 50.0,
    blocked: Callable[[str], bool] | None = None,
) -> tuple[list[str | None], list[str | None]]:
    """Store each image by sha256; returns (sha or None, failure reason or None) per file (file I/O per image).

    A listed name that resolves outside ``images_dir`` is ``outside_images_dir`` and is never opened; a file over
    ``max_mb`` MB (``labels.imported.max_file_mb``) is ``file_too_large`` and never read; an image whose sha256
    ``blocked`` says is opted out (``forget --image``) is ``opted_out`` and never stored; images are checked like
    the faces stage decodes them (allowed formats, pixel and decoder-memory caps, not truncated).
    """
    max_bytes = int(max_mb * 1_000_000)
    base = images_dir.resolve()
    shas: list[str | None] = []
    why: list[str | None] = []
    for name in files:
        if name is None:
            shas.append(None)
            why.append("missing_file_name")
            continue
        path = inside(base, name)
        if path is None or not path.is_file():
            shas.append(None)
            why.append("outside_images_dir" if path is None else "missing_image")
            continue
        if path.stat().st_size > max_bytes:  # never read whole: a huge (or sparse) file in a downloaded set
            shas.append(None)
            why.append("file_too_large")
            continue
        data = path.read_bytes()
        sha = sha256_bytes(data)
        if blocked is not None and blocked(sha):
            shas.append(None)
            why.append("opted_out")
            continue
        try:
            check_image(data, faces.max_pixels, faces.image_formats, faces.max_decode_mib << 20)
        except ImageDecodeError:
            shas.append(None)
            why.append("unreadable_image")
            continue
        shas.append(root.put_image(data, sha))
        why.append(None)
    return shas, why


def add_faces(root: DataRoot, shas: list[str | None], faces: FacesConfig, detect: bool) -> dict[str, Any]:
    """Run the face step over the stored images not yet in ``faces/`` and append their rows; returns
    ``{"processed", "kept", "reasons"}`` and, under ``"reason"``, each sha's face reason code (kept: None)."""
    wanted = sorted({s for s in shas if s})
    done = root.done_keys(FACES_DS) if root.has(FACES_DS) else set()
    todo = [s for s in wanted if s not in done]
    reasons: dict[str, int] = {}
    for start in range(0, len(todo), 256):  # a part file per 256 images: memory stays bounded
        chunk = todo[start : start + 256]
        rows = face_rows([root.get_image(s) for s in chunk], faces, detect=detect)
        ts = now()
        for row, sha in zip(rows, chunk, strict=True):
            row["image_sha256"], row["processed_at"] = sha, ts
            code = reason_code(row["reason"])
            reasons[code] = reasons.get(code, 0) + 1
        root.write_part(FACES_DS, rows)
    by_sha: dict[str, str | None] = {}
    if wanted:
        t = pl.from_arrow(root.read(FACES_DS, columns=["image_sha256", "kept", "reason"]))
        t = t.filter(pl.col("image_sha256").is_in(wanted)).unique("image_sha256", keep="first")
        for sha, kept, reason in t.iter_rows():
            by_sha[sha] = None if kept else reason_code(reason or "face_not_kept")
    kept = reasons.pop("kept", 0)
    return {"processed": len(todo), "kept": kept, "reasons": dict(sorted(reasons.items())), "reason": by_sha}


def opt_out_list(root: DataRoot, cfg: Config):
    """The data root's opt-out list (:class:`pipeline.privacy.OptOut`), or None when nobody opted out (then no key
    is needed)."""
    if not root.has(OPTOUT_DS):
        return None
    from pipeline.privacy import OptOut

    return OptOut(root, cfg.privacy)


def write_import_info(root: DataRoot, dataset: str, cfg: Config, source: dict[str, Any], summary: dict) -> str:
    """``labels/<task>/import.json``: the data set's origin (``labels.imported``), the import options, counts."""
    info = {
        "dataset": cfg.labels.imported.model_dump(),
        "source": source,
        "imported_at": now().isoformat(),
        "counts": {k: summary[k] for k in ("rows", "ok", "excluded", "splits", "classes") if k in summary},
    }
    path = root.path(dataset, IMPORT_JSON)
    root.write_json(path, info)
    return path


def import_info(root: DataRoot, task: str) -> dict | None:
    """The ``import.json`` of ``labels/<task>``, or None for a label set that was not imported."""
    path = root.path(root.labels_dataset(task), IMPORT_JSON)
    try:
        return root.read_json(path)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------------------------------------ inputs
def parse_label_map(spec: str | None) -> dict[str, str] | None:
    """``"-1=female,1=male"`` → ``{"-1": "female", "1": "male"}``; raises :class:`ImportInputError` when malformed."""
    if not spec:
        return None
    out: dict[str, str] = {}
    for part in spec.split(","):
        raw, sep, name = part.partition("=")
        if not sep or not raw.strip() or not name.strip():
            raise ImportInputError(f"--label-map {spec!r}: expected RAW=NAME[,RAW=NAME...], got {part!r}")
        out[raw.strip()] = name.strip()
    return out


def _csv_rows(
    csv: Path,
    file_column: str,
    label_column: str,
    person_column: str | None,
    split_column: str | None,
    group_column: str | None = None,
) -> pl.DataFrame:
    if not csv.is_file():
        raise ImportInputError(f"--csv {csv}: file not found")
    try:
        df = pl.read_csv(csv, infer_schema=False, encoding="utf8-lossy")
    except (pl.exceptions.PolarsError, OSError) as err:
        raise ImportInputError(f"--csv {csv}: not a readable CSV ({type(err).__name__})") from None
    wanted = [c for c in (file_column, label_column, person_column, split_column, group_column) if c]
    if missing := [c for c in wanted if c not in df.columns]:
        raise ImportInputError(f"--csv {csv}: no column {', '.join(missing)} (columns: {', '.join(df.columns)})")

    def col(name: str | None) -> pl.Expr:
        return pl.col(name).str.strip_chars().replace("", None) if name else pl.lit(None, pl.String)

    return df.select(
        col(file_column).alias("file"),
        col(label_column).alias("raw_label"),
        col(person_column).alias("person"),
        col(split_column).str.to_lowercase().alias("given_split"),
        col(group_column).alias("group"),
    )


def _folder_rows(folders: Path) -> pl.DataFrame:
    """``file`` (relative to ``folders``), ``raw_label`` (the class folder) and ``given_split`` per image file."""
    if not folders.is_dir():
        raise ImportInputError(f"--folders {folders}: not a folder")
    split_dirs = [s for s in SPLIT_FOLDERS if (folders / s).is_dir()]
    roots = [(folders / s, s) for s in split_dirs] or [(folders, None)]
    rows = []
    for base, split in roots:
        for cls in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for f in sorted(cls.rglob("*")):
                if f.is_file() and not f.name.startswith(".") and f.suffix.lower() in IMAGE_SUFFIXES:
                    rows.append((f.relative_to(folders).as_posix(), cls.name, split))
    if not rows:
        raise ImportInputError(f"--folders {folders}: no <class>/<image> files (nor train/<class>/<image>)")
    schema = {"file": pl.String, "raw_label": pl.String, "given_split": pl.String}
    return pl.DataFrame(rows, schema=schema, orient="row").with_columns(
        person=pl.lit(None, pl.String), group=pl.lit(None, pl.String)
    )


# ------------------------------------------------------------------------------------------------ labels
def _classes(raw: pl.Series, label_map: dict[str, str] | None) -> tuple[pl.Series, list[str]]:
    """Class name per row (null: unknown) and the class names in index order (sorted)."""
    if label_map is None:
        names = sorted(set(raw.drop_nulls().to_list()))
        return raw.alias("class_name"), names
    return raw.replace_strict(label_map, default=None, return_dtype=pl.String).alias("class_name"), sorted(
        set(label_map.values())
    )


def _splits(df: pl.DataFrame, cfg: Config) -> pl.Series:
    """The split of each row: a shipped one kept; ``train``-folder rows divided into train and val; the rest by a
    person-hash split (person column, else image sha256)."""
    scfg = cfg.labels.split
    persons = df["person_id"]
    hashed = assign_splits(persons, scfg)
    split = df.select("person_id").join(hashed, on="person_id", how="left", maintain_order="left")["split"]
    u = unit_interval(persons, scfg.seed + "/val")
    share = scfg.val / (scfg.train + scfg.val) if scfg.train + scfg.val > 0 else 0.0
    train_or_val = pl.Series(np.where(u < share, "val", "train"), dtype=pl.String)
    given = df["given_split"]
    return (
        pl.DataFrame({"g": given, "h": split, "tv": train_or_val})
        .select(
            pl.when(pl.col("g") == "train")
            .then(pl.col("tv"))
            .when(pl.col("g").is_not_null())
            .then(pl.col("g"))
            .otherwise(pl.col("h"))
        )
        .to_series()
        .alias("split")
    )


def _listing(
    cfg: Config,
    task: str,
    csv: str | Path | None,
    images: str | Path | None,
    columns: dict[str, str | None],
    folders: str | Path | None,
) -> tuple[pl.DataFrame, Path, dict[str, Any]]:
    """The import's rows (``file``, ``raw_label``, ``person``, ``given_split``, ``group``), the folder the files are
    relative to, and the source as ``import.json`` records it; raises :class:`ImportInputError` (one line)."""
    from pipeline.config import TrainConfig

    if task in RESERVED_TASKS:
        raise ImportInputError(f"--task {task!r} is written by another command; pick another name")
    try:
        TrainConfig(task=task)
    except ValueError:
        raise ImportInputError(f"--task {task!r}: lower-case letters, digits, '-' and '_' only") from None
    if (csv is None) == (folders is None):
        raise ImportInputError("import-classes takes --csv FILE --images DIR, or --folders DIR (exactly one)")
    if csv is None:
        return _folder_rows(Path(folders)), Path(folders), {"kind": "folders", "folders": str(folders)}
    if images is None:
        raise ImportInputError("--csv needs --images DIR (the folder its file names are relative to)")
    base = Path(images)
    if not base.is_dir():
        raise ImportInputError(f"--images {base}: not a folder")
    c = columns
    df = _csv_rows(Path(csv), c["file_column"], c["label_column"], c["person_column"], c["split_column"],
                   c["group_column"])  # fmt: skip
    return df, base, {"kind": "csv", "csv": str(csv), "images": str(images), **c}


def _stored(
    cfg: Config, task: str, root: DataRoot, df: pl.DataFrame, base: Path, detect: bool
) -> tuple[pl.DataFrame, dict[str, Any]]:
    """Each row's image stored (opted-out images and persons never: ``_opted``) and through the face step: the rows
    with ``image_sha256``, ``_store`` (why not stored), ``_face`` (why no face), ``_dup_image``, ``person_id``; and
    the face step's counts."""
    optout = opt_out_list(root, cfg)
    if optout is not None:  # a person forgotten by their person id (forget --person ID --site TASK): never stored
        gone = [p is not None and optout.blocks("person", p, task) for p in df["person"].to_list()]
        df = df.with_columns(file=pl.when(pl.Series(gone)).then(pl.lit(None, pl.String)).otherwise("file"),
                             _opted=pl.Series(gone, dtype=pl.Boolean))  # fmt: skip
    else:
        df = df.with_columns(_opted=pl.lit(False))
    blocked = (lambda sha: optout.blocks("image", sha)) if optout is not None else None
    shas, why = store_images(base, df["file"].to_list(), root, cfg.faces, cfg.labels.imported.max_file_mb, blocked)
    df = df.with_columns(image_sha256=pl.Series(shas, dtype=pl.String), _store=pl.Series(why, dtype=pl.String))
    opted = (pl.col("_store") == "opted_out").fill_null(False)
    df = df.with_columns(_opted=pl.col("_opted") | opted, file=pl.when(opted).then(None).otherwise("file"))
    faces = add_faces(root, shas, cfg.faces, detect)
    face_reason = faces.pop("reason")
    df = df.with_columns(
        _face=pl.col("image_sha256").replace_strict(face_reason, default=None, return_dtype=pl.String),
        _dup_image=pl.col("image_sha256").is_not_null()
        & pl.col("image_sha256").is_duplicated()
        & ~pl.col("image_sha256").is_first_distinct(),
        person_id=pl.coalesce("person", "image_sha256", "file"),
    )
    return df, faces


def _reason() -> pl.Expr:
    """Why a row cannot be used (null: it can), the first that holds in this order."""
    return (
        pl.when(pl.col("_opted"))
        .then(pl.lit("opted_out"))
        .when(pl.col("file").is_null())
        .then(pl.lit("missing_file_name"))
        .when(pl.col("raw_label").is_null())
        .then(pl.lit("missing_label"))
        .when(pl.col("class_name").is_null())
        .then(pl.lit("unknown_label"))
        .when(pl.col("given_split").is_not_null() & ~pl.col("given_split").is_in(list(SPLIT_FOLDERS)))
        .then(pl.lit("unknown_split"))
        .when(pl.col("_dup"))
        .then(pl.lit("duplicate_file"))
        .when(pl.col("_store").is_not_null())
        .then(pl.col("_store"))
        .when(pl.col("_dup_image"))
        .then(pl.lit("duplicate_image"))
        .when(pl.col("image_sha256").is_not_null() & pl.col("_face").is_not_null())
        .then(pl.col("_face"))
        .otherwise(pl.lit(None, pl.String))
    )


def _label_rows(cfg: Config, task: str, df: pl.DataFrame, names: list[str]) -> pl.DataFrame:
    """The ``labels/<task>`` rows (IMPORTED_LABELS columns): reason, split, fold, class index of each row."""
    df = df.with_columns(reason=_reason())
    df = df.with_columns(split=_splits(df, cfg), fold=pl.lit(None, pl.Int32))
    if cfg.labels.split.k_folds:
        folds = assign_splits(df["person_id"], cfg.labels.split).select("person_id", "fold")
        df = df.drop("fold").join(folds, on="person_id", how="left", maintain_order="left")
    ok = pl.col("reason").is_null()
    index = {n: i for i, n in enumerate(names)}
    return df.with_row_index("_i").select(
        pl.coalesce("file", pl.lit("row") + pl.col("_i").cast(pl.String)).alias("item_id"),
        pl.lit(task).alias("site"),
        "person_id",
        "image_sha256",
        pl.when(ok).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_EXCLUDED)).alias("status"),
        "reason",
        pl.when(ok)
        .then(pl.col("class_name").replace_strict(index, default=None, return_dtype=pl.Int32))
        .alias("label"),
        pl.when(ok).then(pl.col("class_name")).alias("class_name"),
        pl.when(ok)
        .then(pl.col("class_name").replace_strict(index, default=None, return_dtype=pl.Float64))
        .alias("target"),
        pl.when(ok).then(pl.col("split")).alias("split"),
        pl.col("fold").cast(pl.Int32),
        pl.when(ok).then(pl.lit(1.0)).alias("weight"),
        "group",
        "file",
        "raw_label",
    )


def _summary(task: str, out: pl.DataFrame, names: list[str], faces: dict, path: str) -> dict[str, Any]:
    """The import's summary: rows, kept, excluded by reason, rows per split and per class and split."""
    kept = out.filter(pl.col("reason").is_null())
    classes = {
        s: dict(kept.filter(pl.col("split") == s).group_by("class_name").len().sort("class_name").iter_rows())
        for s in SPLIT_FOLDERS
    }
    excluded = out.filter(pl.col("reason").is_not_null())
    return {
        "task": task,
        "rows": out.height,
        "ok": kept.height,
        "excluded": dict(excluded.group_by("reason").len().sort("reason").iter_rows()),
        "splits": dict(kept.group_by("split").len().sort("split").iter_rows()),
        "class_names": names,
        "classes": classes,
        "faces": faces,
        "path": path,
    }


def import_classes(
    cfg: Config,
    task: str,
    *,
    csv: str | Path | None = None,
    images: str | Path | None = None,
    file_column: str | None = None,
    label_column: str | None = None,
    person_column: str | None = None,
    split_column: str | None = None,
    group_column: str | None = None,
    label_map: str | dict[str, str] | None = None,
    folders: str | Path | None = None,
    detect: bool | None = None,
    root: DataRoot | None = None,
) -> dict[str, Any]:
    """Import a labelled image set into ``faces/`` and ``labels/<task>`` (replaced); returns the summary.

    Options left None take ``labels.imported``'s (``file_column``, ``label_column``, ``person_column``,
    ``split_column``, ``group_column``, ``label_map``, ``detect``): a recipe file can hold them. Four steps: the
    listing (:func:`_listing`), the images stored and through the face step (:func:`_stored`), the label rows
    (:func:`_label_rows`), written with ``import.json``.

    Raises :class:`ImportInputError` (one line) for what stops the import before it starts: both or neither of
    ``csv`` and ``folders``, a reserved or malformed task name, a missing file, folder or column."""
    root = root or DataRoot(cfg.data_root)
    ic = cfg.labels.imported
    columns = {"file_column": file_column or ic.file_column, "label_column": label_column or ic.label_column,
               "person_column": person_column or ic.person_column, "split_column": split_column or ic.split_column,
               "group_column": group_column or ic.group_column}  # fmt: skip
    detect = ic.detect if detect is None else detect
    label_map = ic.label_map if label_map is None else label_map
    lmap = (
        parse_label_map(label_map) if isinstance(label_map, str | None) else {str(k): v for k, v in label_map.items()}
    )
    df, base, source = _listing(cfg, task, csv, images, columns, folders)
    source.update(label_map=lmap, detect=detect)
    class_name, names = _classes(df["raw_label"], lmap)
    df = df.with_columns(class_name, _dup=pl.col("file").is_duplicated() & ~pl.col("file").is_first_distinct())
    df, faces = _stored(cfg, task, root, df, base, detect)
    out = _label_rows(cfg, task, df, names)
    dataset = root.labels_dataset(task)
    path = root.replace(dataset, to_table(out.to_arrow(), root.schema(dataset)))
    summary = _summary(task, out, names, faces, path)
    summary["import_json"] = write_import_info(root, dataset, cfg, source, summary)
    return summary
