"""The short summary printed at the end of ``make demo`` / ``jobs/run_all.py``: rows per stage, test metrics, paths."""

from __future__ import annotations

import json
from typing import Any

from pipeline.config import Config
from pipeline.store import (
    FACES_DS,
    FETCHES_DS,
    IMAGES_DIR,
    LABEL_SCHEMAS,
    POSTS_DS,
    SCORES_DS,
    STAFF_DS,
    DataRoot,
    sub_dataset,
)


def _count(root: DataRoot, dataset: str) -> int:
    if not root.has(dataset):
        return 0
    return root.dataset(dataset).count_rows()


def _datasets(root: DataRoot) -> list[str]:
    """The datasets the summary lists, in pipeline order: inputs, labels per task, scores per partition."""
    names = [FETCHES_DS, POSTS_DS, STAFF_DS, FACES_DS] + [root.labels_dataset(t) for t in LABEL_SCHEMAS]
    if root.exists(SCORES_DS):
        names += [sub_dataset(SCORES_DS, part) for part in root.list_dir(SCORES_DS)]
    return names


def _numbers(d: dict[str, Any], prefix: str = "", depth: int = 0) -> dict[str, Any]:
    """The numeric entries of a stage summary, one level of nesting flattened (``selfie.ok``)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[prefix + k] = round(v, 3) if isinstance(v, float) else v
        elif isinstance(v, dict) and depth == 0 and k not in ("test", "excluded", "reasons", "errors_by_reason"):
            out.update(_numbers(v, f"{k}.", 1))
    return out


def format_summary(cfg: Config, summaries: dict[str, dict[str, Any]], seconds: float) -> str:
    root = DataRoot(cfg.data_root)
    lines = [f"facerank: {len(summaries)} stage(s) in {seconds:.0f}s, data root {root.uri}", ""]
    lines.append(f"  {'dataset':<28} {'rows':>8}  path")
    for ds in _datasets(root):
        if root.has(ds):
            lines.append(f"  {ds:<28} {_count(root, ds):>8}  {root.path(ds)}")
    if root.exists(IMAGES_DIR):
        lines.append(f"  {IMAGES_DIR + '/ (raw bytes by sha256)':<28} {'':>8}  {root.path(IMAGES_DIR)}")
    train = summaries.get("train") or {}
    if train.get("model_dir"):
        lines += ["", f"  model {train.get('run_id')}: {train['model_dir']}"]
        metrics = train.get("test") or {}
        flat = {k: v for k, v in metrics.items() if isinstance(v, int | float) and k != "n"}
        if flat:
            n = metrics.get("n", "?")
            lines.append(f"  test metrics (n={n}): " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(flat.items())))
    lines += ["", "  stage summaries (counts):"]
    for name, s in summaries.items():
        counts = _numbers(s)
        lines.append(f"    {name:<7} {json.dumps(counts, default=str)}")
    return "\n".join(lines)
