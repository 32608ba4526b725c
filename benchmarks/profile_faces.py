"""Where the face stage's CPU time goes: one :class:`FaceDetector` (one torch thread, as an actor has) over
``bench_faces``' image mix, in one process, with MTCNN's parts timed one by one.

Parts: decoding (``decode``), the detection copy (``fit_within``), P-Net per pyramid scale (scale 0 is the
largest), the pyramid's resizes (``imresample`` for P-Net) and the 24/48 px crops for R-Net/O-Net, R-Net, O-Net,
NMS (torchvision ``batched_nms`` and facenet-pytorch's numpy NMS), the rest of ``detect_face`` (box maths,
conversions), the full-resolution recheck (its own code; its MTCNN passes count in the parts above, and its
whole time is printed apart as ``recheck, inclusive``) and the row (crop + JPEG). Run:
``python benchmarks/profile_faces.py [-n 100] [--set detect_min_share=0.1 ...]``; prints a table of seconds and
shares, then one JSON line. ``--ab '{"runtime": "torch", "detect_min_share": 0}' '{}' [--repeats 3]`` instead runs
detectors of those settings over the same images by turns and prints wall and CPU seconds per setting.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.bench_faces import build_images  # noqa: E402
from pipeline.config import FacesConfig  # noqa: E402

T: dict[str, float] = defaultdict(float)
_stack: list[list] = []
INCLUSIVE: dict[str, float] = defaultdict(float)  # times that overlap the parts


@contextmanager
def part(name: str):
    """Time ``name`` exclusive of the parts timed inside it."""
    frame = [name, 0.0]
    _stack.append(frame)
    t0 = time.perf_counter()
    try:
        yield
    finally:
        dt = time.perf_counter() - t0
        _stack.pop()
        T[name] += dt - frame[1]
        if _stack:
            _stack[-1][1] += dt


def wrap(obj, attr: str, name) -> None:
    fn = getattr(obj, attr)

    def timed(*a, **k):
        label = name(a) if callable(name) else name
        with part(label):
            return fn(*a, **k)

    setattr(obj, attr, timed)


def instrument(det) -> None:
    from facenet_pytorch.models import mtcnn as mt
    from facenet_pytorch.models.utils import detect_face as df

    scale = {"i": 0}
    orig_detect = df.detect_face

    def detect_face(*a, **k):
        scale["i"] = 0
        with part("detect_face other"):
            return orig_detect(*a, **k)

    mt.detect_face = detect_face

    def pnet_label(a):
        i = scale["i"]
        scale["i"] += 1
        return f"pnet scale {i}" if i < 4 else "pnet scales 4+"

    def resample_label(a):
        return "resample 24/48 crops" if a[1][0] in (24, 48) else "resample pyramid"

    wrap(det.mtcnn.pnet, "forward", pnet_label)
    wrap(det.mtcnn.rnet, "forward", "rnet")
    wrap(det.mtcnn.onet, "forward", "onet")
    wrap(df, "imresample", resample_label)
    wrap(df, "batched_nms", "nms (torchvision)")
    wrap(df, "batched_nms_numpy", "nms (numpy, O-Net)")
    wrap(det, "decode", "decode")
    wrap(det, "_recheck", "recheck (own code)")
    own = det._recheck

    def recheck(*a, **k):
        t0 = time.perf_counter()
        try:
            return own(*a, **k)
        finally:
            INCLUSIVE["recheck, inclusive"] += time.perf_counter() - t0

    det._recheck = recheck
    wrap(det, "_row", "row: crop + jpeg")
    from pipeline.faces import detector as dm

    orig_fit = dm.fit_within

    def fit_within(*a, **k):
        with part("detection copy (fit_within)"):
            return orig_fit(*a, **k)

    dm.fit_within = fit_within


def compare(configs: list[dict], n: int, repeats: int, faces_dir: Path) -> None:
    """Several detector settings over the same images, taking turns ``repeats`` times: wall and process CPU seconds
    and faces counted right, then the medians (side by side, so a loaded machine slows all of them alike)."""
    from pipeline.faces.detector import FaceDetector

    items = sorted(build_images(n, faces_dir, seed=1), key=lambda it: (it["width"], it["height"]))
    dets = [FaceDetector(FacesConfig.model_validate({"device": "cpu", **c}), num_threads=1) for c in configs]
    for det in dets:
        det.process([items[0]["jpeg"]])  # warm up (and export the ONNX nets)
    got: list[list[tuple[float, float, int]]] = [[] for _ in dets]
    for r in range(repeats):
        for i, det in enumerate(dets):
            t0, c0 = time.perf_counter(), time.process_time()
            rows = det.process(it["jpeg"] for it in items)
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            right = sum(row["n_faces"] == it["truth"] for row, it in zip(rows, items, strict=True))
            got[i].append((wall, cpu, right))
            print(f"repeat {r} {json.dumps(configs[i])}: wall {wall:.1f} s, cpu {cpu:.1f} s, right {right}/{n}")
    for c, runs in zip(configs, got, strict=True):
        wall, cpu = sorted(x[0] for x in runs), sorted(x[1] for x in runs)
        out = {"config": c, "runtime": dets[configs.index(c)].runtime, "wall_s": round(wall[len(wall) // 2], 2),
               "cpu_s": round(cpu[len(cpu) // 2], 2), "right": [x[2] for x in runs], "n": n}  # fmt: skip
        print(json.dumps(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--faces-dir", default=str(REPO.parent / "shared" / "faces"))
    ap.add_argument("--set", nargs="*", default=[], help="FacesConfig overrides, key=value")
    ap.add_argument("--ab", nargs="+", metavar="JSON", help="compare these FacesConfig overrides instead")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    if args.ab:
        compare([json.loads(c) for c in args.ab], args.n, args.repeats, Path(args.faces_dir))
        return 0
    overrides = dict(kv.split("=", 1) for kv in args.set)
    cfg = FacesConfig.model_validate({"device": "cpu", **overrides})
    from pipeline.faces.detector import FaceDetector

    items = build_images(args.n, Path(args.faces_dir))
    items.sort(key=lambda it: (it["width"], it["height"]))
    det = FaceDetector(cfg, num_threads=1)
    det.process([items[0]["jpeg"]])  # warm up
    T.clear()
    instrument(det)
    t0 = time.perf_counter()
    with part("other (grouping, mapping, python)"):
        rows = det.process(it["jpeg"] for it in items)
    total = time.perf_counter() - t0
    right = sum(r["n_faces"] == it["truth"] for r, it in zip(rows, items, strict=True))
    shares = {k: v for k, v in sorted(T.items(), key=lambda kv: -kv[1])}
    print(f"{len(items)} images, {total:.1f} s ({len(items) / total:.2f} img/s), count right {right}/{len(items)}")
    for k, v in shares.items():
        print(f"  {k:<36}{v:>8.2f} s{100 * v / total:>7.1f} %")
    for k, v in INCLUSIVE.items():
        print(f"  ({k:<34}{v:>8.2f} s{100 * v / total:>7.1f} %, overlaps the parts)")
    print(json.dumps({"bench": "profile_faces", "seconds": round(total, 2), "n": len(items), "right": right,
                      "parts": {k: round(v, 3) for k, v in shares.items()},
                      "inclusive": {k: round(v, 3) for k, v in INCLUSIVE.items()}}))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
