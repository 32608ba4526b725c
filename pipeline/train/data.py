"""Training data: the label set (validated before training), Ray Data datasets of crops, and image transforms.

* :func:`load_labels` reads ``labels/<task>`` (``ok`` rows; no image bytes) and checks it: at least two classes,
  no empty split, no NaN targets, a crop in ``faces`` for every labelled image. Problems raise
  :class:`TrainInputError` with one readable line, before any training starts.
* :func:`make_datasets` builds one shard per split and worker: the ``faces`` Parquet files read by Ray Data
  (only ``image_sha256``, ``kept`` and ``crop_jpeg``), inner-joined batch by batch with the small label table;
  a small faces table is read and joined in the driver and its shards put in Ray's object store as Arrow tables.
  :func:`read_shard` reads a shard of either kind in a worker.
* :func:`decode_batch` turns JPEG bytes into a normalised float tensor in the worker: resize, and for training
  random crop, horizontal flip and colour jitter (brightness, contrast, saturation).

Example::

    labels = load_labels(root, cfg.train)
    datasets = make_datasets(root, labels, world_size=2)   # train_0, train_1, val_0, val_1, test_0, test_1
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.config import TrainConfig
from pipeline.store import FACES_DS, LABELS_DS, STATUS_OK, DataRoot, InputError

if TYPE_CHECKING:
    pass  # imported where a tensor is made: the ingest's Ray Data tasks unpickle this module without it

SPLITS = ("train", "val", "test")
LABEL_COLUMNS = ["item_id", "site", "person_id", "image_sha256", "label", "class_name", "target", "split", "weight",
                 "group"]  # fmt: skip


class TrainInputError(InputError):
    """The label set or the cluster cannot be trained on; ``str(err)`` says why in one line."""


@dataclass
class LabelSet:
    """A validated label set: the rows (no image bytes), the task kind and what the head needs."""

    task: str
    table: pa.Table  # LABEL_COLUMNS plus ``y`` (int class index or float target, standardised for regression)
    kind: str  # binary | multiclass | regression
    class_names: list[str] = field(default_factory=list)
    target_mean: float = 0.0
    target_std: float = 1.0
    class_weights: list[float] | None = None
    recipe: str | None = None  # how the crops were made (faces.recipe, canonical JSON); None: rows predate it

    @property
    def num_outputs(self) -> int:
        return 1 if self.kind == "regression" else len(self.class_names)

    def split(self, name: str) -> pa.Table:
        return self.table.filter(pc.equal(self.table["split"], name))

    def counts(self) -> dict[str, int]:
        return {s: self.split(s).num_rows for s in SPLITS}


def label_folds(root: DataRoot, task: str) -> list[int]:
    """The fold indices ``labels/<task>`` carries on its ``ok`` rows (sorted); raises when it carries none."""
    dataset = root.labels_dataset(task)
    root.require(dataset)
    t = root.read(dataset, columns=["status", "fold"])
    folds = pc.unique(t.filter(pc.equal(t["status"], STATUS_OK))["fold"]).to_pylist()
    found = sorted(f for f in folds if f is not None)
    if len(found) < 2:
        raise TrainInputError(
            f"{dataset}: train.kfold needs a fold column with at least two folds (found {found}); set "
            "labels.split.k_folds (or labels.beauty.protocol: cv5) and rerun the labels stage"
        )
    if None in folds:
        raise TrainInputError(f"{dataset}: some ok rows have no fold; rerun the labels stage")
    return found


def fold_splits(t: pa.Table, fold: int, val_fraction: float, seed: int) -> pa.Table:
    """Re-split a label table for one k-fold run: ``test`` is fold ``fold``; of the other folds, persons whose
    stable hash of ``(f"kfold-val/{seed}", person_id)`` falls below ``val_fraction`` are ``val``, the rest
    ``train``. The rule depends only on the person id, so a person is in the same role in every fold where it
    is not the test fold, and never on two sides within one fold."""
    from pipeline.labels.splits import unit_interval

    u = unit_interval(t["person_id"], f"kfold-val/{seed}")
    is_test = np.asarray(pc.fill_null(pc.equal(t["fold"], fold), False))
    split = np.where(is_test, "test", np.where(u < val_fraction, "val", "train"))
    return t.set_column(t.schema.get_field_index("split"), "split", pa.array(split, pa.string()))


def val_from_train(t: pa.Table, share: float, seed: int) -> pa.Table:
    """A val split for a label set shipped without one: train persons whose stable hash of
    ``(f"val-from-train/{seed}", person_id)`` falls below ``share`` become ``val`` (test stays as shipped)."""
    from pipeline.labels.splits import unit_interval

    u = unit_interval(t["person_id"], f"val-from-train/{seed}")
    is_train = np.asarray(pc.fill_null(pc.equal(t["split"], "train"), False))
    split = np.where(is_train & (u < share), "val", np.asarray(t["split"].to_pylist(), dtype=object))
    return t.set_column(t.schema.get_field_index("split"), "split", pa.array(split.tolist(), pa.string()))


def load_labels(root: DataRoot, cfg: TrainConfig, fold: int | None = None) -> LabelSet:
    """Read and validate ``labels/<task>``; raises :class:`TrainInputError` on anything training cannot use.

    ``fold``: the label set of one k-fold run (see :func:`fold_splits`) instead of the labels' own split."""
    dataset = root.labels_dataset(cfg.task)
    root.require(dataset)
    t = root.read(dataset, columns=LABEL_COLUMNS + ["status", "fold"])
    t = t.filter(pc.equal(t["status"], STATUS_OK))
    if fold is not None:
        t = fold_splits(t, fold, cfg.kfold_val, cfg.seed)
    t = t.select(LABEL_COLUMNS)
    if t.num_rows == 0:
        raise TrainInputError(f"{dataset}: no rows with status 'ok'")
    if cfg.val_from_train and fold is None and not pc.any(pc.equal(t["split"], "val")).as_py():
        t = val_from_train(t, cfg.val_from_train, cfg.seed)
    where = f"{dataset} ({t.num_rows} ok rows{'' if fold is None else f', fold {fold}'})"
    for s in SPLITS:
        if pc.sum(pc.equal(t["split"], s)).as_py() in (None, 0):
            raise TrainInputError(f"{where}: the {s!r} split is empty")
    unknown = set(t["split"].to_pylist()) - set(SPLITS)
    if unknown:
        raise TrainInputError(f"{where}: unknown split values {sorted(map(str, unknown))}")

    classify = t["label"].null_count < t.num_rows
    labels, y = _classes(t, cfg, where) if classify else _targets(t, cfg, where)
    labels.table = t.append_column("y", y)
    check_crops(root, labels, drop_missing=cfg.allow_missing_crops)
    return labels


