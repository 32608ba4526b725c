"""One photo: rate it with a trained model, or search for its best-scoring crop (the selfie study's experiment).

    python -m pipeline rate photo.jpg [--model DIR] [--json]
    python -m pipeline best-crop photo.jpg --out best.jpg [--k 24]

Both make the crop the way the model's training crops were made (its ``model.json``'s recipe,
:func:`pipeline.faces.cropper.cropper`: the face stage's detector with the recorded settings, or the image as given)
and score it with the exported model (:class:`pipeline.model.loaded.LoadedModel`, scores and percentiles from its
:meth:`~LoadedModel.score`, as the score stage's); the crop maker and the model are loaded once per process and
kept (:func:`load_rater`), so a second photo costs only detection and one forward pass.

Example::

    result = rate_photo("me.jpg", cfg=load_config("configs/demo.yaml"))
    print(format_rating(result))   # Face found: score 0.73 (better than 81% of the test set)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import Config, FacesConfig, load_config
from pipeline.score.inference import ERROR_REASONS
from pipeline.store import DataRoot


@dataclass
class Rater:
    """The model's crop maker (:func:`pipeline.faces.cropper.cropper`) and the model, loaded once."""

    detector: Any
    model: Any
    model_dir: str

    def detect(self, data: bytes) -> dict:
        return self.detector.process([data])[0]

    @property
    def faces(self) -> FacesConfig:
        """The faces settings the model's crops are made with."""
        return self.detector.cfg


_RATERS: dict[tuple[str, str], Rater] = {}


def load_rater(cfg: Config, model_dir: str | None = None) -> Rater:
    """The (cached) detector + model for ``model_dir`` (default ``score.model`` under the data root)."""
    from pipeline.faces.cropper import cropper
    from pipeline.model.loaded import LoadedModel
    from pipeline.model.meta import model_meta, model_recipe, resolve_model_dir

    root = DataRoot(cfg.data_root)
    resolved = resolve_model_dir(root, model_dir or cfg.score.model)
    meta = model_meta(root, resolved)
    recipe = model_recipe(meta.model_id, meta.inputs, cfg.faces, cfg.score.unrecorded_inputs)
    key = (resolved, cfg.faces.model_dump_json(), cfg.score.unrecorded_inputs)
    if key not in _RATERS:
        model = LoadedModel.load(resolved, root, device="cpu")
        if cfg.score.optimize:
            model.optimize_for_inference()
        _RATERS[key] = Rater(cropper(recipe, cfg.faces), model, resolved)
    return _RATERS[key]


def _read(path: str | Path) -> bytes:
    return Path(path).read_bytes()


def rate_photo(path: str | Path, model_dir: str | None = None, cfg: Config | None = None) -> dict:
    """Detect the face in one photo and score it: a JSON-serialisable dict (see :func:`format_rating`).

    ``status`` is ``ok`` (scored), ``no_face`` (no usable face; ``reason`` from the face stage) or ``error``
    (the file cannot be read or decoded).
    """
    cfg = cfg or load_config(None)
    rater = load_rater(cfg, model_dir)
    t0 = time.perf_counter()
    out: dict[str, Any] = {
        "photo": str(path),
        "model_id": rater.model.model_id,
        "model_dir": rater.model_dir,
        "task": getattr(rater.model, "task", None),
        "face_found": False,
        "score": None,
        "predicted": None,
        "percentile": None,
    }
    try:
        data = _read(path)
    except OSError as err:
        return {**out, "status": "error", "reason": f"cannot read: {err}", "seconds": 0.0}
    row = rater.detect(data)
    out["n_faces"] = int(row.get("n_faces") or 0)
    reason = row.get("reason")
    if not row.get("kept") or not row.get("crop_jpeg"):
        bad = bool(reason) and str(reason).startswith(ERROR_REASONS)
        status = "error" if bad else "no_face"
        return {**out, "status": status, "reason": reason or "no_face", "seconds": time.perf_counter() - t0}
    from pipeline.imaging import decode_image

    scores, pct, predicted = rater.model.score([decode_image(row["crop_jpeg"])])
    out.update(
        status="ok",
        reason=None,
        face_found=True,
        score=float(scores[0]),
        predicted=predicted[0],
        percentile=float(pct[0]),
        crop_box=[float(v) for v in row["crop_box"]] if row.get("crop_box") is not None else None,
        seconds=time.perf_counter() - t0,
    )
    return out


