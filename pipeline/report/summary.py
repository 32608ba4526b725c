"""The short summary printed at the end of ``make demo`` / ``jobs/run_all.py``: rows per stage, test metrics, paths."""

from __future__ import annotations

import json
from typing import Any

from pipeline.config import Config
from pipeline.store import DataRoot


def _count(root: DataRoot, dataset: str) -> int:
    if not root.has(dataset):
        return 0
    return root.dataset(dataset).count_rows()


def format_summary(cfg: Config, summaries: dict[str, dict[str, Any]], seconds: float) -> str:
    root = DataRoot(cfg.data_root)
    lines = [f"facerank: {len(summaries)} stage(s) in {seconds:.0f}s, data root {root.uri}", ""]
    lines.append(f"  {'dataset':<28} {'rows':>8}  path")
    for ds in ("fetches", "posts", "staff", "faces", "labels/selfie", "labels/department", "labels/beauty"):
        if root.has(ds):
            lines.append(f"  {ds:<28} {_count(root, ds):>8}  {root.path(ds)}")
    if root.exists("scores"):
        for part in root.list_dir("scores"):
            ds = f"scores/{part}"
            if root.has(ds):
                lines.append(f"  {ds:<28} {_count(root, ds):>8}  {root.path(ds)}")
    if root.exists("images"):
        lines.append(f"  {'images/ (raw bytes by sha256)':<28} {'':>8}  {root.path('images')}")
    train = summaries.get("train") or {}
    if train.get("model_dir"):
        lines += ["", f"  model {train.get('run_id')}: {train['model_dir']}"]
        metrics = train.get("test_metrics") or {}
        flat = {k: v for k, v in metrics.items() if isinstance(v, int | float)}
        if flat:
            lines.append("  test metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(flat.items())))
    lines += ["", "  stage summaries:"]
    for name, s in summaries.items():
        lines.append(f"    {name}: {json.dumps(s, default=str)[:400]}")
    return "\n".join(lines)