def _classes(t: pa.Table, cfg: TrainConfig, where: str) -> tuple[LabelSet, pa.Array]:
    """A classification label set (binary or multiclass) and its ``y`` (class index); checks the classes."""
    if t["label"].null_count:
        raise TrainInputError(f"{where}: {t['label'].null_count} rows have no label (class index)")
    pairs = sorted(set(zip(t["label"].to_pylist(), t["class_name"].to_pylist(), strict=True)))
    names = dict(pairs)
    if len(names) != len(pairs):
        raise TrainInputError(f"{where}: a class index has several class names: {pairs}")
    train_classes = set(t.filter(pc.equal(t["split"], "train"))["label"].to_pylist())
    if len(names) < 2 or len(train_classes) < 2:
        raise TrainInputError(
            f"{where}: only one class ({names[min(names)]!r}) in the "
            f"{'train split' if len(names) >= 2 else 'label set'}; a classifier needs at least two"
        )
    n = max(names) + 1
    if sorted(names) != list(range(n)):
        raise TrainInputError(f"{where}: class indices must be 0..n-1, got {sorted(names)}")
    class_names = [str(names[i]) if names[i] is not None else str(i) for i in range(n)]
    y = t["label"].cast(pa.int64())
    weights = None
    if cfg.class_weights:
        counts = np.bincount(np.asarray(t.filter(pc.equal(t["split"], "train"))["label"]), minlength=n)
        weights = [float(sum(counts) / (n * c)) if c else 0.0 for c in counts]
    labels = LabelSet(cfg.task, t, "binary" if n == 2 else "multiclass", class_names, class_weights=weights)
    return labels, y


def _targets(t: pa.Table, cfg: TrainConfig, where: str) -> tuple[LabelSet, pa.Array]:
    """A regression label set and its ``y`` (the target standardised by the train split's mean and std)."""
    target = np.asarray(t["target"].to_numpy(zero_copy_only=False), dtype=np.float64)
    bad = int(np.sum(~np.isfinite(target)))
    if bad:
        raise TrainInputError(f"{where}: {bad} rows have a NaN or missing regression target")
    train_target = target[np.asarray(pc.equal(t["split"], "train"))]
    mean, std = float(train_target.mean()), float(train_target.std())
    if not std > 0:
        raise TrainInputError(f"{where}: every training target is the same ({mean}); nothing to learn")
    y = pa.array((target - mean) / std, pa.float32())
    return LabelSet(cfg.task, t, "regression", target_mean=mean, target_std=std), y


