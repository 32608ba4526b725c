"""The distributed training loop: a Ray Train ``TorchTrainer`` over Ray Data shards, checkpointed every epoch.

``fit(cfg, root, labels, run_id)`` starts ``num_workers`` Train workers (``ScalingConfig`` from the config; an
unset layout is filled in for the cluster by :func:`with_layout` first, ``torch.set_num_threads`` follows the
worker's CPUs rounded up). Each worker reads its shard of ``train``: its own materialized ``train_<rank>``, read
into the worker once as an Arrow table (zero-copy from the object store) and shuffled in full every epoch, or Ray
Train's split of a streamed ``train`` (Ray Data's iterator, a local shuffle buffer). It decodes and augments the
JPEG crops itself in the training thread (measured faster on 2 cores than a DataLoader worker process beside the
two torch threads: docs/benchmarks.md, train section), and trains with DDP:
``train_loop_per_worker`` builds and runs one :class:`TrainWorker` (restore, then per epoch set_phase,
train_epoch, validate, report). Fine-tuning has two phases: for ``freeze_epochs`` only the head
learns (backbone frozen, its batch norms in eval mode, learning rate ``lr``), then the whole network: with
``backbone_lr_scale`` in two parameter groups (head at ``lr``, backbone at ``lr x backbone_lr_scale``), without it
at ``finetune_lr`` (with ``freeze_epochs == 0`` at ``lr`` from the start). Options: ``label_smoothing`` (the
cross-entropy's) and ``mixup`` (Beta(a, a) mixes of a batch's rows, and of their losses).
:meth:`TrainWorker.local` builds a worker without Ray Train (tests drive its phases and checkpoints directly).
Mixed precision (:func:`amp_dtype`): ``train.mixed_precision`` ``auto`` autocasts the forward passes to bfloat16
on a CUDA GPU that computes it, and trains in fp32 on CPUs (bf16 on a CPU, even one with AMX-BF16, cost accuracy
on real faces: docs/benchmarks.md, "Learning on real faces"); ``bf16`` anywhere (opt-in on a CPU), ``fp16`` on a
GPU only (with a grad scaler), ``no`` fp32. Weights and optimiser stay fp32; each history record names the
precision its epoch ran in. On a GPU also channels_last and pinned host memory.

After each epoch that trains the backbone, its batch-norm statistics are recomputed with the epoch's final
weights over up to ``precise_bn`` of the epoch's crops per worker ("precise BN", ``torch.optim.swa_utils.update_bn``,
averaged over the workers): on a small data set a few steps leave running averages that miscalibrate the eval-mode
model. The best epoch is the one with the best validation metric, ties broken by the lower validation loss.

Validation and test sets come as one materialized shard per worker (``val_<rank>``, every row exactly once), the
outputs are all-gathered, so each worker computes the same metrics and keeps the same best weights.

Every epoch rank 0 reports a checkpoint (``state.pt``: weights, optimiser, epoch, phase, history;
``best_model.pt``: the best weights so far by validation metric) with ``ray.train.report``. The last epoch's
checkpoint also holds ``test.json`` (the best model's test-set outputs and the history, what the export reads).
Checkpoints live under ``models/<run_id>/checkpoints/`` on the data root's own filesystem
(``RunConfig(storage_filesystem=root.fs)``), so a local root keeps them in a local folder and an ``s3://`` root puts
them in the bucket. On a local root rank 0 writes the checkpoint files straight into that folder (under a
hidden ``.<name>.part`` name, renamed when complete) and reports them with Ray's ``NO_UPLOAD`` mode; elsewhere it
writes a temporary folder that Ray Train uploads. A worker that dies is
restarted from the latest checkpoint (``FailureConfig(max_failures)``); running again with the same run id and
storage continues the run (Ray Train restores its checkpoint manager from storage). Checkpoints load with
``torch.load(weights_only=True)``. Each history record carries ``start_epoch``, the epoch its worker process
began at (0 for a fresh start, ``k`` after resuming from epoch ``k - 1``'s checkpoint).

Fault injection (tests only): with ``FACERANK_TRAIN_FAULT=<rank>:<epoch>:<marker file>`` in the driver's
environment, the worker of that rank exits hard (``os._exit(1)``) after its first training batch of that epoch,
once: it creates the marker file first and never exits while the file exists.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from contextlib import nullcontext

import numpy as np
import pyarrow as pa
import torch

from pipeline.config import Config, TrainConfig
from pipeline.model.backbones import backbone
from pipeline.model.meta import CHECKPOINT_TEST
from pipeline.model.network import build_model
from pipeline.model.pixels import decode_batch
from pipeline.placement import train_scaling
from pipeline.ray_env import scoped_env
from pipeline.store import DataRoot
from pipeline.train.data import LabelSet, TrainInputError, make_datasets, read_shard
from pipeline.train.metrics import evaluate, selection_score

log = logging.getLogger("facerank.train")

CHECKPOINTS = "checkpoints"
FAULT_ENV = "FACERANK_TRAIN_FAULT"


def _fault_spec() -> dict | None:
    """The test-only fault ``{"rank", "epoch", "marker"}`` from :data:`FAULT_ENV`, or None."""
    spec = os.environ.get(FAULT_ENV)
    if not spec:
        return None
    rank, epoch, marker = spec.split(":", 2)
    return {"rank": int(rank), "epoch": int(epoch), "marker": marker}


def _maybe_fault(fault: dict | None, rank: int, epoch: int) -> None:
    if fault and fault["rank"] == rank and fault["epoch"] == epoch and not os.path.exists(fault["marker"]):
        with open(fault["marker"], "w") as f:
            f.write(f"rank {rank} exited at epoch {epoch}\n")
        log.warning("fault injection: rank %d exits at epoch %d", rank, epoch)
        os._exit(1)


def with_layout(cfg: Config) -> Config:
    """``cfg`` with the train layout (``num_workers``, ``cpus_per_worker``) filled in for the connected cluster:
    :meth:`pipeline.config.TrainConfig.layout` given the biggest alive node's CPUs and the cluster's totals."""
    import ray

    tc = cfg.train
    if tc.num_workers is not None and tc.cpus_per_worker is not None:
        return cfg
    res = ray.cluster_resources()
    nodes = [float(n["Resources"].get("CPU", 0)) for n in ray.nodes() if n.get("Alive")]
    cpus = float(res.get("CPU", 0))
    tc = tc.layout(max(nodes, default=cpus), cpus, float(res.get("GPU", 0)))
    log.info("train: layout %d worker(s) x %g CPU (%d torch threads)", tc.num_workers, tc.cpus_per_worker,
             tc.torch_threads)  # fmt: skip
    return cfg.model_copy(update={"train": tc})


def check_cluster(cfg: TrainConfig) -> None:
    """Refuse a config asking for more workers than the cluster can place (leaving room for Ray Data)."""
    import ray

    res = ray.cluster_resources()
    cpus, gpus = float(res.get("CPU", 0)), float(res.get("GPU", 0))
    need = cfg.num_workers * cfg.cpus_per_worker
    if need + cfg.data_cpus > cpus + 1e-9:
        raise TrainInputError(
            f"train: {cfg.num_workers} workers x {cfg.cpus_per_worker} CPU + {cfg.data_cpus} CPU for Ray Data "
            f"needs {need + cfg.data_cpus:g} CPUs but the cluster has {cpus:g}; lower train.num_workers or "
            "train.cpus_per_worker"
        )
    if cfg.use_gpu and cfg.num_workers > gpus:
        raise TrainInputError(f"train: {cfg.num_workers} GPU workers but the cluster has {gpus:g} GPUs")


# ------------------------------------------------------------------------------------------------ worker side
def _gather(obj):
    """All-gather a picklable object over the workers (a list with one entry per rank)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _shard(config: dict, name: str):
    """This worker's dataset ``name``: a materialized shard from the config's ``shards`` (read by the worker
    itself), or with ``shards`` None Ray Train's (``ray.train.get_dataset_shard``: the streamed ``train`` split)."""
    import ray.train

    shards = config.get("shards")
    return shards[name] if shards is not None else ray.train.get_dataset_shard(name)


