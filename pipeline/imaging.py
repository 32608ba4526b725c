"""Untrusted image bytes in, a plain RGB ``PIL.Image`` out (or a clear :class:`ImageDecodeError`); JPEG bytes out.

Every stage that looks at pixels decodes through this module, so awkward and hostile inputs are handled once:

* only the Pillow decoders named in ``formats`` run (config ``faces.image_formats``; JPEG, PNG, WEBP, GIF by
  default), so TIFF, EPS (Ghostscript), JPEG 2000, TGA, ... bytes never reach their decoder whatever the
  Content-Type said: they fail with ``format: TIFF not allowed``;
* the pixel cap is checked from the header, before any pixel is decoded;
* truncated data is an error, never grey or black rows: Pillow's ``LOAD_TRUNCATED_IMAGES`` must stay False
  (decoding refuses to run otherwise), and a PNG whose zlib stream ends early, which Pillow accepts, is caught by
  counting the stream's bytes against the rows the header promises;
* EXIF orientation is applied; grayscale, CMYK, RGBA / LA / transparent palette (composited onto white), 16- and
  32-bit integer and float images all become 8-bit RGB; animated images give their first frame.

:func:`decode_image` gives the whole image. :func:`decode_bounded` gives a working copy whose long side is at most
``max_side`` plus the original size, and never holds more than that copy plus one decoder buffer: JPEGs decode at a
DCT scale (``draft``), large 8-bit PNGs are decoded a band of rows at a time (a synthetic PNG per band, so
Pillow's own decoder still does the work) and box-reduced band by band, other formats are reduced band by band
after Pillow's load. :func:`check_image` validates without keeping pixels (for the crawl's image check).
Errors carry ``reason`` = ``"<code>: <detail>"`` with code ``empty``, ``not_an_image``, ``format``, ``too_large``,
``truncated`` or ``corrupt``.

Example::

    img = decode_image(open("photo.jpg", "rb").read())
    work, (w, h) = decode_bounded(data, max_side=2048)   # work.size <= 2048, (w, h) the oriented original size
    jpeg = to_jpeg(fit_within(img, 800)[0], quality=90)
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 40_000_000  # same as config faces.max_pixels / scrape.http.max_image_pixels
DEFAULT_FORMATS = ("JPEG", "PNG", "WEBP", "GIF")  # same as config faces.image_formats
BAND_BYTES = 4 << 20  # large images are decoded / reduced about this many bytes of rows at a time
INFLATE_PIECE = 1 << 20  # a PNG's zlib stream is inflated at most this many bytes at a time

_PNG_SIG = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # colour type → samples per pixel
_ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
_T = Image.Transpose
_ORIENT = {
    2: _T.FLIP_LEFT_RIGHT,
    3: _T.ROTATE_180,
    4: _T.FLIP_TOP_BOTTOM,
    5: _T.TRANSPOSE,
    6: _T.ROTATE_270,
    7: _T.TRANSVERSE,
    8: _T.ROTATE_90,
}  # EXIF orientation → transpose, as PIL.ImageOps.exif_transpose


class ImageDecodeError(ValueError):
    """Bytes that do not give a usable image; ``reason`` is ``"<code>: <detail>"``, ``code`` the first word."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.code = reason.split(":", 1)[0]


# ---------------------------------------------------------------------------------------- identify and open
def _sniff(data: bytes) -> str:
    head = data[:512].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body", b"<")):
        return "looks like HTML/XML text"
    if head.startswith((b"{", b"[")):
        return "looks like JSON text"
    return f"unknown format (starts with {data[:8].hex()})"


def format_of(data: bytes) -> str | None:
    """The Pillow format whose magic bytes ``data`` starts with, judged by the plugins' prefix checks only."""
    Image.init()
    prefix = data[:16]
    for fmt, (_, accept) in Image.OPEN.items():
        try:
            result = accept(prefix) if accept is not None else False
        except Exception:  # a prefix check that trips on short input is no match
            continue
        if result and not isinstance(result, str):  # a str is a plugin's warning, not a match
            return fmt
    return None