def check_crops(root: DataRoot, labels: LabelSet, drop_missing: bool = False) -> None:
    """Every labelled image must have a kept face crop in ``faces`` (only keys are read, never bytes), and all of
    them made by one recipe (:mod:`pipeline.faces.recipe`), which ``labels.recipe`` then holds."""
    root.require(FACES_DS)
    f = root.read(FACES_DS, columns=["image_sha256", "kept", "recipe"])
    f = f.filter(pc.fill_null(f["kept"], False))
    have = pc.unique(f["image_sha256"])
    present = pc.is_in(labels.table["image_sha256"], value_set=have)
    missing = labels.table.num_rows - pc.sum(present).as_py()
    if not missing or drop_missing:
        used = f.filter(pc.is_in(f["image_sha256"], value_set=labels.table["image_sha256"]))
        labels.recipe = one_recipe(used, labels.task)
    if not missing:
        return
    if drop_missing:
        labels.table = labels.table.filter(present)
        for s in SPLITS:
            if labels.split(s).num_rows == 0:
                raise TrainInputError(
                    f"{LABELS_DS}/{labels.task}: the {s!r} split is empty once rows without a crop go"
                )
        return
    examples = labels.table.filter(pc.invert(present))["item_id"].to_pylist()[:3]
    raise TrainInputError(
        f"{LABELS_DS}/{labels.task}: {missing} labelled rows have no kept face crop in {FACES_DS!r} "
        f"(e.g. items {examples}); rerun the faces stage or set train.allow_missing_crops"
    )


def one_recipe(faces: pa.Table, task: str) -> str | None:
    """The one crop recipe of the kept face rows a label set trains on (``faces``: ``image_sha256``, ``recipe``);
    None when the rows predate recipes. Raises :class:`TrainInputError` when they were made in several ways: a
    model trained on a mix could not be scored the way it was trained."""
    from pipeline.faces.recipe import CropRecipe

    counts = faces.group_by("recipe").aggregate([("image_sha256", "count")]).to_pylist()
    if len(counts) <= 1:
        return counts[0]["recipe"] if counts else None
    counts.sort(key=lambda r: -r["image_sha256_count"])
    top, other = counts[0], counts[1]
    if top["recipe"] is None or other["recipe"] is None:
        what = "some were made before crops recorded how they were made"
    else:
        diff = CropRecipe.from_json(top["recipe"]).differences(CropRecipe.from_json(other["recipe"]))
        what = f"{diff}"
    raise TrainInputError(
        f"{LABELS_DS}/{task}: its face crops were made in {len(counts)} ways ({what}; "
        f"{', '.join(str(c['image_sha256_count']) for c in counts)} crops): a model must be trained on crops made "
        "one way, the way it will score; redo the faces (a fresh data root, or one import) with one faces config"
    )


class _JoinLabels:
    """A Ray Data batch UDF: keep the kept crops of labelled images and attach their targets and split."""

    def __init__(self, labels: pa.Table):
        self.labels = labels.select(["image_sha256", "y", "split"])

    def __call__(self, batch: pa.Table) -> pa.Table:
        batch = batch.filter(pc.fill_null(batch["kept"], False)).select(["image_sha256", "crop_jpeg"])
        joined = batch.join(self.labels, keys="image_sha256", join_type="inner")
        return joined.select(["image_sha256", "crop_jpeg", "y", "split"])


