"""Quality of the face stage on real photos: LFW faces vs non-faces, the shared MANIFEST, one photo at 5 scales.

Run: ``python benchmarks/eval_faces.py [--faces-dir ../shared/faces] [--max-side 800]``. Prints a table, then one
JSON line. Targets (issue 9): LFW recall >= 0.97 and precision >= 0.99; MANIFEST face count right on >= 30 of 32
including the 3 multi-face photos; obama 240p..1080p the same single face, IoU >= 0.8 after scaling.
The functions take a :class:`FaceDetector` and sizes so a test can run them small.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import FacesConfig  # noqa: E402
from pipeline.faces.detector import FaceDetector, iou  # noqa: E402

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--faces-dir", default=str(REPO.parent / "shared" / "faces"))
    ap.add_argument("--max-side", type=int, default=FacesConfig().max_side)
    ap.add_argument("--lfw-size", type=int, default=160)
    args = ap.parse_args(argv)
    det = FaceDetector(FacesConfig(max_side=args.max_side))
    t0 = time.monotonic()
    lfw = eval_lfw(det, size=args.lfw_size)
    man = eval_manifest(det, Path(args.faces_dir))
    sc = eval_scales(det, Path(args.faces_dir))
    secs = time.monotonic() - t0
    print(f"{'check':<34}{'result':>16}{'target':>14}")
    print(f"{'lfw recall':<34}{lfw['recall']:>16.3f}{'>= 0.97':>14}")
    print(f"{'lfw precision':<34}{lfw['precision']:>16.3f}{'>= 0.99':>14}")
    print(f"{'manifest counts right':<34}{man['matches']:>13}/{man['total']:<2}{'>= 30/32':>14}")
    print(f"{'manifest multi-face right':<34}{man['multi_ok']:>13}/{man['multi_total']:<2}{'3/3':>14}")
    print(f"{'scales min IoU ' + str(sc['counts']):<34}{sc['min_iou']:>16.3f}{'>= 0.8':>14}")
    for w in man["wrong"]:
        print("  wrong:", w)
    ok = (
        lfw["recall"] >= 0.97
        and lfw["precision"] >= 0.99
        and man["matches"] >= 30
        and man["multi_ok"] == man["multi_total"]
        and sc["min_iou"] >= 0.8
        and all(c == 1 for c in sc["counts"])
    )
    print(
        json.dumps(
            {
                "bench": "eval_faces",
                "ours": man["matches"] / max(man["total"], 1),
                "peer": None,
                "ratio": None,
                "unit": "manifest count accuracy",
                "lfw_recall": lfw["recall"],
                "lfw_precision": lfw["precision"],
                "manifest_matches": man["matches"],
                "manifest_total": man["total"],
                "multi_ok": man["multi_ok"],
                "scales_min_iou": sc["min_iou"],
                "max_side": args.max_side,
                "seconds": round(secs, 1),
                "pass": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
