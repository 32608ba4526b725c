"""The train stage end to end against a plain PyTorch script doing the same epochs on the same crops.

Data: ``--images`` synthetic face-like 112 px JPEG crops (a skin-toned ellipse with eyes and mouth on a noisy
background; class 1 brighter) in a temp data root laid out as the faces and labels stages write it (``faces``
parts, ``labels/selfie`` with an 80/10/10 train/val/test split).

Ours: ``pipeline.train.run(cfg)``, timed from the call to its return: Ray Train start, the ingest (read, join,
into Ray's object store: by the driver with pyarrow for a faces table under ``train.driver_ingest_mb``, as here,
else by Ray Data), every epoch (train, precise BN, validation), a checkpoint per epoch, the test pass and
the export (``model.pt``, metrics, plots, model card). Ray itself is started before the clock (a user's cluster
is up; its start time is printed). Layouts: ``one-worker`` is the stage's CPU default (``train.num_workers`` and
``cpus_per_worker`` unset: one worker holding the node's CPUs less ``data_cpus``, ceil of that as torch threads);
``two-workers`` is two DDP workers of one thread each (``num_workers: 2, cpus_per_worker: 0.875``).

Plain: one process, torch's default threads (every core), a ``DataLoader`` with one worker process that decodes
and augments the same JPEG bytes with the same code (``pipeline.model.pixels.decode_batch``), the same model,
AdamW, learning rate, batch size and epochs; per epoch a validation pass and a checkpoint (weights, optimiser,
best weights) saved with ``torch.save``; at the end a test pass with the best weights and the final ``model.pt``.
The plain script runs fp32 (``--plain-precision bf16``: its forward passes under bfloat16 autocast, to compare
with ours trained in bf16); ours runs the stage's ``train.mixed_precision`` default (``auto``: fp32 on CPUs, so by
default both sides run fp32, at equal precision), and the table names the precision each side ran in.

    .venv/bin/python benchmarks/bench_train.py                       # 4000 crops, 112 px, resnet18, 3 epochs
    .venv/bin/python benchmarks/bench_train.py --images 400 --epochs 1 --backbone small_cnn --image-size 32

Prints a table (per-epoch images/s of both sides, the wall times), then one JSON line: ratio = plain wall s /
our wall s for the first layout measured (> 1: ours is faster; target >= 0.9).
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
from PIL import Image, ImageDraw, ImageFilter

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from pipeline.config import load_config  # noqa: E402
from pipeline.model.backbones import backbone  # noqa: E402
from pipeline.model.network import build_model  # noqa: E402
from pipeline.model.pixels import decode_batch  # noqa: E402
from pipeline.store import DataRoot  # noqa: E402

LAYOUTS = {
    "one-worker": {},  # the stage's CPU default
    "two-workers": {"num_workers": 2, "cpus_per_worker": 0.875},
}


def face_crop(cls: int, size: int, rng: np.random.Generator) -> bytes:
    """A face-like JPEG: a noisy background, a skin-toned ellipse, two eyes and a mouth; class 1 is brighter."""
    bg = rng.normal(120, 40, size=(size, size, 3)).clip(0, 255).astype(np.uint8)
    im = Image.fromarray(bg).filter(ImageFilter.GaussianBlur(2))
    d = ImageDraw.Draw(im)
    tone = rng.uniform(0.8, 1.0) * (np.array([225, 185, 160]) if cls else np.array([165, 120, 95]))
    cx, cy = size / 2 + rng.normal(0, size / 20, 2)
    w, h = size * rng.uniform(0.30, 0.38), size * rng.uniform(0.40, 0.46)
    d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=tuple(int(v) for v in tone))
    for ex in (cx - w / 2.2, cx + w / 2.2):
        d.ellipse([ex - size / 25, cy - h / 4 - size / 40, ex + size / 25, cy - h / 4 + size / 40], fill=(40, 30, 30))
    d.arc([cx - w / 2, cy + h / 4, cx + w / 2, cy + h / 1.6], 20, 160, fill=(120, 40, 40), width=max(1, size // 40))
    a = np.asarray(im.filter(ImageFilter.GaussianBlur(1))).astype(np.float32) + rng.normal(0, 6, (size, size, 3))
    buf = io.BytesIO()
    Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_root(path: str, n: int, size: int) -> dict[str, list[tuple[bytes, int]]]:
    """Write ``faces`` and ``labels/selfie`` (80/10/10 split by person); returns the (jpeg, class) rows per split."""
    rng = np.random.default_rng(0)
    root = DataRoot(path)
    faces, labels = [], []
    items: dict[str, list[tuple[bytes, int]]] = {"train": [], "val": [], "test": []}
    for i in range(n):
        cls = i % 2
        jpeg = face_crop(cls, size, rng)
        sha = hashlib.sha256(jpeg).hexdigest()
        faces.append(
            {"image_sha256": sha, "n_faces": 1, "kept": True, "crop_jpeg": jpeg, "width": size, "height": size}
        )
        split = "train" if i < 0.8 * n else ("val" if i < 0.9 * n else "test")
        row = {"item_id": f"p{i}", "site": "bench", "person_id": f"u{i}", "image_sha256": sha, "status": "ok"}
        row.update(split=split, weight=1.0, label=cls, class_name=["bad", "good"][cls], target=float(cls))
        labels.append(row)
        items[split].append((jpeg, cls))
        if len(faces) == 1000:  # parts of 1000 crops, as the faces stage writes several
            root.write_part("faces", faces)
            faces = []
    if faces:
        root.write_part("faces", faces)
    root.replace("labels/selfie", pa.Table.from_pylist(labels))
    return items


class Decode:
    """The DataLoader's collate_fn: the stage's decode + augmentation of a list of (jpeg, class) rows."""

    def __init__(self, tc, train: bool, seed: int):
        self.tc, self.train, self.seed = tc, train, seed
        self.mean, self.std = backbone(tc.backbone).normalisation
        self.rng = None

    def __call__(self, batch):
        if self.rng is None:  # one generator per loader worker process
            info = torch.utils.data.get_worker_info()
            self.rng = np.random.default_rng([self.seed, info.id if info else 0])
        tc = self.tc
        x = decode_batch(
            [b[0] for b in batch],
            tc.image_size,
            self.mean,
            self.std,
            train=self.train and tc.augment,
            jitter=tc.jitter,
            generator=self.rng,
        )
        return x, torch.tensor([b[1] for b in batch])


def plain(items: dict, tc, out_dir: str, loader_workers: int, precision: str = "fp32") -> dict:
    """The plain PyTorch script: returns its wall time, per-epoch images/s and the test accuracy."""
    from contextlib import nullcontext

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else nullcontext()

    t_start = time.perf_counter()
    torch.manual_seed(tc.seed)
    model = build_model(tc, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()

    def loader(split: str, train: bool):
        return torch.utils.data.DataLoader(
            items[split],
            batch_size=tc.batch_size,
            shuffle=train,
            collate_fn=Decode(tc, train, tc.seed),
            num_workers=loader_workers,
            persistent_workers=loader_workers > 0,
            prefetch_factor=2 if loader_workers > 0 else None,
        )

    def predict(dl) -> float:
        model.eval()
        right = n = 0
        with torch.no_grad():
            for x, y in dl:
                with autocast():
                    out = model(x)
                right += int((out.argmax(1) == y).sum())
                n += len(y)
        return right / max(n, 1)

    train_dl, val_dl, test_dl = loader("train", True), loader("val", False), loader("test", False)
    rates, best, best_acc = [], None, -1.0
    for epoch in range(tc.epochs):
        model.train()
        t0, n = time.perf_counter(), 0
        for x, y in train_dl:
            with autocast():
                out = model(x)
            loss = loss_fn(out.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            n += len(y)
        rates.append(n / (time.perf_counter() - t0))
        acc = predict(val_dl)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        if acc > best_acc:
            best, best_acc = state, acc
        torch.save({"model": state, "optimizer": opt.state_dict(), "epoch": epoch}, os.path.join(out_dir, "state.pt"))
        torch.save(best, os.path.join(out_dir, "best_model.pt"))
    model.load_state_dict(best)
    test_acc = predict(test_dl)
    torch.save(best, os.path.join(out_dir, "model.pt"))
    wall = time.perf_counter() - t_start
    return {"wall_s": wall, "rates": rates, "test_accuracy": test_acc, "precision": precision}


def ours(d: str, train: dict) -> dict:
    """``pipeline.train.run`` on the data root ``d``: its wall time, per-epoch images/s and phase timings."""
    from pipeline.train import run

    cfg = load_config(None, overrides={"data_root": d, "train": train})
    t0 = time.perf_counter()
    out = run(cfg)
    wall = time.perf_counter() - t0
    metrics = DataRoot(d).read_json(f"{out['model_dir']}/metrics.json")
    history = metrics["history"]
    meta = DataRoot(d).read_json(f"{out['model_dir']}/model.json")["train_config"]
    return {
        "wall_s": wall,
        "rates": [h["images_per_s"] for h in history],
        "train_s": sum(h["train_s"] for h in history),
        "bn_s": sum(h["bn_s"] for h in history),
        "val_s": sum(h["val_s"] for h in history),
        "test_accuracy": out["test"].get("accuracy"),
        "layout": f"{meta['num_workers']} x {meta['cpus_per_worker']:g} CPU",
        "precision": "/".join(sorted({h.get("precision", "fp32") for h in history})),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--layout", choices=["one-worker", "two-workers", "both"], default="one-worker")
    ap.add_argument("--loader-workers", type=int, default=1, help="the plain script's DataLoader workers")
    ap.add_argument("--plain-precision", choices=["fp32", "bf16"], default="fp32", help="the plain script's autocast")
    args = ap.parse_args()
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]

    import ray

    from pipeline.runtime import init_ray

    train = {
        "task": "selfie",
        "backbone": args.backbone,
        "pretrained": None,
        "image_size": args.image_size,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "max_failures": 0,
    }
    loads = []
    with tempfile.TemporaryDirectory() as d:
        items = make_root(d, args.images, args.image_size)
        cfg = load_config(None, overrides={"data_root": d, "train": train})
        # The plain script first, so that no Ray process competes with it.
        loads.append(os.getloadavg()[0])
        with tempfile.TemporaryDirectory() as pd:
            peer = plain(items, cfg.train, pd, args.loader_workers, args.plain_precision)
        t0 = time.perf_counter()
        init_ray(cfg)
        ray_start = time.perf_counter() - t0
        ray.data.DataContext.get_current().enable_progress_bars = False
        results = {}
        for name in layouts:
            loads.append(os.getloadavg()[0])
            results[name] = ours(d, train | LAYOUTS[name] | {"run_id": f"bench-{name}"})
        ray.shutdown()
    loads.append(os.getloadavg()[0])

    cols = [(f"ours {n} ({r['layout']}, {r['precision']})", r) for n, r in results.items()]
    threads = torch.get_num_threads()
    cols.append((f"plain (DataLoader x{args.loader_workers}, {threads} threads, {peer['precision']})", peer))
    width = max(len(c[0]) for c in cols) + 2
    print(f"{'':26}" + "".join(f"{c[0]:>{width}}" for c in cols))
    for e in range(args.epochs):
        print(f"{'epoch ' + str(e) + ' images/s':26}" + "".join(f"{c[1]['rates'][e]:>{width}.1f}" for c in cols))
    print(f"{'whole stage wall s':26}" + "".join(f"{c[1]['wall_s']:>{width}.1f}" for c in cols))
    print(f"{'test accuracy':26}" + "".join(f"{c[1]['test_accuracy'] or 0:>{width}.3f}" for c in cols))
    for n, r in results.items():
        rest = r["wall_s"] - r["train_s"] - r["bn_s"] - r["val_s"]
        print(
            f"ours {n}: train {r['train_s']:.1f}s, precise BN {r['bn_s']:.1f}s, val {r['val_s']:.1f}s, "
            f"the rest (Ray Train start, ingest, checkpoints, test, export) {rest:.1f}s"
        )
    n_train = len(items["train"])
    load_list = ", ".join(f"{x:.1f}" for x in loads)
    print(
        f"{args.images} crops ({n_train} train), {args.image_size}px, {args.backbone}, batch {args.batch_size}, "
        f"{args.epochs} epochs; Ray start {ray_start:.1f}s (not timed); load average {max(loads):.1f} (max of "
        f"{load_list}), {os.cpu_count()} CPUs"
    )
    first = results[layouts[0]]
    record = {
        "bench": "train",
        "ours": round(first["wall_s"], 1),
        "peer": round(peer["wall_s"], 1),
        "ratio": round(peer["wall_s"] / first["wall_s"], 3),
        "unit": "end-to-end speed (peer seconds / our seconds)",
        "layout": layouts[0],
        "images": args.images,
        "image_size": args.image_size,
        "backbone": args.backbone,
        "epochs": args.epochs,
        "ours_precision": first["precision"],
        "peer_precision": peer["precision"],
        "ours_images_per_s": [round(x, 1) for x in first["rates"]],
        "peer_images_per_s": [round(x, 1) for x in peer["rates"]],
        "load_average": round(max(loads), 1),
        "cpus": os.cpu_count(),
    }
    for n, r in results.items():
        record[f"wall_s_{n}"] = round(r["wall_s"], 1)
    print(json.dumps(record))


if __name__ == "__main__":
    main()
