"""The score stage: Ray Data batch inference of a trained model over the images it has not scored yet.

Flow (one streaming Ray Data pipeline, nothing collected onto the driver but the small score rows)::

    candidate images (posts/staff rows with status ok, or a folder/URI of new images stored by sha256)
      - images this model id already scored (any scores/dt=* partition)
      → face rows: the face stage's ``faces`` rows when they exist (:func:`reused_faces`: a Parquet scan with the
        image filter and column projection pushed down), else :func:`pipeline.faces.detect_faces`
      → crops decoded and resized to the model's input (:func:`prepare_crops`): in those same tasks for GPU actors,
        in the scoring actor on a CPU-only node (``score.decode``)
      → model (:class:`_Scorer`: loaded once per actor; an actor pool of ``score.num_actors``, GPUs per actor
        from config) → score, predicted class, percentile against the model's test set
      → ``scores/dt=<today>/part-*.parquet`` written atomically every ``score.part_rows`` rows

Streaming: the driver holds only keys (candidate, scored and face-row sha256 sets) and one part of score rows;
crops flow in Ray Data blocks of about ``score.block_mb`` with at most ``score.object_store_mb`` buffered between
operators (:func:`bound_memory`), so peak memory does not grow with the number of images.

Incremental and idempotent: the key is (image_sha256, model_id). A run killed halfway leaves only whole part files,
so the rerun scores exactly the images that are still missing; within a run each image is written once.

Row status: ``ok`` (a face was scored), ``skipped`` (no usable face: ``reason`` is the face stage's, e.g.
``no_face``, ``many_faces``, ``low_prob``), ``error`` (unreadable image or crop: ``reason`` says why).

Example::

    from pipeline.config import load_config
    from pipeline import score
    summary = score.run(load_config("configs/demo.yaml"))
    summary["scored"], summary["partition"]
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
import uuid
from contextlib import contextmanager
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.config import Config
from pipeline.locks import locked_stage
from pipeline.runtime import init_ray, log
from pipeline.store import (
    SCORES,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_SKIPPED,
    DataRoot,
    model_meta,
    now,
    resolve_model_dir,
)

# face-stage reasons that mean the image itself is unusable (an error row, not a skipped one)
ERROR_REASONS = ("decode_error", "detect_error", "error")
IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]
# what the scorer needs from a face row
FACE_COLUMNS = ["image_sha256", "kept", "reason", "crop_jpeg"]
FACE_TYPES = pa.schema(
    [("image_sha256", pa.string()), ("kept", pa.bool_()), ("reason", pa.string()), ("crop_jpeg", pa.binary())]
)
OUT_SCHEMA = SCORES  # rows leave the actors already in the stored schema


# ------------------------------------------------------------------------------------------------ candidates
def candidate_images(root: DataRoot) -> list[str]:
    """Distinct image sha256s referenced by ``posts`` and ``staff`` rows with status ok (sorted)."""
    found: set[str] = set()
    present = [d for d in ("posts", "staff") if root.has(d)]
    if not present:
        root.require("posts")  # names the missing input and the stage that writes it
    for name in present:
        t = root.read(name, columns=["image_sha256", "status"])
        mask = pc.and_(pc.equal(t["status"], "ok"), pc.is_valid(t["image_sha256"]))
        found.update(v for v in t.filter(mask)["image_sha256"].to_pylist() if v)
    return sorted(found)


def _local_or_uri(location: str):
    import os

    import pyarrow.fs as pafs

    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def ingest_images(root: DataRoot, images: str, threads: int = 8) -> list[str]:
    """Store every image file under the folder or URI ``images`` in the data root by sha256; return the hashes.

    Files are found recursively by extension (``IMAGE_EXTENSIONS``) and copied with a small thread pool (I/O
    bound); a file already stored under its hash is not written again.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.fs as pafs

    fs, base = _local_or_uri(images)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise FileNotFoundError(f"images: {images} does not exist")
    infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(base, recursive=True))
    paths = sorted(
        f.path for f in infos if f.type == pafs.FileType.File and f.path.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS
    )

    def _put(path: str) -> str:
        with fs.open_input_stream(path) as f:
            return root.put_image(f.read())

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sorted(set(pool.map(_put, paths)))


