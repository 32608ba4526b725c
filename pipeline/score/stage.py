"""The score stage: Ray Data batch inference of a trained model over the images it has not scored yet.

:func:`run` is four named steps::

    plan       candidate images (posts/staff rows with status ok, or a folder/URI of new images stored by sha256)
               - images this model id already scored (any scores/dt=* partition)         → :class:`Plan`
    build      the face rows of the images to score (the face stage's rows where they exist, else fresh
               detection) → crops → scoring actors (:mod:`pipeline.score.inference`)    → one streaming Dataset
    write      ``scores/dt=<today>/part-*.parquet`` written atomically every ``score.part_rows`` rows
    summarise  counts, throughput                                                        → the summary dict

Streaming: the driver holds only keys (candidate, scored and face-row sha256 sets) and one part of score rows;
crops flow in Ray Data blocks of about ``score.block_mb`` with at most ``score.object_store_mb`` buffered between
operators (:func:`~pipeline.score.inference.bound_memory`), so peak memory does not grow with the number of images.
The driver never imports torch: it reads the model's id and input size from ``model.json`` (the store).

Incremental and idempotent: the key is (image_sha256, model_id). A run killed halfway leaves only whole part files,
so the rerun scores exactly the images that are still missing; within a run each image is written once.

Example::

    from pipeline.config import load_config
    from pipeline import score
    summary = score.run(load_config("configs/demo.yaml"))
    summary["scored"], summary["partition"]
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from pipeline.config import Config
from pipeline.faces.recipe import CropRecipe
from pipeline.model.meta import model_meta, model_recipe, resolve_model_dir
from pipeline.placement import remote_args, require_node
from pipeline.progress import Progress
from pipeline.runtime import ACTOR_ARGS_NOTE, log, stage_entry
from pipeline.score import inference
from pipeline.store import (
    FACES_DS,
    POSTS_DS,
    SCORES_DS,
    STAFF_DS,
    STATUS_ERROR,
    STATUS_OK,
    STATUS_SKIPPED,
    DataRoot,
)

IMAGE_EXTENSIONS = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"]


# ------------------------------------------------------------------------------------------------ plan
def candidate_images(root: DataRoot) -> list[str]:
    """Distinct image sha256s referenced by ``posts`` and ``staff`` rows with status ok (sorted)."""
    found: set[str] = set()
    present = [d for d in (POSTS_DS, STAFF_DS) if root.has(d)]
    if not present:
        root.require(POSTS_DS)  # names the missing input and the stage that writes it
    for name in present:
        t = root.read(name, columns=["image_sha256", "status"])
        mask = pc.and_(pc.equal(t["status"], "ok"), pc.is_valid(t["image_sha256"]))
        found.update(v for v in t.filter(mask)["image_sha256"].to_pylist() if v)
    return sorted(found)


def _local_or_uri(location: str):
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
    if not root.has(SCORES_DS):
        return set()
    t = root.read(SCORES_DS, columns=["image_sha256"], filter=pc.field("model_id") == model_id)
    return set(t["image_sha256"].to_pylist())


def face_rows_present(root: DataRoot, recipe: CropRecipe, unrecorded: bool = False) -> tuple[set[str], int]:
    """Image sha256s whose ``faces`` row was made by ``recipe`` (with ``unrecorded``: also rows that predate
    recipes), and the number of face rows in all (only the key and recipe columns are read, never crops)."""
    if not root.has(FACES_DS):
        return set(), 0
    t = root.read(FACES_DS, columns=["image_sha256", "recipe"])
    same = pc.equal(t["recipe"], recipe.to_json())
    if unrecorded:
        same = pc.or_kleene(same, pc.is_null(t["recipe"]))
    return set(t.filter(pc.fill_null(same, False))["image_sha256"].to_pylist()), t.num_rows


@dataclass
class Plan:
    """What one run scores, with which model, and where it writes (no torch: read from ``model.json``)."""

    model_id: str
    model_dir: str
    image_size: int
    recipe: CropRecipe  # how the model's input crops are made (its model.json's inputs.crop)
    run_id: str
    source: str  # the --images folder, or "posts/staff"
    candidates: list[str]
    done: set[str]  # images this model already scored
    todo: list[str]
    partition: str


def plan(cfg: Config, root: DataRoot, images: str | None = None) -> Plan:
    """The model (the store's lookups: the driver never imports torch), the candidates and what is left to score."""
    model_dir = resolve_model_dir(root, cfg.score.model)
    meta = model_meta(root, model_dir)  # the actors load the weights, the driver only reads the id and input size
    recipe = model_recipe(meta.model_id, meta.inputs, cfg.faces, cfg.score.unrecorded_inputs)
    candidates = ingest_images(root, images) if images is not None else candidate_images(root)
    done = scored_images(root, meta.model_id)
    stamp = dt.datetime.now(dt.UTC)
    return Plan(
        model_id=meta.model_id,
        model_dir=model_dir,
        image_size=meta.image_size,
        recipe=recipe,
        run_id=f"score-{stamp:%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:6]}",
        source=images if images is not None else f"{POSTS_DS}/{STAFF_DS}",
        candidates=candidates,
        done=done,
        todo=[s for s in candidates if s not in done],
        partition=root.scores_partition(stamp.date()),
    )


# ------------------------------------------------------------------------------------------------ build
@dataclass
class Built:
    """The streaming dataset of score rows, and how many images' face rows were reused or detected afresh."""

    scored: ray.data.Dataset | None = None
    reused: int = 0
    detected: int = 0


def face_pieces(
    cfg: Config, root: DataRoot, todo: list[str], recipe: CropRecipe
) -> tuple[list[ray.data.Dataset], int, int]:
    """The face rows of ``todo`` made by ``recipe``: the ``faces`` rows where they were made that way, made afresh
    for the others (images the faces stage has not seen, or cropped another way); returns the pieces and the two
    counts."""
    sc = cfg.score
    have_faces, n_rows = face_rows_present(root, recipe, unrecorded=sc.unrecorded_inputs == "faces_config")
    reuse = [s for s in todo if s in have_faces]
    fresh = [s for s in todo if s not in have_faces]
    pieces = []
    if reuse:  # no filter when every face row is wanted (a first run): the scan reads each row once anyway
        wanted = None if len(reuse) == n_rows else reuse
        pieces.append(
            inference.reused_faces(
                root, wanted, sc.read_num_cpus, sc.read_unit_mb, sc.read_concurrency, sc.read_footer_actors
            )
        )
    if fresh:
        pieces.append(inference.detected_faces(cfg, root, fresh, recipe, sc.read_num_cpus))
    return pieces, len(reuse), len(fresh)


def _decoded_in_read(pieces: list[ray.data.Dataset], image_size: int, num_cpus: float) -> list[ray.data.Dataset]:
    """Each piece's crops decoded in its own read (or detection) tasks, overlapping with the model in the actors."""
    return [
        p.map_batches(
            inference.conform_and_prepare,
            fn_kwargs={"image_size": image_size},
            batch_format="pyarrow",
            num_cpus=num_cpus,
        )
        for p in pieces
    ]


def _scorer_kwargs(cfg: Config, root: DataRoot, p: Plan) -> dict:
    sc = cfg.score
    return {
        "model_dir": p.model_dir,
        "data_root": root.uri,
        "run_id": p.run_id,
        "device": inference.pick_device(sc.device, sc.num_gpus_per_actor),
        "threads": sc.actor_threads,
        "optimize": sc.optimize,
        "precision": sc.precision,
        "calls": sc.calls_per_actor,
    }


def build(cfg: Config, root: DataRoot, p: Plan) -> Built:
    """The face rows of ``p.todo`` → crops → the scoring actor pool: one streaming dataset of score rows."""
    sc = cfg.score
    require_node("score", cfg.ray.placement.score)  # bounded: Ray Data would wait for such a node without end
    pieces, reused, detected = face_pieces(cfg, root, p.todo, p.recipe)
    if sc.decode_in_read:
        pieces = _decoded_in_read(pieces, p.image_size, sc.read_num_cpus)
    faces_ds = pieces[0] if len(pieces) == 1 else pieces[0].union(*pieces[1:])
    scored = faces_ds.map_batches(
        inference.Scorer,
        fn_constructor_kwargs=_scorer_kwargs(cfg, root, p),
        batch_format="numpy" if sc.decode_in_read else "pyarrow",
        batch_size=sc.batch_size,
        compute=ray.data.ActorPoolStrategy(
            size=sc.num_actors,
            max_concurrent_calls_per_actor=sc.calls_per_actor,
            enable_true_multi_threading=sc.calls_per_actor > 1,
        ),
        num_cpus=sc.num_cpus_per_actor,
        num_gpus=sc.num_gpus_per_actor or None,
        **remote_args(cfg.ray.placement.score),  # ray.placement.score: which nodes the scoring actors run on
    )
    inference.bound_memory(scored, sc.block_mb, sc.object_store_mb)
    log.info(ACTOR_ARGS_NOTE, "score")
    return Built(scored, reused, detected)


# ------------------------------------------------------------------------------------------------ write
@dataclass
class Written:
    """The part files one run wrote and its rows by status."""

    parts: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: {STATUS_OK: 0, STATUS_SKIPPED: 0, STATUS_ERROR: 0})

    def add(self, path: str | None, table: pa.Table) -> None:
        if path:
            self.parts.append(path)
        statuses, counts = np.unique(table["status"].to_numpy(zero_copy_only=False), return_counts=True)
        for status, n in zip(statuses, counts, strict=True):
            self.counts[str(status)] = self.counts.get(str(status), 0) + int(n)