def make_datasets(
    root: DataRoot,
    labels: LabelSet,
    world_size: int = 1,
    num_cpus: float = 0.25,
    cache: bool = True,
    driver_mb: float = 0.0,
) -> dict:
    """Ray Data datasets with columns ``crop_jpeg`` (bytes) and ``y``, one materialized shard per worker and split:
    ``train_<rank>`` (equal row counts, as DDP needs the same number of steps on every worker: up to
    ``world_size - 1`` training rows are left out) and ``val_<rank>`` / ``test_<rank>`` (every row exactly once).
    The workers read their shards themselves, with no Ray Train dataset actors (:func:`pipeline.train.loop.fit`).

    One scan of the face rows serves every split: read, joined with the labels (which carry the split), kept in
    Ray's object store (``materialize``), then cut by split (three scans of the faces table before: 4.3-4.9 s
    against 1.7 s for 100 labelled crops on 2 cores; on big tables, a third of the reading). The union and its
    cuts are both in the object store until the cuts are made. ``cache`` false: one lazy ``train`` instead of
    its shards, streamed from Parquet each epoch and split by Ray Train (data larger than the object store); only
    val + test are scanned once and kept. Either way the crops never pass through the driver process, except
    where ``cache`` holds and the faces files add up to at most ``driver_mb`` MB (``train.driver_ingest_mb``): the
    driver then reads the three columns of the labelled rows with pyarrow, joins them, cuts the same shards and
    puts each in Ray's object store as one Arrow table (an ``ObjectRef`` instead of a ``Dataset``): the same rows
    without Ray Data, in the driver or in the workers (:func:`read_shard` reads either kind).
    """
    import ray.data
    from ray.data.expressions import col

    parts = root.part_infos(FACES_DS)
    if cache and driver_mb > 0 and sum(f.size or 0 for f in parts) <= driver_mb * 2**20:
        return _read_in_driver(root, labels.table, world_size)
    files = [f.path for f in parts]

    def scan(wanted: pa.Table) -> ray.data.Dataset:
        ds = ray.data.read_parquet(files, filesystem=root.fs, num_cpus=num_cpus, partitioning=None)
        ds = ds.select_columns(["image_sha256", "kept", "crop_jpeg"])
        return ds.map_batches(
            _JoinLabels(wanted), batch_format="pyarrow", batch_size=None, num_cpus=num_cpus, zero_copy_batch=True
        )

    def cut(union: ray.data.Dataset, names: tuple[str, ...]) -> dict:
        return {s: union.filter(expr=col("split") == s).drop_columns(["split"]).materialize() for s in names}

    if cache:
        return _shards(cut(scan(labels.table).materialize(), SPLITS), world_size)
    out = {"train": scan(labels.split("train")).drop_columns(["split"])}
    evaluation = labels.table.filter(pc.is_in(labels.table["split"], pa.array(["val", "test"])))
    return {**out, **_shards(cut(scan(evaluation).materialize(), ("val", "test")), world_size)}


def _shards(splits: dict, world_size: int) -> dict:
    """One shard per worker and split: equal for train (DDP steps in lockstep), every row exactly once for val and
    test."""
    return {
        f"{s}_{rank}": part
        for s, ds in splits.items()
        for rank, part in enumerate(ds.split(world_size, equal=s == "train"))
    }


def _read_in_driver(root: DataRoot, labels: pa.Table, world_size: int) -> dict:
    """:func:`make_datasets`'s small-table path: the labelled rows' kept crops read by pyarrow here, joined, cut
    into the shards :func:`_shards` makes (train equal, val and test every row once) and each put in Ray's object
    store as one Arrow table. No Ray Data: no block-metadata task here, no streaming executor (nor its stats actor)
    in the workers, which ``ray.get`` their shards zero-copy (:func:`read_shard`)."""
    import ray

    faces = root.read(
        FACES_DS,
        columns=["image_sha256", "kept", "crop_jpeg"],
        filter=pc.field("image_sha256").isin(labels["image_sha256"]),
    )
    joined = _JoinLabels(labels)(faces)
    out = {}
    for s in SPLITS:
        table = joined.filter(pc.equal(joined["split"], s)).drop_columns(["split"])
        n = table.num_rows
        if s == "train":  # equal shards: up to world_size - 1 rows left out
            bounds = [rank * (n // world_size) for rank in range(world_size + 1)]
        else:
            bounds = [rank * n // world_size for rank in range(world_size + 1)]
        for rank in range(world_size):
            part = table.slice(bounds[rank], bounds[rank + 1] - bounds[rank])  # zero-copy
            out[f"{s}_{rank}"] = ray.put(part)
    return out


def read_shard(shard) -> pa.Table:
    """One worker's shard as one Arrow table in this process: an ``ObjectRef`` of the driver's ingest by
    ``ray.get`` (zero-copy from the object store); a materialized ``Dataset`` (or Ray Train's iterator over one)
    as its blocks sit in the object store (zero-copy for Arrow blocks), read once instead of one Ray Data
    execution per epoch."""
    import ray

    if isinstance(shard, ray.ObjectRef):
        return ray.get(shard)
    blocks = list(shard.iter_batches(batch_size=None, batch_format="pyarrow", prefetch_batches=0))
    return pa.concat_tables(blocks) if blocks else pa.table({"crop_jpeg": pa.array([], pa.binary()), "y": []})
