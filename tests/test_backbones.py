"""Pretrained backbones from generated state dicts of the real architectures' shapes (nothing is downloaded), and
the two-phase fine-tuning schedule of the Train worker driven without Ray: freezing, per-group learning rates,
label smoothing, mixup, and resuming across the phase change.

The generated weights come from instantiating torchvision's and facenet-pytorch's own classes with random init.
VGG-16 (528 MB as a full file) is checked for key and shape compatibility on the ``meta`` device (no memory), and
loaded from a reduced file holding its convolutions and its 1000-way layer (which the head replaces).
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from pipeline.config import TrainConfig
from pipeline.model.backbones import BACKBONES
from pipeline.model.network import _backbone, build_model, weights_origin
from pipeline.train.loop import TrainWorker, _cpu_copy


@pytest.fixture
def hub_dir(tmp_path):
    """torch.hub's cache pointed at an empty temporary folder for the test."""
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    yield tmp_path / "hub"
    torch.hub.set_dir(old)


def _same_backbone(model, state: dict, prefix: str = "") -> None:
    own = model.state_dict()
    for k, v in state.items():
        if prefix + k in own and own[prefix + k].shape == v.shape:
            assert torch.equal(own[prefix + k], v), k


def test_named_cached_weights_load_and_a_missing_file_says_where(hub_dir, tmp_path):
    from facenet_pytorch import InceptionResnetV1

    with pytest.raises(FileNotFoundError) as err:
        build_model(TrainConfig(backbone="resnet18", pretrained="imagenet"), 2)
    msg = str(err.value)
    assert "\n" not in msg and f"{hub_dir}/checkpoints/resnet18-f37072fd.pth" in msg and "put" in msg
    (hub_dir / "checkpoints").mkdir(parents=True)
    ref = torchvision.models.resnet18(weights=None).state_dict()  # the ImageNet file's keys and shapes
    torch.save(ref, hub_dir / "checkpoints" / BACKBONES["resnet18"].weights["imagenet"])
    m = build_model(TrainConfig(backbone="resnet18", pretrained="imagenet"), 2)
    _same_backbone(m.backbone, ref)
    assert sum(k in m.backbone.state_dict() for k in ref) == len(ref) - 2  # all but fc.weight / fc.bias
    face = InceptionResnetV1(pretrained=None, classify=True, num_classes=8631).state_dict()  # vggface2's shapes
    torch.save(face, hub_dir / "checkpoints" / BACKBONES["inception_resnet_v1"].weights["vggface2"])
    m = build_model(TrainConfig(backbone="inception_resnet_v1", pretrained="vggface2"), 3)
    _same_backbone(m.backbone.net, face)
    assert "logits.weight" in face and "logits.weight" not in m.backbone.net.state_dict()
    assert "facenet-pytorch" in weights_origin("inception_resnet_v1", "vggface2")["origin"]
    assert weights_origin("small_cnn", None)["pretrained"] is None


def test_resnet50_resnext_and_vgg16_shapes_match_the_published_architectures(tmp_path):
    for name, make in (
        ("resnet50", torchvision.models.resnet50),
        ("resnext50_32x4d", torchvision.models.resnext50_32x4d),
        ("vgg16", torchvision.models.vgg16),
    ):
        with torch.device("meta"):
            ref, (ours, _) = make(weights=None).state_dict(), _backbone(name)
        own = {k: v.shape for k, v in ours.state_dict().items()}
        assert all(ref[k].shape == s for k, s in own.items()), name
        left = sorted(set(ref) - set(own))
        assert left == (["classifier.6.bias", "classifier.6.weight"] if name == "vgg16" else ["fc.bias", "fc.weight"])
    vgg = torchvision.models.vgg16(weights=None).state_dict()
    part = {k: v for k, v in vgg.items() if k.startswith("features.") or k.startswith("classifier.6.")}
    torch.save(part, tmp_path / "vgg16-part.pth")
    m = build_model(TrainConfig(backbone="vgg16", pretrained=str(tmp_path / "vgg16-part.pth")), 2)
    _same_backbone(m.backbone, part)
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 2)


def _jpeg(i: int) -> bytes:
    rng = np.random.default_rng(i)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _config(**train) -> dict:
    tc = TrainConfig(backbone="small_cnn", image_size=32, batch_size=8, cpus_per_worker=1, **train)
    return {"train": tc.model_dump(), "kind": "binary", "num_outputs": 2, "class_names": ["a", "b"],
            "class_weights": None, "target_mean": 0.0, "target_std": 1.0}  # fmt: skip


BATCH = {"crop_jpeg": np.array([_jpeg(i) for i in range(8)], dtype=object), "y": np.array([0, 1] * 4)}


def _step(w: TrainWorker) -> None:
    w.net.train()
    if w.phase == "head":
        w.model.backbone.eval()
    w._step(BATCH)


