"""GPU check for the device machine: MTCNN, ResNet-50 training and scoring images/s, one JSON line per figure.

Ready for the day a device machine (one GPU, no Ray, no polars, nothing downloadable) is lent; see
docs/benchmarks.md, "GPU check (device machine)", for the command. Everything runs on the project's own code,
imported without the Ray stages (``pipeline/faces/__init__.py`` and ``pipeline/train/__init__.py`` pull them in,
so those two package files are skipped and only the modules below are loaded; ``ray`` and ``polars`` are made
unimportable here too, so a CPU run proves the device run needs neither):

* ``gpu_mtcnn``: :class:`pipeline.faces.detector.FaceDetector` ``.detect`` (facenet-pytorch ``MTCNN`` on the
  GPU, equal-size images in one pass) on batches of 640x640 images. Reference: the facenet-pytorch README's P100
  table, 25.50 images/s at 540x960 batched (19.68 one image at a time); the sizes and GPUs differ, so
  ``like_for_like`` is false. ``gpu_mtcnn_540x960_batched`` and ``gpu_mtcnn_540x960_single`` measure the
  README's own size and both of its methods, with plain ``MTCNN(keep_all=True).detect`` on the same GPU and images
  beside ours (``peer_same_gpu``).
* ``gpu_train_resnet50``: training steps (forward, cross-entropy, backward, AdamW as ``pipeline/train/loop.py``
  uses) of :func:`pipeline.model.network.build_model` ``resnet50`` at 224 px under bf16 autocast, channels-last,
  on synthetic batches already on the GPU. Reference: NVIDIA DeepLearningExamples, ResNet-50 v1.5 for PyTorch,
  1x A100 80GB, mixed precision (fp16), 2,470 images/s (real ImageNet data through DALI, SGD).
* ``gpu_score_resnet50_fp32`` / ``_bf16``: :class:`pipeline.model.loaded.LoadedModel` loaded from an exported
  model folder (random ResNet-50 weights, written as the exporter writes them), ``optimize_for_inference`` and
  ``use_precision`` as the score stage does, timed through ``score(pixels=...)`` (uint8 pixels from host memory
  to scores and percentiles, the score stage's call); ``forward_only`` is the forward pass alone on a normalised
  batch already on the GPU. No published peer.

Without CUDA (or with ``--cpu-smoke``) every size is tiny (2 images of 64 px, one training step at 32 px, two
scoring batches of 2) so that the whole check takes about 15 CPU seconds: ``tests/test_gpu_check.py`` runs it so.
A figure that fails becomes a row with its error (exit code 1); one that would start after ``--budget-s`` is
skipped. Prints a table, then one JSON line per figure ({"bench", "ours", "unit", "device", ... and, where a
published figure exists, "peer" and "ratio" = ours / peer, > 1 better}).

    python benchmarks/gpu_check.py [--cpu-smoke] [--jsonl FILE] [--budget-s 240] [--cudnn-benchmark]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ABSENT_ON_DEVICE = ("ray", "polars")  # not installed on the device machine: made unimportable here too

# Published figures (images/s).
MTCNN_README = "facenet-pytorch README, Kaggle P100, 300 video frames"
PEER_MTCNN_BATCHED = 25.50  # 540x960, batched
PEER_MTCNN_SINGLE = 19.68  # 540x960, non-batched
RN50_NVIDIA = "NVIDIA DeepLearningExamples RN50 v1.5 PyTorch, 1x A100 80GB, AMP fp16, batch 256, DALI, SGD"
PEER_RN50_AMP = 2470.0


@dataclass(frozen=True)
class Sizes:
    """Everything that sets how long the check runs."""

    mtcnn_side: int  # gpu_mtcnn: square images of this side
    mtcnn_batch: int
    mtcnn_images: int
    ref_hw: tuple[int, int]  # the README's 540x960 (height, width)
    ref_images: int
    train_size: int
    train_batch: int
    train_warmup: int
    train_steps: int
    score_size: int
    score_batch: int
    score_batches: int
    max_seconds: float  # one timed loop stops after this long, whatever is left


FULL = Sizes(640, 32, 256, (540, 960), 64, 224, 256, 5, 30, 224, 256, 20, 20.0)
SMOKE = Sizes(64, 2, 2, (54, 96), 2, 32, 2, 0, 1, 32, 2, 2, 10.0)


# ------------------------------------------------------------------------------------------------ set-up
def device_like_imports() -> None:
    """Import the project as the device machine can: no ray or polars, and no faces/train package __init__."""
    for name in ABSENT_ON_DEVICE:
        sys.modules.setdefault(name, None)  # `import ray` now fails as it does where ray is not installed
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import pipeline

    for sub in ("faces", "train"):
        name = f"pipeline.{sub}"
        if name not in sys.modules:
            pkg = types.ModuleType(name, f"{name} without its __init__ (which imports the Ray stage)")
            pkg.__path__ = [str(REPO / "pipeline" / sub)]
            pkg.__package__ = name
            sys.modules[name] = pkg
            setattr(pipeline, sub, pkg)


def device_name(torch, device) -> str:
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"{torch.cuda.get_device_name(device)} (sm_{major}{minor}, CUDA {torch.version.cuda})"
    return f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"


def sync(torch, device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_loop(step: Callable[[], int], max_calls: int, max_seconds: float, finish: Callable[[], None]) -> dict:
    """Call ``step`` (returns the images it did) up to ``max_calls`` times or ``max_seconds``; images/s."""
    done, calls = 0, 0
    t0 = time.perf_counter()
    while calls < max_calls and (calls == 0 or time.perf_counter() - t0 < max_seconds):
        done += step()
        calls += 1
    finish()
    seconds = time.perf_counter() - t0
    return {"ours": round(done / seconds, 2), "images": done, "calls": calls, "seconds": round(seconds, 3)}


def frames(n: int, height: int, width: int):
    """``n`` video-like frames: the astronaut (one face) on a grey background, moving a little from frame to frame."""
    from PIL import Image, ImageEnhance

    try:
        from skimage import data

        base, source = Image.fromarray(data.astronaut()), "astronaut"
    except Exception:  # no bundled image: a gradient, which has no face
        base, source = Image.linear_gradient("L").convert("RGB"), "gradient"
    side = max(8, int(0.85 * min(height, width)))
    face = base.resize((side, side), Image.BILINEAR)
    out = []
    for i in range(n):
        canvas = Image.new("RGB", (width, height), (118, 118, 118))
        x = (width - side) // 2 + (i % 9 - 4) * max(1, width // 200)
        y = (height - side) // 2 + (i % 5 - 2) * max(1, height // 200)
        canvas.paste(ImageEnhance.Brightness(face).enhance(0.9 + 0.02 * (i % 10)), (max(0, x), max(0, y)))
        out.append(canvas)
    return out, source


# ------------------------------------------------------------------------------------------------ MTCNN
def faces_config(device, batch: int, side: int):
    """The faces config with ``max_side`` at least the image's long side: MTCNN sees the image itself, as the
    README's runs did (the project's default, 800, would detect on a smaller copy of a 960 px image)."""
    from pipeline.config import FacesConfig

    return FacesConfig(device=device.type, batch_size=batch, max_side=max(64, side))


def _faces_per_image(dets) -> float:
    counts = [int((d.probs >= 0.9).sum()) if not isinstance(d, str) else 0 for d in dets]
    return round(sum(counts) / max(1, len(counts)), 3)


def mtcnn_run(torch, device, images, batch: int, max_seconds: float, plain: bool) -> dict:
    """images/s of ours (FaceDetector.detect, ``batch`` equal-size images a pass) or of plain ``MTCNN.detect``."""
    if plain:
        from facenet_pytorch import MTCNN

        mtcnn = MTCNN(keep_all=True, device=device)

        def detect(chunk):
            with torch.inference_mode():
                _, probs = mtcnn.detect(chunk if len(chunk) > 1 else chunk[0])
            return probs
    else:
        from pipeline.faces.detector import FaceDetector

        detect = FaceDetector(faces_config(device, batch, max(images[0].size))).detect
    chunks = [images[i : i + batch] for i in range(0, len(images), batch)]
    detect(chunks[0])  # warm-up: CUDA context, cuDNN plans, weights on the GPU
    seen: list = []
    it = iter(chunks)

    def step() -> int:
        chunk = next(it)
        seen.append(detect(chunk))
        return len(chunk)

    res = timed_loop(step, len(chunks), max_seconds, lambda: sync(torch, device))
    if not plain:
        res["faces_per_image"] = _faces_per_image([d for out in seen for d in out])
    return res


def bench_mtcnn(torch, device, s: Sizes) -> list[dict]:
    import facenet_pytorch  # noqa: F401  (fails here, not half-way, when the wheel is missing)

    from pipeline.faces import detector

    cfg = faces_config(device, s.mtcnn_batch, s.mtcnn_side)
    common = {"unit": "images/s", "detector": f"{detector.__name__}.FaceDetector.detect",
              "min_face_size": cfg.detect_min_px, "factor": cfg.pyramid_factor}  # fmt: skip
    imgs, source = frames(s.mtcnn_images, s.mtcnn_side, s.mtcnn_side)
    main = mtcnn_run(torch, device, imgs, s.mtcnn_batch, s.max_seconds, plain=False)
    rows = [{"bench": "gpu_mtcnn", **main, **common, "size": f"{s.mtcnn_side}x{s.mtcnn_side}",
             "batch": s.mtcnn_batch, "frames": source, "peer": PEER_MTCNN_BATCHED,
             "ratio": round(main["ours"] / PEER_MTCNN_BATCHED, 3), "like_for_like": False,
             "peer_setup": f"{MTCNN_README}, 540x960, batched"}]  # fmt: skip
    h, w = s.ref_hw
    ref, _ = frames(s.ref_images, h, w)
    for name, batch, peer in (("batched", s.mtcnn_batch, PEER_MTCNN_BATCHED), ("single", 1, PEER_MTCNN_SINGLE)):
        ours = mtcnn_run(torch, device, ref, batch, s.max_seconds, plain=False)
        plain = mtcnn_run(torch, device, ref, batch, s.max_seconds, plain=True)
        rows.append({"bench": f"gpu_mtcnn_540x960_{name}", **ours, **common, "size": f"{h}x{w}", "batch": batch,
                     "frames": source, "peer": peer, "ratio": round(ours["ours"] / peer, 3),
                     "like_for_like": "same size and method, another GPU",
                     "peer_setup": f"{MTCNN_README}, 540x960, {'batched' if batch > 1 else 'non-batched'}",
                     "peer_same_gpu": plain["ours"],
                     "ratio_same_gpu": round(ours["ours"] / plain["ours"], 3)})  # fmt: skip
    return rows


# ------------------------------------------------------------------------------------------------ training
def bench_train(torch, device, s: Sizes) -> list[dict]:
    from pipeline.config import TrainConfig
    from pipeline.model.network import build_model

    tc = TrainConfig(backbone="resnet50", image_size=s.train_size, batch_size=s.train_batch, mixed_precision="bf16")
    torch.manual_seed(0)
    model = build_model(tc, num_outputs=1000, load_pretrained=False).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.AdamW(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn(s.train_batch, 3, s.train_size, s.train_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (s.train_batch,), device=device)

    def step() -> int:
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return s.train_batch

    for _ in range(s.train_warmup):
        step()
    sync(torch, device)
    res = timed_loop(step, s.train_steps, s.max_seconds, lambda: sync(torch, device))
    return [{"bench": "gpu_train_resnet50", **res, "unit": "images/s", "size": s.train_size,
             "batch": s.train_batch, "precision": "bf16 autocast", "channels_last": True, "optimizer": "AdamW",
             "data": "synthetic, on the device", "peer": PEER_RN50_AMP,
             "ratio": round(res["ours"] / PEER_RN50_AMP, 3), "like_for_like": False,
             "peer_setup": RN50_NVIDIA}]  # fmt: skip


# ------------------------------------------------------------------------------------------------ scoring
def export_model(torch, folder: str, image_size: int) -> str:
    """A ResNet-50 model folder as the exporter writes it (model.pt, test_scores.json, then model.json)."""
    import io
    import posixpath

    from pipeline.config import TrainConfig
    from pipeline.model.backbones import backbone
    from pipeline.model.meta import ModelMeta, write_model_meta
    from pipeline.model.network import build_model
    from pipeline.store import DataRoot

    torch.manual_seed(0)
    tc = TrainConfig(task="selfie", backbone="resnet50", image_size=image_size)
    buf = io.BytesIO()
    torch.save(build_model(tc, 2, load_pretrained=False).state_dict(), buf)
    root = DataRoot(folder)
    d = root.model_dir("gpu-check")
    root.write_bytes_atomic(posixpath.join(d, "model.pt"), buf.getvalue())
    root.write_json(posixpath.join(d, "test_scores.json"), [i / 100 for i in range(101)])
    mean, std = backbone("resnet50").normalisation
    meta = ModelMeta(model_id="gpu-check", task="selfie", kind="binary", backbone="resnet50", num_outputs=2,
                     class_names=["bad", "good"], image_size=image_size, mean=mean, std=std,
                     train_config=tc.model_dump())  # fmt: skip
    write_model_meta(root, d, meta)
    return d


def _score_run(torch, device, model, s: Sizes, precision: str, optimised: str) -> dict:
    import numpy as np

    from pipeline.model.pixels import normalise_pixels

    model.use_precision(precision)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (s.score_batch, s.score_size, s.score_size, 3), dtype=np.uint8)
    model.score(pixels=pixels)  # warm-up
    res = timed_loop(lambda: len(model.score(pixels=pixels).score), s.score_batches, s.max_seconds,
                     lambda: sync(torch, device))  # fmt: skip
    x = normalise_pixels(pixels, model.meta.mean, model.meta.std, device)

    def forward() -> int:
        with torch.inference_mode():
            model.forward(x)
        return s.score_batch

    fwd = timed_loop(forward, s.score_batches, s.max_seconds, lambda: sync(torch, device))
    return {"bench": f"gpu_score_resnet50_{precision}", **res, "unit": "images/s", "size": s.score_size,
            "batch": s.score_batch, "entry": "LoadedModel.score(pixels=)", "optimised": optimised,
            "forward_only": fwd["ours"]}  # fmt: skip


def bench_score(torch, device, s: Sizes) -> list[dict]:
    from pipeline.model.loaded import LoadedModel

    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        model = LoadedModel.load(export_model(torch, tmp, s.score_size), device=str(device))
    optimised = model.optimize_for_inference()
    return [_score_run(torch, device, model, s, p, optimised) for p in ("fp32", "bf16")]


# ------------------------------------------------------------------------------------------------ report
BENCHES: list[tuple[str, Callable]] = [("gpu_mtcnn", bench_mtcnn), ("gpu_train_resnet50", bench_train),
                                       ("gpu_score_resnet50", bench_score)]  # fmt: skip


def table(rows: list[dict]) -> str:
    head = "| bench | ours | unit | peer | ratio | setup |\n|---|---|---|---|---|---|"
    lines = [head]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"| {r['bench']} | - | | | | {r.get('error') or r.get('skipped')} |")
            continue
        extra = {k: r[k] for k in ("size", "batch", "peer_same_gpu", "forward_only", "faces_per_image") if k in r}
        setup = ", ".join(f"{k} {v}" for k, v in extra.items())
        peer, ratio = r.get("peer", ""), r.get("ratio", "")
        lines.append(f"| {r['bench']} | {r['ours']} | {r['unit']} | {peer} | {ratio} | {setup} |")
    return "\n".join(lines)


def run(args) -> list[dict]:
    device_like_imports()
    import torch

    use_cuda = torch.cuda.is_available() and not args.cpu_smoke
    device = torch.device("cuda" if use_cuda else "cpu")
    sizes = FULL if use_cuda else SMOKE
    if not use_cuda:
        torch.set_num_threads(1)  # tiny tensors: threads only add synchronisation on a shared CPU
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    info = {"device": device_name(torch, device), "torch": torch.__version__, "smoke": not use_cuda,
            "cudnn_benchmark": bool(args.cudnn_benchmark)}  # fmt: skip
    t0, rows = time.perf_counter(), []
    for name, bench in BENCHES:
        if time.perf_counter() - t0 > args.budget_s:
            rows.append({"bench": name, "skipped": f"budget of {args.budget_s:.0f} s spent", **info})
            continue
        start = time.perf_counter()
        try:
            got = [{**r, **info} for r in bench(torch, device, sizes)]
        except Exception as err:  # one failing figure must not lose the others
            got = [{"bench": name, "error": f"{type(err).__name__}: {err}"[:300], **info}]
        if use_cuda:
            for r in got:
                r["max_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
            torch.cuda.reset_peak_memory_stats(device)
        print(f"[gpu_check] {name}: {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
        rows += got
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in got)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    p.add_argument("--jsonl", help="also append each figure's JSON line to this file as soon as it is measured")
    p.add_argument("--budget-s", type=float, default=240.0, help="start no figure after this many seconds")
    p.add_argument("--cudnn-benchmark", action="store_true", help="let cuDNN time its kernels (the project does not)")
    args = p.parse_args(argv)
    rows = run(args)
    print(table(rows))
    for r in rows:
        print(json.dumps(r))
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
