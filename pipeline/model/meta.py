"""The model folder format: what ``models/<run_id>/`` holds and how ``model.json`` is written, read and found.

:class:`ModelMeta` is the one definition of ``model.json`` (task, kind, backbone, outputs, classes, input size and
normalisation, the train config, the model card's facts, and ``inputs``: how the model's input crops are made);
:func:`write_model_meta` writes it last (a folder holding it is a complete export), :func:`model_meta` reads and
checks it, :func:`resolve_model_dir` turns ``latest`` / ``latest:<task>`` / a run id / a path into a folder. No
torch: drivers plan with these. The weights are loaded by :mod:`pipeline.model.loaded`.

Example::

    d = resolve_model_dir(root, "latest:selfie")
    meta = model_meta(root, d)
    meta.image_size, meta.inputs["crop"]["mode"]
"""

from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from typing import Any

import pyarrow.fs as pafs

from pipeline.config import FacesConfig
from pipeline.faces.recipe import CropRecipe
from pipeline.store import MODELS_DS, DataRoot, InputError, now

MODEL_JSON = "model.json"  # written last by an export: a folder holding it is a complete model
TEST_PREDICTIONS = "test_predictions.parquet"  # an export's test pass, one row per image (image_sha256, ...)
CHECKPOINT_TEST = "test.json"  # a training checkpoint's test outputs: {"y", "outputs", "image_sha256", ...}
MODEL_KINDS = ("binary", "multiclass", "regression")