def format_rating(result: dict) -> str:
    """One line a person understands, e.g. ``Face found: score 0.73 (better than 81% of the test set)``."""
    name = Path(result.get("photo", "photo")).name
    if result.get("status") == "no_face":
        n = result.get("n_faces") or 0
        why = "" if result.get("reason") in (None, "no_face") or n == 0 else f" ({result['reason']}, {n} found)"
        return f"No face found in {name}.{why}" if not why else f"No usable face in {name}{why}."
    if result.get("status") != "ok":
        return f"Could not rate {name}: {result.get('reason')}"
    pct = result.get("percentile")
    better = f"better than {round(100 * pct)}% of the test set" if pct is not None else "no test-set reference"
    pred = result.get("predicted")
    if pred is not None and result.get("task") not in (None, "selfie"):
        return f"Face found: looks like {pred} (p={result['score']:.2f}, {better})"
    label = f", {pred}" if pred is not None else ""
    return f"Face found: score {result['score']:.2f}{label} ({better})"


# ------------------------------------------------------------------------------------------------ best crop
def sample_boxes(
    box: tuple[float, float, float, float], k: int, scale: tuple[float, float], shift: float, seed: int = 0
) -> list[tuple[float, float, float, float]]:
    """``k`` square boxes around ``box``: the box itself first, then random side scales and centre shifts.

    Side: ``side(box) * U(scale)``; centre shift per axis: ``U(-shift, shift) * side``. Deterministic in ``seed``.
    """
    x1, y1, x2, y2 = box
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, max(x2 - x1, y2 - y1)
    rng = np.random.default_rng(seed)
    out = [(cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)]
    for _ in range(max(k - 1, 0)):
        s = side * rng.uniform(*scale)
        dx, dy = rng.uniform(-shift, shift, size=2) * s
        out.append((cx + dx - s / 2, cy + dy - s / 2, cx + dx + s / 2, cy + dy + s / 2))
    return out


def _crop(img: Image.Image, scale: float, box: tuple[float, float, float, float], fc: FacesConfig) -> Image.Image:
    """The square ``box`` (original pixels) cut from the working copy ``img`` (``scale``: its pixels per original
    pixel) as the face stage cuts its squares (grey outside the frame, ``crop_size``, the JPEG round trip)."""
    from pipeline.faces.crop import cut_square
    from pipeline.imaging import decode_image, to_jpeg

    square = cut_square(img, [v * scale for v in box], fc.crop_size)
    return decode_image(to_jpeg(square, fc.jpeg_quality))


def best_crop(
    path: str | Path, out: str | Path, k: int | None = None, cfg: Config | None = None, model_dir: str | None = None
) -> dict:
    """Score ``k`` crops over bounded scale and shift around the detected face; write the best as JPEG to ``out``.

    Returns the best crop's score and box next to the original face crop's score (the crop the model's recipe
    makes, scored exactly as ``rate`` scores it: candidate 0). The other candidates are squares cut like the face
    stage's (grey outside the frame, ``crop_size``, not aligned), so an aligned model sees them unaligned.
    """
    from pipeline.imaging import decode_bounded, decode_image, to_jpeg

    cfg = cfg or load_config(None)
    k = k or cfg.score.best_crop_k
    rated = rate_photo(path, model_dir=model_dir, cfg=cfg)
    if rated["status"] != "ok":
        return {**rated, "out": None}
    rater = load_rater(cfg, model_dir)
    fc = rater.faces
    data = _read(path)
    work, (w, _) = decode_bounded(data, max(fc.decode_max_side, fc.crop_size), fc.max_pixels, fc.image_formats)
    boxes = sample_boxes(
        tuple(rated["crop_box"]), k, cfg.score.best_crop_scale, cfg.score.best_crop_shift, cfg.score.seed
    )
    crops = [decode_image(rater.detect(data)["crop_jpeg"])]  # the rated crop itself: the same score as rate's
    crops += [_crop(work, work.width / w, b, fc) for b in boxes[1:]]
    scores, pct, predicted = rater.model.score(crops)
    i = int(np.argmax(scores))
    x1, y1, x2, y2 = (round(v) for v in boxes[i])
    best = decode_image(data).crop((x1, y1, x2, y2))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_bytes(to_jpeg(best, quality=cfg.faces.jpeg_quality))
    return {
        "photo": str(path),
        "out": str(out),
        "status": "ok",
        "model_id": rated["model_id"],
        "k": len(boxes),
        "original_score": rated["score"],
        "original_percentile": rated["percentile"],
        "best_score": float(scores[i]),
        "best_percentile": float(pct[i]),
        "best_predicted": predicted[i],
        "best_box": [x1, y1, x2, y2],
        "best_index": i,
        "improvement": float(scores[i]) - float(rated["score"]),
    }
