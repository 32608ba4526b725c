"""Face detection and the keep/crop policy for one batch of images: plain Python, usable with or without Ray.

:class:`FaceDetector` wraps facenet-pytorch's ``MTCNN`` (weights from the installed wheel, nothing downloaded).
For each image it

1. decodes the bytes (:func:`pipeline.imaging.decode_bounded`: allowed formats only, EXIF orientation, any mode
   → RGB, pixel and decoder-memory caps, truncation refused) to a working copy whose long side is at most
   ``decode_max_side`` (JPEG at a DCT scale, large PNGs in row bands: the full-size image never exists);
2. detects on a copy whose long side is at most ``max_side``; copies of equal size go through MTCNN together
   (its batches need equal sizes). Images are decoded one at a time and only their working copies wait for
   MTCNN, at most ``batch_size`` per size and ``batch_mib`` in all (copies plus MTCNN's activations for them), so
   an actor's memory beyond the model is about one decoder buffer (``max_decode_mib``) plus ``batch_mib``,
   whatever the batch holds. The smallest face sought is ``detect_min_px``, or ``detect_min_share`` of the copy's
   shorter side when larger (the scale pyramid then starts coarser); the nets run with torch or ONNX Runtime
   (``runtime``, :mod:`pipeline.faces.onnx_nets`);
3. maps boxes and landmarks back to original pixels; a face found on a downscaled copy with a probability below
   ``recheck_below`` is confirmed on a working-resolution crop around it (small false faces seen at low
   resolution disappear there);
4. applies the policy (``min_prob``, ``min_face_px``, ``exactly_one`` / ``at_least_one`` / ``largest``) and cuts
   the crop (:func:`pipeline.faces.crop.crop_face`: a square with margin, eye-levelled, or a similarity transform
   of the five landmarks to the standard template) from the working copy as JPEG bytes.

Every row carries the detector's :class:`~pipeline.faces.recipe.CropRecipe` (``recipe``: how its crop was made).

Nothing raises for bad input: every image gives one row (the FACES schema minus ``image_sha256`` and
``processed_at``) with ``kept`` and, when not kept, a ``reason`` whose first word is a code (``decode_error``,
``image_too_small``, ``no_face``, ``low_prob``, ``too_small``, ``many_faces``, ``detect_error``); images that fit
``decode_max_side`` give exactly what a full-size decode gives.

Example::

    det = FaceDetector(load_config(None).faces)
    rows = det.process([open("a.jpg", "rb").read(), b"not an image"])
    rows[0]["kept"], rows[0]["n_faces"], rows[1]["reason"]   # True, 1, 'decode_error: not_an_image: ...'
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import FacesConfig
from pipeline.faces.crop import crop_face
from pipeline.faces.recipe import CropRecipe
from pipeline.imaging import ImageDecodeError, decode_bounded, fit_within, to_jpeg

RECHECK_IOU = 0.3  # a re-detected face must overlap the original box this much to confirm it
RECHECK_CONTEXT = 2.0  # the re-check region adds this many box sides on each side of the box
RECHECK_MAX_SIDE = 640  # ... and is bounded to this long side
MTCNN_BYTES_PER_PIXEL = 64  # MTCNN's activations per pixel of a detection copy in one pass (measured on CPU: 48-80)


@dataclass
class Detection:
    """Faces of one image in original pixels, sorted by probability (highest first)."""

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    probs: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.float32))
    landmarks: np.ndarray = field(default_factory=lambda: np.zeros((0, 10), np.float32))

    def __len__(self) -> int:
        return len(self.probs)

    def select(self, mask: np.ndarray) -> Detection:
        return Detection(self.boxes[mask], self.probs[mask], self.landmarks[mask])


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def onnx_installed() -> bool:
    """Whether ONNX Runtime and the ONNX package (the exporter needs it) are installed (found, not imported)."""
    from importlib.util import find_spec

    return find_spec("onnxruntime") is not None and find_spec("onnx") is not None


def resolve_runtime(runtime: str, device: str) -> str:
    """``auto`` → ``onnx`` on a CPU when ONNX Runtime and ONNX import, else ``torch``; ``onnx`` needs both and a
    CPU (RuntimeError otherwise)."""
    if runtime == "torch":
        return "torch"
    if runtime == "auto":
        return "onnx" if device == "cpu" and onnx_installed() else "torch"
    if device != "cpu":
        raise RuntimeError(f"faces.runtime onnx runs on the CPU only (device {device}): use runtime torch or auto")
    if not onnx_installed():
        raise RuntimeError("faces.runtime onnx needs onnxruntime and onnx: pip install onnxruntime onnx")
    return "onnx"


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _to_detection(boxes: Any, probs: Any, points: Any, sx: float, sy: float) -> Detection:
    """MTCNN's per-image output (possibly None or object arrays) → a Detection scaled to original pixels."""
    if boxes is None or probs is None or len(boxes) == 0:
        return Detection()
    b = np.asarray(np.stack([np.asarray(x, np.float64) for x in boxes]), np.float64)[:, :4]
    p = np.asarray([float(x) for x in probs], np.float64)
    if points is None or len(points) == 0:
        lm = np.zeros((len(b), 5, 2))
    else:
        lm = np.asarray(np.stack([np.asarray(x, np.float64) for x in points]), np.float64).reshape(len(b), 5, 2)
    b = b / np.array([sx, sy, sx, sy])
    lm = lm / np.array([sx, sy])
    order = np.argsort(-p, kind="stable")
    return Detection(
        b[order].astype(np.float32), p[order].astype(np.float32), lm[order].reshape(-1, 10).astype(np.float32)
    )


