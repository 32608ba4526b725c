"""The faces stage on Ray: an actor pool of :class:`FaceDetector` over the images of ``posts`` and ``staff``.

* :func:`detect_faces` — a Ray Data helper: ``map_batches`` with :class:`FaceActor` (one MTCNN per actor,
  ``compute=ActorPoolStrategy(size=num_actors)``, ``num_gpus`` per actor from config). Its input has
  ``image_sha256`` and either ``image`` (bytes) or nothing else, in which case each actor reads the bytes from the
  data root itself, one image at a time as it decodes them (no image bytes pass through the driver; an actor holds
  one decoder buffer and at most ``faces.batch_mib`` of working copies and MTCNN activations, see
  :mod:`pipeline.faces.detector`).
  Output rows follow the FACES schema.
* :func:`run` — the stage: the distinct sha256 of ``status == 'ok'`` rows in ``posts`` and ``staff`` that
  ``faces`` does not hold yet, sorted by image size so that equal sizes share MTCNN batches, detected, and
  written as atomic part files. A rerun skips what is done; the summary counts kept images and reasons.

Example::

    from pipeline.config import load_config
    from pipeline.faces import run
    run(load_config("configs/demo.yaml"))  # {'processed': 412, 'kept': 377, 'reasons': {'no_face': 30, ...}}
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.config import Config, FacesConfig, Placement
from pipeline.faces.cropper import cropper
from pipeline.faces.detector import empty_row, reason_code
from pipeline.faces.recipe import CropRecipe
from pipeline.placement import remote_args, require_node
from pipeline.progress import Progress
from pipeline.runtime import ACTOR_ARGS_NOTE, log, stage_entry
from pipeline.store import FACES, FACES_DS, POSTS_DS, STAFF_DS, STATUS_OK, DataRoot, now, to_table

SOURCES = (POSTS_DS, STAFF_DS)


class FaceActor:
    """A Ray Data actor: loads MTCNN once (or nothing for an ``as_given`` recipe), then turns batches of
    (image_sha256[, image]) into FACES rows made by ``recipe`` (JSON; None: ``cfg``'s detection)."""

    def __init__(self, cfg: FacesConfig, data_root: str | None = None, recipe: str | None = None):
        r = CropRecipe.from_json(recipe) if recipe else CropRecipe.of(cfg, detect=True)
        self.det = cropper(r, cfg, num_threads=max(1, round(cfg.num_cpus_per_actor)))
        self.recipe = r.to_json()
        self.root = DataRoot(data_root) if data_root else None

    def _read(self, sha: str) -> bytes | None:
        if self.root is None:
            return None
        try:
            return self.root.get_image(sha)
        except (OSError, FileNotFoundError):
            return None

    def __call__(self, batch: pa.Table) -> pa.Table:
        shas = batch.column("image_sha256").to_pylist()
        if "image" in batch.column_names:
            data: Iterable[bytes | None] = batch.column("image").to_pylist()
        else:
            data = (self._read(s) for s in shas)  # read one at a time, as the detector decodes them
        try:
            rows = self.det.process(data)
        except Exception as err:  # never let one batch kill the actor pool: record it instead
            reason = f"detect_error: {type(err).__name__}: {err}"
            rows = [empty_row(reason) for _ in shas]
        ts = now()
        for row, sha in zip(rows, shas, strict=True):
            row["image_sha256"] = sha
            row["processed_at"] = ts
            row["recipe"] = self.recipe
        return to_table(rows, FACES)


def detect_faces(
    ds: ray.data.Dataset,
    cfg: FacesConfig,
    data_root: str | None = None,
    placement: Placement | None = None,
    recipe: CropRecipe | None = None,
) -> ray.data.Dataset:
    """FACES rows for a dataset of ``image_sha256`` plus ``image`` bytes (or bytes read from ``data_root``), made
    by ``recipe`` (None: ``cfg``'s detection; the score stage passes its model's).

    Example::

        ds = ray.data.from_items([{"image_sha256": "a1", "image": open("a.jpg", "rb").read()}])
        detect_faces(ds, cfg.faces).take_all()[0]["n_faces"]
    """
    if data_root and "://" not in data_root:
        data_root = os.path.abspath(data_root)  # resolved here: actors need not share the driver's cwd
    return ds.map_batches(
        FaceActor,
        fn_constructor_kwargs={"cfg": cfg, "data_root": data_root, "recipe": recipe.to_json() if recipe else None},
        batch_size=cfg.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=cfg.num_actors),
        num_cpus=cfg.num_cpus_per_actor,
        num_gpus=cfg.num_gpus_per_actor or None,
        udf_modifying_row_count=False,
        **remote_args(placement or Placement()),  # ray.placement.faces: which nodes the actors run on
    )


