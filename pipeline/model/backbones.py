"""The backbone registry: one record per backbone, everything the pipeline needs to know of it, no torch.

A :class:`Backbone` keeps together, as torchvision's ``Weights`` / ``register_model`` do, the network's
constructor (a ``module:function`` path returning the trunk and its feature width, imported only when a model is
built), the input normalisation its weights expect, its feature width, and the named pretrained weight sets with
the file names their framework caches them under (read from ``torch.hub.get_dir()/checkpoints``, never
downloaded). ``train.backbone`` is checked against :data:`BACKBONES` when a config loads.

Adding a backbone is one record here (and a constructor function when torchvision does not have it)::

    Backbone("efficientnet_b0", "pipeline.model.network:torchvision_trunk", IMAGENET, 1280,
             {"imagenet": "efficientnet_b0_rwightman-7f5810bc.pth"}, "torchvision")
"""

from __future__ import annotations

from dataclasses import dataclass, field

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))  # torchvision's nets: ImageNet statistics of 0..1 RGB
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
FACENET = ((0.5, 0.5, 0.5), (128 / 255, 128 / 255, 128 / 255))  # facenet-pytorch's (x - 127.5) / 128


@dataclass(frozen=True)
class Backbone:
    """One backbone: its constructor, normalisation, feature width and named weight files."""

    name: str
    build: str  # "module:function": function(name) -> (nn.Module trunk giving features, feature width)
    normalisation: tuple[tuple[float, float, float], tuple[float, float, float]]
    features: int
    weights: dict[str, str] = field(default_factory=dict)  # named set -> file name in torch.hub's checkpoints/
    source: str = "facerank"  # whose weights the named sets are (the model card names it)

    @property
    def mean(self) -> list[float]:
        return list(self.normalisation[0])

    @property
    def std(self) -> list[float]:
        return list(self.normalisation[1])


_TV = "pipeline.model.network:torchvision_trunk"
BACKBONES: dict[str, Backbone] = {
    b.name: b
    for b in (
        Backbone("small_cnn", "pipeline.model.network:small_cnn", HALF, 128),
        Backbone("resnet18", _TV, IMAGENET, 512, {"imagenet": "resnet18-f37072fd.pth"}, "torchvision"),
        Backbone("resnet50", _TV, IMAGENET, 2048, {"imagenet": "resnet50-11ad3fa6.pth"}, "torchvision"),
        Backbone("resnext50_32x4d", _TV, IMAGENET, 2048, {"imagenet": "resnext50_32x4d-7cdf4587.pth"}, "torchvision"),
        Backbone(
            "vgg16",
            "pipeline.model.network:vgg16_trunk",
            IMAGENET,
            4096,
            {"imagenet": "vgg16-397923af.pth"},
            "torchvision",
        ),  # fmt: skip
        Backbone(
            "inception_resnet_v1",
            "pipeline.model.network:facenet_trunk",
            FACENET,
            512,
            {"vggface2": "20180402-114759-vggface2.pt", "casia-webface": "20180408-102900-casia-webface.pt"},
            "facenet-pytorch",
        ),
    )
}


def backbone(name: str) -> Backbone:
    """The record of ``name``; raises ValueError naming the known backbones."""
    try:
        return BACKBONES[name]
    except KeyError:
        raise ValueError(f"unknown backbone {name!r} (known: {', '.join(BACKBONES)})") from None