def _area(box: np.ndarray, width: int, height: int) -> float:
    x1, y1 = max(0.0, float(box[0])), max(0.0, float(box[1]))
    x2, y2 = min(float(width), float(box[2])), min(float(height), float(box[3]))
    return max(0.0, x2 - x1) * max(0.0, y2 - y1)


Decoded = tuple[Image.Image, tuple[int, int]]  # (working copy, original width and height)


@dataclass
class _Work:
    """One decoded image waiting for MTCNN: working copy, original size and the detection copy."""

    index: int
    image: Image.Image
    size: tuple[int, int]
    small: Image.Image

    @property
    def nbytes(self) -> int:
        """Memory this image holds until its MTCNN pass ends: RGB copies (4 bytes per pixel in Pillow) and MTCNN's
        activations for its detection copy."""
        copies = (self.image,) if self.small is self.image else (self.image, self.small)
        held = sum(4 * c.size[0] * c.size[1] for c in copies)
        return held + MTCNN_BYTES_PER_PIXEL * self.small.size[0] * self.small.size[1]


class FaceDetector:
    """MTCNN detection plus the keep/crop policy of :class:`~pipeline.config.FacesConfig`; loads the model once."""

    def __init__(self, cfg: FacesConfig, device: str | None = None, num_threads: int | None = None):
        import torch
        from facenet_pytorch import MTCNN

        self.cfg = cfg
        self.recipe = CropRecipe.of(cfg, detect=True)
        self.device = resolve_device(device or cfg.device)
        if num_threads:
            torch.set_num_threads(int(num_threads))
        self._torch = torch
        self.mtcnn = MTCNN(
            keep_all=True,
            min_face_size=cfg.detect_min_px,
            thresholds=list(cfg.thresholds),
            factor=cfg.pyramid_factor,
            post_process=False,
            device=self.device,
        )
        self.runtime = resolve_runtime(cfg.runtime, self.device)
        if self.runtime == "onnx":
            from pipeline.faces.onnx_nets import use_onnx

            use_onnx(self.mtcnn, num_threads=torch.get_num_threads(), folder=cfg.onnx_cache_dir)

    _MODEL_FIELDS = ("detect_min_px", "thresholds", "pyramid_factor", "device", "runtime", "onnx_cache_dir")

    def replace(self, **changes: Any) -> FaceDetector:
        """A detector sharing this one's loaded model with other policy/crop settings (``crop_size=128``, ...).

        Fields that shape the model itself (``detect_min_px``, ``thresholds``, ``pyramid_factor``, ``device``)
        cannot change this way: build a new detector for those.
        """
        bad = sorted(set(changes) & set(self._MODEL_FIELDS))
        if bad:
            raise ValueError(f"cannot change model settings {bad} on a loaded detector")
        other = copy.copy(self)
        other.cfg = FacesConfig.model_validate({**self.cfg.model_dump(), **changes})
        other.recipe = CropRecipe.of(other.cfg, detect=True)
        return other

    # ---------------------------------------------------------------- detection
    def min_face(self, size: tuple[int, int]) -> float:
        """MTCNN's minimum face size on a detection copy of ``size``: ``detect_min_px``, or ``detect_min_share`` of
        its shorter side when that is larger."""
        return max(float(self.cfg.detect_min_px), self.cfg.detect_min_share * min(size))

    def _mtcnn(self, imgs: list[Image.Image], min_face: float | None = None) -> list[tuple[Any, Any, Any]]:
        self.mtcnn.min_face_size = self.cfg.detect_min_px if min_face is None else min_face
        with self._torch.inference_mode():
            boxes, probs, points = self.mtcnn.detect(imgs, landmarks=True)
        return list(zip(boxes, probs, points, strict=True))

    def _work(self, index: int, img: Image.Image, size: tuple[int, int]) -> _Work:
        return _Work(index, img, size, fit_within(img, self.cfg.max_side)[0])

    def _detect_group(self, group: list[_Work]) -> list[Detection | str]:
        """MTCNN on equal-size detection copies at once: a Detection in working pixels (or an error) per image."""
        min_face = self.min_face(group[0].small.size)
        try:
            res = self._mtcnn([w.small for w in group], min_face)
        except Exception:  # one bad image must not sink its batch: retry them one by one
            res = None
        out: list[Detection | str] = []
        for k, w in enumerate(group):
            try:
                b, p, pts = res[k] if res is not None else self._mtcnn([w.small], min_face)[0]
                sx, sy = w.small.size[0] / w.image.size[0], w.small.size[1] / w.image.size[1]
                det = _to_detection(b, p, pts, sx, sy)
                if sx < 1.0 and self.cfg.recheck_below > 0:
                    det = self._recheck(w.image, det)
                out.append(det)
            except Exception as err:
                out.append(f"detect_error: {type(err).__name__}: {err}")
        return out

    def detect(self, images: list[Image.Image]) -> list[Detection | str]:
        """Detect faces on bounded copies of ``images``; one Detection (or an error string) per image."""
        out: list[Detection | str] = [Detection()] * len(images)
        groups: dict[tuple[int, int], list[_Work]] = {}
        for i, img in enumerate(images):
            w = self._work(i, img, img.size)
            groups.setdefault(w.small.size, []).append(w)
        bs = self.cfg.batch_size
        for group in groups.values():
            for start in range(0, len(group), bs):
                chunk = group[start : start + bs]
                for w, det in zip(chunk, self._detect_group(chunk), strict=True):
                    out[w.index] = det
        return out

    def _recheck(self, img: Image.Image, det: Detection) -> Detection:
        """Confirm faces with ``min_prob <= p < recheck_below`` on a working-resolution crop around each.

        A face is confirmed when the crop shows an overlapping face at least as probable as on the copy (or at
        least ``recheck_below``): true faces seen at more pixels get surer, the small false faces of a downscaled
        copy get less sure or vanish.
        """
        keep = np.ones(len(det), bool)
        w, h = img.size
        for j in range(len(det)):
            p = float(det.probs[j])
            if p < self.cfg.min_prob or p >= self.cfg.recheck_below:
                continue
            x1, y1, x2, y2 = (float(v) for v in det.boxes[j])
            c = max(x2 - x1, y2 - y1) * RECHECK_CONTEXT
            r = [max(0, int(x1 - c)), max(0, int(y1 - c)), min(w, int(x2 + c)), min(h, int(y2 + c))]
            if r[2] - r[0] < 12 or r[3] - r[1] < 12:
                continue
            region, _ = fit_within(img.crop(r), RECHECK_MAX_SIDE)
            sx, sy = region.size[0] / (r[2] - r[0]), region.size[1] / (r[3] - r[1])
            b, pr, pts = self._mtcnn([region])[0]
            again = _to_detection(b, pr, pts, sx, sy)
            ref = det.boxes[j] - np.array([r[0], r[1], r[0], r[1]], np.float32)
            keep[j] = any(
                float(again.probs[k]) >= min(p, self.cfg.recheck_below) and iou(again.boxes[k], ref) >= RECHECK_IOU
                for k in range(len(again))
            )
        return det.select(keep)

    # ---------------------------------------------------------------- policy and rows
    def _row(self, img: Image.Image, det: Detection, size: tuple[int, int]) -> dict[str, Any]:
        """The row of one image: ``det`` is in pixels of the working copy ``img``, ``size`` the original's."""
        cfg = self.cfg
        w, h = size
        fx, fy = w / img.size[0], h / img.size[1]
        faces = det.select(det.probs >= cfg.min_prob)
        boxes, landmarks = faces.boxes, faces.landmarks
        if (fx, fy) != (1.0, 1.0):
            boxes = boxes * np.array([fx, fy, fx, fy], np.float32)
            landmarks = landmarks * np.array([fx, fy] * 5, np.float32)
        sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
        areas = np.array([_area(b, w, h) for b in boxes])
        row: dict[str, Any] = {
            "width": w,
            "height": h,
            "n_faces": len(faces),
            "boxes": boxes.tolist(),
            "probs": faces.probs.tolist(),
            "landmarks": landmarks.tolist(),
            "face_share": float(areas.max() / (w * h)) if len(faces) else None,
            "kept": False,
            "reason": None,
            "face_index": None,
            "crop_box": None,
            "crop_jpeg": None,
        }
        big = np.flatnonzero(sides >= cfg.min_face_px)
        if len(faces) == 0:
            row["reason"] = (
                f"low_prob: best face p={float(det.probs.max()):.3f} < {cfg.min_prob}" if len(det) else "no_face"
            )
            return row
        if len(big) == 0:
            row["reason"] = f"too_small: largest face {float(sides.max()):.0f}px < {cfg.min_face_px}px"
            return row
        if cfg.policy == "exactly_one" and len(big) != 1:
            row["reason"] = f"many_faces: {len(big)} faces"
            return row
        if cfg.policy == "at_least_one":
            pick = int(big[0])  # the most probable face (faces are sorted by probability)
        else:
            pick = int(big[np.argmax(areas[big])])
        crop, sq = crop_face(img, faces.boxes[pick], cfg.crop_size, cfg.margin, faces.landmarks[pick], align=cfg.align)
        row.update(
            kept=True,
            face_index=pick,
            face_share=float(areas[pick] / (w * h)),
            crop_box=[float(sq[0] * fx), float(sq[1] * fy), float(sq[2] * fx), float(sq[3] * fy)],
            crop_jpeg=to_jpeg(crop, cfg.jpeg_quality),
        )
        return row

    def _finish(self, group: list[_Work], rows: list[dict[str, Any] | None]) -> None:
        for w, det in zip(group, self._detect_group(group), strict=True):
            if isinstance(det, str):
                rows[w.index] = empty_row(det, *w.size)
                continue
            try:
                rows[w.index] = self._row(w.image, det, w.size)
            except Exception as err:  # a crop that cannot be cut must not lose the row
                rows[w.index] = empty_row(f"crop_error: {type(err).__name__}: {err}", *w.size)

    def _rows(self, items: Iterable[Decoded | Image.Image | str]) -> list[dict[str, Any]]:
        """Rows for items taken one at a time: equal-size copies wait for one MTCNN pass within the limits."""
        rows: list[dict[str, Any] | None] = []
        groups: dict[tuple[int, int], list[_Work]] = {}
        pending, budget = 0, self.cfg.batch_mib << 20
        for i, item in enumerate(items):
            rows.append(None)
            if isinstance(item, str):
                rows[i] = empty_row(item)
                continue
            img, size = item if isinstance(item, tuple) else (item, item.size)
            if min(size) < self.cfg.min_image_px:
                rows[i] = empty_row(f"image_too_small: {size[0]}x{size[1]} < {self.cfg.min_image_px}px", *size)
                continue
            w = self._work(i, img, size)
            if pending and pending + w.nbytes > budget:  # MTCNN runs on what waits before this one joins
                for group in groups.values():
                    self._finish(group, rows)
                groups, pending = {}, 0
            groups.setdefault(w.small.size, []).append(w)
            pending += w.nbytes
            if len(groups[w.small.size]) >= self.cfg.batch_size:
                done = groups.pop(w.small.size)
                pending -= sum(x.nbytes for x in done)
                self._finish(done, rows)
        for group in groups.values():
            self._finish(group, rows)
        recipe = self.recipe.to_json()
        for row in rows:
            row["recipe"] = recipe  # type: ignore[index]
        return rows  # type: ignore[return-value]

    def process_images(self, images: list[Image.Image | str]) -> list[dict[str, Any]]:
        """Rows for already decoded full-size images; a string in place of an image is a reason to record as-is."""
        return self._rows(images)

    def decode(self, data: bytes | None) -> Decoded | str:
        """Decode bytes to (working copy, original size), or return the ``decode_error: ...`` reason."""
        if data is None:
            return "missing_image: no bytes"
        cfg = self.cfg
        try:
            return decode_bounded(
                data,
                max(cfg.decode_max_side, cfg.max_side),
                max_pixels=cfg.max_pixels,
                formats=cfg.image_formats,
                max_decode_bytes=cfg.max_decode_mib << 20,
            )
        except ImageDecodeError as err:
            return f"decode_error: {err.reason}"

    def process(self, images: Iterable[bytes | None]) -> list[dict[str, Any]]:
        """One FACES row (without image_sha256 / processed_at) per image bytes, in order; never raises for input.

        ``images`` may be a generator: each is decoded only when the previous ones have become working copies.
        """
        return self._rows(self.decode(b) for b in images)


def empty_row(reason: str, width: int | None = None, height: int | None = None) -> dict[str, Any]:
    """The FACES row of an image without a crop (no ``recipe``: the maker of the row stamps it)."""
    return {"width": width, "height": height, "n_faces": 0, "boxes": [], "probs": [], "landmarks": [],
            "face_share": None, "kept": False, "reason": reason, "face_index": None, "crop_box": None,
            "crop_jpeg": None}  # fmt: skip


def reason_code(reason: str | None) -> str:
    """``"decode_error: truncated: ..."`` → ``"decode_error"``; ``None`` (kept) → ``"kept"``."""
    return "kept" if not reason else reason.split(":", 1)[0]