def _first_time(batch: pa.Table, seen: set[str], done: set[str]) -> pa.Table | None:
    """The rows of images not yet written (each image once per run, even when the faces table holds two rows for
    it); None when there are none. Marks them as seen."""
    shas = batch["image_sha256"].to_pylist()
    keep = []
    for i, sha in enumerate(shas):
        if sha not in seen and sha not in done:
            seen.add(sha)
            keep.append(i)
    if not keep:
        return None
    return batch.take(pa.array(keep, pa.int64())) if len(keep) < len(shas) else batch


def write(root: DataRoot, p: Plan, scored: ray.data.Dataset, part_rows: int, every_s: float = 10.0) -> Written:
    """Stream the score rows into atomic part files of ``part_rows`` rows under ``p.partition``; a progress line
    (done / total, rate, ETA) every ``every_s`` seconds."""
    out, seen = Written(), set()
    progress = Progress("score", len(p.todo), "images", every_s)
    for batch in scored.iter_batches(batch_size=part_rows, batch_format="pyarrow"):
        table = _first_time(batch, seen, p.done)
        if table is not None:
            out.add(root.write_part(p.partition, table), table)
            progress.add(table.num_rows)
    progress.done()
    return out


# ------------------------------------------------------------------------------------------------ summarise
def summarise(p: Plan, built: Built, written: Written, seconds: float) -> dict:
    """The run's summary: what was planned, reused, written, and how fast."""
    scored_n = sum(written.counts.values())
    return {
        "model_id": p.model_id,
        "model_dir": p.model_dir,
        "run_id": p.run_id,
        "source": p.source,
        "candidates": len(p.candidates),
        "already_scored": len(p.candidates) - len(p.todo),
        "to_score": len(p.todo),
        "partition": p.partition,
        "reused_faces": built.reused,
        "detected_faces": built.detected,
        "scored": scored_n,
        "ok": written.counts[STATUS_OK],
        "no_face": written.counts[STATUS_SKIPPED],
        "errors": written.counts[STATUS_ERROR],
        "parts": len(written.parts),
        "seconds": round(seconds, 2),
        "images_per_s": round(scored_n / seconds, 2) if seconds > 0 else None,
    }


# ------------------------------------------------------------------------------------------------ the stage
@stage_entry("score")  # its lock, its log lines, Ray: pipeline/runtime.py
def run(cfg: Config, *, images: str | None = None) -> dict:
    """Score every candidate image that the configured model has not scored yet; returns a summary.

    ``images``: a folder or URI of new images; they are stored in the data root by sha256 and become the
    candidates (instead of the images referenced by ``posts``/``staff``).
    """
    t0 = time.monotonic()
    root = DataRoot(cfg.data_root)
    p = plan(cfg, root, images)
    n, left = len(p.candidates), len(p.todo)
    log.info("score: model %s, %d candidates, %d already scored, %d to score; inputs: %s", p.model_id, n, n - left,
             left, p.recipe.describe())  # fmt: skip
    built, written = Built(), Written()
    if p.todo:
        built = build(cfg, root, p)
        written = write(root, p, built.scored, cfg.score.part_rows, cfg.score.progress_every_s)
    summary = summarise(p, built, written, time.monotonic() - t0)
    log.info("score: %s", summary)
    return summary