def _unidentified(data: bytes, formats: Sequence[str]) -> str:
    text = _sniff(data)
    if not text.startswith("unknown"):
        return f"not_an_image: {text}"
    fmt = format_of(data)
    if fmt is not None and fmt not in formats:
        return f"format: {fmt} not allowed"
    return f"not_an_image: {text}"


def _open(data: bytes, max_pixels: int | None, formats: Sequence[str]) -> ImageFile.ImageFile:
    """Open (header only) with the allowed decoders; size and pixel cap checked."""
    if not data:
        raise ImageDecodeError("empty: zero bytes")
    allowed = [f.upper() for f in formats]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=allowed)
    except UnidentifiedImageError:
        raise ImageDecodeError(_unidentified(data, allowed)) from None
    except Image.DecompressionBombError as err:
        raise ImageDecodeError(f"too_large: {err}") from None
    except Exception as err:  # Pillow raises many kinds on garbage headers
        raise ImageDecodeError(f"corrupt: {type(err).__name__}: {err}") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageDecodeError(f"corrupt: image size {w}x{h}")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageDecodeError(f"too_large: {w}x{h} = {w * h} pixels > {max_pixels}")
    return img


def _load(img: ImageFile.ImageFile) -> None:
    """Decode the first frame; a truncated or broken stream raises :class:`ImageDecodeError`."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise ImageDecodeError("truncated: cannot be checked while PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set")
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


def _orientation(img: Image.Image, data: bytes) -> int:
    """The EXIF (or XMP) orientation, read without decoding pixels (Pillow's PNG ``getexif`` would load)."""
    try:
        if img.format != "PNG":
            return int(img.getexif().get(0x0112, 1) or 1)
        png = _png(data)
        if png.exif is not None:
            exif = Image.Exif()
            exif.load(b"Exif\x00\x00" + png.exif)
            return int(exif.get(0x0112, 1) or 1)
        m = re.search(rb'tiff:Orientation(="|>)([0-9])', png.xmp or b"")
        return int(m[2]) if m else 1
    except ImageDecodeError:
        raise
    except Exception:  # a broken EXIF block must not lose the image: keep it as stored
        return 1


def _orient(img: Image.Image, orientation: int) -> Image.Image:
    method = _ORIENT.get(orientation)
    return img if method is None else img.transpose(method)


# ---------------------------------------------------------------------------------------- PNG streams
@dataclass
class _Png:
    """The parts of a PNG that say which bytes its pixel rows need (chunk CRCs checked)."""

    width: int = 0
    height: int = 0
    depth: int = 0
    ctype: int = 0
    interlace: int = 0
    animated: bool = False
    exif: bytes | None = None
    xmp: bytes | None = None
    extra: list[tuple[bytes, bytes]] = field(default_factory=list)  # PLTE / tRNS, copied into band PNGs
    idat: list[memoryview] = field(default_factory=list)

    def row_bytes(self, width: int) -> int:
        """Bytes of one filtered row (filter byte included) of ``width`` pixels."""
        return 1 + (width * _PNG_CHANNELS.get(self.ctype, 4) * self.depth + 7) // 8 if width else 0

    def expected(self) -> int:
        """Bytes the zlib stream must inflate to for every row the header promises."""
        if not self.interlace:
            return self.height * self.row_bytes(self.width)
        total = 0
        for x0, y0, dx, dy in _ADAM7:
            pw = (self.width - x0 + dx - 1) // dx if self.width > x0 else 0
            ph = (self.height - y0 + dy - 1) // dy if self.height > y0 else 0
            total += ph * self.row_bytes(pw) if pw else 0
        return total


def _png(data: bytes) -> _Png:
    view, pos, png = memoryview(data), 8, _Png()
    while pos + 12 <= len(data):
        n, kind = struct.unpack(">I4s", view[pos : pos + 8])
        if pos + 12 + n > len(data):
            break  # a cut chunk: the row count below tells whether pixel data is missing
        body = view[pos + 8 : pos + 8 + n]
        if kind in (b"IHDR", b"PLTE", b"tRNS"):  # the chunks Pillow checks too (it skips IDAT CRCs)
            (crc,) = struct.unpack(">I", view[pos + 8 + n : pos + 12 + n])
            if zlib.crc32(body, zlib.crc32(kind)) != crc:
                raise ImageDecodeError(f"corrupt: bad CRC in PNG chunk {kind.decode('latin-1')}")
        if kind == b"IHDR" and n >= 13:
            png.width, png.height, png.depth, png.ctype, _, _, png.interlace = struct.unpack(">IIBBBBB", body[:13])
        elif kind in (b"PLTE", b"tRNS"):
            png.extra.append((kind, bytes(body)))
        elif kind == b"eXIf":
            png.exif = bytes(body)
        elif kind == b"iTXt" and bytes(body[:18]) == b"XML:com.adobe.xmp\x00":
            png.xmp = bytes(body)
        elif kind == b"acTL":
            png.animated = True
        elif kind == b"IDAT":
            png.idat.append(body)
        elif kind == b"IEND":
            break
        pos += 12 + n
    return png


def _inflate(png: _Png) -> Iterator[bytes]:
    """The PNG's pixel stream in pieces of at most INFLATE_PIECE bytes (never inflated whole)."""
    d = zlib.decompressobj()
    try:
        for part in png.idat:
            buf: bytes | memoryview = part
            while buf and not d.eof:
                out = d.decompress(buf, INFLATE_PIECE)
                buf = d.unconsumed_tail
                if out:
                    yield out
        while not d.eof:
            out = d.decompress(b"", INFLATE_PIECE)
            if not out:
                return
            yield out
    except zlib.error as err:
        raise ImageDecodeError(f"corrupt: PNG pixel stream: {err}") from None


def _check_png(data: bytes) -> None:
    """Raise ``truncated`` when the pixel stream ends before the last row (Pillow fills the rest with zeros)."""
    png = _png(data)
    need, got = png.expected(), 0
    for out in _inflate(png):
        got += len(out)
        if got >= need:
            return
    if png.interlace:
        raise ImageDecodeError(f"truncated: PNG pixel data has {got} of {need} bytes")
    rows = got // max(1, png.row_bytes(png.width))
    raise ImageDecodeError(f"truncated: PNG pixel data covers {rows} of {png.height} rows")


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))


