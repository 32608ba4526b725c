"""Quality of the face stage on real photos: LFW faces vs non-faces, the shared MANIFEST, one photo at 5 scales.

Run: ``python benchmarks/eval_faces.py [--faces-dir ../shared/faces] [--max-side 800] [--min-share S]
[--runtime torch|onnx]``. Prints a table, then one JSON line. Targets (issue 9): LFW recall >= 0.97 and precision
>= 0.99; MANIFEST face count right on >= 30 of 32 including the 3 multi-face photos; obama 240p..1080p the same
single face, IoU >= 0.8 after scaling. The measures live in :mod:`pipeline.faces.quality` (a test runs them small).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import FacesConfig  # noqa: E402
from pipeline.faces.detector import FaceDetector  # noqa: E402
from pipeline.faces.quality import eval_lfw, eval_manifest, eval_scales  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--faces-dir", default=str(REPO.parent / "shared" / "faces"))
    ap.add_argument("--max-side", type=int, default=FacesConfig().max_side)
    ap.add_argument("--lfw-size", type=int, default=160)
    ap.add_argument("--min-share", type=float, default=FacesConfig().detect_min_share)
    ap.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=FacesConfig().runtime)
    args = ap.parse_args(argv)
    det = FaceDetector(FacesConfig(max_side=args.max_side, detect_min_share=args.min_share, runtime=args.runtime))
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
                "detect_min_share": args.min_share,
                "runtime": det.runtime,
                "seconds": round(secs, 1),
                "pass": ok,
            }
        )
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
