"""The crop maker of a recipe: :func:`cropper` gives the object that makes FACES rows the way a
:class:`~pipeline.faces.recipe.CropRecipe` says (MTCNN and the policy, or the image as given).

Example::

    rows = cropper(CropRecipe.of(cfg.faces, detect=False), cfg.faces).process([open("face.jpg", "rb").read()])
"""

from __future__ import annotations

from typing import Any, Protocol

from pipeline.config import FacesConfig
from pipeline.faces.detector import FaceDetector
from pipeline.faces.given import AsGiven
from pipeline.faces.recipe import CropRecipe


class Cropper(Protocol):
    """What makes FACES rows from image bytes (:class:`~pipeline.faces.detector.FaceDetector`, or
    :class:`~pipeline.faces.given.AsGiven`)."""

    recipe: CropRecipe

    def process(self, images: Any) -> list[dict[str, Any]]: ...


def cropper(recipe: CropRecipe, base: FacesConfig, **kwargs: Any) -> Cropper:
    """The object that makes crops by ``recipe`` (``base`` gives the settings that are not part of it);
    ``kwargs`` go to :class:`~pipeline.faces.detector.FaceDetector` (``device``, ``num_threads``)."""
    fc = recipe.faces_config(base)
    if recipe.mode == "as_given":
        return AsGiven(fc)
    return FaceDetector(fc, **kwargs)
