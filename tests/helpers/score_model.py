"""Small fixtures for the score, rate, report and scheduler tests: images, posts rows and a tiny exported model.

The model is written in exactly the layout ``pipeline.train.export`` writes (model.pt, test_scores.json,
metrics.json, plots/*.png, then model.json through :func:`pipeline.model.meta.write_model_meta`) with an untrained
``small_cnn``: scoring is deterministic and fast.
"""

from __future__ import annotations

import io
import posixpath
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

from pipeline.config import FacesConfig, load_config
from pipeline.faces.recipe import CropRecipe
from pipeline.model.meta import ModelMeta, write_model_meta
from pipeline.store import DataRoot, now


def model_recipe_json(faces: FacesConfig | None = None) -> str:
    """The crop recipe :func:`write_model` records (with ``faces``: that config's detection): faces rows a test
    writes for such a model carry it, as rows the faces stage made would."""
    return CropRecipe.of(faces or load_config(TEST_CONFIG).faces, detect=True).to_json()


def _inputs(faces: FacesConfig | None, image_size: int) -> dict:
    fc = faces or load_config(TEST_CONFIG).faces
    crop = CropRecipe.of(fc, detect=True).to_dict()
    return {"crop": crop, "pixels": {"size": image_size, "resize": "bilinear", "colour": "RGB"}}


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def face_images(n: int) -> list[bytes]:
    """``n`` distinct JPEGs of the astronaut (one clear face): crops, flips, brightness."""
    from skimage import data

    base = Image.fromarray(data.astronaut())  # 512x512, face near (200, 100)
    out = []
    for i in range(n):
        left, top = 60 + 7 * i, 10 + 3 * (i % 5)
        img = base.crop((left, top, left + 300, top + 300))
        if i % 2:
            img = ImageOps.mirror(img)
        img = ImageEnhance.Brightness(img).enhance(0.85 + 0.05 * (i % 6))
        out.append(_jpeg(img))
    return out


def no_face_images() -> list[bytes]:
    """Photos without a person (coffee, rocket) and bytes that are not an image."""
    from skimage import data

    return [_jpeg(Image.fromarray(data.coffee())), _jpeg(Image.fromarray(data.rocket())), b"<html>not an image</html>"]


def add_posts(root: DataRoot, images: list[bytes], start: int = 0) -> list[str]:
    """Store images and write one ``posts`` row per image (status ok); returns their sha256s."""
    shas, rows = [], []
    for i, data in enumerate(images, start):
        sha = root.put_image(data)
        shas.append(sha)
        rows.append(
            {
                "site": "test",
                "item_id": f"p{i}",
                "user_id": f"u{i}",
                "status": "ok",
                "image_sha256": sha,
                "followers": 100,
                "likes": 10,
                "scraped_at": now(),
            }
        )
    rows.append({"site": "test", "item_id": f"bad{start}", "status": "error", "reason": "http 500"})
    root.write_part("posts", rows)
    return shas


TEST_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "test.yaml"
RECORDED = "recorded"


def write_model(
    root: DataRoot,
    run_id: str = "20250101T000000-test",
    task: str = "selfie",
    image_size: int = 32,
    faces: FacesConfig | None = None,
    inputs: dict | None | str = RECORDED,
) -> str:
    """A tiny exported model under ``models/<run_id>/``; returns the model dir.

    Its ``model.json`` records MTCNN crops made with ``faces`` (configs/test.yaml's faces settings by default: the
    config these tests score with) unless ``inputs`` is given (None: a model that records none)."""
    import torch

    from pipeline.config import TrainConfig
    from pipeline.model.backbones import backbone
    from pipeline.model.network import build_model
    from pipeline.train import metrics as M

    torch.manual_seed(0)
    tc = TrainConfig(task=task, backbone="small_cnn", image_size=image_size, epochs=2)
    kind = "binary" if task == "selfie" else "multiclass"
    classes = ["bad", "good"] if task == "selfie" else ["cs", "econ", "german", "mech"]
    model = build_model(tc, len(classes), load_pretrained=False)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    d = root.model_dir(run_id)
    history = [
        {"epoch": e, "train_loss": 0.7 - 0.1 * e, "val_loss": 0.72 - 0.08 * e, "val": {"accuracy": 0.5 + 0.1 * e}}
        for e in range(3)
    ]
    root.write_bytes_atomic(posixpath.join(d, "plots", "training_curve.png"), M.curve_png(history, "accuracy"))
    conf = [[5, 2], [1, 6]] if kind == "binary" else np.eye(4, dtype=int).tolist()
    root.write_bytes_atomic(posixpath.join(d, "plots", "confusion.png"), M.confusion_png(conf, classes))
    root.write_bytes_atomic(posixpath.join(d, "model.pt"), buf.getvalue())
    root.write_json(posixpath.join(d, "test_scores.json"), [float(x) for x in np.linspace(0.0, 1.0, 101)])
    root.write_json(
        posixpath.join(d, "metrics.json"),
        {"run_id": run_id, "task": task, "test": {"accuracy": 0.75}, "history": history},
    )
    mean, std = backbone("small_cnn").normalisation
    meta = ModelMeta(
        model_id=run_id,
        task=task,
        kind=kind,
        backbone="small_cnn",
        num_outputs=len(classes),
        class_names=classes,
        image_size=image_size,
        mean=mean,
        std=std,
        best_epoch=2,
        train_config=tc.model_dump(),
        inputs=_inputs(faces, image_size) if inputs == RECORDED else inputs,
    )
    write_model_meta(root, d, meta)
    return d
