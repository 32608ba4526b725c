"""MTCNN's three nets (P-Net, R-Net, O-Net) run by ONNX Runtime, with facenet-pytorch's own weights.

At first use each net is exported from the loaded ``MTCNN`` with ``torch.onnx.export`` (P-Net with dynamic batch,
height and width; R-Net and O-Net with a dynamic batch) into a cache folder keyed by a hash of the weights, written
atomically (a temporary file renamed), so actors on one node share one export and nothing is downloaded.
:func:`use_onnx` puts :class:`OrtNet` modules in place of the torch nets: facenet-pytorch's ``detect_face`` (the
pyramid, NMS, the crops for R-Net and O-Net) runs unchanged and calls them as it calls its torch modules.

The detector uses them when ``faces.runtime`` is ``onnx``, or ``auto`` on a CPU with ``onnxruntime`` and ``onnx`` (the
exporter needs it) installed (:func:`pipeline.faces.detector.resolve_runtime`).

Example::

    mtcnn = MTCNN(keep_all=True, device="cpu")
    use_onnx(mtcnn, num_threads=1)          # mtcnn.detect(...) now runs its nets with ONNX Runtime
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

# net name -> (example input shape, dynamic axes of input "x")
NETS = {
    "pnet": ((1, 3, 48, 64), {0: "n", 2: "h", 3: "w"}),
    "rnet": ((2, 3, 24, 24), {0: "n"}),
    "onet": ((2, 3, 48, 48), {0: "n"}),
}
OPSET = 17


def cache_dir(configured: str | None = None) -> Path:
    """``configured``, else ``$XDG_CACHE_HOME/facerank/mtcnn-onnx`` (``~/.cache`` when unset)."""
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facerank" / "mtcnn-onnx"


def weights_key(net: torch.nn.Module) -> str:
    """A short hash of a net's weights and the export settings: the cached file's name."""
    h = hashlib.sha256(f"opset{OPSET}".encode())
    for name, t in sorted(net.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def export(net: torch.nn.Module, name: str, folder: Path) -> Path:
    """The ONNX file of ``net`` in ``folder`` (exported now when it is not there yet)."""
    shape, axes = NETS[name]
    path = folder / f"{name}-{weights_key(net)}.onnx"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}-", suffix=".onnx")
    os.close(fd)
    try:
        cpu = net.to("cpu").eval()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's deprecation notices, once per net and node
            torch.onnx.export(
                cpu, (torch.zeros(shape),), tmp, input_names=["x"], dynamic_axes={"x": axes},
                opset_version=OPSET, dynamo=False,
            )  # fmt: skip
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


class OrtNet(torch.nn.Module):
    """One MTCNN net as an ONNX Runtime session, called like the torch module it replaces (float32 in, tensors
    out). Its one parameter is a placeholder: ``detect_face`` reads the model's dtype from it.

    ``memory_patterns`` (off here, on in ONNX Runtime's defaults): a session with them on plans one block of memory
    per distinct set of input shapes and keeps every plan. MTCNN's inputs change shape with every image size (each
    pyramid level of P-Net) and every number of candidate boxes (R-Net, O-Net), so on real photos, whose sizes all
    differ, those plans pile up and a face actor's memory grows with the images it has seen
    (``benchmarks/bench_detector_memory.py``).
    """

    def __init__(self, path: Path, num_threads: int = 1, memory_patterns: bool = False):
        super().__init__()
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = max(1, int(num_threads))
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.enable_mem_pattern = memory_patterns
        self.session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        self.dtype_anchor = torch.nn.Parameter(torch.zeros(1), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        feed = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return tuple(torch.from_numpy(o) for o in self.session.run(None, {"x": feed}))


def use_onnx(mtcnn: Any, num_threads: int = 1, folder: str | None = None, memory_patterns: bool = False) -> None:
    """Replace ``mtcnn``'s pnet, rnet and onet by :class:`OrtNet` sessions of their exported weights (CPU)."""
    where = cache_dir(folder)
    for name in NETS:
        setattr(mtcnn, name, OrtNet(export(getattr(mtcnn, name), name, where), num_threads, memory_patterns))
