"""Small test images as encoded bytes: seeded noise, one flat colour, or any PIL image (same arguments, same bytes).

Example::

    noise_jpeg(64, 48, seed=1, quality=90)    # 64 wide, 48 high, distinct per seed
    solid_jpeg(48, 40, (120, 30, 200))
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image


def encode(img: Image.Image, fmt: str = "JPEG", **save: Any) -> bytes:
    """``img`` saved as ``fmt`` (PIL's ``save`` options in ``save``)."""
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save)
    return buf.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    """An RGB image of uniform noise from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def noise_jpeg(width: int, height: int, seed: int = 0, **save: Any) -> bytes:
    """A JPEG of seeded noise (incompressible: its size grows with its area)."""
    return encode(noise(width, height, seed), "JPEG", **save)


def solid_jpeg(width: int, height: int, color: tuple[int, int, int], **save: Any) -> bytes:
    """A JPEG of one flat RGB colour."""
    return encode(Image.new("RGB", (width, height), color), "JPEG", **save)
