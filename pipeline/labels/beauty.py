"""Beauty scores: import a scored face data set (SCUT-FBP5500 or a CSV) as regression labels.

Accepted score files (several may be given; one per split is how SCUT-FBP5500 ships them):

- SCUT-FBP5500 text: ``AF1.jpg 3.166667`` per line (file name, whitespace, score), e.g. ``train.txt``/``test.txt``
  from ``split_of_60%training and 40%testing`` or ``train_1.txt``/``test_1.txt`` from the 5-fold folders;
- CSV (``.csv``): ``file,score[,person]`` with or without a header line.

Images are read from ``images_dir`` and stored in the data root by sha256; ``labels/beauty`` is replaced as a
whole (one row per distinct file name). Protocols (``labels.beauty.protocol`` or the ``protocol`` argument):
``hash`` the person-hash split of ``labels.split`` (70/20/10 by default); ``split60`` a person-hash 60/40
train/test split (the benchmark's holdout protocol); ``cv5`` person-hash 5-fold cross validation (``fold`` 0..4,
``split`` test for ``cv_fold`` and train otherwise); ``files`` the split named by each file (``train*``, ``val*``,
``test*``; ``test_<k>`` also gives fold k-1, so passing all ten 5-fold files reproduces the shipped folds).
The person is the CSV's person column, else the file stem (each SCUT-FBP5500 image is a different person).

Rows that cannot be used stay, excluded with a reason: ``bad_score``, ``score_out_of_range``, ``missing_image``,
``unreadable_image`` (not an allowed format, truncated, over the caps: :func:`pipeline.imaging.check_image`),
``outside_images_dir`` (a listed name such as ``../x``, ``/etc/x`` or a symlink that resolves outside
``images_dir``: never read), ``conflicting_scores`` (one file listed with different scores), ``unknown_split_file``,
and with ``detect`` the face step's reason code (``no_face``, ...). Image storing, the face step and
``labels/beauty/import.json`` (the set's origin, ``labels.imported``) are shared with :mod:`pipeline.labels.imports`.

Example::

    import_scores("SCUT-FBP5500/Images", ["split/train.txt", "split/test.txt"], cfg, protocol="files")
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.config import Config
from pipeline.labels.imports import add_faces, store_images, write_import_info
from pipeline.labels.splits import split_of, unit_interval
from pipeline.store import STATUS_EXCLUDED, STATUS_OK, DataRoot, to_table

_TEST_K = re.compile(r"test[_-]?(\d+)", re.IGNORECASE)


class ScoresFormatError(ValueError):
    """A scores file that cannot be parsed at all (not a single usable line)."""


def _file_split(name: str) -> tuple[str | None, int | None]:
    low = name.lower()
    fold = None
    if m := _TEST_K.search(low):
        fold = int(m.group(1)) - 1
    for split in ("train", "val", "test"):
        if split in low:
            return split, fold
    return None, None


def read_scores(path: str | Path) -> pl.DataFrame:
    """Parse one scores file into ``file, score (Float64, null when unparsable), score_raw, person, source``."""
    path = Path(path)
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    lines = pl.Series("line", text.splitlines()).str.strip_chars()
    lines = lines.filter(lines != "")
    if path.suffix.lower() == ".csv":
        fields = pl.DataFrame({"line": lines}).select(pl.col("line").str.split(",").alias("f"))
        df = fields.select(
            pl.col("f").list.get(0, null_on_oob=True).str.strip_chars().alias("file"),
            pl.col("f").list.get(1, null_on_oob=True).str.strip_chars().alias("score_raw"),
            pl.col("f").list.get(2, null_on_oob=True).str.strip_chars().alias("person"),
        )
        if df.height and df["score_raw"][0] is not None:
            try:
                float(df["score_raw"][0])
            except ValueError:  # a header line
                df = df.slice(1)
    else:
        df = pl.DataFrame({"line": lines}).select(
            pl.col("line").str.extract(r"^(\S+)", 1).alias("file"),
            pl.col("line").str.extract(r"^\S+\s+(\S+)", 1).alias("score_raw"),
            pl.lit(None, pl.String).alias("person"),
        )
    if df.height == 0:
        raise ScoresFormatError(f"{path}: no score lines")
    return df.with_columns(
        score=pl.col("score_raw").cast(pl.Float64, strict=False),
        source=pl.lit(path.name),
        person=pl.when(pl.col("person") == "").then(None).otherwise(pl.col("person")),
    )


def build_beauty_labels(scores: pl.DataFrame, cfg: Config, protocol: str) -> pl.DataFrame:
    """Scores (``file, score, score_raw, person, source`` rows, possibly repeated across files) → one row per
    file with split/fold by ``protocol`` and a reason when excluded (images not yet checked)."""
    bcfg = cfg.labels.beauty
    split_info = [(s, *_file_split(s)) for s in scores["source"].unique().sort().to_list()]
    src = pl.DataFrame(
        split_info, schema={"source": pl.String, "file_split": pl.String, "file_fold": pl.Int32}, orient="row"
    )
    rank = {"test": 0, "val": 1, "train": 2}
    per_file = (
        scores.join(src, on="source", how="left")
        .with_columns(_split_rank=pl.col("file_split").replace_strict(rank, default=3, return_dtype=pl.Int32))
        .group_by("file")
        .agg(
            pl.col("score").drop_nulls().first().alias("score"),
            (pl.col("score").drop_nulls().n_unique() > 1).alias("_conflict"),
            pl.col("score").is_null().all().alias("_bad"),
            pl.col("person").drop_nulls().min().alias("person"),
            pl.col("file_split").sort_by("_split_rank").first().alias("file_split"),
            pl.col("file_fold").drop_nulls().min().alias("file_fold"),
        )
        .sort("file")
        .with_columns(person_id=pl.coalesce("person", pl.col("file").str.replace(r"\.[^.]*$", "")))
    )
    persons = per_file["person_id"]
    scfg = cfg.labels.split
    if protocol == "files":
        split = per_file["file_split"]
        fold = per_file["file_fold"]
    elif protocol in ("hash", "split60"):
        u = unit_interval(persons, scfg.seed)
        tr, va = (scfg.train, scfg.val) if protocol == "hash" else (0.6, 0.0)
        split = pl.Series("split", split_of(u, tr, va), dtype=pl.String)
        fold = pl.Series("fold", [None] * len(u), dtype=pl.Int32)
    elif protocol == "cv5":
        u = unit_interval(persons, scfg.seed + "/fold")
        fold = pl.Series("fold", np.minimum((u * 5).astype(np.int32), 4))
        split = pl.Series("split", np.where(fold.to_numpy() == bcfg.cv_fold, "test", "train"), dtype=pl.String)
    else:
        raise ValueError(f"unknown protocol {protocol!r}: hash, split60, cv5 or files")
    out_of_range = pl.lit(False)
    if bcfg.min_score is not None:
        out_of_range = out_of_range | (pl.col("score") < bcfg.min_score)
    if bcfg.max_score is not None:
        out_of_range = out_of_range | (pl.col("score") > bcfg.max_score)
    reason = (
        pl.when(pl.col("_bad"))
        .then(pl.lit("bad_score"))
        .when(pl.col("_conflict"))
        .then(pl.lit("conflicting_scores"))
        .when(out_of_range)
        .then(pl.lit("score_out_of_range"))
    )
    if protocol == "files":
        reason = reason.when(pl.col("split").is_null()).then(pl.lit("unknown_split_file"))
    return per_file.with_columns(split.alias("split"), fold.cast(pl.Int32).alias("fold")).with_columns(
        reason=reason.otherwise(pl.lit(None, pl.String))
    )


def import_scores(
    images_dir: str | Path,
    scores_files: str | Path | Sequence[str | Path],
    cfg: Config,
    root: DataRoot | None = None,
    protocol: str | None = None,
    detect: bool | None = None,
) -> dict:
    """Import scored images into ``labels/beauty`` (replacing it) and the image store; returns counts.

    ``detect``: also put the images through the face step into ``faces/`` (True: MTCNN crops; False: each image is
    a face already, as SCUT-FBP5500's are; None: leave ``faces/`` alone). With it, a row whose image has no kept
    face is excluded with the face step's reason code."""
    root = root or DataRoot(cfg.data_root)
    protocol = protocol or cfg.labels.beauty.protocol
    if isinstance(scores_files, (str, Path)):
        scores_files = [scores_files]
    images_dir = Path(images_dir)
    if not images_dir.is_dir():
        raise FileNotFoundError(f"images folder not found: {images_dir}")
    scores = pl.concat([read_scores(p) for p in scores_files], how="vertical")
    lab = build_beauty_labels(scores, cfg, protocol)
    shas, why = store_images(images_dir, lab["file"].to_list(), root, cfg.faces, cfg.labels.imported.max_file_mb)
    faces = None
    if detect is not None:
        faces = add_faces(root, shas, cfg.faces, detect)
        face_reason = faces.pop("reason")
        why = [w or (face_reason.get(sha) if sha else None) for w, sha in zip(why, shas, strict=True)]
    lab = lab.with_columns(
        image_sha256=pl.Series(shas, dtype=pl.String),
        reason=pl.coalesce(pl.col("reason"), pl.Series(why, dtype=pl.String)),
    )
    ok = pl.col("reason").is_null()
    out = lab.select(
        pl.col("file").alias("item_id"),
        pl.lit(images_dir.name or "import").alias("site"),
        "person_id",
        "image_sha256",
        pl.when(ok).then(pl.lit(STATUS_OK)).otherwise(pl.lit(STATUS_EXCLUDED)).alias("status"),
        "reason",
        pl.lit(None, pl.Int32).alias("label"),
        pl.lit(None, pl.String).alias("class_name"),
        pl.when(ok).then(pl.col("score")).alias("target"),
        "split",
        "fold",
        pl.when(ok).then(pl.lit(1.0)).alias("weight"),
        "file",
    )
    dataset = root.labels_dataset("beauty")
    path = root.replace(dataset, to_table(out.to_arrow(), root.schema(dataset)))
    kept = out.filter(ok)
    summary = {
        "rows": out.height,
        "ok": kept.height,
        "excluded": dict(out.filter(~ok).group_by("reason").len().sort("reason").iter_rows()),
        "splits": dict(kept.group_by("split").len().sort("split").iter_rows()),
        "protocol": protocol,
        "score_mean": kept["target"].mean(),
        "path": path,
    }
    if faces is not None:
        summary["faces"] = faces
    source = {"kind": "scores", "images": str(images_dir), "scores": [str(p) for p in scores_files]}
    source.update(protocol=protocol, detect=detect)
    summary["import_json"] = write_import_info(root, dataset, cfg, source, summary)
    return summary
