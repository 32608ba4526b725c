"""Backbones and task heads: ``build_model(cfg, num_outputs)`` gives a :class:`FaceModel` (backbone + linear head).

Backbones: ``small_cnn`` (quick runs and tests), torchvision ``resnet18`` / ``resnet50`` / ``resnext50_32x4d`` /
``vgg16`` (Karpathy's VGGNet: the convolutions and the two 4096-wide layers, its last classifier layer replaced by
our head) and facenet-pytorch's ``InceptionResnetV1`` (a face network). All start from random weights; nothing is
ever downloaded. Pretrained weights come from ``cfg.pretrained``: a local file (a state dict), or ``imagenet`` /
``vggface2`` / ``casia-webface`` when the framework's cache (``torch.hub.get_dir()/checkpoints``) already holds
that file (the file names torchvision and facenet-pytorch download to, in :mod:`pipeline.model.backbones`'
records); a missing file is
one line saying where to put it. :func:`weights_origin` says where a model's starting weights came from.

The head follows the task: binary → 2 logits (softmax; class 1 is "good"), multi-class → n logits,
regression → 1 value. ``model.embed(x)`` returns the penultimate features (the backbone's output).

Example::

    model = build_model(cfg.train, num_outputs=2)
    logits = model(torch.zeros(4, 3, 112, 112))
"""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from pipeline.config import TrainConfig
from pipeline.model.backbones import BACKBONES
from pipeline.model.backbones import backbone as backbone_record

log = logging.getLogger("facerank")


class SmallCNN(nn.Module):
    """Four conv blocks and global average pooling: 128 features, fast on a CPU."""

    out_features = 128

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [3, 24, 48, 96, 128]
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)


class FaceNetTrunk(nn.Module):
    """InceptionResnetV1 up to its batch-normed 512-d embedding, without the final L2 normalisation."""

    out_features = 512

    def __init__(self) -> None:
        super().__init__()
        from facenet_pytorch import InceptionResnetV1

        self.net = InceptionResnetV1(pretrained=None, classify=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.net
        for layer in (n.conv2d_1a, n.conv2d_2a, n.conv2d_2b, n.maxpool_3a, n.conv2d_3b, n.conv2d_4a, n.conv2d_4b):
            x = layer(x)
        for layer in (n.repeat_1, n.mixed_6a, n.repeat_2, n.mixed_7a, n.repeat_3, n.block8, n.avgpool_1a):
            x = layer(x)
        x = n.dropout(x)
        return n.last_bn(n.last_linear(x.flatten(1)))


class FaceModel(nn.Module):
    """A backbone producing features and a linear head producing the task's outputs."""

    def __init__(self, backbone: nn.Module, feature_dim: int, num_outputs: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_outputs)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate features (what the head sees)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def set_backbone_trainable(self, trainable: bool) -> None:
        """Freeze (phase one of fine-tuning) or unfreeze the backbone; the head always trains."""
        for p in self.backbone.parameters():
            p.requires_grad_(trainable)


def small_cnn(name: str) -> tuple[nn.Module, int]:
    return SmallCNN(), SmallCNN.out_features


def torchvision_trunk(name: str) -> tuple[nn.Module, int]:
    """torchvision's ``name`` (random weights) with its classifier replaced by the identity."""
    import torchvision

    net = getattr(torchvision.models, name)(weights=None)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return net, dim


def vgg16_trunk(name: str) -> tuple[nn.Module, int]:
    import torchvision

    net = torchvision.models.vgg16(weights=None)
    dim = net.classifier[6].in_features  # 4096: ImageNet's 1000-way layer gives way to our head
    net.classifier[6] = nn.Identity()
    return net, dim


def facenet_trunk(name: str) -> tuple[nn.Module, int]:
    return FaceNetTrunk(), FaceNetTrunk.out_features


def _backbone(name: str) -> tuple[nn.Module, int]:
    """The trunk of backbone ``name`` and its feature width, by its registry record's constructor."""
    import importlib

    module, _, fn = backbone_record(name).build.partition(":")
    return getattr(importlib.import_module(module), fn)(name)


def pretrained_path(backbone: str, spec: str) -> str:
    """The local file for ``spec``: a path, or a named set of weights already in the framework's cache."""
    if os.path.isfile(spec):
        return spec
    known = BACKBONES[backbone].weights
    name = known.get(spec)
    if name is None:
        raise FileNotFoundError(
            f"pretrained weights {spec!r}: not a file, and not a known cached set for {backbone} "
            f"(known: {sorted(known)})"
        )
    path = os.path.join(torch.hub.get_dir(), "checkpoints", name)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights {spec!r} for {backbone}: {path} is not there (never downloaded): put {name} "
            "there, or set train.pretrained to a local file"
        )
    return path


def weights_origin(backbone: str, spec: str | None) -> dict:
    """Where a model's starting weights came from, for the model card: random, a cached named set, or a file."""
    if not spec:
        return {"pretrained": None, "origin": "random initialisation (no pretrained weights)"}
    named = BACKBONES[backbone].weights.get(spec)
    if named and not os.path.isfile(spec):
        src = BACKBONES[backbone].source
        return {"pretrained": spec, "file": named, "origin": f"{spec} weights as {src} ships them ({named})"}
    return {"pretrained": spec, "file": os.path.basename(spec), "origin": f"local weights file {spec}"}


def load_backbone_weights(model: FaceModel, backbone: str, spec: str) -> None:
    """Load a backbone state dict (a file or a cached named set); head and classifier keys are skipped."""
    state = torch.load(pretrained_path(backbone, spec), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    target = model.backbone.net if isinstance(model.backbone, FaceNetTrunk) else model.backbone
    if any(k.startswith("backbone.") for k in state):  # a FaceModel state dict (e.g. one of our own runs)
        prefix = "backbone.net." if isinstance(model.backbone, FaceNetTrunk) else "backbone."
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    own = target.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if not usable:
        raise ValueError(f"pretrained weights {spec!r} share no tensors with the {backbone} backbone")
    target.load_state_dict(usable, strict=False)
    log.info("pretrained %s: loaded %d of %d backbone tensors from %s", backbone, len(usable), len(own), spec)


def build_model(cfg: TrainConfig, num_outputs: int, load_pretrained: bool = True) -> FaceModel:
    """The configured backbone with a fresh head of ``num_outputs`` (2 binary, n classes, 1 regression)."""
    backbone, dim = _backbone(cfg.backbone)
    model = FaceModel(backbone, dim, num_outputs)
    if load_pretrained and cfg.pretrained:
        load_backbone_weights(model, cfg.backbone, cfg.pretrained)
    return model