def _band_png(png: _Png, rows: bytes, n: int, prev: bytes | None) -> Image.Image:
    """Decode ``n`` filtered rows with Pillow, as a PNG whose first (unfiltered) row is the row above them."""
    raw = rows if prev is None else b"\x00" + prev + rows
    hh = n + (prev is not None)
    ihdr = struct.pack(">IIBBBBB", png.width, hh, png.depth, png.ctype, 0, 0, 0)
    extra = b"".join(_chunk(k, v) for k, v in png.extra)
    body = _PNG_SIG + _chunk(b"IHDR", ihdr) + extra + _chunk(b"IDAT", zlib.compress(raw, 1)) + _chunk(b"IEND", b"")
    img = Image.open(io.BytesIO(body), formats=["PNG"])
    _load(img)
    return img


def _png_bands(png: _Png, step: int) -> Iterator[Image.Image]:
    """The PNG's rows as images of ``step`` rows (the last may be shorter), decoded one band at a time."""
    stride, stream = png.row_bytes(png.width), _inflate(png)
    buf, prev, y = bytearray(), None, 0
    while y < png.height:
        n = min(step, png.height - y)
        while len(buf) < n * stride:
            piece = next(stream, None)
            if piece is None:
                raise ImageDecodeError(
                    f"truncated: PNG pixel data covers {y + len(buf) // stride} of {png.height} rows"
                )
            buf += piece
        band = _band_png(png, bytes(buf[: n * stride]), n, prev)
        del buf[: n * stride]
        prev = band.crop((0, band.size[1] - 1, png.width, band.size[1])).tobytes()
        yield band if band.size[1] == n else band.crop((0, 1, png.width, band.size[1]))
        y += n


