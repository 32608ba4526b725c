"""An exported model loaded for inference: :class:`LoadedModel` and what its ``score`` gives.

``LoadedModel.load(model_dir)`` reads ``model.json`` (:mod:`pipeline.model.meta`), ``model.pt`` and
``test_scores.json``; ``score`` gives scores, test-set percentiles and class names: what the score stage, ``rate``,
``best-crop`` and the report use; ``optimize_for_inference`` folds batch norms, runs channels-last and, on CPU,
traces with oneDNN Graph fusion, each step checked against the eager model.

Example::

    m = LoadedModel.load(resolve_model_dir(root, "latest"), root)
    scores, percentiles, names = m.score([Image.open("face.jpg")])
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
from typing import NamedTuple

import numpy as np
import torch

from pipeline.config import TrainConfig
from pipeline.model.meta import ModelMeta, model_location, model_meta
from pipeline.model.network import build_model
from pipeline.model.outputs import scores_from_outputs
from pipeline.model.pixels import decode_images, normalise_pixels
from pipeline.model.torchvision_import import import_torchvision
from pipeline.store import DataRoot

log = logging.getLogger("facerank")


class Scores(NamedTuple):
    """What :meth:`LoadedModel.score` gives: one value per crop in each field."""

    score: np.ndarray  # float64: P(class 1) binary, max class probability multi-class, value regression
    percentile: np.ndarray  # float64: share of the test-set scores below each score, 0..1 (nan: no test set)
    predicted: list[str | None]  # class name (classification), else None


def _onednn_graph(module: torch.nn.Module, example: torch.Tensor, agrees) -> torch.nn.Module | None:
    """``module`` traced and frozen with oneDNN Graph fusion on (convolution, bias, add and ReLU in one kernel on
    CPU: about 10-15% faster than the fused eager graph for a ResNet-18 at 96 px, docs/benchmarks.md), or None
    when it cannot be traced or ``agrees(graph)`` is false. The fusion is a process-wide switch: it is turned on
    only here, in a process that runs this model (a scoring actor, ``rate``), and off again when the graph is not
    used. TorchScript's deprecation warnings are silenced for these calls."""
    import warnings

    try:
        with warnings.catch_warnings(), torch.inference_mode():
            warnings.simplefilter("ignore", FutureWarning)
            torch.jit.enable_onednn_fusion(True)
            graph = torch.jit.freeze(torch.jit.trace(module.eval(), example, check_trace=False))
            for _ in range(2):  # the profiling executor specialises on the second call
                graph(example)
        if agrees(graph):
            return graph
        log.warning("oneDNN graph fusion not used: its outputs disagree with the eager model's")
    except Exception as err:  # not traceable: the fused eager graph stays
        log.info("oneDNN graph fusion not used (%s)", str(err)[:120])
    torch.jit.enable_onednn_fusion(False)
    return None


