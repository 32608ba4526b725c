"""The score stage's Ray Data pieces: face rows in, score rows out (what runs in read tasks and scoring actors).

Flow, one streaming pipeline per run (:func:`pipeline.score.stage.build` puts the pieces together)::

    face rows: the face stage's ``faces`` rows (:func:`reused_faces`: a Parquet scan, filter and projection pushed
      down), else fresh detection (:func:`detected_faces`)
    → crops decoded and resized to the model's input (:func:`prepare_crops`): in the read tasks for GPU actors,
      in the scoring actor on a CPU-only node (``score.decode``)
    → :class:`Scorer` (an actor: the model loaded once) → :func:`score_prepared`: score rows in the SCORES schema

Row status: ``ok`` (a face was scored), ``skipped`` (no usable face: ``reason`` is the face stage's, e.g.
``no_face``, ``many_faces``, ``low_prob``), ``error`` (unreadable image or crop: ``reason`` says why).

Nothing here imports torch at module level: the driver plans with this module, only the actors load the model.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa
import ray

from pipeline.config import Config
from pipeline.faces.recipe import CropRecipe
from pipeline.placement import require_node
from pipeline.ray_env import scoped_env
from pipeline.store import FACES_DS, SCORES, STATUS_ERROR, STATUS_OK, STATUS_SKIPPED, DataRoot, now

# face-stage reasons that mean the image itself is unusable (an error row, not a skipped one)
ERROR_REASONS = ("decode_error", "detect_error", "error")
# what the scorer needs from a face row
FACE_COLUMNS = ["image_sha256", "kept", "reason", "crop_jpeg"]
FACE_TYPES = pa.schema(
    [("image_sha256", pa.string()), ("kept", pa.bool_()), ("reason", pa.string()), ("crop_jpeg", pa.binary())]
)


# ------------------------------------------------------------------------------------------------ face rows
def reused_faces(
    root: DataRoot,
    shas: list[str] | None,
    num_cpus: float = 0.25,
    read_unit_mb: float = 8.0,
    concurrency: int | None = 2,
    footer_actors: int = 1,
) -> ray.data.Dataset:
    """The face stage's rows for ``shas`` (all rows when None), streamed from the ``faces`` part files.

    A Ray Data Parquet scan with the column projection (``FACE_COLUMNS``) and the ``image_sha256`` filter pushed
    down into the file scan: read tasks read only the wanted rows, a row-group batch at a time, and hand them on
    block by block; no process ever holds the whole table's crops. Each read task gets about ``read_unit_mb`` of
    (uncompressed) rows: Ray's default packs up to 128 MiB into one task, whose worker then holds several times
    that, so the read's memory grew with the input up to that size. At most ``concurrency`` read tasks run at
    once (None: as many as the CPUs allow); each reserves ``num_cpus`` (a fraction: they mostly wait on storage),
    so that the scoring actors can be given the node's cores. While Ray Data lists the files, ``footer_actors``
    actors read their Parquet footers: each is a worker process of its own (Ray's default, 32, started them by the
    handful, about 2 CPU-seconds each, while the scoring actor loads torch, and killed them once the files were
    listed).
    """
    from ray.data.expressions import col

    # Ray Data's Parquet reader takes these two from the environment when read_parquet plans the read: the unit size
    # (uncompressed bytes per read task, 128 MiB by default) and the footer-reading actors (32 by default, each with
    # 128 I/O threads); set for this call only
    parquet_env = {"RAY_DATA_PARQUET_BIN_PACKING_BYTES": int(read_unit_mb * 2**20),
                   "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS": footer_actors}  # fmt: skip
    with scoped_env(parquet_env):
        ds = ray.data.read_parquet(
            root.part_files(FACES_DS), filesystem=root.fs, num_cpus=num_cpus, concurrency=concurrency
        )
    ds = ds.select_columns(FACE_COLUMNS)
    if shas is not None:
        ds = ds.filter(expr=col("image_sha256").is_in(shas))
    return ds  # the scorer conforms the types (a cast): a separate map here would be a separate task per block


def detected_faces(
    cfg: Config, root: DataRoot, shas: list[str], recipe: CropRecipe, num_cpus: float = 0.25
) -> ray.data.Dataset:
    """Face rows made afresh by the model's ``recipe`` (images the face stage has not seen, or cropped another
    way): :func:`pipeline.faces.detect_faces`, bytes read by actors placed as ``ray.placement.faces`` says (the
    same hardware as the faces stage's actors)."""
    from pipeline.faces import detect_faces

    require_node("score", cfg.ray.placement.faces, key="faces")  # the face actors go where the faces stage's go
    ds = ray.data.from_items([{"image_sha256": s} for s in shas])
    ds = detect_faces(ds, cfg.faces, data_root=root.uri, placement=cfg.ray.placement.faces, recipe=recipe)
    # The face stage's rows carry more columns than the scorer reads: narrowed here to the reused rows' schema, so
    # that the union of both pieces has one schema (the scorer's own cast is then a no-op on these rows).
    return ds.map_batches(conform_faces, batch_format="pyarrow", num_cpus=num_cpus)


def conform_faces(batch: pa.Table) -> pa.Table:
    """Face rows narrowed and cast to ``FACE_TYPES`` (a missing column becomes nulls)."""
    cols = [
        batch[n].cast(f.type) if n in batch.column_names else pa.nulls(len(batch), f.type)
        for n, f in zip(FACE_TYPES.names, FACE_TYPES, strict=True)
    ]
    return pa.Table.from_arrays(cols, schema=FACE_TYPES)


def bound_memory(ds: ray.data.Dataset, block_mb: float, object_store_mb: float) -> ray.data.Dataset:
    """Small blocks and a bounded object-store budget for ``ds``'s execution (its own DataContext only).

    Read tasks cut the face rows into blocks of about ``block_mb`` and the streaming executor buffers at most
    ``object_store_mb`` of blocks between operators, so peak memory does not grow with the number of images.
    """
    ctx = ds.context  # a copy sealed when the dataset was made: the process-wide DataContext is left alone
    ctx.target_max_block_size = int(block_mb * 2**20)
    opts = ctx.execution_options
    opts.resource_limits = opts.resource_limits.copy(object_store_memory=object_store_mb * 2**20)
    return ds


# ------------------------------------------------------------------------------------------------ crops
def prepare_crops(batch: pa.Table, image_size: int) -> dict[str, np.ndarray]:
    """Face rows (image_sha256, kept, reason, crop_jpeg) → model-ready rows (in the read tasks or the actor).

    Each kept crop is decoded and resized to the model's input (uint8 ``pixels``, S x S x 3, the same pixels
    :meth:`LoadedModel.predict` makes from an image). In the read tasks (``score.decode: read``) decoding overlaps
    with the model in the actors; in the actor it costs less CPU in all (no pixels through the object store).
    ``decoded`` says which rows carry real pixels; a row without a
    usable face (or no crop) keeps its face-stage reason and ``kept`` false, a kept crop that cannot be decoded gets
    ``crop_decode_error: ...`` (an error row with ``face_found``: the face stage did find a face). Rows
    without pixels carry zeros (a fixed-shape tensor column), which the actor never runs through the model.
    """
    from pipeline.imaging import decode_image
    from pipeline.model.pixels import model_pixels

    n = batch.num_rows
    kept = batch["kept"].fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    reasons = np.array(batch["reason"].to_pylist(), dtype=object)
    crops = batch["crop_jpeg"].to_pylist()
    pixels = np.zeros((n, image_size, image_size, 3), dtype=np.uint8)
    decoded = np.zeros(n, dtype=bool)
    for i in range(n):
        if not crops[i]:
            kept[i] = False  # no crop to score: the face stage's reason (or no_face) stands
        if not kept[i]:
            continue
        try:
            pixels[i] = model_pixels(decode_image(crops[i]), image_size)
            decoded[i] = True
        except Exception as err:  # a corrupt crop: an error row later, never the batch
            reasons[i] = f"crop_decode_error: {err}"[:300]
    return {
        "image_sha256": np.array(batch["image_sha256"].to_pylist(), dtype=object),
        "kept": kept,
        "reason": reasons,
        "decoded": decoded,
        "pixels": pixels,
    }


def conform_and_prepare(batch: pa.Table, image_size: int) -> dict[str, np.ndarray]:
    """:func:`prepare_crops` of any face rows (the read tasks' map when ``score.decode`` is ``read``)."""
    return prepare_crops(conform_faces(batch), image_size)


# ------------------------------------------------------------------------------------------------ the actor
def pick_device(device: str, num_gpus: float) -> str:
    """``cuda`` when asked for (or ``auto`` with a GPU given to this actor and visible), else ``cpu``."""
    if device == "cpu":
        return "cpu"
    import torch

    if device == "cuda" or (num_gpus > 0 and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


def pass_layout(device: str, threads: int, calls: int) -> tuple[int, int]:
    """(torch threads per forward pass, forward passes at once) of a scoring actor with ``threads`` torch threads
    (score.torch_threads, else its CPU reservation) that takes ``calls`` batches at once (score.calls_per_actor).

    On a CPU the threads are split among up to ``calls`` side-by-side passes, at least one each and never more in
    all (two cores, three calls: two one-thread passes, the third batch waits decoded): independent passes lose less
    than one pass over more threads when other processes (Ray's own) take a core now and then. On a GPU the passes
    take turns, each with all the threads.
    """
    if device != "cpu":
        return threads, 1
    per_pass = max(1, threads // calls)
    return per_pass, max(1, threads // per_pass)


class Scorer:
    """Ray Data actor: loads the model once (optimised for inference), scores prepared crops batch by batch."""

    def __init__(
        self,
        model_dir: str,
        data_root: str,
        run_id: str,
        device: str,
        threads: int = 1,
        optimize: bool = True,
        precision: str = "fp32",
        calls: int = 1,
    ):
        import torch

        from pipeline.model.loaded import LoadedModel

        # Up to ``calls`` batches are in this actor at once (score.calls_per_actor), each in its own thread, so one
        # is decoded while another is in the model; the forward passes run as pass_layout says.
        per_pass, passes = pass_layout(device, threads, calls)
        torch.set_num_threads(per_pass)
        self._passes = threading.Semaphore(passes)
        self.model = LoadedModel.load(model_dir, root=DataRoot(data_root), device=device)
        if optimize:
            self.model.optimize_for_inference()
        self.model.use_precision(precision)
        self.run_id = run_id

    def __call__(self, batch: pa.Table | dict[str, np.ndarray]) -> pa.Table:
        if isinstance(batch, pa.Table):  # face rows with JPEG crops (score.decode: actor): decode here
            batch = prepare_crops(conform_faces(batch), self.model.image_size)
        with self._passes:
            return score_prepared(self.model, batch, self.run_id)


def _unscored_rows(kept: np.ndarray, reasons: np.ndarray, decoded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Status and reason of every row: ``ok`` for rows with pixels (the model may still fail them), else
    ``skipped`` (no usable face) or ``error`` (a kept face without pixels, or an unusable image)."""
    status = np.full(len(kept), STATUS_OK, dtype=object)
    reason = np.full(len(kept), None, dtype=object)
    for i in np.flatnonzero(~decoded):
        r = reasons[i] or "no_face"
        reason[i] = r
        status[i] = STATUS_ERROR if (kept[i] or r.startswith(ERROR_REASONS)) else STATUS_SKIPPED
    return status, reason


def _run_model(model: Any, pixels: np.ndarray, todo: np.ndarray, status: np.ndarray, reason: np.ndarray):
    """Score, percentile and class name of the rows ``todo`` (one forward pass; a batch the model fails on is
    retried row by row, so one bad crop never loses the batch: that row becomes a ``model_error``)."""
    n = len(status)
    score, pct, predicted = np.full(n, np.nan), np.full(n, np.nan), np.full(n, None, dtype=object)

    def fill(idx: np.ndarray) -> None:
        out = model.score(pixels=pixels[idx])
        score[idx], pct[idx], predicted[idx] = out.score, out.percentile, out.predicted

    if len(todo):
        try:
            fill(todo)
        except Exception:
            for i in todo:  # isolate the failing crop(s)
                try:
                    fill(np.array([i]))
                except Exception as err:
                    status[i], reason[i] = STATUS_ERROR, f"model_error: {err}"[:300]
    return score, pct, predicted


def score_prepared(model: Any, batch: dict[str, np.ndarray], run_id: str) -> pa.Table:
    """Prepared rows (:func:`prepare_crops`) → score rows in the SCORES schema.

    Rows with pixels are scored in one forward pass (:meth:`pipeline.model.loaded.LoadedModel.score`); a batch the
    model fails on is retried row by row, so one bad crop never loses the batch. Rows without pixels become
    ``skipped`` (no usable face) or ``error`` rows.
    """
    shas, kept, decoded = batch["image_sha256"], batch["kept"], batch["decoded"]
    n = len(shas)
    status, reason = _unscored_rows(kept, batch["reason"], decoded)
    score, pct, predicted = _run_model(model, batch["pixels"], np.flatnonzero(decoded), status, reason)
    ok = status == STATUS_OK
    cols = {
        "image_sha256": pa.array(shas, pa.string()),
        "model_id": pa.array(np.full(n, model.model_id, dtype=object), pa.string()),
        "run_id": pa.array(np.full(n, run_id, dtype=object), pa.string()),
        "scored_at": pa.array(np.full(n, now(), dtype=object)),
        "face_found": pa.array(kept.astype(bool)),
        "status": pa.array(status, pa.string()),
        "reason": pa.array(reason, pa.string()),
        "score": pa.array(np.where(ok, score, np.nan), mask=~ok),
        "predicted": pa.array(np.where(ok, predicted, None), pa.string()),
        "percentile": pa.array(np.where(ok, pct, np.nan), mask=~ok),
    }
    return pa.Table.from_pydict(
        {f.name: cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in SCORES},
        schema=SCORES,
    )
