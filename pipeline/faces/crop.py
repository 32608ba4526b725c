"""Square face crops: a margin around the box, kept inside the image when it fits, optionally eye-aligned.

Pure Pillow/NumPy geometry, no model: :func:`square_box` picks the square in original pixels, :func:`crop_face`
cuts and resizes it (grey padding where the square leaves the image). With ``align=True`` the image is first
rotated about the eyes' midpoint so that the eyes are level.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image

PAD_RGB = (127, 127, 127)


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


def _cut(img: Image.Image, sq: Sequence[float]) -> Image.Image:
    x1, y1, x2, y2 = (round(v) for v in sq)
    w, h = img.size
    if x1 >= 0 and y1 >= 0 and x2 <= w and y2 <= h:
        return img.crop((x1, y1, x2, y2))
    out = Image.new("RGB", (max(1, x2 - x1), max(1, y2 - y1)), PAD_RGB)
    part = img.crop((max(x1, 0), max(y1, 0), min(x2, w), min(y2, h)))
    out.paste(part, (max(x1, 0) - x1, max(y1, 0) - y1))
    return out


def crop_face(
    img: Image.Image,
    box: Sequence[float],
    size: int,
    margin: float,
    landmarks: Sequence[float] | None = None,
    align: bool = False,
) -> tuple[Image.Image, list[float]]:
    """Cut the square around ``box`` and resize it to ``size``×``size``; returns (crop, square in original pixels).

    With ``align`` and landmarks, the region is rotated about the eyes' midpoint so the eyes end up level.
    """
    w, h = img.size
    sq = square_box(box, w, h, margin)
    if align and landmarks is not None and len(landmarks) >= 4:
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
    crop = _cut(img, sq)
    return crop.resize((size, size), Image.BICUBIC, reducing_gap=3.0), sq
