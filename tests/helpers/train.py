"""Tiny synthetic train-stage inputs: brightness-coded face crops, a ``faces`` + ``labels/<task>`` data root, and a
small fast train config (used by tests/test_train.py and tests/test_train_faults.py)."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.config import FacesConfig, load_config
from pipeline.faces.recipe import CropRecipe
from pipeline.store import DataRoot

N = 100  # 60 train, 20 val, 20 test
RECIPE = CropRecipe.of(FacesConfig(crop_size=64), detect=False).to_json()  # crops taken as given, 64 px


def brightness_crop(brightness: float, rng: np.random.Generator) -> bytes:
    """A 64x64 JPEG whose mean brightness carries the signal, with texture noise and a random tint."""
    a = rng.normal(brightness, 25, size=(64, 64, 1)) + rng.normal(0, 10, size=(1, 1, 3))
    im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def make_root(
    path, task: str = "selfie", n: int = N, seed: int = 0, folds: int | None = None
) -> tuple[DataRoot, list[bytes], list[int]]:
    """Write ``faces`` and ``labels/<task>``: bright crops are class 1 ('good'); the target is the brightness.
    ``folds``: also a fold column ``(i // 2) % folds`` (both classes in every fold)."""
    rng = np.random.default_rng(seed)
    root = DataRoot(str(path))
    faces, labels, crops, classes = [], [], [], []
    for i in range(n):
        cls = i % 2
        b = float(rng.uniform(150, 210) if cls else rng.uniform(50, 110))
        jpeg = brightness_crop(b, rng)
        sha = hashlib.sha256(jpeg).hexdigest()
        faces.append({"image_sha256": sha, "n_faces": 1, "kept": True, "crop_jpeg": jpeg, "width": 64, "height": 64,
                      "recipe": RECIPE})  # fmt: skip
        split = "train" if i < 0.6 * n else ("val" if i < 0.8 * n else "test")
        row = {"item_id": f"p{i}", "site": "t", "person_id": f"u{i}", "image_sha256": sha, "status": "ok"}
        row.update(split=split, weight=1.0, target=b / 255 * 4 + 1, fold=(i // 2) % folds if folds else None)
        if task != "beauty":
            row.update(label=cls, class_name=["bad", "good"][cls])
        labels.append(row)
        crops.append(jpeg)
        classes.append(cls)
    labels.append({"item_id": "x", "person_id": "ux", "image_sha256": "0" * 64, "status": "excluded", "split": "train"})
    root.write_part("faces", faces)
    root.replace(f"labels/{task}", pa.Table.from_pylist(labels))
    return root, crops, classes


def cfg_for(path, task: str = "selfie", **train):
    """A config training ``small_cnn`` at 32 px on the data root ``path``; ``train``: ``train.*`` overrides."""
    base = {
        "task": task,
        "backbone": "small_cnn",
        "image_size": 32,
        "epochs": 2,
        "batch_size": 16,
        "lr": 0.003,
        "num_workers": 2,
        "cpus_per_worker": 0.5,
        # one retry from the last checkpoint: on a machine shared with other Ray instances, Ray Train 2.60's
        # PlacementGroupCleaner can ask the wrong cluster's state API whether our controller lives and remove
        # our placement group mid-run (seen twice here); the worker-failure path itself is tested in
        # test_train_faults.py
        "max_failures": 1,
    }
    base.update(train)
    return load_config(None, overrides={"data_root": str(path), "train": base})