def _record(w: TrainWorker, epoch: int) -> None:
    w.last_state = w.best_state = _cpu_copy(w.model)
    w.history.append({"epoch": epoch, "phase": w.phase, "score": 0.5, "val_loss": 1.0, "train_loss": 1.0})


def test_freeze_then_unfreeze_per_group_lr_and_resume_across_the_phase_change(tmp_path):
    cfg = _config(freeze_epochs=1, epochs=3, lr=0.01, backbone_lr_scale=0.1, label_smoothing=0.1, mixup=0.4)
    w = TrainWorker.local(cfg)
    assert w.loss_fn.label_smoothing == 0.1
    w.set_phase(0)
    before = {k: v.clone() for k, v in w.model.backbone.named_parameters()}
    head = w.model.head.weight.detach().clone()
    _step(w)
    assert w.phase == "head" and [g["lr"] for g in w.opt.param_groups] == [0.01]
    assert all(p.grad is None for p in w.model.backbone.parameters())  # no gradient reaches frozen weights
    assert all(torch.equal(before[k], v) for k, v in w.model.backbone.named_parameters())
    assert not torch.equal(head, w.model.head.weight)
    _record(w, 0)
    (tmp_path / "ck0").mkdir()
    w.save_checkpoint(str(tmp_path / "ck0"), 0)

    r = TrainWorker.local(cfg, str(tmp_path / "ck0"))  # resumed after the last head-only epoch
    assert r.start == 1 and torch.equal(r.model.head.weight, w.model.head.weight)
    r.set_phase(r.start)
    assert r.phase == "full" and [(g["name"], g["lr"]) for g in r.opt.param_groups] == [
        ("head", 0.01),
        ("backbone", pytest.approx(0.001)),
    ]
    assert not r.opt.state  # the head phase's optimiser state is not carried into the new groups
    frozen = {k: v.clone() for k, v in r.model.backbone.named_parameters()}
    lam, perm = r._mixup(8)
    assert 0 < lam < 1 and sorted(perm.tolist()) == list(range(8))
    _step(r)
    assert all(p.grad is not None for p in r.model.backbone.parameters())
    assert any(not torch.equal(frozen[k], v) for k, v in r.model.backbone.named_parameters())
    _record(r, 1)
    (tmp_path / "ck1").mkdir()
    r.save_checkpoint(str(tmp_path / "ck1"), 1)

    again = TrainWorker.local(cfg, str(tmp_path / "ck1"))  # resumed inside the full phase: its optimiser too
    again.set_phase(again.start)
    assert again.start == 2 and again.phase == "full"
    saved = r.opt.state_dict()["state"]
    assert again.opt.state_dict()["state"].keys() == saved.keys()
    assert all(torch.equal(again.opt.state_dict()["state"][k]["exp_avg"], saved[k]["exp_avg"]) for k in saved)
    assert [h["phase"] for h in again.history] == ["head", "full"]


def test_without_a_scale_the_full_phase_uses_finetune_lr():
    w = TrainWorker.local(_config(freeze_epochs=1, lr=0.01, finetune_lr=0.002))
    w.set_phase(1)
    assert [g["lr"] for g in w.opt.param_groups] == [0.002, 0.002]
    w = TrainWorker.local(_config(freeze_epochs=0, lr=0.01))
    w.set_phase(0)
    assert w.phase == "full" and [g["lr"] for g in w.opt.param_groups] == [0.01, 0.01]
    assert w._mixup(8) == (1.0, None)


