"""The demo sites' image generator: real scikit-image photos turned into many distinct JPEGs, and the hidden rule.

Every image is rendered from a small frozen spec, so the same spec always gives the same bytes:

* :class:`FaceSpec` — a people photo: one of 102 base faces (the 100 face images of ``skimage.data.lfw_subset()``,
  25x25 grey, upscaled with Lanczos; the faces of ``astronaut()`` and ``camera()``), placed on a two-colour gradient
  background at a given face share of the frame width, the whole frame scaled to a target face brightness,
  optionally mirrored and given a white border.
* :class:`SceneSpec` — a photo without a person: a crop of ``coffee()``, ``chelsea()`` or ``rocket()``.
* :class:`StaffSpec` — a staff portrait: a grey face tinted with its department's colour (background included),
  so the department survives a face crop.

The hidden quality ``q`` of a post image and the likes rate are defined here (:func:`face_quality`,
:func:`scene_quality`, :func:`likes_rate`); docs/demo-sites.md states the same formulas.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageFilter

JPEG_QUALITY = 90

# --- the hidden rule ------------------------------------------------------------------------------------------
BRIGHTNESS_RANGE = (0.25, 0.75)  # target mean luma (0..1) of the face tile in the final image
SHARE_RANGE = (0.22, 0.60)  # face tile width / frame width
SHARE_BEST = 1.0 / 3.0
SHARE_WIDTH = 0.10
BORDER_P = 0.3  # probability of a white border
W_BRIGHT, W_SHARE, W_BORDER = 0.75, 0.15, 0.10
RATE_BASE, RATE_SLOPE = 0.005, 4.5  # likes rate(q) = RATE_BASE * exp(RATE_SLOPE * q)
LIKES_NOISE_SIGMA = 0.25  # log-normal noise on likes

# --- department tints (multiplicative RGB, applied to a grey portrait) ----------------------------------------
DEPARTMENTS = ("cs", "econ", "german", "mech")
TINT_FACE = 0.35  # tint strength on the face (share of the tint colour in the multiplier, the rest grey)
TINT_BACKGROUND = 0.9  # tint strength on the background around it
DEPARTMENT_TINTS: dict[str, tuple[int, int, int]] = {
    "cs": (80, 140, 255),  # blue
    "econ": (70, 215, 90),  # green
    "german": (245, 70, 70),  # red
    "mech": (250, 220, 50),  # yellow
}

SCENES = ("coffee", "chelsea", "rocket")
N_LFW_FACES = 100  # the first 100 of lfw_subset()'s 200 images are faces
# (context crop box in the source image, face box inside that crop), both (x0, y0, x1, y1)
_PHOTO_FACES = {
    "astronaut": ((124, 17, 324, 217), (57, 45, 144, 155)),
    "camera": ((162, 91, 292, 221), (37, 28, 92, 101)),
}
N_BASE_FACES = N_LFW_FACES + len(_PHOTO_FACES)
# LFW tiles that MTCNN often misses once upscaled (turned or cut-off faces): never used, so every people photo
# has a clearly detectable face. Found by rendering every base face in the extreme settings (dark and small,
# bright and large, each department tint) and keeping those detected with probability > 0.9 in all of them.
HARD_FACES = frozenset({4, 9, 13, 28, 30, 54, 57, 59, 68, 76, 82, 96})
USABLE_FACES = tuple(f for f in range(N_BASE_FACES) if f not in HARD_FACES)


def face_quality(brightness: float, share: float, border: bool) -> float:
    """The hidden quality q in [0, 1] of a people photo.

    ``q = 0.75 * b + 0.15 * exp(-((share - 1/3) / 0.10)**2) + 0.10 * border`` where
    ``b = (brightness - 0.25) / 0.50`` is the face tile's target mean luma rescaled to [0, 1].
    """
    lo, hi = BRIGHTNESS_RANGE
    b = min(max((brightness - lo) / (hi - lo), 0.0), 1.0)
    s = math.exp(-(((share - SHARE_BEST) / SHARE_WIDTH) ** 2))
    return W_BRIGHT * b + W_SHARE * s + W_BORDER * float(border)


def scene_quality(brightness: float, border: bool) -> float:
    """The hidden quality of a photo without a person: ``0.75 * brightness + 0.10 * border`` (no face term)."""
    return W_BRIGHT * brightness + W_BORDER * float(border)


def likes_rate(q: float) -> float:
    """Expected likes per follower for quality q: ``0.005 * exp(4.5 * q)`` (0.5% at q=0, 45% at q=1)."""
    return RATE_BASE * math.exp(RATE_SLOPE * q)


# --- specs ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FaceSpec:
    """A people photo. ``face`` indexes the base faces (0..99 LFW, 100 astronaut, 101 camera), never HARD_FACES."""

    face: int
    brightness: float  # target mean luma of the face tile, 0..1
    share: float  # face tile width / frame width
    border: bool
    flip: bool
    width: int
    height: int
    dx: float  # face centre offset, fraction of the free room (-1..1)
    dy: float
    color_a: tuple[int, int, int]  # background gradient ends
    color_b: tuple[int, int, int]
    angle: float  # gradient direction, radians

    @property
    def quality(self) -> float:
        return face_quality(self.brightness, self.share, self.border)


@dataclass(frozen=True)
class SceneSpec:
    """A photo without a person: a crop (fractions of the source) of one of :data:`SCENES`."""

    scene: str
    x0: float
    y0: float
    frac: float  # crop side as a fraction of the source's sides
    long_side: int
    flip: bool
    brightness: float  # 0..1, factor 0.6 + 0.7 * brightness
    border: bool

    @property
    def quality(self) -> float:
        return scene_quality(self.brightness, self.border)


@dataclass(frozen=True)
class StaffSpec:
    """A staff portrait: base face ``face`` in grey, tinted with ``department``'s colour."""

    face: int
    department: str
    flip: bool
    brightness: float  # target face luma before the tint, 0..1
    share: float
    size: int
    dx: float
    dy: float