def _table_batches(table: pa.Table, batch_size: int, order: np.ndarray | None = None):
    """Numpy batches (``crop_jpeg``: a list of bytes, ``y``, and ``image_sha256`` where the table has it) of
    ``table``'s rows in ``order`` (all, as stored)."""
    order = np.arange(table.num_rows) if order is None else order
    keys = "image_sha256" in table.column_names
    for i in range(0, len(order), batch_size):
        part = table.take(pa.array(order[i : i + batch_size]))
        batch = {"crop_jpeg": part["crop_jpeg"].to_pylist(), "y": part["y"].to_numpy()}
        if keys:
            batch["image_sha256"] = part["image_sha256"].to_pylist()
        yield batch


def _rank(record: dict | None) -> tuple[float, float]:
    """How epochs compare for "best": the validation metric, ties (a small split moves accuracy in coarse steps)
    broken by the lower validation loss."""
    if record is None:
        return (-float("inf"), -float("inf"))
    loss = record.get("val_loss")
    return (float(record["score"]), -float(loss) if loss is not None and np.isfinite(loss) else -float("inf"))


def _precise_bn(model, jpegs: list, tc: TrainConfig, device, world: int) -> int:
    """Recompute the batch-norm statistics of ``model`` over ``jpegs`` (un-augmented) with its current weights.

    Running averages mix the statistics of many earlier weights; after a few steps (small data sets, early epochs)
    they are far from what the final weights produce and the eval-mode model is miscalibrated. This is
    ``torch.optim.swa_utils.update_bn`` (a cumulative average over the crops), then the mean over the workers, so
    every rank evaluates with the same statistics. Returns the number of crops used.
    """
    import torch.distributed as dist
    from torch.optim.swa_utils import update_bn

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    mean, std = backbone(tc.backbone).normalisation
    batches = [
        decode_batch(jpegs[i : i + tc.batch_size], tc.image_size, mean, std)
        for i in range(0, len(jpegs), tc.batch_size)
    ]
    n = torch.tensor([float(len(jpegs))], device=device)
    if world > 1 and dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
    if n.item() == 0:
        return 0
    if batches:
        with torch.no_grad():
            update_bn([x.to(device) for x in batches], model, device=device)
    if world > 1 and dist.is_available() and dist.is_initialized():
        local = float(len(jpegs))
        for bn in bns:  # weighted by each worker's crop count
            for buf in (bn.running_mean, bn.running_var):
                buf.mul_(local / n.item())
                dist.all_reduce(buf)
    return int(n.item())