def scored_images(root: DataRoot, model_id: str) -> set[str]:
    """Image sha256s that ``model_id`` has already scored, over every ``scores/dt=*`` partition."""
    if not root.has("scores"):
        return set()
    t = root.read("scores", columns=["image_sha256"], filter=pc.field("model_id") == model_id)
    return set(t["image_sha256"].to_pylist())


def face_rows_present(root: DataRoot) -> set[str]:
    """Image sha256s the face stage has rows for (the key column only: no crop bytes are read)."""
    if not root.has("faces"):
        return set()
    return set(root.read("faces", columns=["image_sha256"])["image_sha256"].to_pylist())


# ------------------------------------------------------------------------------------------------ pipeline pieces
@contextmanager
def _read_unit_bytes(n: int):
    """Ray Data's Parquet bin packing reads its unit size (uncompressed bytes per read task, 128 MiB by default)
    from ``RAY_DATA_PARQUET_BIN_PACKING_BYTES`` when ``read_parquet`` plans the read: set it for that call only."""
    key = "RAY_DATA_PARQUET_BIN_PACKING_BYTES"
    old = os.environ.get(key)
    os.environ[key] = str(n)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def reused_faces(
    root: DataRoot,
    shas: list[str] | None,
    num_cpus: float = 0.25,
    read_unit_mb: float = 8.0,
    concurrency: int | None = 2,
) -> ray.data.Dataset:
    """The face stage's rows for ``shas`` (all rows when None), streamed from the ``faces`` part files.

    A Ray Data Parquet scan with the column projection (``FACE_COLUMNS``) and the ``image_sha256`` filter pushed
    down into the file scan: read tasks read only the wanted rows, a row-group batch at a time, and hand them on
    block by block; no process ever holds the whole table's crops. Each read task gets about ``read_unit_mb`` of
    (uncompressed) rows: Ray's default packs up to 128 MiB into one task, whose worker then holds several times
    that, so the read's memory grew with the input up to that size. At most ``concurrency`` read tasks run at
    once (None: as many as the CPUs allow); each reserves ``num_cpus`` (a fraction: they mostly wait on storage),
    so that the scoring actors can be given the node's cores.
    """
    from ray.data.expressions import col

    with _read_unit_bytes(int(read_unit_mb * 2**20)):
        ds = ray.data.read_parquet(
            root.part_files("faces"), filesystem=root.fs, num_cpus=num_cpus, concurrency=concurrency
        )
    ds = ds.select_columns(FACE_COLUMNS)
    if shas is not None:
        ds = ds.filter(expr=col("image_sha256").is_in(shas))
    return ds  # the scorer conforms the types (a cast): a separate map here would be a separate task per block


def detected_faces(cfg: Config, root: DataRoot, shas: list[str], num_cpus: float = 0.25) -> ray.data.Dataset:
    """Face rows for images the face stage has not seen: :func:`pipeline.faces.detect_faces`, bytes read by actors."""
    from pipeline.faces import detect_faces

    ds = ray.data.from_items([{"image_sha256": s} for s in shas])
    ds = detect_faces(ds, cfg.faces, data_root=root.uri)
    # The face stage's rows carry more columns than the scorer reads: narrowed here to the reused rows' schema, so
    # that the union of both pieces has one schema (the scorer's own cast is then a no-op on these rows).
    return ds.map_batches(_conform_faces, batch_format="pyarrow", num_cpus=num_cpus)


def _conform_faces(batch: pa.Table) -> pa.Table:
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


def pick_device(device: str, num_gpus: float) -> str:
    """``cuda`` when asked for (or ``auto`` with a GPU given to this actor and visible), else ``cpu``."""
    if device == "cpu":
        return "cpu"
    import torch

    if device == "cuda" or (num_gpus > 0 and torch.cuda.is_available()):
        return "cuda"
    return "cpu"


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
    from pipeline.train.data import model_pixels

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


def _conform_and_prepare(batch: pa.Table, image_size: int) -> dict[str, np.ndarray]:
    return prepare_crops(_conform_faces(batch), image_size)


