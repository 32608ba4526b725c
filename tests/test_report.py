"""The HTML model report: written from a tiny model, scores and face crops; opened in headless Chromium."""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import pytest
from PIL import Image

from helpers.images import encode
from helpers.score_model import face_images, write_model
from pipeline.config import load_config
from pipeline.faces.recipe import CropRecipe
from pipeline.model.meta import model_meta
from pipeline.report.html import write_report
from pipeline.store import DataRoot, now


def _seed(root: DataRoot, model_id: str, n: int = 14, with_scores: bool = True) -> list[str]:
    """faces rows with crops (the astronaut, recoloured), made the way the model's crops are, and score rows."""
    recipe = CropRecipe.from_dict(model_meta(root, root.model_dir(model_id)).inputs["crop"]).to_json()
    faces, scores, shas = [], [], []
    for i, data in enumerate(face_images(n)):
        sha = root.put_image(data)
        shas.append(sha)
        crop = encode(Image.open(io.BytesIO(data)).crop((60, 0, 240, 180)).resize((64, 64)))
        faces.append({"image_sha256": sha, "n_faces": 1, "kept": True, "crop_jpeg": crop, "processed_at": now(),
                      "recipe": recipe})  # fmt: skip
        scores.append(
            {
                "image_sha256": sha,
                "model_id": model_id,
                "score": i / n,
                "predicted": "good",
                "percentile": i / n,
                "face_found": True,
                "status": "ok",
                "run_id": "s1",
                "scored_at": now(),
            }
        )
    root.write_part("faces", faces)
    scores.append(
        {
            "image_sha256": "f" * 64,
            "model_id": model_id,
            "face_found": False,
            "status": "skipped",
            "reason": "no_face",
            "run_id": "s1",
            "scored_at": now(),
        }
    )
    if with_scores:
        root.write_part("scores/dt=2025-01-01", scores)
    return shas


@pytest.fixture
def report_cfg(data_root):
    return load_config(
        None, overrides={"data_root": str(data_root), "score.report_grid": 5, "score.report_tsne_points": 12}
    )


def test_report_without_scores_scores_crops_now(report_cfg):
    root = DataRoot(report_cfg.data_root)
    mdir = write_model(root)
    _seed(root, "20250101T000000-test", n=6, with_scores=False)
    page = Path(write_report(mdir, report_cfg)).read_text()
    assert "has not scored any images yet" in page and page.count("<figure>") == 10


@pytest.mark.chromium
def test_report_renders_in_chromium(report_cfg, tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    root = DataRoot(report_cfg.data_root)
    mdir = write_model(root)
    _seed(root, "20250101T000000-test")
    path = Path(write_report("20250101T000000-test", report_cfg))
    assert path == Path(mdir) / "report.html"
    page = path.read_text()
    for title in (
        "Top 5 scored faces",
        "Bottom 5 scored faces",
        "Score histogram",
        "training_curve.png",
        "confusion.png",
        "t-SNE of the penultimate layer",
        "accuracy",
    ):
        assert title in page, title
    assert "src='http" not in page and 'src="http' not in page  # self-contained

    from pipeline.scrape.staff.browser import chrome_options

    profile = tempfile.mkdtemp(prefix="chr", dir=str(tmp_path))
    opts = chrome_options("--window-size=1200,2000", f"--user-data-dir={profile}", binary="/usr/bin/chromium")
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=opts)
    try:
        driver.set_page_load_timeout(60)
        driver.get(path.as_uri())
        imgs = driver.execute_script(
            "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);"
        )
        # 5 top + 5 bottom faces, histogram, 2 training plots, t-SNE
        assert len(imgs) == 14
        assert all(c and w > 0 and h > 0 for c, w, h in imgs), imgs
        assert driver.execute_script("return document.body.scrollHeight") > 1000
        shot = tmp_path / "report.png"
        assert driver.save_screenshot(str(shot))
        with Image.open(shot) as im:  # not a blank page: the screenshot has many colours
            assert im.size[0] > 500 and len(im.convert("RGB").getcolors(1 << 20) or []) > 50
    finally:
        driver.quit()
