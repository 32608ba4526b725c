"""The face detector's speed settings: ``detect_min_share`` (a coarser first pyramid scale, part of the crop recipe)
and ``runtime`` (MTCNN's nets by ONNX Runtime, agreeing with torch). No Ray."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pipeline.config import FacesConfig
from pipeline.faces import FaceDetector
from pipeline.faces.detector import iou, resolve_runtime
from pipeline.faces.recipe import CropRecipe


def test_detect_min_share_is_validated_and_part_of_the_recipe():
    for bad in ({"detect_min_share": -0.1}, {"detect_min_share": 0.6}, {"runtime": "tensorrt"}):
        with pytest.raises(ValidationError):
            FacesConfig.model_validate(bad)
    a, b = CropRecipe.of(FacesConfig(detect_min_share=0.0)), CropRecipe.of(FacesConfig(detect_min_share=0.1))
    assert a != b and a.differences(b) == "detect_min_share 0.0 != 0.1"
    assert CropRecipe.from_json(b.to_json()) == b
    # share 0 (the full pyramid) is how older code made crops: written as older code wrote it, and read back
    assert "detect_min_share" not in a.to_json() and "detect_min_share" in b.to_json()
    assert CropRecipe.from_json(a.to_json()) == a and a.values["detect_min_share"] == 0.0
    # how the nets run is not part of it
    assert CropRecipe.of(FacesConfig(runtime="torch")) == CropRecipe.of(FacesConfig(runtime="onnx"))
    assert resolve_runtime("torch", "cpu") == "torch" and resolve_runtime("auto", "cuda") == "torch"


@pytest.fixture(scope="module")
def torch_det() -> FaceDetector:
    return FaceDetector(FacesConfig(runtime="torch"), device="cpu")


def test_min_face_follows_the_share_of_the_shorter_side(torch_det):
    det = torch_det.replace(detect_min_share=0.1)  # detect_min_px 20, the default
    assert det.min_face((800, 600)) == pytest.approx(60.0)
    assert det.min_face((150, 120)) == 20.0  # never below detect_min_px
    assert det.replace(detect_min_share=0.0).min_face((800, 600)) == 20.0  # share 0: MTCNN's own full pyramid
    assert FacesConfig().detect_min_share == 0.06  # the default docs/benchmarks.md measured


def test_onnx_runtime_agrees_with_torch_on_real_photos(torch_det, shared_faces, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    photos = [
        (shared_faces / p).read_bytes()
        for p in ("examples/knn_examples/test/kit_with_rose.jpg", "examples/obama_small.jpg")
    ]
    onnx_det = FaceDetector(FacesConfig(runtime="onnx", onnx_cache_dir=str(tmp_path)), device="cpu")
    assert onnx_det.runtime == "onnx" and len(list(tmp_path.glob("*.onnx"))) == 3
    # memory patterns off: a plan kept per input shape would grow with every new image size
    # (benchmarks/bench_detector_memory.py)
    from pipeline.faces.onnx_nets import NETS

    sessions = [getattr(onnx_det.mtcnn, name).session for name in NETS]
    assert [s.get_session_options().enable_mem_pattern for s in sessions] == [False] * len(NETS) == [False] * 3
    by_torch, by_onnx = torch_det.process(photos), onnx_det.process(photos)
    assert [r["n_faces"] for r in by_torch] == [r["n_faces"] for r in by_onnx] == [2, 1]
    for a, b in zip(by_torch, by_onnx, strict=True):
        assert a["recipe"] == b["recipe"] and np.allclose(a["probs"], b["probs"], atol=1e-3)
        assert all(iou(np.array(x), np.array(y)) >= 0.99 for x, y in zip(a["boxes"], b["boxes"], strict=True))
