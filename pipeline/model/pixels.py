"""The pixel pipeline of a model: crop JPEG or image -> the normalised tensor its network takes.

One place for training and scoring alike: :func:`decode_batch` (training batches: resize, and for training a
random crop, horizontal flip and colour jitter), :func:`model_pixels` (one image -> uint8 pixels at the model's
size, what evaluation and every scoring path feed), :func:`normalise_pixels` and :func:`decode_images`.

Example::

    x = decode_images([Image.open("face.jpg")], 112, mean, std)   # 1 x 3 x 112 x 112
"""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

if TYPE_CHECKING:
    import torch  # imported where a tensor is made: the score driver and ingest tasks never import torch


def decode_batch(
    jpegs,
    image_size: int,
    mean: list[float],
    std: list[float],
    train: bool = False,
    jitter: float = 0.0,
    generator: np.random.Generator | None = None,
) -> torch.Tensor:
    """JPEG bytes → a normalised float tensor N x 3 x S x S; training adds random crop, flip and colour jitter."""
    import torch

    rng = generator or np.random.default_rng()
    pad = int(math.ceil(image_size * 1.14)) if train else image_size
    out = np.empty((len(jpegs), image_size, image_size, 3), dtype=np.uint8)
    for i, data in enumerate(jpegs):
        with Image.open(io.BytesIO(bytes(data))) as im:
            im = im.convert("RGB").resize((pad, pad), Image.BILINEAR)
            a = np.asarray(im)
        if train:
            x0, y0 = rng.integers(0, pad - image_size + 1, size=2)
            a = a[y0 : y0 + image_size, x0 : x0 + image_size]
            if rng.random() < 0.5:
                a = a[:, ::-1]
        out[i] = a
    x = torch.from_numpy(out).permute(0, 3, 1, 2).float().div_(255.0)
    if train and jitter > 0:
        n = x.shape[0]
        f = torch.from_numpy(rng.uniform(1 - jitter, 1 + jitter, size=(3, n, 1, 1, 1)).astype(np.float32))
        x = x * f[0]  # brightness
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        m = gray.mean(dim=(2, 3), keepdim=True)
        x = (x - m) * f[1] + m  # contrast
        gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = (x - gray) * f[2] + gray  # saturation
        x = x.clamp_(0, 1)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (x - m) / s


def model_pixels(image: Image.Image, image_size: int) -> np.ndarray:
    """One PIL image → the model's input pixels: RGB, resized (bilinear) to ``image_size``², uint8 H x W x 3."""
    return np.asarray(image.convert("RGB").resize((image_size, image_size), Image.BILINEAR))


def normalise_pixels(pixels, mean: list[float], std: list[float], device=None) -> torch.Tensor:
    """uint8 pixels N x H x W x 3 (numpy or tensor) → the normalised float tensor N x 3 x H x W on ``device``.

    The uint8 batch moves to the device first (a quarter of the float bytes); the result is a channels-last view
    of the pixels, the memory format the inference path runs in.
    """
    import torch

    x = torch.as_tensor(pixels).to(device) if device is not None else torch.as_tensor(pixels)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return x.sub_(m).div_(s)


def decode_images(images, image_size: int, mean: list[float], std: list[float]) -> torch.Tensor:
    """PIL images → the same normalised tensor the model saw at evaluation time (no augmentation)."""
    return normalise_pixels(np.stack([model_pixels(im, image_size) for im in images]), mean, std)
