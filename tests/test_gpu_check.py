"""benchmarks/gpu_check.py on the CPU: the device machine's check runs end to end at tiny sizes, without Ray.

No test here needs a GPU: the script is run with ``--cpu-smoke`` and CUDA hidden, and it makes ``ray`` and
``polars`` unimportable itself (the device machine has neither), so a pass here means the project code it loads
imports there too.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"
BENCHES = {
    "gpu_mtcnn",
    "gpu_mtcnn_540x960_batched",
    "gpu_mtcnn_540x960_single",
    "gpu_train_resnet50",
    "gpu_score_resnet50_fp32",
    "gpu_score_resnet50_bf16",
}
WITH_PEER = {"gpu_mtcnn", "gpu_mtcnn_540x960_batched", "gpu_mtcnn_540x960_single", "gpu_train_resnet50"}


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_check", mod)  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_cpu_smoke_prints_the_table_and_one_json_line_per_figure(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1"}
    jsonl = tmp_path / "figures.jsonl"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--jsonl", str(jsonl)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=420,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "| bench | ours | unit | peer | ratio | setup |"
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert {r["bench"] for r in rows} == BENCHES and len(rows) == len(BENCHES)
    assert [json.loads(line) for line in jsonl.read_text().splitlines()] == rows  # the same lines, as measured
    for r in rows:
        assert "error" not in r and "skipped" not in r, r
        assert r["unit"] == "images/s" and r["ours"] > 0 and r["images"] > 0 and r["seconds"] > 0, r
        assert r["smoke"] is True and r["device"].startswith("cpu"), r
        assert f"| {r['bench']} | {r['ours']} | images/s |" in proc.stdout
        if r["bench"] in WITH_PEER:
            assert r["peer"] > 0 and r["ratio"] == round(r["ours"] / r["peer"], 3), r
        else:
            assert "peer" not in r and "ratio" not in r, r
    by = {r["bench"]: r for r in rows}
    assert by["gpu_mtcnn"]["detector"] == "pipeline.faces.detector.FaceDetector.detect"
    assert by["gpu_mtcnn_540x960_single"]["batch"] == 1 and by["gpu_mtcnn_540x960_single"]["peer_same_gpu"] > 0
    assert by["gpu_train_resnet50"]["images"] == 2  # one training step of 2 images at 32 px
    assert by["gpu_score_resnet50_bf16"]["entry"] == "LoadedModel.score(pixels=)"
    assert by["gpu_score_resnet50_fp32"]["forward_only"] > 0


def test_a_failed_or_skipped_figure_is_a_row_not_a_crash():
    gc = _load_script()
    text = gc.table(
        [
            {"bench": "gpu_mtcnn", "error": "ModuleNotFoundError: No module named 'facenet_pytorch'"},
            {"bench": "gpu_train_resnet50", "skipped": "budget of 300 s spent"},
            {"bench": "gpu_score_resnet50_fp32", "ours": 12.5, "unit": "images/s", "size": 224, "batch": 256},
        ]
    )
    assert "| gpu_mtcnn | - | | | | ModuleNotFoundError: No module named 'facenet_pytorch' |" in text
    assert "| gpu_train_resnet50 | - | | | | budget of 300 s spent |" in text
    assert "| gpu_score_resnet50_fp32 | 12.5 | images/s |  |  | size 224, batch 256 |" in text


def test_timed_loop_stops_at_its_call_count_and_counts_images():
    gc = _load_script()
    calls = []
    res = gc.timed_loop(lambda: calls.append(1) or 3, max_calls=4, max_seconds=60.0, finish=lambda: None)
    assert len(calls) == 4 and res["images"] == 12 and res["calls"] == 4 and res["ours"] > 0
