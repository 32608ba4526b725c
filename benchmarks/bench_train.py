"""Training throughput: Ray Train (2 CPU workers, Ray Data ingest) against a plain single-process PyTorch loop.

Both sides train the same model (``small_cnn``) on the same synthetic JPEG crops with the same batch size and the
same decode + augmentation code, for ``--epochs`` epochs; the figure is images/s of the last epoch (the first one
warms caches and iterators). Ours: ``pipeline.train.run`` with 2 workers of one thread each, timing taken inside
the workers (``history[-1].images_per_s``), plus the whole run's wall time for reference. Plain: one process,
``torch.set_num_threads(2)``, a ``DataLoader`` over the crops (decoded in ``collate_fn``); the same loop with one
thread is printed too (on a small, busy machine two intra-op threads can be slower than one).

    .venv/bin/python benchmarks/bench_train.py --images 512 --epochs 2

Prints a table, then one JSON line: ratio = ours / plain (target >= 0.9).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import torch
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pipeline.config import load_config  # noqa: E402
from pipeline.store import DataRoot  # noqa: E402
from pipeline.train.data import decode_batch  # noqa: E402
from pipeline.train.models import NORMALISATION, build_model  # noqa: E402


def make_root(path: str, n: int, size: int) -> list[tuple[bytes, int]]:
    rng = np.random.default_rng(0)
    root = DataRoot(path)
    faces, labels, items = [], [], []
    for i in range(n):
        cls = i % 2
        a = rng.normal(170 if cls else 90, 30, size=(size, size, 3))
        buf = io.BytesIO()
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
        jpeg = buf.getvalue()
        sha = hashlib.sha256(jpeg).hexdigest()
        faces.append({"image_sha256": sha, "kept": True, "crop_jpeg": jpeg})
        split = "train" if i < 0.8 * n else ("val" if i < 0.9 * n else "test")
        labels.append(
            {"item_id": f"p{i}", "person_id": f"u{i}", "image_sha256": sha, "status": "ok", "split": split}
            | {"label": cls, "class_name": ["bad", "good"][cls], "target": float(cls)}
        )
        if split == "train":
            items.append((jpeg, cls))
    root.write_part("faces", faces)
    root.replace("labels/selfie", pa.Table.from_pylist(labels))
    return items


def plain(items, tc, epochs: int, threads: int = 2) -> list[float]:
    """A single-process loop with a DataLoader: images/s per epoch."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    mean, std = NORMALISATION[tc.backbone]
    rng = np.random.default_rng(0)
    model = build_model(tc, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()

    def collate(batch):
        x = decode_batch([b[0] for b in batch], tc.image_size, mean, std, train=True, jitter=tc.jitter, generator=rng)
        return x, torch.tensor([b[1] for b in batch])

    loader = torch.utils.data.DataLoader(items, batch_size=tc.batch_size, shuffle=True, collate_fn=collate)
    rates = []
    for _ in range(epochs):
        model.train()
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        rates.append(n / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=640)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()

    import ray

    from pipeline.train import run

    with tempfile.TemporaryDirectory() as d:
        items = make_root(d, args.images, args.size)
        train = {
            "task": "selfie",
            "backbone": "small_cnn",
            "image_size": args.size,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "num_workers": 2,
            "cpus_per_worker": 0.875,
            "data_cpus": 0.25,
            "max_failures": 0,
        }
        cfg = load_config(None, overrides={"data_root": d, "train": train})
        # The plain loops first, so that no Ray process competes with them.
        peers = {t: plain(items, cfg.train, args.epochs, t) for t in (2, 1)}
        from pipeline.runtime import start_local_ray

        start_local_ray(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        t0 = time.perf_counter()
        out = run(cfg)
        wall = time.perf_counter() - t0
        history = DataRoot(d).read_json(f"{out['model_dir']}/metrics.json")["history"]
        ray.shutdown()
        ours = [h["images_per_s"] for h in history]

    load = os.getloadavg()[0]
    peer = peers[2]
    print(f"{'':24}{'ours (Ray Train, 2x1 thread)':>30}{'plain, 2 threads':>18}{'plain, 1 thread':>18}")
    for e in range(args.epochs):
        print(f"{'epoch ' + str(e) + ' images/s':24}{ours[e]:>30.1f}{peers[2][e]:>18.1f}{peers[1][e]:>18.1f}")
    print(f"{'whole run wall s (ours)':28}{wall:>30.1f}")
    print(
        f"train images {len(items)}, {args.size}px, batch {args.batch_size}, load average {load:.1f}, "
        f"{os.cpu_count()} CPUs"
    )
    print(
        json.dumps(
            {
                "bench": "train_throughput",
                "ours": round(ours[-1], 2),
                "peer": round(peer[-1], 2),
                "ratio": round(ours[-1] / peer[-1], 3),
                "unit": "images/s (last epoch)",
                "ours_wall_s": round(wall, 1),
                "images": len(items),
                "image_size": args.size,
                "batch_size": args.batch_size,
                "epochs": args.epochs,
                "load_average": round(load, 1),
                "cpus": os.cpu_count(),
                "peer_is": "plain loop, DataLoader, torch.set_num_threads(2)",
                "plain_1thread": round(peers[1][-1], 2),
                "ratio_vs_plain_1thread": round(ours[-1] / peers[1][-1], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
