"""Image bytes in, a plain RGB ``PIL.Image`` out (or a clear :class:`ImageDecodeError`); JPEG bytes back out.

Every stage that looks at pixels decodes through :func:`decode_image`, so awkward inputs are handled once:
EXIF orientation is applied; grayscale, CMYK, RGBA / LA / transparent palette (composited onto white), 16- and
32-bit integer and float images all become 8-bit RGB; animated images give their first frame. Inputs that are not
usable images raise :class:`ImageDecodeError` whose ``reason`` is a short code (``empty``, ``not_an_image``,
``too_large``, ``truncated``, ``corrupt``) followed by a detail. The pixel-count guard is checked from the header,
before any pixel is decoded, so a 20000x20000 PNG bomb costs nothing.

Only Pillow and NumPy are needed.

Example::

    img = decode_image(open("photo.jpg", "rb").read())
    small, scale = fit_within(img, 800)
    jpeg = to_jpeg(small, quality=90)
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # same as the scrape stage's default (config scrape.http.max_image_pixels)


class ImageDecodeError(ValueError):
    """Bytes that do not give a usable image; ``reason`` is ``"<code>: <detail>"``, ``code`` the first word."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.code = reason.split(":", 1)[0]


def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<")):
        return "looks like HTML/XML text"
    if head.startswith((b"{", b"[")):
        return "looks like JSON text"
    return f"unknown format (starts with {data[:8].hex()})"


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """Scale an integer or float array of any range to uint8."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    if np.issubdtype(arr.dtype, np.floating):
        lo, hi = float(np.nanmin(a)), float(np.nanmax(a))
        if 0.0 <= lo and hi <= 1.0:
            a = a * 255.0
        elif lo < 0.0 or hi > 255.0:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
    else:
        hi = float(a.max()) if a.size else 0.0
        if hi > 255:
            a = a * (255.0 / (65535.0 if hi <= 65535 else hi))
    return np.clip(np.nan_to_num(a), 0, 255).round().astype(np.uint8)


def _white_background(img: Image.Image) -> Image.Image:
    rgba = img.convert("RGBA")
    bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(bg, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → 8-bit RGB (transparency composited onto white, high bit depths scaled down)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _white_background(img)
    if mode.startswith(("I", "F")):  # I, I;16, I;16B, I;16L, F: 16/32-bit gray
        return Image.fromarray(_to_8bit(np.asarray(img)), mode="L").convert("RGB")
    return img.convert("RGB")  # 1, L, P, CMYK, YCbCr, LAB, HSV


def decode_image(data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode image bytes to an RGB image with EXIF orientation applied.

    Raises :class:`ImageDecodeError` for empty, non-image, truncated or corrupt bytes, and for images with more
    than ``max_pixels`` pixels (checked from the header before decoding; ``None`` disables the guard).
    """
    if not data:
        raise ImageDecodeError("empty: zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageDecodeError(f"not_an_image: {_sniff(data)}") from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"too_large: {err}") from None
    except Exception as err:  # Pillow raises many kinds on garbage headers
        raise ImageDecodeError(f"corrupt: {type(err).__name__}: {err}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"corrupt: image size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageDecodeError(f"too_large: {w}x{h} = {w * h} pixels > {max_pixels}")
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        img.load()
    except (OSError, SyntaxError, EOFError) as err:
        msg = str(err)
        code = "truncated" if "truncat" in msg.lower() or isinstance(err, EOFError) else "corrupt"
        raise ImageDecodeError(f"{code}: {msg or type(err).__name__}") from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"too_large: {err}") from None
    except Exception as err:
        raise ImageDecodeError(f"corrupt: {type(err).__name__}: {err}") from None
    try:
        img = ImageOps.exif_transpose(img) or img
    except Exception:  # a broken EXIF block must not lose the image: keep it as stored
        pass
    try:
        return to_rgb(img)
    except Exception as err:
        raise ImageDecodeError(f"corrupt: cannot convert mode {img.mode}: {err}") from None


def fit_within(img: Image.Image, max_side: int) -> tuple[Image.Image, float]:
    """A copy whose long side is at most ``max_side`` (never upscaled) and the scale used (new / old)."""
    w, h = img.size
    long_side = max(w, h)
    if long_side <= max_side:
        return img, 1.0
    scale = max_side / long_side
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    # reducing_gap: a fast box reduce first, then a proper bilinear filter (Pillow's recommended fast path)
    return img.resize(size, Image.BILINEAR, reducing_gap=2.0), size[0] / w


def to_jpeg(img: Image.Image, quality: int = 90) -> bytes:
    """Encode an image as baseline JPEG bytes (converted to RGB first when needed)."""
    buf = io.BytesIO()
    to_rgb(img).save(buf, format="JPEG", quality=int(quality))
    return buf.getvalue()