def _bandable_png(img: Image.Image, data: bytes) -> _Png | None:
    if img.format != "PNG":
        return None
    png = _png(data)
    ok = png.depth == 8 and png.ctype in _PNG_CHANNELS and not png.interlace and not png.animated
    return png if ok and (png.width, png.height) == img.size else None


# ---------------------------------------------------------------------------------------- modes and reduction
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


def _reducible(img: Image.Image) -> Image.Image:
    """A mode whose pixels can be box-averaged (palette indices and bits cannot)."""
    mode = img.mode
    if mode in ("P", "PA"):
        return img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
    if mode == "1":
        return img.convert("L")
    if mode.startswith("I;16"):
        return img.convert("I")
    return img


def _stack(bands: Iterable[Image.Image], height: int) -> Image.Image:
    """Paste bands (same mode and width) top to bottom into one image ``height`` rows tall."""
    out, y = None, 0
    for band in bands:
        if out is None:
            out = Image.new(band.mode, (band.size[0], height))
        out.paste(band, (0, y))
        y += band.size[1]
    assert out is not None and y == height, (y, height)
    return out


def _step(width: int, factor: int) -> int:
    """Rows per band: about BAND_BYTES of 4-byte pixels, a multiple of ``factor``."""
    return max(factor, BAND_BYTES // max(1, 4 * width) // factor * factor)


def _reduce_loaded(img: Image.Image, factor: int) -> Image.Image:
    """Box-reduce a loaded image by ``factor`` one band of rows at a time (no full-size copy in any mode)."""
    w, h = img.size
    step = _step(w, factor)
    bands = (_reducible(img.crop((0, y, w, min(h, y + step)))).reduce(factor) for y in range(0, h, step))
    return _stack(bands, -(-h // factor))


# ---------------------------------------------------------------------------------------- public API
def decode_image(
    data: bytes, max_pixels: int | None = DEFAULT_MAX_PIXELS, formats: Sequence[str] = DEFAULT_FORMATS
) -> Image.Image:
    """Decode image bytes to a full-size RGB image with EXIF orientation applied.

    Raises :class:`ImageDecodeError` for empty, non-image, disallowed-format, truncated or corrupt bytes, and for
    images with more than ``max_pixels`` pixels (checked from the header before decoding; ``None`` disables it).
    """
    img = _open(data, max_pixels, formats)
    orientation = _orientation(img, data)
    _load(img)
    if img.format == "PNG":
        _check_png(data)
    try:
        return _orient(to_rgb(img), orientation)
    except Exception as err:
        raise ImageDecodeError(f"corrupt: cannot convert mode {img.mode}: {err}") from None


def _draft_request(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    w, h = size
    long_side = max(w, h)
    return max(1, w * max_side // long_side), max(1, h * max_side // long_side)


def _jpeg_scale(size: tuple[int, int], request: tuple[int, int]) -> int:
    """The DCT scale (1, 2, 4 or 8) that ``draft(mode, request)`` picks, as Pillow's JPEG plugin computes it."""
    scale = min(size[0] // request[0], size[1] // request[1])
    return next(s for s in (8, 4, 2, 1) if scale >= s)


def decode_cost(img: Image.Image, request: tuple[int, int] | None, banded: bool = False) -> int:
    """Bytes the decoder needs for an opened (not loaded) image: estimated from the header, measured on Pillow 13.

    ``request`` is the JPEG draft size (None: full scale); ``banded`` a PNG decoded in bands. Per source pixel:
    JPEG 4 / scale² (a progressive one adds libjpeg's whole-image coefficient buffer, 2 bytes per sample: 3 for
    4:2:0 colour), WebP 18 (30 with alpha: its decoder copies the frame), GIF 1, PNG in bands none, anything else
    4 (Pillow keeps RGB as 4 bytes).
    """
    w, h = img.size
    px = w * h
    if banded:
        return 8 * BAND_BYTES
    if img.format in ("JPEG", "MPO"):
        scale = _jpeg_scale(img.size, request) if request else 1
        coefficients = _coefficient_bytes(img) if img.info.get("progressive") else 0
        return 4 * px // (scale * scale) + coefficients
    if img.format == "WEBP":
        return (30 if "A" in img.mode else 18) * px
    if img.format == "GIF":
        return px
    return 4 * px


def _coefficient_bytes(img: Image.Image) -> int:
    """libjpeg's coefficient buffer for a progressive JPEG: 2 bytes per DCT sample of every component."""
    w, h = img.size
    layers = getattr(img, "layer", None) or [("", 1, 1, 0)] * len(img.getbands())
    hmax, vmax = max(layer[1] for layer in layers), max(layer[2] for layer in layers)
    return int(2 * w * h * sum(layer[1] * layer[2] for layer in layers) / max(1, hmax * vmax))


def _budget(img: Image.Image, cost: int, max_decode_bytes: int | None) -> None:
    if max_decode_bytes is not None and cost > max_decode_bytes:
        w, h = img.size
        raise ImageDecodeError(
            f"too_large: decoding {img.format} {w}x{h} needs about {cost >> 20} MiB > {max_decode_bytes >> 20} MiB"
        )


def decode_bounded(
    data: bytes,
    max_side: int,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
    max_decode_bytes: int | None = None,
) -> tuple[Image.Image, tuple[int, int]]:
    """(An RGB working copy whose long side is at most ``max_side``, the oriented original (width, height)).

    Images that fit are returned whole, exactly as :func:`decode_image` gives them. Larger ones never exist at full
    size in RGB: peak memory is one decoder buffer (a band for 8-bit PNGs, the DCT-scaled image for JPEGs, what
    :func:`decode_cost` says for the others) plus the reduced copy; an image whose :func:`decode_cost` exceeds
    ``max_decode_bytes`` is refused (``too_large``) before decoding. Raises :class:`ImageDecodeError` like
    :func:`decode_image`.
    """
    img = _open(data, max_pixels, formats)
    orientation = _orientation(img, data)
    w, h = img.size
    size = (h, w) if orientation in (5, 6, 7, 8) else (w, h)
    factor = max(w, h) // max_side
    png = _bandable_png(img, data) if factor >= 2 else None
    request = _draft_request(img.size, max_side) if factor >= 2 and img.format in ("JPEG", "MPO") else None
    _budget(img, decode_cost(img, request, banded=png is not None), max_decode_bytes)
    try:
        if png is not None:
            bands = (_reducible(b).reduce(factor) for b in _png_bands(png, _step(w, factor)))
            small = _stack(bands, -(-h // factor))
        else:
            if request is not None:
                img.draft(img.mode, request)
            _load(img)
            if img.format == "PNG":
                _check_png(data)
            factor = max(img.size) // max_side
            small = _reduce_loaded(img, factor) if factor >= 2 else img
        del img
        work, _ = fit_within(to_rgb(small), max_side)
        return _orient(work, orientation), size
    except ImageDecodeError:
        raise
    except Exception as err:
        raise ImageDecodeError(f"corrupt: {type(err).__name__}: {err}") from None


def check_image(
    data: bytes,
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    formats: Sequence[str] = DEFAULT_FORMATS,
    max_decode_bytes: int | None = None,
) -> tuple[int, int]:
    """Check that ``data`` is one whole image of an allowed format within the caps; its stored (width, height).

    Keeps no pixels it does not need: a PNG's stream is inflated piecewise and counted, a JPEG decoded at 1/8
    scale (which still reads every entropy-coded byte), other formats loaded once (within ``max_decode_bytes``).
    Raises :class:`ImageDecodeError`.
    """
    img = _open(data, max_pixels, formats)
    w, h = img.size
    if img.format == "PNG":
        _check_png(data)
        return w, h
    request = (max(1, w // 8), max(1, h // 8)) if img.format in ("JPEG", "MPO") else None
    _budget(img, decode_cost(img, request), max_decode_bytes)
    if request is not None:
        img.draft(img.mode, request)
    _load(img)
    return w, h


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
