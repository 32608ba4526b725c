"""Importing torchvision without importing ``torch._dynamo``: a scoring actor's start-up, shorter.

``torchvision/ops/roi_align.py`` imports ``torch._dynamo.utils.is_compile_supported`` at module level (for a lazy
``torch.compile`` of ``roi_align``), and ``torchvision.models`` imports ``torchvision.ops``, so every
``import torchvision`` imports all of ``torch._dynamo``: about as long as importing torch itself, in every process
that only wants a ResNet for inference (docs/benchmarks.md, score start-up). :func:`import_torchvision` imports
torchvision with a stand-in for that one module whose ``is_compile_supported`` imports the real one on its first
call. The stand-in sits in ``sys.modules`` only while torchvision's package is imported, so any later import of
``torch._dynamo`` (``torch.compile``, training) gets the real module, and ``roi_align`` works as before.
"""

from __future__ import annotations

import importlib
import sys
import threading
import types

_DYNAMO_UTILS = "torch._dynamo.utils"
_LOCK = threading.Lock()


def _lazy_is_compile_supported(device_type: str) -> bool:
    return importlib.import_module(_DYNAMO_UTILS).is_compile_supported(device_type)


def import_torchvision() -> types.ModuleType:
    """``import torchvision``, without importing ``torch._dynamo`` on the way (a no-op once either is imported)."""
    with _LOCK:
        if "torchvision" in sys.modules or "torch._dynamo" in sys.modules:
            import torchvision

            return torchvision
        stub = types.ModuleType(_DYNAMO_UTILS, "stand-in while torchvision imports (pipeline.model.torchvision_import)")
        stub.is_compile_supported = _lazy_is_compile_supported  # type: ignore[attr-defined]
        sys.modules[_DYNAMO_UTILS] = stub
        try:
            import torchvision
        finally:
            if sys.modules.get(_DYNAMO_UTILS) is stub:
                del sys.modules[_DYNAMO_UTILS]
        return torchvision
