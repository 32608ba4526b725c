"""Untrusted image bytes: bounded decode memory, allowed decoders only, truncation refused, and
``labels import-scores`` never reading outside ``--images``."""

from __future__ import annotations

import hashlib
import io
import json
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import EpsImagePlugin, Image, ImageFile
from skimage import data as skdata

from pipeline.config import Config, FacesConfig, load_config
from pipeline.faces import FaceDetector
from pipeline.imaging import ImageDecodeError, check_image, decode_bounded, decode_image, to_jpeg
from pipeline.labels.beauty import import_scores
from pipeline.store import DataRoot

REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _png(width: int, height: int, rows: int | None = None) -> bytes:
    """An 8-bit RGB PNG of one colour whose zlib stream is complete but holds only ``rows`` rows (all by default)."""
    comp = zlib.compressobj(9)
    row = b"\x00" + b"\x20\x90\x40" * width
    n = height if rows is None else rows
    body = b"".join(comp.compress(row * min(256, n - i)) for i in range(0, n, 256)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\nnewpath 0 0 moveto 64 64 lineto stroke\n"


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(FacesConfig(crop_size=64), device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> Image.Image:
    return Image.fromarray(skdata.astronaut())


# ------------------------------------------------------------------------------------------ memory
_MEASURE = """
import json, sys
from pipeline.imaging import check_image, decode_bounded, decode_image
def status(key):  # this process's own memory, in bytes (ru_maxrss would carry the parent's peak over exec)
    line = next(x for x in open("/proc/self/status") if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024
def growth(fn):  # peak RSS growth while fn runs: the kernel's high-water mark is reset first
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = status("VmRSS")
    result = fn()
    return status("VmHWM") - base, result
data = open(sys.argv[1], "rb").read()
decode_bounded(open(sys.argv[2], "rb").read(), 64)  # warm up: plugins and code paths load before measuring
out = {}
out["check"], out["check_size"] = growth(lambda: check_image(data))
out["bounded"], (img, out["size"]) = growth(lambda: decode_bounded(data, 2048))
out["work_size"] = img.size
del img
out["full"], _ = growth(lambda: decode_image(data).size)  # the whole image, for contrast: the measurement sees it
print(json.dumps(out))
"""


def test_png_bomb_under_the_pixel_cap_is_checked_and_decoded_in_bounded_memory(tmp_path):
    """A 6320x6320 PNG (40 M pixels, just under the cap; ~120 kB) used to cost 327 MiB to check and 479 MiB to
    decode. Peak RSS growth (VmHWM after a reset) in a fresh process: check < 16 MiB, working-copy decode < 100 MiB."""
    big, warm = tmp_path / "big.png", tmp_path / "warm.png"
    big.write_bytes(_png(6320, 6320))
    warm.write_bytes(_png(300, 200))
    assert big.stat().st_size < 200_000
    res = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(big), str(warm)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["check_size"] == [6320, 6320] and m["size"] == [6320, 6320] and m["work_size"] == [2048, 2048]
    check, bounded, full = m["check"] / MiB, m["bounded"] / MiB, m["full"] / MiB
    assert check < 16, f"check_image grew RSS by {check:.0f} MiB"
    assert bounded < 100, f"decode_bounded grew RSS by {bounded:.0f} MiB"
    assert full > 140, full  # Pillow's own full decode: 4 bytes x 40 M pixels


def test_decoder_memory_is_estimated_from_the_header_and_capped():
    webp = _save(Image.new("RGB", (3000, 3000), (1, 2, 3)), "WEBP", lossless=True)  # 2 kB, ~150 MiB to decode
    assert len(webp) < 10_000
    with pytest.raises(ImageDecodeError, match=r"too_large: decoding WEBP 3000x3000 needs about \d+ MiB > 64 MiB"):
        decode_bounded(webp, 800, max_decode_bytes=64 * MiB)
    with pytest.raises(ImageDecodeError, match="too_large"):
        check_image(webp, max_decode_bytes=64 * MiB)
    work, size = decode_bounded(webp, 800, max_decode_bytes=256 * MiB)
    assert size == (3000, 3000) and work.size == (800, 800) and work.getpixel((5, 5)) == (1, 2, 3)
    cfg = load_config(None).faces
    assert cfg.max_decode_mib == 256 and cfg.decode_max_side == 2048 and cfg.batch_mib == 128
    det = FaceDetector.__new__(FaceDetector)  # decode only: no model needed
    det.cfg = cfg.model_copy(update={"max_decode_mib": 64})
    assert det.decode(webp).startswith("decode_error: too_large: decoding WEBP")


def test_reduced_decode_matches_a_full_decode_and_keeps_original_geometry(astronaut):
    big = astronaut.resize((1300, 950), Image.BICUBIC)
    rgba = big.convert("RGBA")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    cases = {
        "png": _save(big, "PNG"),
        "png_rgba": _save(rgba, "PNG"),
        "png_palette": _save(big.convert("P", palette=Image.ADAPTIVE, colors=64), "PNG"),
        "png_16bit": _save(Image.fromarray(np.asarray(big.convert("L")).astype(np.uint16) * 257), "PNG"),
        "jpeg": _save(big, "JPEG", quality=90),
        "jpeg_progressive": _save(big, "JPEG", quality=90, progressive=True),
        "jpeg_rotated": _save(big, "JPEG", quality=90, exif=exif.tobytes()),
        "png_rotated": _save(big, "PNG", exif=exif.tobytes()),
        "webp": _save(big, "WEBP", quality=90),
        "gif": _save(big.convert("P", palette=Image.ADAPTIVE, colors=64), "GIF"),
    }
    for name, data in cases.items():
        full = decode_image(data)
        work, size = decode_bounded(data, 600)  # JPEG at DCT scale 1/2, PNG in row bands, others reduced
        assert size == full.size and work.mode == "RGB" and max(work.size) == 600, name
        ref = full.resize(work.size, Image.BILINEAR)
        assert np.abs(np.asarray(work, float) - np.asarray(ref, float)).mean() < 4, name
        same, size2 = decode_bounded(data, 1300)  # fits: exactly the full decode
        assert size2 == full.size and np.array_equal(np.asarray(same), np.asarray(full)), name
    assert decode_bounded(cases["jpeg_rotated"], 600)[1] == (950, 1300)


def test_faces_on_a_reduced_working_copy_map_back_to_original_pixels(detector, astronaut):
    small_jpeg = to_jpeg(astronaut, 92)
    big_png = _save(astronaut.resize((1536, 1536), Image.BICUBIC), "PNG")
    det = detector.replace(max_side=400, decode_max_side=500)  # 1536 → a 512 working copy, not the full image
    small, large = det.process(iter([small_jpeg, big_png]))  # a generator: decoded one at a time
    assert small["kept"] and large["kept"] and (large["width"], large["height"]) == (1536, 1536)
    assert np.allclose(np.asarray(large["boxes"][0]) / 3, small["boxes"][0], atol=12)
    assert np.allclose(np.asarray(large["crop_box"]) / 3, small["crop_box"], atol=12)
    assert Image.open(io.BytesIO(large["crop_jpeg"])).size == (64, 64)


def test_working_copy_budget_flushes_early_without_changing_rows(detector, astronaut):
    imgs = [to_jpeg(astronaut, 92), to_jpeg(Image.fromarray(skdata.coffee()), 92), to_jpeg(astronaut, 80)]
    passes: dict[int, list[int]] = {128: [], 1: []}

    def run(mib: int) -> list[dict]:
        det = detector.replace(max_side=256, batch_mib=mib)
        real = det._mtcnn
        det._mtcnn = lambda batch, *more: passes[mib].append(len(batch)) or real(batch, *more)  # pass sizes
        return det.process(imgs)

    grouped, one_by_one = run(128), run(1)  # at 1 MiB each image is its own pass
    assert max(passes[128]) == 2 and max(passes[1]) == 1  # the two astronauts share a pass, unless at 1 MiB
    for a, b in zip(grouped, one_by_one, strict=True):
        assert a["kept"] == b["kept"] and a["n_faces"] == b["n_faces"] and a["reason"] == b["reason"]
        assert np.allclose(a["boxes"], b["boxes"], atol=1.0)


# ------------------------------------------------------------------------------------------ formats
def test_only_configured_decoders_run(detector, astronaut, monkeypatch):
    tiff = _save(astronaut, "TIFF")
    ghostscript: list = []
    monkeypatch.setattr(
        EpsImagePlugin, "Ghostscript", lambda *a, **k: ghostscript.append(a) or Image.new("RGB", (1, 1))
    )
    for fn in (decode_image, check_image, lambda d: decode_bounded(d, 800)):
        with pytest.raises(ImageDecodeError, match="^format: TIFF not allowed$"):
            fn(tiff)
        with pytest.raises(ImageDecodeError, match="^format: EPS not allowed$"):
            fn(EPS)
    rows = detector.process([tiff, EPS, to_jpeg(astronaut, 90)])
    assert [r["reason"] for r in rows[:2]] == [
        "decode_error: format: TIFF not allowed",
        "decode_error: format: EPS not allowed",
    ]
    assert rows[2]["kept"] and ghostscript == []
    assert decode_image(tiff, formats=["TIFF"]).size == (512, 512)  # the set is the configuration's
    assert detector.replace(image_formats=["jpeg", "tiff"]).process([tiff])[0]["kept"]
    assert load_config(None).faces.image_formats == ["JPEG", "PNG", "WEBP", "GIF"]
    with pytest.raises(Exception, match="XYZ not a Pillow format"):
        load_config(None, overrides={"faces.image_formats": ["XYZ"]})
    bmp = _save(astronaut, "BMP")
    assert pytest.raises(ImageDecodeError, decode_image, bmp).value.reason == "format: BMP not allowed"
    html = b"<!DOCTYPE html><html>404</html>"
    assert pytest.raises(ImageDecodeError, decode_image, html).value.code == "not_an_image"


# ------------------------------------------------------------------------------------------ truncation
def test_truncated_png_and_jpeg_are_refused(detector, astronaut):
    short = _png(64, 64, rows=3)  # a complete zlib stream holding 3 of 64 rows
    with Image.open(io.BytesIO(short)) as im:
        im.load()  # Pillow alone accepts it: black rows 3..63
    jpeg = to_jpeg(astronaut, 90)
    cut_png = _save(astronaut, "PNG")[:-20_000]
    for fn in (decode_image, check_image, lambda d: decode_bounded(d, 800), lambda d: decode_bounded(d, 32)):
        with pytest.raises(ImageDecodeError, match="^truncated: PNG pixel data covers 3 of 64 rows$"):
            fn(short)
        for data in (jpeg[: len(jpeg) // 2], cut_png):
            with pytest.raises(ImageDecodeError) as info:
                fn(data)
            assert info.value.code == "truncated", info.value.reason
    banded = _png(3000, 3000, rows=1000)  # large: decoded in row bands for a small working copy
    with pytest.raises(ImageDecodeError, match="^truncated: PNG pixel data covers 1000 of 3000 rows$"):
        decode_bounded(banded, 800)
    reasons = [r["reason"] for r in detector.process([short, jpeg[: len(jpeg) // 2]])]
    assert all(r.startswith("decode_error: truncated") for r in reasons), reasons


def test_load_truncated_images_is_never_enabled(monkeypatch, astronaut):
    sets = [p for p in (REPO / "pipeline").rglob("*.py") if re.search(r"LOAD_TRUNCATED_IMAGES\s*=", p.read_text())]
    assert sets == [] and ImageFile.LOAD_TRUNCATED_IMAGES is False
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # if a library turned it on, decoding refuses
    with pytest.raises(ImageDecodeError, match="^truncated: cannot be checked"):
        decode_image(to_jpeg(astronaut, 90))


# ------------------------------------------------------------------------------------------ import-scores
def test_import_scores_never_reads_outside_the_images_folder(tmp_path, astronaut):
    imgs = tmp_path / "set" / "Images"
    imgs.mkdir(parents=True)
    (imgs / "ok.jpg").write_bytes(to_jpeg(astronaut.resize((64, 64)), 90))
    (imgs / "inner").mkdir()
    (imgs / "inner" / "deep.jpg").write_bytes(to_jpeg(astronaut.resize((48, 48)), 90))
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(to_jpeg(astronaut.resize((32, 32)), 90))
    (imgs / "link.jpg").symlink_to(secret)
    (imgs / "trunc.png").write_bytes(_png(64, 64, rows=3))
    (imgs / "scan.tif").write_bytes(_save(astronaut.resize((40, 40)), "TIFF"))
    names = ["ok.jpg", "inner/deep.jpg", "inner/../ok2.jpg", "../../secret.jpg", str(secret), "link.jpg"]
    names += ["trunc.png", "scan.tif"]
    (tmp_path / "scores.csv").write_text("".join(f"{n},{i + 1}\n" for i, n in enumerate(names)))
    cfg = Config(data_root=str(tmp_path / "data"))
    root = DataRoot(cfg.data_root)
    s = import_scores(imgs, tmp_path / "scores.csv", cfg, root, protocol="hash")
    t = pl.from_arrow(root.read("labels/beauty"))
    why = dict(zip(t["item_id"].to_list(), t["reason"].to_list(), strict=True))
    assert why["ok.jpg"] is None and why["inner/deep.jpg"] is None and why["inner/../ok2.jpg"] == "missing_image"
    assert why["../../secret.jpg"] == why[str(secret)] == why["link.jpg"] == "outside_images_dir"
    assert why["trunc.png"] == why["scan.tif"] == "unreadable_image"
    assert s["ok"] == 2 and s["excluded"] == {"missing_image": 1, "outside_images_dir": 3, "unreadable_image": 2}
    assert not root.has_image(hashlib.sha256(secret.read_bytes()).hexdigest())  # never read into the store