def _to_device(x: torch.Tensor, y: torch.Tensor, device):
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        y = y.pin_memory().to(device, non_blocking=True)
    return x, y


def _cpu_flags() -> set[str]:
    """This machine's CPU feature flags (Linux ``/proc/cpuinfo``; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 natively: a CUDA GPU that supports it, a CPU with AMX-BF16 or
    AVX512-BF16 (oneDNN's bf16 kernels; elsewhere bf16 is emulated, slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and bool(_cpu_flags() & {"amx_bf16", "avx512_bf16"})


def amp_dtype(setting: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``train.mixed_precision`` on ``device``, None for fp32: ``auto`` bf16 on a CUDA GPU
    where :func:`native_bf16`, fp32 on a CPU; ``bf16`` always; ``fp16`` on a GPU (on a CPU: fp32, with a warning)."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" and native_bf16(device) else None
    if setting == "bf16":
        return torch.bfloat16
    if setting == "fp16":
        if device.type == "cuda":
            return torch.float16
        log.warning("train.mixed_precision fp16 needs a GPU; training in fp32 on %s", device)
    return None


def _cpu_copy(model: torch.nn.Module) -> dict:
    """A detached CPU copy of the model's weights (what checkpoints and "best so far" hold)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


class TrainWorker:
    """One Ray Train worker's run: the model, its optimiser and phase, the history and the best weights so far.

    ``run()`` is the whole job: :meth:`restore` (at construction) from Ray Train's checkpoint, then per epoch
    :meth:`set_phase`, :meth:`train_epoch`, :meth:`validate` and :meth:`report` (the last epoch: :meth:`finish`,
    which tests the best weights first).
    """

    def __init__(self, config: dict):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        rank = ctx.get_world_rank()
        self._setup(
            config,
            rank,
            ctx.get_world_size(),
            ray.train.torch.get_device(),
            ray.train.get_checkpoint(),
            _shard(config, "train") if config.get("shards") is None else read_shard(_shard(config, f"train_{rank}")),
        )

    @classmethod
    def local(cls, config: dict, checkpoint_dir: str | None = None) -> TrainWorker:
        """A single-process worker on the CPU without Ray Train (no dataset shard: drive :meth:`set_phase`,
        :meth:`_step` and :meth:`save_checkpoint` directly); ``checkpoint_dir``: a folder ``save_checkpoint`` wrote."""
        w = cls.__new__(cls)
        w._setup(config, 0, 1, torch.device("cpu"), checkpoint_dir, None)
        return w

    def _setup(self, config: dict, rank: int, world: int, device, ckpt, train_it) -> None:
        self.config = config
        self.tc = tc = TrainConfig.model_validate(config["train"])
        self.kind = config["kind"]
        self.rank, self.world = rank, world
        torch.manual_seed(tc.seed)
        torch.set_num_threads(tc.torch_threads)
        self.device = device
        self.cuda = self.device.type == "cuda"
        self.mean, self.std = backbone(tc.backbone).normalisation
        self.restore(ckpt)
        self.amp_dtype = amp_dtype(tc.mixed_precision, self.device)
        self.precision = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.amp_dtype, "fp32")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.cuda and self.amp_dtype == torch.float16)
        self.loss_fn = self._loss_fn()
        self.phase: str | None = None
        self.opt = self.net = None
        self.fault = config.get("fault")
        self.rng = np.random.default_rng([tc.seed, self.rank, self.start])
        self.train_it = train_it
        self.eval_tables: dict[str, pa.Table] = {}
        self.last_state = _cpu_copy(self.model)

    # ---------------------------------------------------------------------------------------------- set-up
    def restore(self, ckpt) -> None:
        """Build the model; from a checkpoint also its weights, the best weights, the history and the next epoch.

        ``self.state`` keeps the checkpoint's ``state.pt`` until :meth:`set_phase` has restored its optimiser.
        ``ckpt``: a Ray Train checkpoint, a folder holding the two files, or None."""
        self.model = build_model(self.tc, self.config["num_outputs"], load_pretrained=ckpt is None).to(self.device)
        if self.cuda:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.state, self.best_state = None, None
        if ckpt is not None:
            with nullcontext(ckpt) if isinstance(ckpt, str) else ckpt.as_directory() as d:
                self.state = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
                self.best_state = torch.load(os.path.join(d, "best_model.pt"), map_location="cpu", weights_only=True)
            self.model.load_state_dict(self.state["model"])
        self.history: list[dict] = json.loads(self.state["history"]) if self.state else []
        self.start = int(self.state["epoch"]) + 1 if self.state else 0
        self.best = max(self.history, key=_rank) if self.history else None
        self.best_score = self.best["score"] if self.best else -float("inf")
        self.best_epoch = self.best["epoch"] if self.best else None

    def _loss_fn(self) -> torch.nn.Module:
        if self.kind == "regression":
            return torch.nn.MSELoss()
        weights = self.config["class_weights"]
        w = torch.tensor(weights, dtype=torch.float32, device=self.device) if weights else None
        return torch.nn.CrossEntropyLoss(weight=w, label_smoothing=self.tc.label_smoothing)

    def autocast(self):
        """Autocast to the worker's mixed-precision dtype (:func:`amp_dtype`); a no-op context in fp32."""
        return torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else nullcontext()

    def set_phase(self, epoch: int) -> None:
        """Enter the epoch's phase (``head`` before ``freeze_epochs``, then ``full``): on a change a new optimiser
        over the trainable parameters (the checkpoint's optimiser state when it was saved in this phase) and,
        with several workers, a new DDP wrapper."""
        tc = self.tc
        want = "head" if epoch < tc.freeze_epochs else "full"
        if want == self.phase:
            return
        self.phase = want
        head_only = want == "head"
        self.model.set_backbone_trainable(not head_only)
        self.opt = torch.optim.AdamW(self.param_groups(want), weight_decay=tc.weight_decay)
        self.net = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        if self.state is not None and self.state.get("phase") == want and self.state.get("optimizer"):
            self.opt.load_state_dict(self.state["optimizer"])
        self.state = None

    def param_groups(self, phase: str) -> list[dict]:
        """The optimiser's parameter groups of a phase: ``head`` the head at ``lr``; ``full`` with
        ``backbone_lr_scale`` the head at ``lr`` and the backbone at ``lr x backbone_lr_scale``, without it the
        whole network at ``finetune_lr`` (at ``lr`` when ``freeze_epochs`` is 0)."""
        tc = self.tc
        head = {"params": list(self.model.head.parameters()), "lr": tc.lr, "name": "head"}
        if phase == "head":
            return [head]
        backbone = {"params": list(self.model.backbone.parameters()), "name": "backbone"}
        if tc.backbone_lr_scale is not None:
            return [head, backbone | {"lr": tc.lr * tc.backbone_lr_scale}]
        lr = tc.lr if tc.freeze_epochs == 0 else tc.finetune_lr
        return [head | {"lr": lr}, backbone | {"lr": lr}]

    # ---------------------------------------------------------------------------------------------- one epoch
    def _batches(self):
        """This epoch's training batches: from a materialized shard (read into the worker once, zero-copy from the
        object store) a full shuffle of its rows with the worker's generator, sliced in-process; from Ray Train's
        split of a streamed set, Ray Data's iterator with a local shuffle buffer of ``shuffle_buffer`` rows."""
        tc = self.tc
        if isinstance(self.train_it, pa.Table):
            n = self.train_it.num_rows
            order = self.rng.permutation(n) if tc.shuffle_buffer else np.arange(n)
            return _table_batches(self.train_it, tc.batch_size, order)
        return self.train_it.iter_batches(
            batch_size=tc.batch_size,
            batch_format="numpy",
            local_shuffle_buffer_size=tc.shuffle_buffer or None,
            local_shuffle_seed=int(self.rng.integers(1 << 31)),
            prefetch_batches=2,
        )

    def _step(self, batch: dict) -> tuple[float, int]:
        """One optimiser step on an (augmented) batch; returns the loss summed over its rows and the row count."""
        tc = self.tc
        x = decode_batch(
            batch["crop_jpeg"],
            tc.image_size,
            self.mean,
            self.std,
            train=tc.augment,
            jitter=tc.jitter,
            generator=self.rng,
        )
        y = torch.as_tensor(batch["y"])
        x, y = _to_device(x, y, self.device)
        lam, perm = self._mixup(len(y))
        if perm is not None:
            x = lam * x + (1 - lam) * x[perm]
        with self.autocast():
            out = self.net(x)
            out = out.float().squeeze(1) if self.kind == "regression" else out.float()
            loss = self.loss_fn(out, y)
            if perm is not None:  # the loss of a mixed input: the same mix of the two rows' losses
                loss = lam * loss + (1 - lam) * self.loss_fn(out, y[perm])
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.opt)
        self.scaler.update()
        return float(loss.detach()) * len(y), len(y)

    def _mixup(self, n: int) -> tuple[float, torch.Tensor | None]:
        """``train.mixup`` > 0: a weight from Beta(a, a) and a permutation of the batch's rows; else (1, None)."""
        a = self.tc.mixup
        if a <= 0 or n < 2:
            return 1.0, None
        lam = float(self.rng.beta(a, a))
        return lam, torch.from_numpy(self.rng.permutation(n)).to(self.device)

    def lr_factor(self, t: float) -> float:
        """The learning-rate multiplier at ``t`` epochs into the run (``train.lr_schedule``): 1 for ``constant``;
        for ``cosine`` half a cosine from 1 at the start to 0 at the last epoch's end (per step)."""
        if self.tc.lr_schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(max(t / self.tc.epochs, 0.0), 1.0)))
        return 1.0

    def set_lr(self, t: float) -> None:
        """Each parameter group at its base learning rate (:meth:`param_groups`) times :meth:`lr_factor`."""
        f = self.lr_factor(t)
        for g in self.opt.param_groups:
            g["lr"] = g.setdefault("base_lr", g["lr"]) * f

    def train_epoch(self, epoch: int) -> dict:
        """Train one pass over this worker's shard, then precise BN (full phase); the loss gathered over ranks."""
        self.net.train()
        if self.phase == "head":
            self.model.backbone.eval()
        total, count, t0 = 0.0, 0, time.perf_counter()
        bn_crops: list = []  # the first precise_bn crops of this epoch (full phase only)
        want_bn = self.tc.precise_bn if self.phase == "full" else 0
        rows = self.train_it.num_rows if isinstance(self.train_it, pa.Table) else None
        steps = max(1, math.ceil(rows / self.tc.batch_size)) if rows else None
        for i, batch in enumerate(self._batches()):
            self.set_lr(epoch + (i / steps if steps else 0.0))
            if len(bn_crops) < want_bn:
                bn_crops.extend(batch["crop_jpeg"][: want_bn - len(bn_crops)])
            loss_sum, n = self._step(batch)
            total += loss_sum
            count += n
            _maybe_fault(self.fault, self.rank, epoch)
        train_s = time.perf_counter() - t0
        t_bn = time.perf_counter()
        with self.autocast():  # the statistics of the activations validation will see
            bn_n = _precise_bn(self.model, bn_crops, self.tc, self.device, self.world) if want_bn else 0
        bn_s = time.perf_counter() - t_bn
        parts = _gather((total, count))
        train_loss = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
        images = sum(p[1] for p in parts)
        return {"train_loss": train_loss, "images": images, "train_s": train_s, "bn_crops": bn_n, "bn_s": bn_s}

    def predict_split(self, name: str, exact: bool = False):
        """Evaluate this rank's shard (``<name>_<rank>``) of a split; gather all ranks' ``(y, outputs, loss,
        image_sha256s)``. ``exact``: in fp32 whatever ``mixed_precision`` says, as the exported model scores by
        default (the test pass: its outputs are the ones scoring the same crops gives)."""
        tc = self.tc
        ys, outs, keys, loss_sum = [], [], [], 0.0
        self.model.eval()
        table = self.eval_tables.get(name)
        if table is None:  # read once, kept for the following epochs
            table = self.eval_tables[name] = read_shard(_shard(self.config, f"{name}_{self.rank}"))
        with torch.no_grad():
            for batch in _table_batches(table, tc.batch_size):
                x = decode_batch(batch["crop_jpeg"], tc.image_size, self.mean, self.std)
                y = torch.as_tensor(batch["y"])
                x, y = _to_device(x, y, self.device)
                with nullcontext() if exact else self.autocast():
                    out = self.model(x)
                out = out.float()
                loss_sum += float(self.loss_fn(out.squeeze(1) if self.kind == "regression" else out, y)) * len(y)
                ys.append(batch["y"])
                outs.append(out.cpu().numpy())
                keys.extend(batch.get("image_sha256") or [None] * len(y))
        parts = _gather((ys, outs, loss_sum, keys))
        y_all = np.concatenate([a for p in parts for a in p[0]]) if any(p[0] for p in parts) else np.empty(0)
        o_all = np.concatenate([a for p in parts for a in p[1]]) if any(p[1] for p in parts) else np.empty((0, 1))
        loss = sum(p[2] for p in parts) / max(len(y_all), 1)
        return y_all, o_all, loss, [k for p in parts for k in p[3]]

    def validate(self, epoch: int, train: dict) -> dict:
        """Score the epoch's weights on ``val``, keep them as the best when they rank higher; the history record."""
        c = self.config
        t1 = time.perf_counter()
        y, out, val_loss, _ = self.predict_split("val")
        val = evaluate(self.kind, y, out, c["class_names"], c["target_mean"], c["target_std"])
        score = selection_score(self.kind, val)
        self.last_state = _cpu_copy(self.model)
        record = {
            "epoch": epoch,
            "phase": self.phase,
            "precision": self.precision,
            "train_loss": train["train_loss"],
            "lr": self.opt.param_groups[0]["lr"],
            "val_loss": val_loss,
            "score": score,
        }
        if self.best_state is None or _rank(record) > _rank(self.best):
            self.best, self.best_score, self.best_epoch, self.best_state = record, score, epoch, self.last_state
        record["start_epoch"] = self.start
        record.update(
            train_s=round(train["train_s"], 3),
            bn_crops=train["bn_crops"],
            bn_s=round(train["bn_s"], 3),
            val_s=round(time.perf_counter() - t1, 3),
            images=train["images"],
        )
        record["images_per_s"] = round(train["images"] / train["train_s"], 2) if train["train_s"] > 0 else None
        record["val"] = {k: v for k, v in val.items() if k in ("n", "accuracy", "roc_auc", "pearson", "mae", "rmse")}
        return record

    # ---------------------------------------------------------------------------------------------- reporting
    def report(self, epoch: int, record: dict | None, test: dict | None = None) -> None:
        """``ray.train.report`` the epoch's metrics; rank 0 with a checkpoint (``state.pt``, ``best_model.pt``, and
        ``test.json`` when ``test`` is given)."""
        import pyarrow.fs as pafs
        import ray.train
        from ray.train import Checkpoint, CheckpointUploadMode

        metrics = {"epoch": epoch, "best_epoch": self.best_epoch, "best_score": self.best_score}
        if record:
            metrics.update(train_loss=record["train_loss"], val_loss=record["val_loss"], val_score=record["score"])
        if self.rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        storage = ray.train.get_context().get_storage()
        if isinstance(storage.storage_filesystem, pafs.LocalFileSystem):
            # A local run folder: the files are written where Ray Train keeps them (its NO_UPLOAD mode), not into
            # a temporary folder that Ray then copies (ResNet-18's checkpoint is about 185 MB an epoch). Written
            # under a hidden name and renamed when complete, so a worker killed mid-write leaves no checkpoint_*.
            name = storage.make_default_checkpoint_dir_name()
            final = os.path.join(storage.experiment_fs_path, name)
            part = os.path.join(storage.experiment_fs_path, f".{name}.part")
            os.makedirs(part)
            self.save_checkpoint(part, epoch, test)
            os.rename(part, final)
            ray.train.report(
                metrics,
                checkpoint=Checkpoint(final, filesystem=storage.storage_filesystem),
                checkpoint_dir_name=name,
                checkpoint_upload_mode=CheckpointUploadMode.NO_UPLOAD,
            )
            return
        with tempfile.TemporaryDirectory() as d:  # a remote run folder (s3://): Ray Train uploads the folder
            self.save_checkpoint(d, epoch, test)
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(d))

    def save_checkpoint(self, d: str, epoch: int, test: dict | None = None) -> None:
        """Write the checkpoint files into folder ``d``: ``state.pt`` (last weights, optimiser, the phase it was
        saved in, epoch, history), ``best_model.pt`` and with ``test`` ``test.json``."""
        torch.save(
            {
                "model": self.last_state,
                "optimizer": self.opt.state_dict() if self.opt is not None else {},
                "phase": self.phase or "",
                "epoch": epoch,
                "history": json.dumps(self.history),
            },
            os.path.join(d, "state.pt"),
        )
        torch.save(self.best_state, os.path.join(d, "best_model.pt"))
        if test is not None:
            with open(os.path.join(d, CHECKPOINT_TEST), "w") as f:
                json.dump(test, f)

    def finish(self, epoch: int, record: dict | None) -> None:
        """Test the best weights in fp32 (as the exported model scores), then report the last checkpoint with the
        test outputs and the image of each."""
        self.model.load_state_dict(self.best_state)
        y, out, _, keys = self.predict_split("test", exact=True)
        self.model.load_state_dict(self.last_state)
        test = {"y": y.tolist(), "outputs": out.tolist(), "image_sha256": keys, "best_epoch": self.best_epoch,
                "history": self.history}  # fmt: skip
        self.report(epoch, record, test)

    def run(self) -> None:
        """Train the remaining epochs; a resumed run with nothing left to train tests and reports again."""
        last = self.tc.epochs - 1
        if self.start > last:
            self.finish(self.start - 1, self.history[-1] if self.history else None)
            return
        for epoch in range(self.start, self.tc.epochs):
            self.set_phase(epoch)
            record = self.validate(epoch, self.train_epoch(epoch))
            self.history.append(record)
            if epoch == last:
                self.finish(epoch, record)
            else:
                self.report(epoch, record)


