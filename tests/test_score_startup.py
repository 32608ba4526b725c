"""The scoring actor's start-up: loading an exported model does not import ``torch._dynamo`` (torchvision's
``roi_align`` imports it at module level: about a second of every actor start), and torchvision still works whole."""

from __future__ import annotations

import subprocess
import sys

from helpers.score_model import write_model
from pipeline.store import DataRoot


def test_loading_a_model_does_not_import_dynamo_and_torchvision_still_works(data_root):
    root = DataRoot(str(data_root))
    model_dir = write_model(root, image_size=32)  # LoadedModel imports torchvision for every backbone
    code = (
        "import sys, numpy as np, torch\n"
        "from pipeline.store import DataRoot\n"
        "from pipeline.model.loaded import LoadedModel\n"
        f"m = LoadedModel.load({model_dir!r}, DataRoot({str(data_root)!r}), device='cpu')\n"
        "m.optimize_for_inference()\n"
        "out = m.score(pixels=np.zeros((2, 32, 32, 3), np.uint8))\n"
        "loaded = 'torch._dynamo' in sys.modules\n"
        "from torchvision.ops import roi_align\n"  # the real torch._dynamo.utils from here on
        "box = [torch.tensor([[0.0, 0.0, 4.0, 4.0]])]\n"
        "shape = tuple(roi_align(torch.rand(1, 1, 8, 8), box, 2).shape)\n"
        "import torch._dynamo.utils as u\n"
        "print(len(out.score), loaded, shape, u.is_compile_supported('cpu'), type(u).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.split() == ["2", "False", "(1,", "1,", "2,", "2)", "True", "module"], out.stdout
