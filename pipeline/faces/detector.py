"""Face detection and the keep/crop policy for one batch of images: plain Python, usable with or without Ray.

:class:`FaceDetector` wraps facenet-pytorch's ``MTCNN`` (weights from the installed wheel, nothing downloaded).
For each image it

1. decodes the bytes (:func:`pipeline.imaging.decode_image`: EXIF orientation, any mode → RGB, bomb guard);
2. detects on a copy whose long side is at most ``max_side``; copies of equal size go through MTCNN together
   (its batches need equal sizes), the rest one by one;
3. maps boxes and landmarks back to original pixels; a face found on a downscaled copy with a probability below
   ``recheck_below`` is confirmed on a full-resolution crop around it (small false faces seen at low resolution
   disappear there);
4. applies the policy (``min_prob``, ``min_face_px``, ``exactly_one`` / ``at_least_one`` / ``largest``) and cuts
   the square crop (margin, ``crop_size``, optional eye alignment) as JPEG bytes.

Nothing raises for bad input: every image gives one row (the FACES schema minus ``image_sha256`` and
``processed_at``) with ``kept`` and, when not kept, a ``reason`` whose first word is a code (``decode_error``,
``image_too_small``, ``no_face``, ``low_prob``, ``too_small``, ``many_faces``, ``detect_error``).

Example::

    det = FaceDetector(load_config(None).faces)
    rows = det.process([open("a.jpg", "rb").read(), b"not an image"])
    rows[0]["kept"], rows[0]["n_faces"], rows[1]["reason"]   # True, 1, 'decode_error: not_an_image: ...'
"""

from __future__ import annotations

import copy
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from pipeline.config import FacesConfig
from pipeline.faces.crop import crop_face
from pipeline.imaging import ImageDecodeError, decode_image, fit_within, to_jpeg

RECHECK_IOU = 0.3  # a re-detected face must overlap the original box this much to confirm it
RECHECK_CONTEXT = 2.0  # the re-check region adds this many box sides on each side of the box
RECHECK_MAX_SIDE = 640  # ... and is bounded to this long side


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


class FaceDetector:
    """MTCNN detection plus the keep/crop policy of :class:`~pipeline.config.FacesConfig`; loads the model once."""

    def __init__(self, cfg: FacesConfig, device: str | None = None, num_threads: int | None = None):
        import torch
        from facenet_pytorch import MTCNN

        self.cfg = cfg
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

    _MODEL_FIELDS = ("detect_min_px", "thresholds", "pyramid_factor", "device")

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
        return other

    # ---------------------------------------------------------------- detection
    def _mtcnn(self, imgs: list[Image.Image]) -> list[tuple[Any, Any, Any]]:
        with self._torch.inference_mode():
            boxes, probs, points = self.mtcnn.detect(imgs, landmarks=True)
        return list(zip(boxes, probs, points, strict=True))

    def detect(self, images: list[Image.Image]) -> list[Detection | str]:
        """Detect faces on bounded copies of ``images``; one Detection (or an error string) per image."""
        out: list[Detection | str] = [Detection()] * len(images)
        copies: list[tuple[Image.Image, float, float]] = []
        groups: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, img in enumerate(images):
            small, _ = fit_within(img, self.cfg.max_side)
            sx, sy = small.size[0] / img.size[0], small.size[1] / img.size[1]
            copies.append((small, sx, sy))
            groups[small.size].append(i)
        bs = self.cfg.batch_size
        for idx in groups.values():
            for start in range(0, len(idx), bs):
                chunk = idx[start : start + bs]
                try:
                    res = self._mtcnn([copies[i][0] for i in chunk])
                except Exception:  # one bad image must not sink its batch: retry them one by one
                    res = None
                for k, i in enumerate(chunk):
                    try:
                        b, p, pts = res[k] if res is not None else self._mtcnn([copies[i][0]])[0]
                        _, sx, sy = copies[i]
                        det = _to_detection(b, p, pts, sx, sy)
                        if sx < 1.0 and self.cfg.recheck_below > 0:
                            det = self._recheck(images[i], det)
                        out[i] = det
                    except Exception as err:
                        out[i] = f"detect_error: {type(err).__name__}: {err}"
        return out

    def _recheck(self, img: Image.Image, det: Detection) -> Detection:
        """Confirm faces with ``min_prob <= p < recheck_below`` on a full-resolution crop around each.

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
    def _row(self, img: Image.Image, det: Detection) -> dict[str, Any]:
        cfg = self.cfg
        w, h = img.size
        faces = det.select(det.probs >= cfg.min_prob)
        sides = np.minimum(faces.boxes[:, 2] - faces.boxes[:, 0], faces.boxes[:, 3] - faces.boxes[:, 1])
        areas = np.array([_area(b, w, h) for b in faces.boxes])
        row: dict[str, Any] = {
            "width": w,
            "height": h,
            "n_faces": len(faces),
            "boxes": faces.boxes.tolist(),
            "probs": faces.probs.tolist(),
            "landmarks": faces.landmarks.tolist(),
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
            crop_box=[float(v) for v in sq],
            crop_jpeg=to_jpeg(crop, cfg.jpeg_quality),
        )
        return row

    @staticmethod
    def _empty(reason: str, width: int | None = None, height: int | None = None) -> dict[str, Any]:
        return {"width": width, "height": height, "n_faces": 0, "boxes": [], "probs": [], "landmarks": [],
                "face_share": None, "kept": False, "reason": reason, "face_index": None, "crop_box": None,
                "crop_jpeg": None}  # fmt: skip

    def process_images(self, images: list[Image.Image | str]) -> list[dict[str, Any]]:
        """Rows for already decoded images; a string in place of an image is a reason to record as-is."""
        rows: list[dict[str, Any] | None] = [None] * len(images)
        todo: list[int] = []
        for i, img in enumerate(images):
            if isinstance(img, str):
                rows[i] = self._empty(img)
            elif min(img.size) < self.cfg.min_image_px:
                rows[i] = self._empty(
                    f"image_too_small: {img.size[0]}x{img.size[1]} < {self.cfg.min_image_px}px", *img.size
                )
            else:
                todo.append(i)
        dets = self.detect([images[i] for i in todo])  # type: ignore[misc]
        for i, det in zip(todo, dets, strict=True):
            img = images[i]
            assert not isinstance(img, str)
            if isinstance(det, str):
                rows[i] = self._empty(det, *img.size)
                continue
            try:
                rows[i] = self._row(img, det)
            except Exception as err:  # a crop that cannot be cut must not lose the row
                rows[i] = self._empty(f"crop_error: {type(err).__name__}: {err}", *img.size)
        return rows  # type: ignore[return-value]

    def decode(self, data: bytes | None) -> Image.Image | str:
        """Decode bytes, or return the ``decode_error: ...`` reason."""
        if data is None:
            return "missing_image: no bytes"
        try:
            return decode_image(data, max_pixels=self.cfg.max_pixels)
        except ImageDecodeError as err:
            return f"decode_error: {err.reason}"

    def process(self, images: list[bytes | None]) -> list[dict[str, Any]]:
        """One FACES row (without image_sha256 / processed_at) per image bytes, in order; never raises for input."""
        return self.process_images([self.decode(b) for b in images])


def reason_code(reason: str | None) -> str:
    """``"decode_error: truncated: ..."`` → ``"decode_error"``; ``None`` (kept) → ``"kept"``."""
    return "kept" if not reason else reason.split(":", 1)[0]