def train_loop_per_worker(config: dict) -> None:
    """The per-worker training function (runs inside Ray Train): one :class:`TrainWorker`, run to the end."""
    TrainWorker(config).run()


# ------------------------------------------------------------------------------------------------ driver side
# How often Ray Train's controller polls its workers (Ray's RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, 2 s by default): it
# notices that the workers finished at its next poll, so half an interval is lost on average at the end of every
# run (the driver's wait from the workers' last report to fit's return: docs/benchmarks.md, train section).
POLL_S = 0.5
POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
# Ray Train's preemption watcher (an actor polling Ray for nodes being drained, to save a checkpoint before a spot
# node goes): on a one-node cluster the node it would watch is the one the driver runs on, so it is not started
# there (one process less to start before training).
WATCHER_ENV = "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER"


def controller_env(nodes: int) -> dict[str, str]:
    """The Ray Train settings ``fit`` gives its controller on a cluster of ``nodes`` alive nodes."""
    env = {POLL_ENV: str(POLL_S)}
    if nodes <= 1:
        env[WATCHER_ENV] = "0"
    return env


def storage(root: DataRoot, run_id: str) -> str:
    """The Ray Train storage path (on ``root.fs``) whose ``checkpoints/`` folder holds the run's checkpoints."""
    return root.model_dir(run_id)