@dataclasses.dataclass(frozen=True)
class ModelMeta:
    """What an exported model's ``model.json`` holds: enough to rebuild the network and to read its outputs.

    The one definition of the model folder's format (``models/<run_id>/``: ``model.pt``, ``test_scores.json``,
    ``metrics.json``, ``plots/``, then ``model.json``): :func:`write_model_meta` writes it, :func:`model_meta`
    reads it, both check it. ``train_config`` is the :class:`~pipeline.config.TrainConfig` of the run as a dict (the
    network is built from it); ``mean``/``std`` normalise the input pixels; ``target_mean``/``target_std`` undo the
    standardisation of regression targets; ``fold``/``fold_model_dir`` only in a k-fold run's copy of a fold.
    """

    model_id: str
    task: str
    kind: str  # binary | multiclass | regression
    backbone: str
    num_outputs: int
    class_names: list[str]
    image_size: int
    mean: list[float]
    std: list[float]
    train_config: dict[str, Any]
    target_mean: float = 0.0
    target_std: float = 1.0
    best_epoch: int | None = None
    created_at: str = dataclasses.field(default_factory=lambda: now().isoformat())
    fold: int | None = None
    fold_model_dir: str | None = None
    card: dict[str, Any] | None = None  # the model card's facts (MODEL_CARD.md holds the same), see train/card.py
    # how its inputs are made: {"crop": a pipeline.faces.recipe.CropRecipe dict (None: not recorded), "pixels":
    # {"size", "resize", "colour"}}; None in a model.json written before models recorded it
    inputs: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        for name in ("class_names", "mean", "std"):  # lists whatever sequence was given (JSON has no tuples)
            object.__setattr__(self, name, list(getattr(self, name)))
        problem = self._problem()
        if problem:
            raise ValueError(f"model {self.model_id!r}: {MODEL_JSON}: {problem}")

    def _problem(self) -> str | None:
        """What is wrong with these values, or None."""
        if not self.model_id or not isinstance(self.model_id, str):
            return "model_id must be a non-empty string"
        if self.kind not in MODEL_KINDS:
            return f"kind must be one of {', '.join(MODEL_KINDS)}, not {self.kind!r}"
        if not isinstance(self.num_outputs, int) or self.num_outputs < 1:
            return f"num_outputs must be a positive integer, not {self.num_outputs!r}"
        if self.kind != "regression" and len(self.class_names) != self.num_outputs:
            return f"{len(self.class_names)} class_names for {self.num_outputs} outputs"
        if not isinstance(self.image_size, int) or self.image_size < 1:
            return f"image_size must be a positive integer, not {self.image_size!r}"
        if len(self.mean) != 3 or len(self.std) != 3:
            return "mean and std need one value per colour channel (3)"
        if not isinstance(self.train_config, dict):
            return "train_config must be a mapping"
        if self.inputs is not None and not (isinstance(self.inputs, dict) and "crop" in self.inputs):
            return "inputs must be a mapping with a 'crop' entry"
        return None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object (k-fold's fields only when set)."""
        d = dataclasses.asdict(self)
        return {k: v for k, v in d.items() if not (k in ("fold", "fold_model_dir", "card", "inputs") and v is None)}

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = MODEL_JSON) -> ModelMeta:
        """Check and read a ``model.json`` object; ``where`` names it in the one-line error."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in d]
        unknown = sorted(set(d) - {f.name for f in fields})
        problems = [f"missing {', '.join(missing)}"] if missing else []
        problems += [f"unknown keys {', '.join(unknown)}"] if unknown else []
        if problems:
            raise ValueError(f"{where}: {'; '.join(problems)}")
        return cls(**d)


def write_model_meta(root: DataRoot, model_dir: str, meta: ModelMeta) -> str:
    """Write ``<model_dir>/model.json`` (atomically, through the root's filesystem); returns its path.

    Write it after every other file of the folder: :func:`resolve_model_dir` takes a folder holding it as complete.
    """
    path = posixpath.join(model_dir, MODEL_JSON)
    root.write_json(path, meta.to_dict())
    return path


def model_location(model_dir: str, root: DataRoot | None) -> tuple[pafs.FileSystem, str]:
    """The filesystem and path of a model folder: a URI, a folder under the data root, or a local path."""
    if "://" in model_dir:
        return pafs.FileSystem.from_uri(model_dir)
    if root is not None and (model_dir.startswith(root.base + "/") or "://" in root.uri):
        return root.fs, model_dir
    return pafs.LocalFileSystem(), os.path.abspath(model_dir)


def is_file(fs: pafs.FileSystem, path: str) -> bool:
    """Whether ``path`` on ``fs`` is a file (not a folder, not missing)."""
    return fs.get_file_info(path).type == pafs.FileType.File


def resolve_model_dir(root: DataRoot, spec: str) -> str:
    """``latest`` (the newest exported run id), ``latest:<task>`` (the newest exported run of that task), a run
    id under ``models/``, or a path → the model folder (exported: it holds ``model.json``, written last)."""
    if spec == "latest" or spec.startswith("latest:"):
        task = spec.partition(":")[2] or None
        runs = [r for r in root.list_dir(MODELS_DS) if is_file(root.fs, root.path(MODELS_DS, r, MODEL_JSON))]
        if task:
            runs = [r for r in runs if model_meta(root, root.model_dir(r)).task == task]
        if not runs:
            what = f"model of task {task!r}" if task else "model"
            raise FileNotFoundError(f"no exported {what} under {root.uri}/models: run the 'train' stage first")
        return root.model_dir(sorted(runs)[-1])
    if "/" not in spec and is_file(root.fs, root.path(MODELS_DS, spec, MODEL_JSON)):
        return root.model_dir(spec)
    fs, path = model_location(spec, root)
    if is_file(fs, posixpath.join(path, MODEL_JSON)):
        return spec
    raise FileNotFoundError(f"model {spec!r}: neither a run id under {root.uri}/models nor a folder with model.json")


def model_meta(root: DataRoot | None, model_dir: str) -> ModelMeta:
    """An exported model's ``model.json`` (id, task, classes, input size), checked, without loading its weights."""
    fs, path = model_location(model_dir, root)
    where = posixpath.join(path, MODEL_JSON)
    with fs.open_input_stream(where) as f:
        return ModelMeta.from_dict(json.loads(f.read()), where=where)


# ------------------------------------------------------------------------------------------------ inputs
class RecipeError(InputError):
    """A model cannot be scored the way it was trained; ``str(err)`` says why in one line."""


def of_model(inputs: dict[str, Any] | None) -> CropRecipe | None:
    """The crop recipe a model's ``model.json`` records (``inputs.crop``); None when it records none."""
    crop = (inputs or {}).get("crop")
    return CropRecipe.from_dict(crop) if crop else None


def model_recipe(model_id: str, inputs: dict[str, Any] | None, fc: FacesConfig, unrecorded: str) -> CropRecipe:
    """The recipe to make a model's input crops with: the one its ``model.json`` records. A model that records
    none (exported before models recorded it, or trained on crops that predate recipes) is refused with
    :class:`RecipeError`, unless ``unrecorded`` is ``faces_config`` (``score.unrecorded_inputs``): then ``fc``'s
    detection, as such models were scored before."""
    recipe = of_model(inputs)
    if recipe is not None:
        return recipe
    if unrecorded == "faces_config":
        return CropRecipe.of(fc, detect=True)
    raise RecipeError(
        f"model {model_id}: its model.json does not say how its input crops were made (trained before models "
        "recorded it), so its scores could not be trusted to match its metrics; retrain it, or set "
        "score.unrecorded_inputs: faces_config to score it with this config's faces settings"
    )
