"""One photo: rate (face / no face / unreadable, a human line and JSON) and best-crop, with a tiny exported model."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers.score_model import face_images, no_face_images, write_model
from pipeline.config import load_config
from pipeline.score.photo import best_crop, format_rating, rate_photo, sample_boxes
from pipeline.store import DataRoot

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup(data_root, tmp_path):
    cfg = load_config(None, overrides={"data_root": str(data_root), "faces.max_side": 320})
    write_model(DataRoot(cfg.data_root))
    face = tmp_path / "face.jpg"
    face.write_bytes(face_images(1)[0])
    coffee = tmp_path / "coffee.jpg"
    coffee.write_bytes(no_face_images()[0])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not really a jpeg")
    return cfg, face, coffee, broken


def test_rate_face_no_face_and_broken(setup):
    cfg, face, coffee, broken = setup
    r = rate_photo(face, cfg=cfg)
    assert r["status"] == "ok" and r["face_found"] and r["model_id"] == "20250101T000000-test"
    assert 0 <= r["score"] <= 1 and 0 <= r["percentile"] <= 1 and r["predicted"] in ("bad", "good")
    line = format_rating(r)
    assert re.fullmatch(r"Face found: score \d\.\d\d, (good|bad) \(better than \d{1,3}% of the test set\)", line), line
    assert json.loads(json.dumps(r))["score"] == r["score"]

    n = rate_photo(coffee, cfg=cfg)
    assert n["status"] == "no_face" and not n["face_found"] and n["score"] is None
    assert format_rating(n) == "No face found in coffee.jpg."

    b = rate_photo(broken, cfg=cfg)
    assert b["status"] == "error" and b["reason"].startswith("decode_error")
    assert format_rating(b).startswith("Could not rate broken.jpg: decode_error")
    missing = rate_photo(face.parent / "nope.jpg", cfg=cfg)
    assert missing["status"] == "error" and "cannot read" in missing["reason"]


def test_best_crop_writes_the_best_of_k(setup, tmp_path):
    cfg, face, coffee, _ = setup
    out = tmp_path / "best" / "best.jpg"
    r = best_crop(face, out, k=8, cfg=cfg)
    assert r["status"] == "ok" and r["k"] == 8 and out.exists()
    assert r["best_score"] >= r["original_score"] - 0.05  # k includes the face stage's own crop box
    x1, y1, x2, y2 = r["best_box"]
    with Image.open(out) as im:
        assert im.size == (x2 - x1, y2 - y1)
    assert best_crop(coffee, tmp_path / "none.jpg", k=4, cfg=cfg)["status"] == "no_face"
    assert not (tmp_path / "none.jpg").exists()


def test_sample_boxes_are_bounded_and_deterministic():
    boxes = sample_boxes((100, 100, 200, 200), 50, (0.8, 1.2), 0.1, seed=3)
    assert boxes[0] == (100, 100, 200, 200) and boxes == sample_boxes((100, 100, 200, 200), 50, (0.8, 1.2), 0.1, 3)
    for x1, y1, x2, y2 in boxes:
        side = x2 - x1
        assert 80 - 1e-9 <= side <= 120 + 1e-9 and abs((y2 - y1) - side) < 1e-9
        assert abs((x1 + x2) / 2 - 150) <= 0.1 * side + 1e-9 and abs((y1 + y2) / 2 - 150) <= 0.1 * side + 1e-9


def test_rate_command_line_json(setup):
    cfg, face, coffee, _ = setup
    cmd = [
        sys.executable,
        "-m",
        "pipeline",
        "rate",
        str(coffee),
        "--data-root",
        cfg.data_root,
        "--set",
        "faces.max_side=320",
    ]
    r = subprocess.run(cmd + ["--json"], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1])["status"] == "no_face"