class _Scorer:
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

        from pipeline.train.export import LoadedModel

        # Up to ``calls`` batches are in this actor at once (score.calls_per_actor), each in its own thread, so one
        # is decoded while another is in the model. On a CPU the actor's threads (score.torch_threads, else its CPU
        # reservation) are split among side-by-side forward passes: independent passes lose less than one pass over
        # more threads when other processes (Ray's own) take a core now and then; never more threads than that in
        # all. On a GPU the passes take turns.
        per_pass = max(1, threads // calls) if device == "cpu" else threads
        torch.set_num_threads(per_pass)
        self._passes = threading.Semaphore(max(1, threads // per_pass) if device == "cpu" else 1)
        self.model = LoadedModel.load(model_dir, root=DataRoot(data_root), device=device)
        if optimize:
            self.model.optimize_for_inference()
        self.model.use_precision(precision)
        self.run_id = run_id

    def __call__(self, batch: pa.Table | dict[str, np.ndarray]) -> pa.Table:
        if isinstance(batch, pa.Table):  # face rows with JPEG crops (score.decode: actor): decode here
            batch = prepare_crops(_conform_faces(batch), self.model.image_size)
        with self._passes:
            return score_prepared(self.model, batch, self.run_id)


def score_prepared(model: Any, batch: dict[str, np.ndarray], run_id: str) -> pa.Table:
    """Prepared rows (:func:`prepare_crops`) → score rows in the SCORES schema.

    Rows with pixels are scored in one forward pass; a batch the model fails on is retried row by row, so one bad
    crop never loses the batch. Rows without pixels become ``skipped`` (no usable face) or ``error`` rows.
    """
    shas, kept, reasons, decoded = batch["image_sha256"], batch["kept"], batch["reason"], batch["decoded"]
    n = len(shas)
    status = np.full(n, STATUS_OK, dtype=object)
    reason = np.full(n, None, dtype=object)
    for i in np.flatnonzero(~decoded):
        r = reasons[i] or "no_face"
        reason[i] = r
        status[i] = STATUS_ERROR if (kept[i] or r.startswith(ERROR_REASONS)) else STATUS_SKIPPED
    score = np.full(n, np.nan)
    pct = np.full(n, np.nan)
    predicted = np.full(n, None, dtype=object)
    todo = np.flatnonzero(decoded)

    def _fill(idx: np.ndarray) -> None:
        s, names = model.predict_pixels(batch["pixels"][idx])
        s = np.asarray(s, dtype=np.float64).reshape(len(idx), -1)[:, 0]
        score[idx], pct[idx] = s, np.asarray(model.percentile(s), dtype=np.float64).reshape(-1)
        predicted[idx] = names

    if len(todo):
        try:
            _fill(todo)
        except Exception:
            for i in todo:  # isolate the failing crop(s)
                try:
                    _fill(np.array([i]))
                except Exception as err:
                    status[i], reason[i] = STATUS_ERROR, f"model_error: {err}"[:300]
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
        {f.name: cols[f.name].cast(f.type) if f.name in cols else pa.nulls(n, f.type) for f in OUT_SCHEMA},
        schema=OUT_SCHEMA,
    )


# ------------------------------------------------------------------------------------------------ the stage
@locked_stage("score")  # one run per data root; cleans its own _tmp/ leftovers first
def run(cfg: Config, images: str | None = None) -> dict:
    """Score every candidate image that the configured model has not scored yet; returns a summary.

    ``images``: a folder or URI of new images; they are stored in the data root by sha256 and become the
    candidates (instead of the images referenced by ``posts``/``staff``).
    """
    t0 = time.monotonic()
    init_ray(cfg)
    root = DataRoot(cfg.data_root)
    sc = cfg.score
    model_dir = resolve_model_dir(root, sc.model)  # the store's lookups: the driver never imports torch
    meta = model_meta(root, model_dir)  # the actors load the weights, the driver only reads the id and input size
    model_id, image_size = meta["model_id"], int(meta["image_size"])

    if images is not None:
        candidates = ingest_images(root, images)
        source = images
    else:
        candidates = candidate_images(root)
        source = "posts/staff"
    done = scored_images(root, model_id)
    todo = [s for s in candidates if s not in done]
    day = dt.datetime.now(dt.UTC).date()
    partition = root.scores_partition(day)
    run_id = f"score-{dt.datetime.now(dt.UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}"
    summary: dict[str, Any] = {
        "model_id": model_id,
        "model_dir": model_dir,
        "run_id": run_id,
        "source": source,
        "candidates": len(candidates),
        "already_scored": len(candidates) - len(todo),
        "to_score": len(todo),
        "partition": partition,
    }
    log.info(
        "score: model %s, %d candidates, %d already scored, %d to score",
        model_id,
        len(candidates),
        len(candidates) - len(todo),
        len(todo),
    )
    counts = {STATUS_OK: 0, STATUS_SKIPPED: 0, STATUS_ERROR: 0}
    parts: list[str] = []
    reused = detected = 0
    if todo:
        have_faces = face_rows_present(root)
        reuse = [s for s in todo if s in have_faces]
        fresh = [s for s in todo if s not in have_faces]
        reused, detected = len(reuse), len(fresh)
        pieces = []
        if reuse:  # no filter when every face row is wanted (a first run): the scan reads each row once anyway
            wanted = None if len(reuse) == len(have_faces) else reuse
            pieces.append(reused_faces(root, wanted, sc.read_num_cpus, sc.read_unit_mb, sc.read_concurrency))
        if fresh:
            pieces.append(detected_faces(cfg, root, fresh, sc.read_num_cpus))
        if sc.decode_in_read:  # decoded in the read (or detection) tasks, overlapping with the model in the actors
            pieces = [
                p.map_batches(
                    _conform_and_prepare,
                    fn_kwargs={"image_size": image_size},
                    batch_format="pyarrow",
                    num_cpus=sc.read_num_cpus,
                )
                for p in pieces
            ]
        faces_ds = pieces[0] if len(pieces) == 1 else pieces[0].union(*pieces[1:])
        device = pick_device(sc.device, sc.num_gpus_per_actor)
        scored = faces_ds.map_batches(
            _Scorer,
            fn_constructor_kwargs={
                "model_dir": model_dir,
                "data_root": root.uri,
                "run_id": run_id,
                "device": device,
                "threads": sc.actor_threads,
                "optimize": sc.optimize,
                "precision": sc.precision,
                "calls": sc.calls_per_actor,
            },
            batch_format="numpy" if sc.decode_in_read else "pyarrow",
            batch_size=sc.batch_size,
            compute=ray.data.ActorPoolStrategy(
                size=sc.num_actors,
                max_concurrent_calls_per_actor=sc.calls_per_actor,
                enable_true_multi_threading=sc.calls_per_actor > 1,
            ),
            num_cpus=sc.num_cpus_per_actor,
            num_gpus=sc.num_gpus_per_actor or None,
        )
        bound_memory(scored, sc.block_mb, sc.object_store_mb)
        written: set[str] = set()
        for batch in scored.iter_batches(batch_size=sc.part_rows, batch_format="pyarrow"):
            shas = batch["image_sha256"].to_pylist()
            keep = []  # each image once per run, even when the faces table holds two rows for it
            for i, sha in enumerate(shas):
                if sha not in written and sha not in done:
                    written.add(sha)
                    keep.append(i)
            if not keep:
                continue
            table = batch.take(pa.array(keep, pa.int64())) if len(keep) < len(shas) else batch
            path = root.write_part(partition, table)
            if path:
                parts.append(path)
            for status, n in zip(
                *np.unique(table["status"].to_numpy(zero_copy_only=False), return_counts=True), strict=True
            ):
                counts[str(status)] = counts.get(str(status), 0) + int(n)
    seconds = time.monotonic() - t0
    scored_n = sum(counts.values())
    summary.update(
        reused_faces=reused,
        detected_faces=detected,
        scored=scored_n,
        ok=counts[STATUS_OK],
        no_face=counts[STATUS_SKIPPED],
        errors=counts[STATUS_ERROR],
        parts=len(parts),
        seconds=round(seconds, 2),
        images_per_s=round(scored_n / seconds, 2) if seconds > 0 else None,
    )
    log.info("score: %s", summary)
    return summary
