"""Tiny generated stand-ins with the file layouts of the recipes' data sets (docs/recipes.md), each with a planted
signal a small network learns in a few epochs: the class (or the score) is the image's colour balance.

* :func:`bitmoji_set`: ``images/0000.jpg…`` and ``train.csv`` (``image_id,is_male,<landmark columns>``, 1 / -1),
  plus four bad rows (a missing file, an unknown label, a path outside the images folder, an unreadable image);
* :func:`imagefolder_set`: ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``;
* :func:`scut_set`: SCUT-FBP5500_v2's ``Images/`` and ``train_test_files/`` (the 60/40 split files and the five
  cross-validation folders), scores 1-5.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SCUT_60_40 = "train_test_files/split_of_60%training and 40%testing"
SCUT_CV = "train_test_files/5_folders_cross_validations_files"


def colour_face(redness: float, rng: np.random.Generator, size: int = 48) -> Image.Image:
    """A textured square whose red / blue balance is ``redness`` in 0..1 (0 all blue, 1 all red)."""
    base = np.array([60 + 170 * redness, 110, 230 - 170 * redness])
    a = rng.normal(0, 18, size=(size, size, 3)) + base + rng.normal(0, 8, size=(1, 1, 3))
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def bitmoji_set(d: Path, n: int = 40, seed: int = 0) -> dict:
    """The Bitmoji layout: ``d/images/NNNN.jpg``, ``d/train.csv``; male (1) red, female (-1) blue."""
    rng = np.random.default_rng(seed)
    (d / "images").mkdir(parents=True, exist_ok=True)
    lines = ["image_id,is_male,left_eye_x,left_eye_y"]
    for i in range(n):
        male = i % 2 == 0
        colour_face(rng.uniform(0.75, 1.0) if male else rng.uniform(0.0, 0.25), rng).save(d / "images" / f"{i:04d}.jpg")
        lines.append(f"{i:04d}.jpg,{1 if male else -1},{rng.integers(10, 20)},{rng.integers(10, 20)}")
    (d / "images" / "9001.jpg").write_bytes(b"not a jpeg at all")
    lines += ["9000.jpg,1,0,0", "0001.jpg,0,0,0", "../train.csv,1,0,0", "9001.jpg,-1,0,0"]
    (d / "train.csv").write_text("\n".join(lines) + "\n")
    return {"good": n, "bad": {"missing_image": 1, "unknown_label": 1, "outside_images_dir": 1, "unreadable_image": 1}}


def imagefolder_set(d: Path, train: int = 16, test: int = 8, seed: int = 1) -> None:
    """``d/train/{female,male}/*.jpg`` (``train`` each) and ``d/test/{female,male}/*.jpg`` (``test`` each)."""
    rng = np.random.default_rng(seed)
    for split, k in (("train", train), ("test", test)):
        for cls in ("female", "male"):
            (d / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(k):
                r = rng.uniform(0.75, 1.0) if cls == "male" else rng.uniform(0.0, 0.25)
                colour_face(r, rng).save(d / split / cls / f"{cls}_{i:03d}.jpg")


def scut_set(d: Path, n: int = 60, seed: int = 2) -> dict[str, float]:
    """SCUT-FBP5500_v2's layout with ``n`` images (AF/AM/CF/CM names); the score is 1 + 4 x redness."""
    rng = np.random.default_rng(seed)
    (d / "Images").mkdir(parents=True, exist_ok=True)
    scores: dict[str, float] = {}
    for i in range(n):
        name = f"{['AF', 'AM', 'CF', 'CM'][i % 4]}{i + 1}.jpg"
        r = float(rng.uniform(0, 1))
        colour_face(r, rng).save(d / "Images" / name)
        scores[name] = round(1 + 4 * r, 6)
    names = list(scores)

    def write(path: Path, subset: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(f"{f} {scores[f]}\n" for f in subset))

    cut = int(0.6 * n)
    write(d / SCUT_60_40 / "train.txt", names[:cut])
    write(d / SCUT_60_40 / "test.txt", names[cut:])
    for k in range(1, 6):
        test = names[k - 1 :: 5]
        write(d / SCUT_CV / f"cross_validation_{k}" / f"test_{k}.txt", test)
        write(d / SCUT_CV / f"cross_validation_{k}" / f"train_{k}.txt", [f for f in names if f not in test])
    return scores