def pending_images(root: DataRoot, recipe: CropRecipe | None = None) -> tuple[pa.Table, int, int, int]:
    """(images to do: image_sha256, width, height sorted by size; number of candidates; number already done; of
    those done, how many have crops made by another recipe than ``recipe``)."""
    sources = [d for d in SOURCES if root.has(d)]
    if not sources:
        root.require(SOURCES[0])  # raises MissingDatasetError naming posts and the scrape stage
    parts = []
    for d in sources:
        t = root.read(d, columns=["image_sha256", "width", "height", "status"])
        t = t.filter(pc.and_(pc.equal(t["status"], STATUS_OK), pc.is_valid(t["image_sha256"])))
        parts.append(t.select(["image_sha256", "width", "height"]))
    t = pa.concat_tables(parts).group_by("image_sha256").aggregate([("width", "max"), ("height", "max")])
    t = t.select(["image_sha256", "width_max", "height_max"]).rename_columns(["image_sha256", "width", "height"])
    n_candidates = t.num_rows
    other = 0
    if root.has(FACES_DS):
        f = root.read(FACES_DS, columns=["image_sha256", "recipe"])
        done = pc.is_in(t["image_sha256"], value_set=f["image_sha256"])
        if recipe is not None:
            f = f.filter(pc.is_in(f["image_sha256"], value_set=t["image_sha256"]))
            other = f.num_rows - int(pc.sum(pc.fill_null(pc.equal(f["recipe"], recipe.to_json()), False)).as_py() or 0)
        t = t.filter(pc.invert(done))
    t = t.sort_by([("width", "ascending"), ("height", "ascending"), ("image_sha256", "ascending")])
    return t, n_candidates, n_candidates - t.num_rows, other


@stage_entry("faces")  # its lock, its log lines, Ray: pipeline/runtime.py
def run(cfg: Config) -> dict[str, Any]:
    """Detect and crop faces for every stored image of ``posts``/``staff`` not yet in ``faces``; a summary."""
    t0 = time.monotonic()
    fc = cfg.faces
    root = DataRoot(cfg.data_root)
    recipe = CropRecipe.of(fc, detect=True)
    todo, n_candidates, n_done, other = pending_images(root, recipe)
    summary: dict[str, Any] = {
        "candidates": n_candidates,
        "already_done": n_done,
        "processed": 0,
        "kept": 0,
        "not_kept": 0,
        "reasons": {},
        "parts": 0,
        "crop_files": 0,
    }
    summary["other_recipe"] = other
    if other:
        log.warning(
            "faces: %d images already have crops made another way than this config's (%s); they are kept as they "
            "are (faces rows are keyed by image): a model trains on crops made one way, so use a fresh data root "
            "to crop them again", other, recipe.describe()
        )  # fmt: skip
    if todo.num_rows:
        keys = todo.select(["image_sha256"])
        blocks = [keys.slice(i, fc.batch_size) for i in range(0, keys.num_rows, fc.batch_size)]
        require_node("faces", cfg.ray.placement.faces)  # bounded: Ray would wait forever for such a node
        out = detect_faces(ray.data.from_arrow(blocks), fc, data_root=root.uri, placement=cfg.ray.placement.faces)
        log.info(ACTOR_ARGS_NOTE, "faces")
        reasons: Counter[str] = Counter()
        progress = Progress("faces", todo.num_rows, "images", fc.progress_every_s)
        for batch in out.iter_batches(batch_size=fc.part_rows, batch_format="pyarrow"):
            root.write_part(FACES_DS, batch)
            summary["parts"] += 1
            summary["processed"] += batch.num_rows
            reasons.update(reason_code(r) for r in batch.column("reason").to_pylist())
            if fc.write_files:
                summary["crop_files"] += _write_crop_files(root, batch)
            progress.add(batch.num_rows)
        progress.done()
        summary["kept"] = reasons.pop("kept", 0)
        summary["not_kept"] = summary["processed"] - summary["kept"]
        summary["reasons"] = dict(sorted(reasons.items()))
    summary["seconds"] = round(time.monotonic() - t0, 2)
    log.info("faces: %s", summary)
    return summary


def _write_crop_files(root: DataRoot, batch: pa.Table) -> int:
    n = 0
    for sha, jpeg in zip(batch["image_sha256"].to_pylist(), batch["crop_jpeg"].to_pylist(), strict=True):
        if jpeg:
            root.write_bytes_atomic(root.crop_path(sha), jpeg)
            n += 1
    return n
