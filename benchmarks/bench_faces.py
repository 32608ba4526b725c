"""Face-stage throughput and count accuracy vs a plain facenet-pytorch loop, on the same images, same machine.

Images: the ``../shared/faces`` MANIFEST photos (known face counts), ``astronaut()`` and ``camera()`` (one face),
``coffee()``, ``chelsea()``, ``rocket()`` (none), cycled and rescaled to a long side drawn from 480..2000 px, JPEG.

* peer: ``MTCNN(keep_all=True)`` and ``detect`` on each PIL image in one process (the facenet-pytorch README way);
  a face counts when p > 0.9.
* ours: :func:`pipeline.faces.detect_faces` (Ray Data actor pool; bounded detection side, equal-size batches, the
  full-resolution re-check, the crops; the nets run by ``faces.runtime``, the pyramid from ``detect_min_share``)
  with images ordered by size as the stage orders them; ``n_faces``.

Both are timed from JPEG bytes to face counts (ours includes starting its actors). Prints a table, then one JSON
line with ratio = ours / peer images per second. Run:
``python benchmarks/bench_faces.py [-n 500] [--min-share S] [--runtime auto|torch|onnx]``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from pipeline.config import FacesConfig  # noqa: E402
from pipeline.faces.detector import resolve_runtime  # noqa: E402
from pipeline.faces.quality import read_manifest  # noqa: E402
from pipeline.imaging import decode_image, to_jpeg  # noqa: E402


def sources(faces_dir: Path) -> list[tuple[str, Image.Image, int]]:
    """(name, image, true face count) for every source photo."""
    from skimage import data

    out = []
    if (faces_dir / "MANIFEST.csv").exists():
        for path, n in read_manifest(faces_dir):
            out.append((path, decode_image((faces_dir / path).read_bytes()), n))
    for name, n in [("astronaut", 1), ("camera", 1), ("coffee", 0), ("chelsea", 0), ("rocket", 0)]:
        out.append((name, decode_image(to_jpeg(Image.fromarray(getattr(data, name)()), 95)), n))
    return out


def build_images(n: int, faces_dir: Path, seed: int = 0) -> list[dict]:
    """``n`` JPEG images cycling over the sources, each rescaled to a random long side in 480..2000 px."""
    rng = np.random.default_rng(seed)
    src = sources(faces_dir)
    items = []
    for i in range(n):
        name, img, truth = src[i % len(src)]
        long_side = int(rng.integers(480, 2001))
        s = long_side / max(img.size)
        size = (max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s)))
        jpeg = to_jpeg(img.resize(size, Image.BICUBIC), 90)
        items.append({"name": name, "truth": truth, "jpeg": jpeg, "width": size[0], "height": size[1]})
    return items


def run_peer(items: list[dict], threshold: float = 0.9) -> tuple[float, list[int]]:
    """facenet-pytorch as its README shows it: one MTCNN, detect per PIL image."""
    from facenet_pytorch import MTCNN

    mtcnn = MTCNN(keep_all=True, device="cpu")
    counts = []
    t0 = time.perf_counter()
    for it in items:
        img = Image.open(io.BytesIO(it["jpeg"])).convert("RGB")
        _, probs = mtcnn.detect(img)
        counts.append(0 if probs is None or probs[0] is None else int(sum(p > threshold for p in probs)))
    return time.perf_counter() - t0, counts


def run_ours(items: list[dict], cfg: FacesConfig) -> tuple[float, list[int]]:
    """The stage's Ray Data path over the same bytes, ordered by size like :func:`pipeline.faces.stage.run`."""
    import pyarrow as pa
    import ray

    from pipeline.faces import detect_faces

    order = sorted(range(len(items)), key=lambda i: (items[i]["width"], items[i]["height"], i))
    table = pa.table(
        {"image_sha256": [str(i) for i in order], "image": pa.array([items[i]["jpeg"] for i in order], pa.binary())}
    )
    blocks = [table.slice(i, cfg.batch_size) for i in range(0, table.num_rows, cfg.batch_size)]
    t0 = time.perf_counter()
    ds = detect_faces(ray.data.from_arrow(blocks), cfg).select_columns(["image_sha256", "n_faces"])
    got = {r["image_sha256"]: r["n_faces"] for r in ds.take_all()}
    secs = time.perf_counter() - t0
    return secs, [int(got[str(i)]) for i in range(len(items))]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=500)
    ap.add_argument("--faces-dir", default=str(REPO.parent / "shared" / "faces"))
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--max-side", type=int, default=FacesConfig().max_side)
    ap.add_argument("--batch-size", type=int, default=FacesConfig().batch_size)
    ap.add_argument("--min-share", type=float, default=FacesConfig().detect_min_share)
    ap.add_argument("--runtime", choices=["auto", "torch", "onnx"], default=FacesConfig().runtime)
    ap.add_argument("--skip-peer", action="store_true")
    args = ap.parse_args(argv)

    items = build_images(args.n, Path(args.faces_dir))
    truth = [it["truth"] for it in items]
    load0 = os.getloadavg()[0]
    peer_s, peer_counts = (float("nan"), [-1] * len(items)) if args.skip_peer else run_peer(items)

    import ray

    from pipeline.runtime import start_local_ray

    start_local_ray(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    ray.data.DataContext.get_current().enable_progress_bars = False
    cfg = FacesConfig(
        num_actors=args.actors,
        max_side=args.max_side,
        batch_size=args.batch_size,
        device="cpu",
        detect_min_share=args.min_share,
        runtime=args.runtime,
    )
    ours_s, ours_counts = run_ours(items, cfg)
    ray.shutdown()
    load1 = os.getloadavg()[0]

    n = len(items)
    peer_ips, ours_ips = n / peer_s, n / ours_s
    peer_acc = sum(a == b for a, b in zip(peer_counts, truth, strict=True)) / n
    ours_acc = sum(a == b for a, b in zip(ours_counts, truth, strict=True)) / n
    print(f"{n} images, long side 480..2000 px; {os.cpu_count()} CPUs; load avg {load0:.1f} → {load1:.1f}")
    print(f"{'':<44}{'images/s':>10}{'count right':>14}")
    print(f"{'plain MTCNN(keep_all=True).detect loop':<44}{peer_ips:>10.2f}{peer_acc:>14.3f}")
    runtime = resolve_runtime(cfg.runtime, "cpu")
    print(f"{f'ours: Ray Data, {args.actors} actors, max_side {args.max_side}':<44}{ours_ips:>10.2f}{ours_acc:>14.3f}")
    print(f"  nets by {runtime}, detect_min_share {cfg.detect_min_share}")
    for label, counts in (("plain", peer_counts), ("ours", ours_counts)):
        wrong: dict[str, int] = {}
        for it, c in zip(items, counts, strict=True):
            if c != it["truth"]:
                wrong[it["name"]] = wrong.get(it["name"], 0) + 1
        print(f"  {label} wrong by source: {dict(sorted(wrong.items(), key=lambda kv: -kv[1]))}")
    print(
        json.dumps(
            {
                "bench": "faces",
                "ours": round(ours_ips, 3),
                "peer": None if args.skip_peer else round(peer_ips, 3),
                "ratio": None if args.skip_peer else round(ours_ips / peer_ips, 3),
                "unit": "images/s",
                "n": n,
                "ours_count_accuracy": round(ours_acc, 4),
                "peer_count_accuracy": None if args.skip_peer else round(peer_acc, 4),
                "actors": args.actors,
                "max_side": args.max_side,
                "detect_min_share": cfg.detect_min_share,
                "runtime": runtime,
                "cpus": os.cpu_count(),
                "load_avg": [round(load0, 1), round(load1, 1)],
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
