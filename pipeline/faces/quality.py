"""How well the face detector counts faces on photos whose answer is known: the quality measures of the faces stage.

Three measures, each a function of a :class:`FaceDetector` and sizes (so a test runs them small and
``benchmarks/eval_faces.py`` runs them in full): LFW faces vs non-faces (:func:`eval_lfw`; needs scikit-image's
bundled ``lfw_subset``, the ``[demo]`` extra), face counts against a folder's ``MANIFEST.csv`` (:func:`eval_manifest`),
and one photo at several resolutions (:func:`eval_scales`).
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.faces.detector import FaceDetector, iou

SCALES = ["obama-240p.jpg", "obama-480p.jpg", "obama-720p.jpg", "obama-1080p.jpg"]


def _png(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def lfw_images(n_faces: int = 100, n_non: int = 100, size: int = 160) -> tuple[list[bytes], list[int]]:
    """skimage's lfw_subset (100 faces then 100 non-faces, 25x25 gray) upscaled to ``size``: (PNG bytes, 1/0)."""
    from skimage.data import lfw_subset

    arr = lfw_subset()
    idx = list(range(n_faces)) + list(range(100, 100 + n_non))
    imgs = []
    for i in idx:
        g = Image.fromarray((arr[i] * 255).round().astype(np.uint8)).resize((size, size), Image.BICUBIC)
        imgs.append(_png(np.asarray(g)))
    return imgs, [1] * n_faces + [0] * n_non


def eval_lfw(det: FaceDetector, n_faces: int = 100, n_non: int = 100, size: int = 160) -> dict:
    """Recall and precision of "at least one face" on LFW faces vs non-faces."""
    imgs, truth = lfw_images(n_faces, n_non, size)
    rows = det.process(imgs)
    found = [r["n_faces"] >= 1 for r in rows]
    tp = sum(f and t for f, t in zip(found, truth, strict=True))
    fp = sum(f and not t for f, t in zip(found, truth, strict=True))
    fn = sum((not f) and t for f, t in zip(found, truth, strict=True))
    return {
        "recall": tp / max(tp + fn, 1),
        "precision": tp / max(tp + fp, 1),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "n": len(truth),
    }


def read_manifest(faces_dir: Path) -> list[tuple[str, int]]:
    with (Path(faces_dir) / "MANIFEST.csv").open(newline="") as fh:
        return [(r["path"], int(r["faces"])) for r in csv.DictReader(fh)]


def eval_manifest(det: FaceDetector, faces_dir: Path, paths: list[str] | None = None) -> dict:
    """Face count vs the MANIFEST (all photos, or ``paths``); every file must give a row."""
    entries = [e for e in read_manifest(faces_dir) if paths is None or e[0] in paths]
    rows = det.process([(Path(faces_dir) / p).read_bytes() for p, _ in entries])
    wrong = [(p, n, r["n_faces"], r["reason"]) for (p, n), r in zip(entries, rows, strict=True) if r["n_faces"] != n]
    multi = [(p, n) for p, n in entries if n > 1]
    multi_ok = sum(1 for p, _ in multi if p not in {w[0] for w in wrong})
    return {
        "matches": len(entries) - len(wrong),
        "total": len(entries),
        "multi_ok": multi_ok,
        "multi_total": len(multi),
        "rows": len(rows),
        "wrong": wrong,
    }


def eval_scales(det: FaceDetector, faces_dir: Path, names: list[str] = SCALES) -> dict:
    """The same photo at several resolutions: one face each, boxes (scaled to the largest) agree (min IoU)."""
    rows = det.process([(Path(faces_dir) / "examples" / n).read_bytes() for n in names])
    ref = max(rows, key=lambda r: r["width"])
    ref_box = np.asarray(ref["boxes"][0]) if ref["n_faces"] else None
    ious = []
    for r in rows:
        if r["n_faces"] != 1 or ref_box is None:
            ious.append(0.0)
            continue
        s = ref["width"] / r["width"]
        ious.append(iou(np.asarray(r["boxes"][0]) * s, ref_box))
    return {"counts": [r["n_faces"] for r in rows], "ious": [round(v, 3) for v in ious], "min_iou": min(ious)}