def test_a_cached_shard_is_shuffled_in_full_every_epoch():
    """A materialized train shard (an Arrow table in the worker): every row once per epoch, a new order each epoch,
    the last batch short; with shuffle_buffer 0 the stored order."""
    import pyarrow as pa

    table = pa.table({"crop_jpeg": [bytes([i]) for i in range(70)], "y": list(range(70))})
    w = TrainWorker.local(_config(freeze_epochs=0))
    w.train_it = table
    epochs = [[b["y"].tolist() for b in w._batches()] for _ in range(2)]
    for batches in epochs:
        assert [len(b) for b in batches] == [w.tc.batch_size] * (70 // w.tc.batch_size) + [70 % w.tc.batch_size]
        assert sorted(sum(batches, [])) == list(range(70))
    assert sum(epochs[0], []) != sum(epochs[1], []) != list(range(70))
    first = next(iter(w._batches()))
    assert [bytes(c)[0] for c in first["crop_jpeg"]] == first["y"].tolist()  # jpegs travel with their labels
    w.tc = w.tc.model_copy(update={"shuffle_buffer": 0})
    assert sum((b["y"].tolist() for b in w._batches()), []) == list(range(70))


def test_mixed_precision_auto_is_fp32_on_cpus_and_bf16_autocasts_on_a_cpu(monkeypatch):
    """``auto``: fp32 on any CPU, AMX-BF16 included (bf16 cost accuracy on real faces); bf16 on a CUDA GPU that
    computes it; ``fp16`` on a CPU falls back to fp32.
    A bf16 worker runs its convolutions in bfloat16 on the CPU (weights stay fp32) and its history records say so.
    """
    import pyarrow as pa

    import pipeline.train.loop as loop

    cpu = torch.device("cpu")
    monkeypatch.setattr(loop, "_cpu_flags", lambda: {"avx2", "amx_bf16"})
    assert loop.amp_dtype("auto", cpu) is None and loop.native_bf16(cpu)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert loop.amp_dtype("auto", torch.device("cuda")) is torch.bfloat16
    monkeypatch.setattr(loop, "_cpu_flags", lambda: {"avx2", "avx512f"})
    assert loop.amp_dtype("auto", cpu) is None and loop.amp_dtype("no", cpu) is None
    assert loop.amp_dtype("bf16", cpu) is torch.bfloat16 and loop.amp_dtype("fp16", cpu) is None
    assert TrainConfig().mixed_precision == "auto"

    val = pa.table({"crop_jpeg": [_jpeg(i) for i in range(8)], "y": [0, 1] * 4})
    for setting, dtype in (("bf16", torch.bfloat16), ("no", torch.float32)):
        w = TrainWorker.local(_config(freeze_epochs=0, mixed_precision=setting))
        w.set_phase(0)
        seen = []
        conv = next(m for m in w.model.modules() if isinstance(m, torch.nn.Conv2d))
        conv.register_forward_hook(lambda m, i, out, seen=seen: seen.append(out.dtype))
        _step(w)
        assert seen == [dtype]
        assert all(p.dtype == torch.float32 for p in w.model.parameters())
        w.eval_tables["val"] = val
        record = w.validate(0, {"train_loss": 1.0, "train_s": 1.0, "bn_crops": 0, "bn_s": 0.0, "images": 8})
        assert record["precision"] == {"bf16": "bf16", "no": "fp32"}[setting] and seen[-1] == dtype


def test_every_backbone_record_builds_its_declared_width_and_one_record_adds_one(monkeypatch):
    """Each registry record's constructor gives a trunk of its declared feature width; a new record (here
    torchvision's resnet34) is all a new backbone needs: the config accepts it and a model builds and runs."""
    from pipeline.config import TrainConfig
    from pipeline.model.backbones import IMAGENET, Backbone

    for name, rec in BACKBONES.items():
        if name in ("vgg16", "resnet50", "resnext50_32x4d"):  # big: their shapes are checked above
            continue
        trunk, width = _backbone(name)
        assert width == rec.features, name
        assert len(rec.mean) == len(rec.std) == 3
    with pytest.raises(ValueError, match="unknown backbone 'resnet34'"):
        TrainConfig(backbone="resnet34")
    new = Backbone("resnet34", "pipeline.model.network:torchvision_trunk", IMAGENET, 512,
                   {"imagenet": "resnet34-b627a593.pth"}, "torchvision")  # fmt: skip
    monkeypatch.setitem(BACKBONES, "resnet34", new)
    m = build_model(TrainConfig(backbone="resnet34", image_size=32), 2)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 2) and m.eval().embed(torch.zeros(1, 3, 32, 32)).shape == (1, 512)
    assert "resnet34-b627a593.pth" in weights_origin("resnet34", "imagenet")["origin"]


def test_the_controller_polls_its_workers_every_half_second_unless_the_environment_says(monkeypatch):
    """Ray Train's controller notices the end of training at its next poll (2 s apart by default): ``fit`` sets
    Ray's interval for its trainer (the driver's value is what the controller gets) and restores the environment;
    a value the user set is kept. On one node the preemption watcher is not started (several nodes: Ray's default)."""
    import os

    import pipeline.train.loop as loop
    from pipeline.ray_env import scoped_env

    monkeypatch.delenv(loop.POLL_ENV, raising=False)
    monkeypatch.delenv(loop.WATCHER_ENV, raising=False)
    with scoped_env(loop.controller_env(1), keep_set=True):
        assert os.environ[loop.POLL_ENV] == "0.5" and os.environ[loop.WATCHER_ENV] == "0"
    assert loop.POLL_ENV not in os.environ and loop.WATCHER_ENV not in os.environ
    assert loop.WATCHER_ENV not in loop.controller_env(2)
    monkeypatch.setenv(loop.POLL_ENV, "3")
    monkeypatch.setenv(loop.WATCHER_ENV, "1")
    with scoped_env(loop.controller_env(1), keep_set=True):
        assert os.environ[loop.POLL_ENV] == "3" and os.environ[loop.WATCHER_ENV] == "1"
    assert os.environ[loop.POLL_ENV] == "3"
    assert os.environ[loop.POLL_ENV] == "3"
