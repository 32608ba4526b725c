"""Face detector memory over images that all differ in size: ours (ONNX Runtime's memory patterns off) against the
same detector with ONNX Runtime's default session options (patterns on).

Real photos come in every size. MTCNN's inputs take a new shape with every image size (P-Net's pyramid levels) and
every number of candidate boxes (R-Net, O-Net); a session with memory patterns on keeps a plan per distinct set of
input shapes. ``bench_faces.py --rss`` cycles about 200 image sizes, so it sees every shape early and cannot show
this. Here each side runs :class:`pipeline.faces.FaceDetector` in a child process of its own (no Ray: the face
actor's own work, :meth:`FaceDetector.process` on batches of ``faces.batch_size`` JPEGs, one thread) over the same
``n`` images, each one of the benchmark photos (``bench_faces.sources``) rescaled to a random long side of 480-2,000
px, and samples the process's unique memory (USS, its own pages) every ``--every`` images. The two children run at
the same time (memory figures, not speed; ``--serial`` runs them one after the other).

    python benchmarks/bench_detector_memory.py [-n 2400] [--every 200] [--serial]

Prints a table (USS in MB at each sample, both sides), then one JSON line: {"bench": "detector_memory", "ours": MB
gained from the median USS of the second fifth of the images to the median of the last fifth, "peer": the same with
ONNX Runtime's defaults, "ratio": peer / ours (ours counted as at least 1 MB), "unit": ..., "kb_per_image": {...},
"last_uss_mb": {...}, ...}.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SIDES = {"ours": False, "peer": True}  # side -> ONNX Runtime memory patterns on


def images(n: int, faces_dir: Path, seed: int = 1):
    """``n`` JPEGs (bytes), each a benchmark photo at a random long side of 480-2,000 px (made one at a time)."""
    import numpy as np
    from bench_faces import rescaled, sources, to_jpeg
    from PIL import Image

    rng = np.random.default_rng(seed)
    src = sources(faces_dir)
    for i in range(n):
        yield to_jpeg(rescaled(src[i % len(src)][1], rng, Image.BILINEAR), 90)


def child(side: str, n: int, every: int, faces_dir: Path) -> dict:
    """One side's run in this process: USS (MB) after every ``every`` images."""
    import psutil
    import torch

    from pipeline.config import FacesConfig
    from pipeline.faces import FaceDetector
    from pipeline.faces.onnx_nets import use_onnx

    torch.set_num_threads(1)
    cfg = FacesConfig(runtime="onnx", device="cpu")
    if SIDES[side]:  # the torch nets swapped for sessions with ONNX Runtime's default options
        det = FaceDetector(cfg.model_copy(update={"runtime": "torch"}), num_threads=1)
        use_onnx(det.mtcnn, num_threads=1, folder=cfg.onnx_cache_dir, memory_patterns=True)
    else:
        det = FaceDetector(cfg, num_threads=1)
    me, samples, batch, done, t0 = psutil.Process(), [], [], 0, time.perf_counter()
    for jpeg in images(n, faces_dir):
        batch.append(jpeg)
        if len(batch) == cfg.batch_size or done + len(batch) == n:
            det.process(batch)
            done, batch = done + len(batch), []
            if done % every < cfg.batch_size or done == n:
                samples.append((done, round(me.memory_full_info().uss / 2**20, 1)))
    return {"side": side, "n": n, "seconds": round(time.perf_counter() - t0, 1), "samples": samples}


def gained(samples: list[tuple[int, float]], n: int) -> tuple[float, float]:
    """(MB, KB per image) from the median USS of the samples in the second fifth of the images to the median of
    those in the last fifth (medians: one sample taken while a batch's buffers are held does not decide it)."""
    import statistics

    def median(lo: float, hi: float) -> float:
        return statistics.median(u for k, u in samples if lo < k <= hi)

    mb = median(4 * n / 5, n) - median(n / 5, 2 * n / 5)
    return round(mb, 1), round(mb * 1024 / (3 * n / 5), 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=2400)
    ap.add_argument("--every", type=int, default=200)
    ap.add_argument("--faces-dir", default=str(REPO.parent / "shared" / "faces"))
    ap.add_argument("--serial", action="store_true", help="run the two sides one after the other")
    ap.add_argument("--child", choices=sorted(SIDES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.every > args.n / 5:
        ap.error("--every must be at most a fifth of -n: the measure compares the samples of two fifths")
    if args.child:
        print(json.dumps(child(args.child, args.n, args.every, Path(args.faces_dir))))
        return

    def start(side: str) -> subprocess.Popen:
        cmd = [sys.executable, __file__, "--child", side, "-n", str(args.n), "--every", str(args.every),
               "--faces-dir", args.faces_dir]  # fmt: skip
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)

    runs = {}
    procs = {} if args.serial else {side: start(side) for side in SIDES}
    for side in SIDES:
        p = procs.get(side) or start(side)
        out, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"{side}: the child failed (exit {p.returncode})")
        runs[side] = json.loads(out.strip().splitlines()[-1])

    print(f"USS (MB) of the face detector's process, {args.n} images of distinct sizes")
    print(f"{'images':>8}{'ours':>9}{'peer':>9}")
    for (k, a), (_, b) in zip(runs["ours"]["samples"], runs["peer"]["samples"], strict=True):
        print(f"{k:>8}{a:>9}{b:>9}")
    ours, ours_kb = gained(runs["ours"]["samples"], args.n)
    peer, peer_kb = gained(runs["peer"]["samples"], args.n)
    print(f"median USS, second fifth to last fifth: ours {ours:+} MB ({ours_kb} KB/image), peer {peer:+} MB "
          f"({peer_kb} KB/image); the last sample: ours {runs['ours']['samples'][-1][1]}, peer "
          f"{runs['peer']['samples'][-1][1]} MB")  # fmt: skip
    print(json.dumps({
        "bench": "detector_memory", "ours": ours, "peer": peer, "ratio": round(peer / max(ours, 1.0), 2),
        "unit": "MB of USS gained, median of the second fifth of the images to median of the last fifth",
        "kb_per_image": {"ours": ours_kb, "peer": peer_kb}, "n": args.n,
        "last_uss_mb": {s: runs[s]["samples"][-1][1] for s in SIDES},
        "seconds": {s: runs[s]["seconds"] for s in SIDES},
        "peer_is": "the same detector, ONNX Runtime's default session options (memory patterns on)",
    }))  # fmt: skip


if __name__ == "__main__":
    main()
