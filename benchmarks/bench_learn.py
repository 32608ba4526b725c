"""Accuracy on real faces: facerank's documented commands against the plain PyTorch script a user would write.

Data: a real labelled face set in class folders (``--source DIR`` holding ``<class>/*.jpg``, e.g. the 2,307 web
face photos of ``gender_dataset_face/{man,woman}`` in the public repository balajisrinivas/Gender-Detection; its
licence is unstated: local evaluation only, never committed). :func:`prepare` drops exact duplicates (the same
bytes twice: the first copy stays) and images filed under two classes (every copy goes), then cuts a fixed test
split by image hash (a fifth of the images, ``sha256[:8] % 5 == 0``) into ``WORK/set/{train,test}/<class>/``. Both
sides see the same ``train`` folder and are tested on the same ``test`` folder.

Ours, the commands docs/recipes.md gives (each a subprocess, one data root per seed; ``--set`` reaches all three,
``--groups`` imports the same set by a CSV listing with a group column, the image's resolution band)::

    python -m pipeline labels import-classes --config CFG --data-root R --task gender --folders WORK/set [--no-detect]
    python -m pipeline stage train --config CFG --data-root R --set train.seed=S
    python -m pipeline stage score --config CFG --data-root R2 --images WORK/set/test --set score.model=R/models/RUN

The test accuracy is metrics.json's (the model's own test pass); "scored" is the accuracy of the score stage's
``predicted`` column on the same test images scored from the image files into a fresh data root (train/serve
parity: it must equal the test accuracy), and ``agree`` the share of test images whose scored class equals the
test pass's (``test_predictions.parquet``).

Plain (:func:`plain_run`, its own process): ``torchvision.datasets.ImageFolder`` over the train folder, a seeded
80/20 ``random_split`` into train and val, a ``DataLoader`` (batch 32, shuffled, one worker), the same ResNet-18
from scratch at the same size, AdamW at the same learning rate and weight decay, the same epochs and the same
augmentation (resize to 1.14 x size, random crop, horizontal flip, colour jitter 0.2); the epoch with the best val
accuracy is kept and tested on the test folder (resized to size). fp32.

    .venv/bin/python benchmarks/bench_learn.py --source gender_dataset_face --work /tmp/learn --seeds 0 1

Prints one row per seed and side (test accuracy with its 95% Wilson interval, per-epoch val accuracy, wall time),
then one JSON line: ours and peer are the mean test accuracies over the seeds, ratio = ours / peer (>= 1: ours is
at least as accurate).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from pipeline.train.metrics import wilson_interval  # noqa: E402

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


# ------------------------------------------------------------------------------------------------ data
def prepare(source: Path, out: Path) -> dict:
    """``source/<class>/*`` into ``out/{train,test}/<class>/`` (duplicates and two-class images dropped)."""
    by_sha: dict[str, list[tuple[str, Path]]] = defaultdict(list)
    for cls_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        for f in sorted(cls_dir.iterdir()):
            if f.is_file() and f.suffix.lower() in SUFFIXES:
                by_sha[hashlib.sha256(f.read_bytes()).hexdigest()].append((cls_dir.name, f))
    shutil.rmtree(out, ignore_errors=True)
    counts: dict[str, int] = defaultdict(int)
    for sha, items in sorted(by_sha.items()):
        if len({c for c, _ in items}) > 1:
            counts["dropped_two_classes"] += len(items)
            continue
        counts["dropped_duplicates"] += len(items) - 1
        cls, f = items[0]
        split = "test" if int(sha[:8], 16) % 5 == 0 else "train"
        (out / split / cls).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, out / split / cls / f.name)
        counts[f"{split}/{cls}"] += 1
    return dict(sorted(counts.items()))


def write_listing(set_dir: Path, out: Path) -> Path:
    """A CSV of the prepared set (file, label, split, group) for the CSV import; group: the image's resolution
    band by its short side (a quality factor every web face set has)."""
    from PIL import Image

    rows = ["file,label,split,group"]
    for split in ("train", "test"):
        for cls in sorted(p for p in (set_dir / split).iterdir() if p.is_dir()):
            for f in sorted(cls.iterdir()):
                with Image.open(f) as im:
                    side = min(im.size)
                band = "short side < 100 px" if side < 100 else ("100-199 px" if side < 200 else "200 px or more")
                rows.append(f"{f.relative_to(set_dir).as_posix()},{cls.name},{split},{band}")
    out.write_text("\n".join(rows) + "\n")
    return out


def test_truth(test_dir: Path) -> dict[str, str]:
    """image sha256 -> class folder of every test image."""
    return {
        hashlib.sha256(f.read_bytes()).hexdigest(): cls.name
        for cls in sorted(test_dir.iterdir())
        if cls.is_dir()
        for f in sorted(cls.iterdir())
        if f.is_file()
    }


# ------------------------------------------------------------------------------------------------ ours
CONFIG = """\
data_root: {root}
labels:
  imported: {{name: bench_learn real faces, licence: local evaluation only, detect: {detect}}}
  split: {{train: 0.8, val: 0.2, test: 0.0, seed: bench-learn}}
train: {{task: gender, backbone: resnet18, image_size: {size}, epochs: {epochs}, batch_size: 32, lr: 0.001}}
"""


def _pipeline(*args: str, log: Path) -> None:
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    with log.open("a") as fh:
        fh.write(f"$ python -m pipeline {' '.join(args)}\n")
        fh.flush()
        subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, stdout=fh, stderr=fh, check=True)


def ours_run(work: Path, seed: int, a: argparse.Namespace) -> dict:
    """The documented import -> train -> score commands for one seed; accuracy, parity and wall times."""
    import pyarrow.parquet as pq

    tag = f"ours-s{seed}{'-' + a.tag if a.tag else ''}"
    root, scored_root, log = work / tag, work / f"{tag}-score", work / f"{tag}.log"
    for p in (root, scored_root):
        shutil.rmtree(p, ignore_errors=True)
    log.unlink(missing_ok=True)
    cfg = work / f"{tag}.yaml"
    detect = "true" if a.detect else "false"
    cfg.write_text(CONFIG.format(root=root, detect=detect, size=a.image_size, epochs=a.epochs))
    extra = [f"--set={s}" for s in a.set]
    sets = [f"--set=train.seed={seed}", f"--set=train.run_id={tag}", *extra]
    t0 = time.perf_counter()
    if a.groups:  # the documented CSV import, with a group column (the image's resolution band)
        listing = write_listing(work / "set", work / f"{tag}-listing.csv")
        _pipeline("labels", "import-classes", "--config", str(cfg), "--task", "gender", "--csv", str(listing),
                  "--images", str(work / "set"), "--file-column", "file", "--label-column", "label",
                  "--split-column", "split", "--group-column", "group", *extra, log=log)  # fmt: skip
    else:
        _pipeline("labels", "import-classes", "--config", str(cfg), "--task", "gender", "--folders",
                  str(work / "set"), *extra, log=log)  # fmt: skip
    t1 = time.perf_counter()
    _pipeline("stage", "train", "--config", str(cfg), *sets, log=log)
    t2 = time.perf_counter()
    model_dir = root / "models" / tag
    _pipeline("stage", "score", "--config", str(cfg), "--data-root", str(scored_root), "--images",
              str(work / "set" / "test"), f"--set=score.model={model_dir}", log=log)  # fmt: skip
    t3 = time.perf_counter()
    metrics = json.loads((model_dir / "metrics.json").read_text())
    truth = test_truth(work / "set" / "test")
    scores = pq.read_table(scored_root / "scores").to_pylist()
    ok = [r for r in scores if r["status"] == "ok"]
    right = sum(r["predicted"] == truth.get(r["image_sha256"]) for r in ok)
    preds_path = model_dir / "test_predictions.parquet"
    agree = None
    if preds_path.exists():
        test_pred = {r["image_sha256"]: r["predicted"] for r in pq.read_table(preds_path).to_pylist()}
        both = [r for r in ok if r["image_sha256"] in test_pred]
        agree = sum(r["predicted"] == test_pred[r["image_sha256"]] for r in both) / max(len(both), 1)
    test = metrics["test"]
    if test.get("by_group"):
        g = test["by_group"]
        cells = {k: (v["n"], round(v["accuracy"], 3), [round(x, 3) for x in v["accuracy_ci95"]]) for k, v in
                 g["groups"].items()}  # fmt: skip
        print(f"  per {g['column']} ({tag}):", json.dumps(cells), "gap", g.get("gap"))
    return {
        "side": "facerank",
        "seed": seed,
        "test_accuracy": test["accuracy"],
        "test_n": test["n"],
        "test_ci": test.get("accuracy_ci95"),
        "scored_accuracy": right / max(len(ok), 1),
        "scored_n": len(ok),
        "not_scored": len(scores) - len(ok),
        "agree": agree,
        "val_curve": [round(h["val"]["accuracy"], 3) for h in metrics["history"]],
        "best_epoch": metrics.get("best_epoch"),
        "precision": sorted({h.get("precision") for h in metrics["history"]}),
        "ece": (test.get("calibration") or {}).get("ece"),
        "by_group": test.get("by_group"),
        "wall_s": {"import": round(t1 - t0, 1), "train": round(t2 - t1, 1), "score": round(t3 - t2, 1)},
    }


# ------------------------------------------------------------------------------------------------ plain
def plain_run(train_dir: str, test_dir: str, seed: int, epochs: int, size: int) -> dict:
    """What a user writes: ImageFolder, a seeded 80/20 train/val cut, DataLoader, ResNet-18, AdamW, best val epoch."""
    import math

    import torch
    import torchvision
    from torch import nn
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms as T

    torch.manual_seed(seed)
    torch.set_num_threads(os.cpu_count() or 1)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    pad = int(math.ceil(size * 1.14))
    train_tf = T.Compose([T.Resize((pad, pad)), T.RandomCrop(size), T.RandomHorizontalFlip(),
                          T.ColorJitter(0.2, 0.2, 0.2), T.ToTensor(), norm])  # fmt: skip
    eval_tf = T.Compose([T.Resize((size, size)), T.ToTensor(), norm])
    full = torchvision.datasets.ImageFolder(train_dir)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = len(full) // 5
    train_set = Subset(torchvision.datasets.ImageFolder(train_dir, train_tf), order[n_val:])
    val_set = Subset(torchvision.datasets.ImageFolder(train_dir, eval_tf), order[:n_val])
    test_set = torchvision.datasets.ImageFolder(test_dir, eval_tf)
    loader = DataLoader(train_set, batch_size=32, shuffle=True, num_workers=1, drop_last=False)
    model = torchvision.models.resnet18(num_classes=len(full.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    loss_fn = nn.CrossEntropyLoss()

    def accuracy(ds) -> float:
        model.eval()
        right = 0
        with torch.no_grad():
            for x, y in DataLoader(ds, batch_size=64, num_workers=1):
                right += int((model(x).argmax(1) == y).sum())
        return right / len(ds)

    t0 = time.perf_counter()
    best, best_state, curve = -1.0, None, []
    for _ in range(epochs):
        model.train()
        for x, y in loader:
            opt.zero_grad()
            loss_fn(model(x), y).backward()
            opt.step()
        acc = accuracy(val_set)
        curve.append(round(acc, 3))
        if acc > best:
            best, best_state = acc, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    test_acc = accuracy(test_set)
    return {"side": "plain", "seed": seed, "test_accuracy": test_acc, "test_n": len(test_set),
            "val_curve": curve, "best_epoch": curve.index(max(curve)),
            "wall_s": {"train": round(time.perf_counter() - t0, 1)}}  # fmt: skip


def plain_subprocess(work: Path, seed: int, a: argparse.Namespace) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--plain-worker", str(seed), "--work", str(work), "--epochs", str(a.epochs),
         "--image-size", str(a.image_size)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report
def _ci(acc: float, n: int) -> str:
    lo, hi = wilson_interval(round(acc * n), n)
    return f"{acc:.3f} [{lo:.3f}, {hi:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source", type=Path, help="folder of <class>/<image> files (the real set)")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--image-size", type=int, default=112)
    ap.add_argument("--detect", action="store_true", help="import with MTCNN crops (default: faces as given)")
    ap.add_argument("--set", action="append", default=[], help="extra --set KEY=VALUE for our train/score")
    ap.add_argument("--tag", default="", help="a name for this variant's data roots")
    ap.add_argument("--groups", action="store_true", help="import by CSV with a resolution-band group column")
    ap.add_argument("--sides", default="ours,plain")
    ap.add_argument("--plain-worker", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.plain_worker is not None:
        res = plain_run(str(a.work / "set" / "train"), str(a.work / "set" / "test"), a.plain_worker, a.epochs,
                        a.image_size)  # fmt: skip
        print(json.dumps(res))
        return
    a.work.mkdir(parents=True, exist_ok=True)
    if a.source is not None:
        print("prepared:", json.dumps(prepare(a.source, a.work / "set")))
    sides = a.sides.split(",")
    rows = []
    for seed in a.seeds:
        if "ours" in sides:
            rows.append(ours_run(a.work, seed, a))
            print(json.dumps(rows[-1]), flush=True)
        if "plain" in sides:
            rows.append(plain_subprocess(a.work, seed, a))
            print(json.dumps(rows[-1]), flush=True)
    head = f"{'side':9} {'seed':>4} {'test accuracy [95% CI]':>24} {'scored':>7} {'agree':>6} {'wall s':>7}"
    print(f"\n{head}  val curve")
    for r in rows:
        scored = f"{r['scored_accuracy']:.3f}" if "scored_accuracy" in r else "-"
        agree = f"{r['agree']:.3f}" if r.get("agree") is not None else "-"
        wall = sum(r["wall_s"].values())
        print(f"{r['side']:9} {r['seed']:>4} {_ci(r['test_accuracy'], r['test_n']):>24} {scored:>7} {agree:>6} "
              f"{wall:>7.1f}  {r['val_curve']}")  # fmt: skip
    mean = {s: [r["test_accuracy"] for r in rows if r["side"] == s] for s in ("facerank", "plain")}
    ours = sum(mean["facerank"]) / len(mean["facerank"]) if mean["facerank"] else None
    peer = sum(mean["plain"]) / len(mean["plain"]) if mean["plain"] else None
    ratio = round(ours / peer, 4) if ours is not None and peer else None
    print(json.dumps({"bench": "learn", "ours": ours, "peer": peer, "ratio": ratio, "unit": "test accuracy (mean)"}))


if __name__ == "__main__":
    main()
