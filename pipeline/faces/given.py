"""Images that are faces already (aligned face sets, cartoons, faces cropped elsewhere): one FACES row each.

:class:`AsGiven` is the ``as_given`` :class:`~pipeline.faces.recipe.CropRecipe`'s crop maker, with the same
``process`` as :class:`~pipeline.faces.detector.FaceDetector`: each image is decoded like the faces stage decodes
(allowed formats, caps, EXIF orientation, a working copy of at most ``decode_max_side``), and its centre square,
resized to ``crop_size`` (bicubic, as detected crops), becomes the crop; a row is not kept only when the image does
not decode. No model is loaded.

Example::

    rows = AsGiven(cfg.faces).process([open("face.jpg", "rb").read()])
    rows[0]["kept"], rows[0]["crop_box"]
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from PIL import Image

from pipeline.config import FacesConfig
from pipeline.faces.detector import empty_row
from pipeline.faces.recipe import CropRecipe
from pipeline.imaging import ImageDecodeError, decode_bounded, to_jpeg


class AsGiven:
    """FACES rows for images taken as faces already: the centre square at ``crop_size``."""

    def __init__(self, cfg: FacesConfig):
        self.cfg = cfg
        self.recipe = CropRecipe.of(cfg, detect=False)

    def row(self, data: bytes | None) -> dict[str, Any]:
        """One FACES row (without ``image_sha256`` / ``processed_at``); never raises for input."""
        fc = self.cfg
        if data is None:
            return empty_row("missing_image: no bytes")
        try:
            img, (w, h) = decode_bounded(
                data, max(fc.decode_max_side, fc.crop_size), fc.max_pixels, fc.image_formats, fc.max_decode_mib << 20
            )
        except ImageDecodeError as err:
            return empty_row(f"decode_error: {err.reason}")
        side = min(img.size)
        x0, y0 = (img.width - side) // 2, (img.height - side) // 2
        crop = img.crop((x0, y0, x0 + side, y0 + side)).resize((fc.crop_size, fc.crop_size), Image.BICUBIC)
        s = w / img.width
        box = [x0 * s, y0 * s, (x0 + side) * s, (y0 + side) * s]
        return {"width": w, "height": h, "n_faces": 1, "boxes": [box], "probs": [None], "landmarks": [],
                "face_share": float(side * side / (img.width * img.height)), "kept": True, "reason": None,
                "face_index": 0, "crop_box": box, "crop_jpeg": to_jpeg(crop, fc.jpeg_quality)}  # fmt: skip

    def process(self, images: Iterable[bytes | None]) -> list[dict[str, Any]]:
        """One row per image, in order, each with the recipe (``recipe``)."""
        recipe = self.recipe.to_json()
        return [{**self.row(d), "recipe": recipe} for d in images]