class LoadedModel:
    """An exported model ready for inference on face crops (PIL images)."""

    def __init__(self, meta: ModelMeta | dict, state: dict, test_scores: list[float], device: str | None = None):
        meta = meta if isinstance(meta, ModelMeta) else ModelMeta.from_dict(meta)
        self.meta = meta
        self.model_id: str = meta.model_id
        self.task: str = meta.task
        self.kind: str = meta.kind
        self.class_names: list[str] = list(meta.class_names)
        self.image_size: int = meta.image_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tc = TrainConfig.model_validate({**meta.train_config, "pretrained": None})
        import_torchvision()  # before build_model imports it: without torch._dynamo (inference never compiles)
        self.model = build_model(tc, meta.num_outputs, load_pretrained=False)
        self.model.load_state_dict(state)
        self.model.to(self.device).eval()
        self.test_scores = np.sort(np.asarray(test_scores, dtype=np.float64))
        self._infer: torch.nn.Module = self.model  # what predict() runs (see optimize_for_inference)
        self._graph: torch.nn.Module | None = None  # its oneDNN Graph form (fp32 on CPU only)
        self.autocast: torch.dtype | None = None  # see use_precision
        self._channels_last = False

    def optimize_for_inference(self, check_batch: int = 4) -> str:
        """Make :meth:`predict` faster; returns what was done (``"fused+channels_last+onednn_graph"``,
        ``"fused+channels_last"``, ``"channels_last"``, ...).

        Batch norms are folded into the preceding convolutions (``torch.fx.experimental.optimization.fuse``,
        eval mode only) and the model runs in channels-last memory format (oneDNN's fast path on CPU, tensor cores
        on GPU; figures: see docs/benchmarks.md). The result is checked against the eager model
        on a random batch and kept only when it agrees (max abs difference 1e-3 of the output scale); a model fx
        cannot trace keeps its eager form. On CPU the result is then traced and frozen with oneDNN Graph fusion
        (:func:`_onednn_graph`, checked the same way) for fp32 passes. :meth:`embed` always runs the eager model.
        """
        from torch.fx.experimental.optimization import fuse

        x = torch.randn(check_batch, 3, self.image_size, self.image_size, device=self.device)
        with torch.inference_mode():
            want = self.model(x).float()
        tol = 1e-3 * max(1.0, float(want.abs().max()))
        done = []
        candidate = self.model
        try:
            candidate = fuse(self.model)
            done.append("fused")
        except Exception as err:  # not traceable by torch.fx: keep the eager graph
            log.info("model %s: batch norms not folded (%s)", self.model_id, str(err)[:120])
        candidate = candidate.to(memory_format=torch.channels_last)
        xc = x.contiguous(memory_format=torch.channels_last)
        done.append("channels_last")

        def agrees(module: torch.nn.Module) -> bool:
            with torch.inference_mode():
                got = module(xc).float()
            return got.shape == want.shape and float((got - want).abs().max()) <= tol

        if not agrees(candidate):
            log.warning("model %s: the optimised model disagrees with the eager one; kept eager", self.model_id)
            self.model.to(memory_format=torch.contiguous_format)
            return "eager"
        self._infer, self._channels_last = candidate, True
        if self.device.type == "cpu" and (graph := _onednn_graph(candidate, xc, agrees)) is not None:
            self._graph = graph  # used for fp32 passes; bf16 autocast runs the fused eager graph (see forward)
            done.append("onednn_graph")
        return "+".join(done)

    @classmethod
    def load(cls, model_dir: str, root: DataRoot | None = None, device: str | None = None) -> LoadedModel:
        """Read ``model.json``, ``model.pt`` (``weights_only=True``) and ``test_scores.json`` from a folder."""
        fs, path = model_location(model_dir, root)

        def read(name: str) -> bytes:
            with fs.open_input_stream(posixpath.join(path, name)) as f:
                return f.read()

        meta = model_meta(root, model_dir)
        state = torch.load(io.BytesIO(read("model.pt")), map_location="cpu", weights_only=True)
        return cls(meta, state, json.loads(read("test_scores.json")), device)

    def use_precision(self, precision: str) -> None:
        """``fp32`` (the default: the trainer's own numbers) or ``bf16``: the forward pass under
        ``torch.autocast`` in bfloat16 (GPUs, and CPUs with AVX512-BF16 or AMX; speed: see docs/benchmarks.md;
        scores move by about 1e-2, so percentiles against the fp32 test set shift slightly)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.autocast = torch.bfloat16 if precision == "bf16" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The model's raw outputs for a normalised batch, through the optimised module when there is one."""
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.autocast is not None:  # a traced graph would ignore autocast: the eager (fused) module runs
            with torch.autocast(self.device.type, dtype=self.autocast):
                return self._infer(x).float()
        return (self._graph if self._graph is not None else self._infer)(x)

    def _batch(self, crops) -> torch.Tensor:
        return decode_images(crops, self.image_size, self.meta.mean, self.meta.std).to(self.device)

    @torch.no_grad()
    def predict(self, crops: list) -> tuple[np.ndarray, list[str | None]]:
        """Scores (P(class 1) binary, max class probability multi-class, value regression) and class names."""
        if not crops:
            return np.empty(0), []
        return self._scores(self.forward(self._batch(crops)))

    @torch.inference_mode()  # no autograd bookkeeping at all (the outputs only become numpy arrays)
    def predict_pixels(self, pixels) -> tuple[np.ndarray, list[str | None]]:
        """:meth:`predict` for crops already decoded and resized (uint8 N x S x S x 3, ``S = image_size``, as
        :func:`pipeline.model.pixels.model_pixels` makes them): the scorer decodes in its read tasks."""
        if len(pixels) == 0:
            return np.empty(0), []
        return self._scores(self.forward(normalise_pixels(pixels, self.meta.mean, self.meta.std, self.device)))

    def _scores(self, out: torch.Tensor) -> tuple[np.ndarray, list[str | None]]:
        out = out.float().cpu().numpy()
        scores, pred = scores_from_outputs(self.kind, out, self.meta.target_mean, self.meta.target_std)
        names = [None] * len(out) if pred is None else [self.class_names[int(i)] for i in pred]
        return np.asarray(scores, dtype=np.float64), names

    def score(self, crops: list | None = None, *, pixels=None) -> Scores:
        """Score, test-set percentile and class name of each crop: PIL images (:meth:`predict`), or ``pixels``
        already decoded and resized (:meth:`predict_pixels`). The one post-processing of the model's outputs that
        the score stage, ``rate`` / ``best-crop`` and the report share."""
        if (crops is None) == (pixels is None):
            raise TypeError("score() takes crops or pixels=, exactly one of them")
        n = len(crops) if pixels is None else len(pixels)
        raw, names = self.predict(crops) if pixels is None else self.predict_pixels(pixels)
        scores = np.asarray(raw, dtype=np.float64).reshape(n, -1)[:, 0] if n else np.empty(0)
        return Scores(scores, np.asarray(self.percentile(scores), dtype=np.float64).reshape(-1), list(names))

    @torch.no_grad()
    def embed(self, crops: list) -> np.ndarray:
        """Penultimate features, one row per crop."""
        if not crops:
            return np.empty((0, 0), dtype=np.float32)
        return self.model.embed(self._batch(crops)).float().cpu().numpy()

    def percentile(self, scores) -> np.ndarray:
        """Share of the test-set scores strictly below each score, 0..1."""
        s = np.asarray(scores, dtype=np.float64)
        if len(self.test_scores) == 0:
            return np.full(s.shape, np.nan)
        return np.searchsorted(self.test_scores, s, side="left") / len(self.test_scores)