def fit(cfg: Config, root: DataRoot, labels: LabelSet, run_id: str):
    """Run the TorchTrainer for ``run_id``; continues from the latest checkpoint stored for that run id."""
    import ray
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    tc = cfg.train
    t0 = time.perf_counter()
    datasets = make_datasets(
        root, labels, tc.num_workers, num_cpus=tc.data_cpus, cache=tc.cache_data, driver_mb=tc.driver_ingest_mb
    )
    # Materialized shards go to the workers in their config: no Ray Train dataset actors (its DatasetManager and
    # a SplitCoordinator, two more processes to start). A streamed train set (cache_data false) is Ray Train's to
    # split; the evaluation shards then go the same way.
    streamed = "train" in datasets
    resources = {"CPU": tc.cpus_per_worker}
    if tc.use_gpu:
        resources["GPU"] = 1
    from pipeline.process_group import TorchConfig  # no listening store on one node (docs/security.md)

    trainer = TorchTrainer(
        train_loop_per_worker,
        torch_config=TorchConfig(),
        train_loop_config={
            "train": tc.model_dump(),
            "kind": labels.kind,
            "num_outputs": labels.num_outputs,
            "class_names": labels.class_names,
            "class_weights": labels.class_weights,
            "target_mean": labels.target_mean,
            "target_std": labels.target_std,
            "fault": _fault_spec(),
            "shards": None if streamed else datasets,
        },
        scaling_config=ScalingConfig(
            num_workers=tc.num_workers, use_gpu=tc.use_gpu, **train_scaling(cfg.ray.placement.train, resources)
        ),
        datasets=datasets if streamed else None,
        dataset_config=DataConfig(datasets_to_split=["train"]),  # val_<rank>/test_<rank> are per-worker already
        run_config=RunConfig(
            name=CHECKPOINTS,
            storage_path=storage(root, run_id),
            storage_filesystem=root.fs,
            failure_config=FailureConfig(max_failures=tc.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=1),
        ),
    )
    log.info("train %s: datasets ready in %.1fs; starting %d workers", run_id, time.perf_counter() - t0, tc.num_workers)
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    with scoped_env(controller_env(nodes), keep_set=True):  # Ray Train hands these to its controller
        result = trainer.fit()
    log.info("train %s: trainer finished in %.1fs", run_id, time.perf_counter() - t0)
    return result
