"""Face crops: a square with a margin around the box (kept inside the image when it fits), optionally aligned.

Pure Pillow/NumPy geometry, no model: :func:`square_box` picks the square in original pixels, :func:`crop_face`
cuts and resizes it (grey padding where the square leaves the image). Alignment (``faces.align``):

* ``none``: the square as it is;
* ``eyes``: the region is first rotated about the eyes' midpoint so that the eyes are level;
* ``similarity``: the five MTCNN landmarks (eyes, nose, mouth corners) are mapped by the least-squares similarity
  transform (rotation, uniform scale, shift: Umeyama's method) onto the standard five-point template of 112 x 112
  face crops (:data:`TEMPLATE_112`, the one ArcFace/InsightFace crops use), scaled to ``size`` and shrunk towards
  its centre by ``1 + 2 x margin`` (margin 0: exactly the standard crop; 0.2: the same face with a fifth of its
  side more context on each side).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

PAD_RGB = (127, 127, 127)
ALIGN_MODES = ("none", "eyes", "similarity")
# The standard five-point template of a 112 x 112 face crop (x, y): left eye, right eye, nose tip, left and right
# mouth corners, as seen in the image (InsightFace's arcface_dst).
TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float64
)


def square_box(box: Sequence[float], width: int, height: int, margin: float) -> list[float]:
    """The square (x1, y1, x2, y2) around ``box`` with ``margin`` × side added on each side.

    The square is centred on the box, then shifted to lie inside the image when it is small enough to fit.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * (1.0 + 2.0 * margin)
    cx, cy = (x1 + x2) / 2.0, (y1 + y2) / 2.0
    left, top = cx - side / 2.0, cy - side / 2.0
    if side <= width:
        left = min(max(left, 0.0), width - side)
    if side <= height:
        top = min(max(top, 0.0), height - side)
    return [left, top, left + side, top + side]


def eye_angle(landmarks: Sequence[float]) -> float:
    """Angle in degrees of the line from the left eye (x0, y0) to the right eye (x1, y1) in image coordinates."""
    lx, ly, rx, ry = (float(v) for v in landmarks[:4])
    return math.degrees(math.atan2(ry - ly, rx - lx))


def cut_square(img: Image.Image, sq: Sequence[float], size: int) -> Image.Image:
    """The square ``sq`` (pixels of ``img``; grey where it leaves the image) resized to ``size`` x ``size`` as
    :func:`crop_face` resizes its unaligned crops."""
    return _cut(img, sq).resize((size, size), Image.BICUBIC, reducing_gap=3.0)


def _cut(img: Image.Image, sq: Sequence[float]) -> Image.Image:
    x1, y1, x2, y2 = (round(v) for v in sq)
    w, h = img.size
    if x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h:
        return img.crop((x1, y1, x2, y2))
    out = Image.new("RGB", (max(1, x2 - x1), max(1, y2 - y1)), PAD_RGB)
    part = img.crop((max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)))
    out.paste(part, (max(x1, 0) - x1, max(y1, 0) - y1))
    return out


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 2 x 3 similarity transform (rotation, uniform scale, translation; no reflection) that maps the points
    ``src`` onto ``dst`` with the least squared error (Umeyama 1991)."""
    src, dst = np.asarray(src, np.float64), np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    var = (sc**2).sum() / len(src)
    u, s, vt = np.linalg.svd(dc.T @ sc / len(src))
    d = np.diag([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rot = u @ d @ vt
    scale = float(np.trace(np.diag(s) @ d) / var) if var > 0 else 1.0
    return np.hstack([scale * rot, (mu_d - scale * rot @ mu_s)[:, None]])


def template(size: int, margin: float) -> np.ndarray:
    """:data:`TEMPLATE_112` scaled to a ``size`` crop and shrunk towards its centre by ``1 + 2 x margin``."""
    return ((TEMPLATE_112 / 112.0 - 0.5) / (1.0 + 2.0 * margin) + 0.5) * size


def _aligned(img: Image.Image, landmarks: Sequence[float], size: int, margin: float) -> tuple[Image.Image, list]:
    """The similarity-aligned crop and the square (in ``img`` pixels) that maps onto it, unrotated."""
    m = similarity(np.asarray(landmarks[:10], np.float64).reshape(5, 2), template(size, margin))
    a = m[:, :2]
    inv = np.linalg.inv(a)
    shift = -inv @ m[:, 2]
    coeffs = (inv[0, 0], inv[0, 1], shift[0], inv[1, 0], inv[1, 1], shift[1])  # output pixel -> input pixel
    crop = img.transform((size, size), Image.AFFINE, coeffs, resample=Image.BILINEAR, fillcolor=PAD_RGB)
    cx, cy = inv @ np.array([size / 2.0, size / 2.0]) + shift
    side = size / float(np.sqrt(abs(np.linalg.det(a))))
    return crop, [cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2]


def align_mode(align: bool | str) -> str:
    """``faces.align`` as one of :data:`ALIGN_MODES` (``True``/``False`` as older configs wrote it)."""
    if align is True:
        return "eyes"
    if align is False or align is None:
        return "none"
    if align not in ALIGN_MODES:
        raise ValueError(f"align must be one of {', '.join(ALIGN_MODES)}, not {align!r}")
    return align


def crop_face(
    img: Image.Image,
    box: Sequence[float],
    size: int,
    margin: float,
    landmarks: Sequence[float] | None = None,
    align: bool | str = "none",
) -> tuple[Image.Image, list[float]]:
    """Cut the square around ``box`` and resize it to ``size``×``size``; returns (crop, square in original pixels).

    ``align`` (with landmarks): ``eyes`` rotates the region about the eyes' midpoint so the eyes end up level;
    ``similarity`` maps the five landmarks onto the standard template (see the module docstring).
    """
    w, h = img.size
    align = align_mode(align)
    if align == "similarity" and landmarks is not None and len(landmarks) >= 10:
        return _aligned(img, landmarks, size, margin)
    sq = square_box(box, w, h, margin)
    if align == "eyes" and landmarks is not None and len(landmarks) >= 4:
        angle = eye_angle(landmarks)
        if abs(angle) > 1.0:
            side = sq[2] - sq[0]
            cx, cy = (sq[0] + sq[2]) / 2.0, (sq[1] + sq[3]) / 2.0
            big = side * math.sqrt(2.0)  # enough context so the rotated square has no empty corners
            region = _cut(img, [cx - big / 2, cy - big / 2, cx + big / 2, cy + big / 2])
            region = region.rotate(angle, resample=Image.BILINEAR, fillcolor=PAD_RGB)
            off = (region.size[0] - side) / 2.0
            crop = region.crop((round(off), round(off), round(off + side), round(off + side)))
            return crop.resize((size, size), Image.BICUBIC), sq
    return cut_square(img, sq, size), sq
