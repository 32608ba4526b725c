"""How a face crop is made: the one description that faces rows carry and models record, so that every path that
scores a model makes its inputs exactly as its training crops were made.

A :class:`CropRecipe` names the mode and the settings that change a crop's pixels:

* ``detect``: MTCNN on a bounded working copy, the keep policy and a square crop around the kept face (margin,
  size, alignment, JPEG quality): the :class:`~pipeline.config.FacesConfig` fields in :data:`DETECT_FIELDS`;
* ``as_given``: the image is a face already (an aligned face set, cartoons, faces cropped elsewhere): its centre
  square resized to ``crop_size`` (the fields in :data:`AS_GIVEN_FIELDS`).

Settings that only change how fast crops are made (actors, batch sizes, devices, the nets' runtime, memory caps,
allowed formats) are not part of a recipe. :data:`VERSION` changes when the code that makes crops changes what they
hold, so that crops made by older code never count as the same recipe; a setting added later
(:data:`ADDED_FIELDS`) reads, in a recipe recorded before it, as the value that made crops as before.

Every ``faces`` row records its recipe (the ``recipe`` column, canonical JSON: :meth:`CropRecipe.to_json`); the
train stage refuses crops made by several recipes and writes the one it trained on into ``model.json``
(``inputs.crop``); the score stage, ``rate``, ``best-crop`` and the report make crops with the model's recipe
(:func:`pipeline.faces.cropper.cropper`), and reuse ``faces`` rows only when they carry the same one.

Example::

    r = CropRecipe.of(cfg.faces, detect=False)
    r.describe()                      # 'the image as given: its centre square at 224 px'
    CropRecipe.from_json(r.to_json()) == r
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from pipeline.config import FacesConfig

VERSION = 1
MODES = ("detect", "as_given")
# FacesConfig fields that change what a crop holds, per mode
DETECT_FIELDS = (
    "max_side",
    "decode_max_side",
    "min_image_px",
    "detect_min_px",
    "detect_min_share",
    "pyramid_factor",
    "thresholds",
    "recheck_below",
    "min_prob",
    "min_face_px",
    "policy",
    "margin",
    "crop_size",
    "align",
    "jpeg_quality",
)
AS_GIVEN_FIELDS = ("decode_max_side", "crop_size", "jpeg_quality")
# fields added to a mode after recipes were first written, with the value that makes crops as older code made them:
# a recorded recipe without one reads as having that value, and a recipe with that value is written without it
ADDED_FIELDS = {"detect": {"detect_min_share": 0.0}}


def _plain(value: Any) -> Any:
    """A JSON-stable form of a setting (tuples as lists)."""
    return list(value) if isinstance(value, tuple | list) else value


@dataclass(frozen=True)
class CropRecipe:
    """How one crop is made: ``mode`` (``detect`` or ``as_given``) and the crop-shaping settings."""

    mode: str
    settings: tuple[tuple[str, Any], ...]
    version: int = VERSION

    @classmethod
    def of(cls, fc: FacesConfig, detect: bool = True) -> CropRecipe:
        """The recipe that ``fc`` makes crops with (``detect`` False: images taken as faces already)."""
        fields = DETECT_FIELDS if detect else AS_GIVEN_FIELDS
        settings = tuple((f, _freeze(getattr(fc, f))) for f in fields)
        return cls("detect" if detect else "as_given", settings)

    @property
    def values(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in self.settings}

    def to_dict(self) -> dict[str, Any]:
        """The recorded form; an added setting at its older value is left out, so that a recipe older code could
        make is written exactly as older code wrote it (and matches the rows and models it recorded)."""
        added = ADDED_FIELDS.get(self.mode, {})
        settings = {k: v for k, v in self.values.items() if not (k in added and v == added[k])}
        return {"version": self.version, "mode": self.mode, "settings": settings}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no spaces): equal recipes give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CropRecipe:
        """Read :meth:`to_dict`'s form; raises ValueError on anything else."""
        if not isinstance(d, dict) or d.get("mode") not in MODES or not isinstance(d.get("settings"), dict):
            raise ValueError(f"not a crop recipe: {str(d)[:120]}")
        fields = DETECT_FIELDS if d["mode"] == "detect" else AS_GIVEN_FIELDS
        s = {**ADDED_FIELDS.get(d["mode"], {}), **d["settings"]}
        if sorted(s) != sorted(fields):
            raise ValueError(f"crop recipe ({d['mode']}): settings {sorted(s)} are not {sorted(fields)}")
        return cls(d["mode"], tuple((f, _freeze(s[f])) for f in fields), int(d.get("version", 0)))

    @classmethod
    def from_json(cls, text: str) -> CropRecipe:
        try:
            return cls.from_dict(json.loads(text))
        except (TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a crop recipe: {err}") from None

    def faces_config(self, base: FacesConfig) -> FacesConfig:
        """``base`` (its actors, devices, caps) with this recipe's crop-shaping settings."""
        return FacesConfig.model_validate({**base.model_dump(), **self.values})

    def describe(self) -> str:
        """One line a person reads: what the crops are."""
        v = self.values
        if self.mode == "as_given":
            return f"the image as given: its centre square at {v['crop_size']} px"
        align = {True: "eyes", False: "none"}.get(v["align"], v["align"])
        return (
            f"MTCNN crops: {v['policy']} face, margin {v['margin']}, {v['crop_size']} px, align {align}, "
            f"min_prob {v['min_prob']}"
        )

    def differences(self, other: CropRecipe) -> str:
        """What differs from ``other``, e.g. ``mode as_given != detect`` or ``margin 0.2 != 0.3; crop_size ...``."""
        if self.mode != other.mode:
            return f"mode {self.mode} != {other.mode}"
        if self.version != other.version:
            return f"recipe version {self.version} != {other.version}"
        a, b = self.values, other.values
        return "; ".join(f"{k} {a[k]} != {b[k]}" for k in a if a[k] != b.get(k)) or "none"


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, list | tuple) else value