# --- sources ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _BaseFace:
    context: np.ndarray  # H x W x 3 uint8
    box: tuple[int, int, int, int]  # face box inside context
    luma: float  # mean luma (0..1) of the face box


def _luma(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    return 0.299 * a[..., 0] + 0.587 * a[..., 1] + 0.114 * a[..., 2]


@lru_cache(maxsize=1)
def base_faces() -> tuple[_BaseFace, ...]:
    """The 102 base faces (loaded from skimage.data on first use, then cached)."""
    import skimage.data as skd

    out = []
    lfw = skd.lfw_subset()[:N_LFW_FACES]
    for tile in lfw:
        g = np.clip(tile * 255.0 + 0.5, 0, 255).astype(np.uint8)
        rgb = np.repeat(g[..., None], 3, axis=2)
        out.append(_BaseFace(rgb, (0, 0, rgb.shape[1], rgb.shape[0]), float(_luma(rgb).mean() / 255.0)))
    for name, (crop, box) in _PHOTO_FACES.items():
        src = getattr(skd, name)()
        if src.ndim == 2:
            src = np.repeat(src[..., None], 3, axis=2)
        x0, y0, x1, y1 = crop
        ctx = np.ascontiguousarray(src[y0:y1, x0:x1, :3])
        bx0, by0, bx1, by1 = box
        luma = float(_luma(ctx[by0:by1, bx0:bx1]).mean() / 255.0)
        out.append(_BaseFace(ctx, box, luma))
    return tuple(out)


@lru_cache(maxsize=len(SCENES))
def _scene(name: str) -> np.ndarray:
    import skimage.data as skd

    return getattr(skd, name)()[..., :3]


# --- rendering -----------------------------------------------------------------------------------------------
def _gradient(w: int, h: int, a: tuple[int, int, int], b: tuple[int, int, int], angle: float) -> np.ndarray:
    xs = np.linspace(-0.5, 0.5, w, dtype=np.float32) * math.cos(angle)
    ys = np.linspace(-0.5, 0.5, h, dtype=np.float32) * math.sin(angle)
    t = ys[:, None] + xs[None, :]
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    ca, cb = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return ca + (cb - ca) * t[..., None]


def _feather(w: int, h: int, frac: float = 0.08) -> np.ndarray:
    """An alpha mask that is 1 inside and fades to 0 over the outer ``frac`` of each side."""
    fx = np.clip(np.minimum(np.arange(w) + 0.5, w - np.arange(w) - 0.5) / max(frac * w, 1), 0, 1)
    fy = np.clip(np.minimum(np.arange(h) + 0.5, h - np.arange(h) - 0.5) / max(frac * h, 1), 0, 1)
    return (fy[:, None] * fx[None, :]).astype(np.float32)


def _place_face(
    base: _BaseFace,
    flip: bool,
    face_w: float,
    canvas: np.ndarray,
    dx: float,
    dy: float,
    margin: int,
    cover: np.ndarray | None = None,
) -> tuple[int, int, int, int]:
    """Scale ``base`` so its face box is ``face_w`` wide and blend it onto ``canvas`` (in place).

    Returns the face box in canvas coordinates; ``cover`` (H x W), when given, receives the blend weights."""
    ctx = base.context[:, ::-1] if flip else base.context
    bx0, by0, bx1, by1 = base.box
    if flip:
        cw = ctx.shape[1]
        bx0, bx1 = cw - bx1, cw - bx0
    scale = face_w / (bx1 - bx0)
    new_w, new_h = max(1, round(ctx.shape[1] * scale)), max(1, round(ctx.shape[0] * scale))
    img = Image.fromarray(np.ascontiguousarray(ctx)).resize((new_w, new_h), Image.LANCZOS)
    if scale > 2:  # soften the upscaled 25 px LFW tiles (Lanczos ringing, block edges)
        img = img.filter(ImageFilter.GaussianBlur(scale / 4.0))
    patch = np.asarray(img, np.float32)
    alpha = _feather(new_w, new_h)
    fbx0, fby0 = bx0 * scale, by0 * scale
    fbw, fbh = (bx1 - bx0) * scale, (by1 - by0) * scale
    H, W = canvas.shape[:2]
    # room for the face box centre so that the box stays inside the margins
    cx_lo, cx_hi = margin + fbw / 2, W - margin - fbw / 2
    cy_lo, cy_hi = margin + fbh / 2, H - margin - fbh / 2
    cx = (cx_lo + cx_hi) / 2 + dx * max(cx_hi - cx_lo, 0) / 2
    cy = (cy_lo + cy_hi) / 2 + dy * max(cy_hi - cy_lo, 0) / 2
    ox, oy = round(cx - fbw / 2 - fbx0), round(cy - fbh / 2 - fby0)
    # blend the overlapping part
    x0, y0 = max(ox, 0), max(oy, 0)
    x1, y1 = min(ox + new_w, W), min(oy + new_h, H)
    if x1 > x0 and y1 > y0:
        p = patch[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        a = alpha[y0 - oy : y1 - oy, x0 - ox : x1 - ox, None]
        canvas[y0:y1, x0:x1] = canvas[y0:y1, x0:x1] * (1 - a) + p * a
        if cover is not None:
            cover[y0:y1, x0:x1] = a[..., 0]
    fx0, fy0 = round(ox + fbx0), round(oy + fby0)
    return fx0, fy0, round(fx0 + fbw), round(fy0 + fbh)


def _jpeg(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.clip(a + 0.5, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def _border_width(w: int, h: int) -> int:
    return max(4, round(0.06 * min(w, h)))


def render_face(spec: FaceSpec) -> bytes:
    """JPEG bytes of a people photo (deterministic in ``spec``)."""
    base = base_faces()[spec.face]
    W, H = spec.width, spec.height
    canvas = _gradient(W, H, spec.color_a, spec.color_b, spec.angle)
    margin = _border_width(W, H) + 2 if spec.border else 2
    box = _place_face(base, spec.flip, spec.share * W, canvas, spec.dx, spec.dy, margin)
    # scale the whole frame so the face tile's mean luma hits the target brightness
    x0, y0, x1, y1 = box
    face_luma = float(_luma(canvas[max(y0, 0) : y1, max(x0, 0) : x1]).mean() / 255.0)
    canvas *= spec.brightness / max(face_luma, 1e-3)
    if spec.border:
        b = _border_width(W, H)
        canvas[:b], canvas[-b:], canvas[:, :b], canvas[:, -b:] = 255, 255, 255, 255
    return _jpeg(canvas)


def render_scene(spec: SceneSpec) -> bytes:
    """JPEG bytes of a photo without a person."""
    src = _scene(spec.scene)
    sh, sw = src.shape[:2]
    cw, ch = max(8, round(sw * spec.frac)), max(8, round(sh * spec.frac))
    x0, y0 = round(spec.x0 * (sw - cw)), round(spec.y0 * (sh - ch))
    crop = src[y0 : y0 + ch, x0 : x0 + cw]
    if spec.flip:
        crop = crop[:, ::-1]
    s = spec.long_side / max(cw, ch)
    img = Image.fromarray(np.ascontiguousarray(crop)).resize(
        (max(8, round(cw * s)), max(8, round(ch * s))), Image.LANCZOS
    )
    a = np.asarray(img, np.float32) * (0.6 + 0.7 * spec.brightness)
    if spec.border:
        b = _border_width(a.shape[1], a.shape[0])
        a[:b], a[-b:], a[:, :b], a[:, -b:] = 255, 255, 255, 255
    return _jpeg(a)


def render_staff(spec: StaffSpec) -> bytes:
    """JPEG bytes of a staff portrait: a grey face tinted with the department colour, strongly behind the face."""
    base = base_faces()[spec.face]
    S = spec.size
    canvas = np.full((S, S, 3), 205.0, np.float32)
    cover = np.zeros((S, S), np.float32)
    box = _place_face(base, spec.flip, spec.share * S, canvas, spec.dx, spec.dy, 2, cover)
    grey = _luma(canvas)
    x0, y0, x1, y1 = box
    face_luma = float(grey[max(y0, 0) : y1, max(x0, 0) : x1].mean() / 255.0)
    grey = np.clip(grey * (spec.brightness / max(face_luma, 1e-3)), 0, 255)
    tint = np.asarray(DEPARTMENT_TINTS[spec.department], np.float32) / 255.0
    # a strong colour behind the face, a milder cast on it (strong casts on the face hurt MTCNN's recall)
    strength = (TINT_FACE * cover + TINT_BACKGROUND * (1 - cover))[..., None]
    rgb = grey[..., None] * (strength * tint[None, None, :] + (1 - strength))
    return _jpeg(rgb)
