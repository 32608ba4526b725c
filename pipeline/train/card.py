"""The model card: ``models/<run_id>/MODEL_CARD.md``, and the same facts under ``card`` in ``model.json``.

:func:`card_facts` gathers, at export: the task, its kind and classes; where the training data came from (an
imported set's ``labels/<task>/import.json``: name, URL, licence terms, citation, the published figure; otherwise
the sites of the labelled rows with the dates they were crawled, from ``posts`` / ``staff``); rows per split and
class; the test metrics with their 95% intervals beside the baseline (a k-fold run's card adds every fold's mean ±
std, :mod:`pipeline.train.kfold`); the backbone and where its starting weights came from; the intended use and its
limits. :func:`card_markdown` renders them.

Example::

    facts = card_facts(cfg, root, labels, test_metrics, run_id)
    root.write_bytes_atomic(f"{model_dir}/MODEL_CARD.md", card_markdown(facts).encode())
"""

from __future__ import annotations

from typing import Any

import pyarrow.compute as pc

from pipeline.config import Config
from pipeline.store import POSTS_DS, STAFF_DS, STATUS_OK, DataRoot
from pipeline.train.data import SPLITS, LabelSet

CARD_FILE = "MODEL_CARD.md"

LIMITS = [
    "Face attributes predicted from photos encode the biases of the labels they were trained on: who was photographed, "
    "by whom, who chose the images and how the labels were assigned (likes, a department page, raters' scores, a "
    "data set's annotators).",
    "These studies are not evidence that appearance reveals a person's field, character or worth; a score says how "
    "much a face resembles the faces that carried a label in this data set, nothing more.",
    "Accuracy on a small test set is uncertain: read the 95% interval and compare it with the majority-class "
    "baseline, not with chance.",
    "Not for decisions about people (hiring, admission, policing, dating, credit), nor for identifying anyone.",
]
INTENDED_USE = (
    "Reproducing and examining the published studies this pipeline is built to reproduce, on data the user may "
    "lawfully use, within the data set's licence terms (e.g. SCUT-FBP5500: non-commercial research only)."
)


def _origin(cfg: Config, root: DataRoot, labels: LabelSet) -> dict[str, Any]:
    from pipeline.labels.imports import import_info

    info = import_info(root, labels.task)
    if info is not None:
        ds = {k: v for k, v in (info.get("dataset") or {}).items() if v}
        src = info.get("source") or {}
        return {"kind": "imported", "dataset": ds, "source": src, "imported_at": info.get("imported_at")}
    t = root.read(root.labels_dataset(labels.task), columns=["site", "status"])
    sites = t.filter(pc.equal(t["status"], STATUS_OK))["site"]
    names = sorted(s for s in pc.unique(sites).to_pylist() if s)
    crawled: dict[str, dict] = {}
    for ds in (POSTS_DS, STAFF_DS):
        if not root.has(ds):
            continue
        t = root.read(ds, columns=["site", "scraped_at"])
        for site in names:
            at = t.filter(pc.equal(t["site"], site))["scraped_at"]
            if len(at) and at.null_count < len(at):
                lo, hi = pc.min(at).as_py(), pc.max(at).as_py()
                crawled[site] = {"dataset": ds, "first": lo.isoformat(), "last": hi.isoformat()}
    imported = cfg.labels.imported.model_dump()
    out: dict[str, Any] = {"kind": "crawled", "sites": names, "crawled": crawled}
    if any(imported.values()):
        out["dataset"] = {k: v for k, v in imported.items() if v}
    return out


def _rows(labels: LabelSet) -> dict[str, Any]:
    """Rows per split (and per class for classification) of the label set the model was trained on."""
    per_split = labels.counts()
    out: dict[str, Any] = {"per_split": per_split}
    if labels.kind != "regression":
        out["per_class"] = {
            s: {
                name: int(pc.sum(pc.equal(labels.split(s)["label"], i)).as_py() or 0)
                for i, name in enumerate(labels.class_names)
            }
            for s in SPLITS
        }
    return out


def _metrics(kind: str, test: dict) -> dict[str, Any]:
    keys = ("n", "pearson", "pearson_ci95", "mae", "rmse", "baseline", "by_group")
    if kind != "regression":
        keys = ("n", "correct", "accuracy", "accuracy_ci95", "baseline", "chance", "roc_auc", "per_class", "by_group")
    out = {k: test[k] for k in keys if k in test}
    if test.get("calibration"):
        out["ece"] = test["calibration"]["ece"]
    return out


def _factor_lines(m: dict) -> list[str]:
    """The card's "Factors" section: the test metric per group, the largest gap, the groups too small to judge."""
    g = m.get("by_group")
    if not g:
        return ["- The test labels carry no group (import with `--group-column`), so no per-group figures."]
    metric = g["metric"]
    pct = metric == "accuracy"
    lines = [f"Test {metric} per `{g['column']}` (95% intervals; groups under {g['min_n']} test rows are too small "
             "to judge):", "", f"| {g['column']} | n | {metric} |", "|---|---|---|"]  # fmt: skip
    for name, v in g["groups"].items():
        val = _pct(v[metric]) if pct else f"{v[metric]:.4f}"
        lines.append(f"| {name} | {v['n']} | {val}{_ci(v.get(metric + '_ci95'), pct=pct)} |")
    lines.append("")
    gap = g.get("gap")
    if gap:
        value = _pct(gap["value"]) if pct else f"{gap['value']:.4f}"
        lines.append(f"- Largest gap between groups: {value} ({gap['between'][0]} vs {gap['between'][1]})")
    else:
        lines.append("- Largest gap: not judged (fewer than two groups with enough test rows)")
    if g["too_small"]:
        lines.append(f"- Too small to judge: {', '.join(g['too_small'])}")
    return lines


def card_facts(
    cfg: Config, root: DataRoot, labels: LabelSet, test: dict, run_id: str, protocol: str | None = None
) -> dict[str, Any]:
    """The model card's facts (JSON-able): what ``model.json``'s ``card`` holds and MODEL_CARD.md shows."""
    from pipeline.model.network import weights_origin

    tc = cfg.train
    origin = _origin(cfg, root, labels)
    if protocol is None:
        src = origin.get("source") or {}
        protocol = src.get("protocol") or ("k-fold" if tc.kfold else "the label set's split")
    return {
        "model_id": run_id,
        "task": labels.task,
        "kind": labels.kind,
        "class_names": labels.class_names,
        "data": origin,
        "rows": _rows(labels),
        "protocol": protocol,
        "metrics": _metrics(labels.kind, test),
        "backbone": {"name": tc.backbone, "image_size": tc.image_size, **weights_origin(tc.backbone, tc.pretrained)},
        "training": {
            k: getattr(tc, k)
            for k in ("epochs", "freeze_epochs", "lr", "backbone_lr_scale", "label_smoothing", "mixup")
        },  # fmt: skip
        "intended_use": INTENDED_USE,
        "limits": LIMITS,
        "inputs": _inputs(labels),
    }


def _inputs(labels: LabelSet) -> str:
    """How the training crops were made, in words: every path that scores the model makes its crops this way."""
    from pipeline.faces.recipe import CropRecipe

    if not labels.recipe:
        return "not recorded (crops made before faces rows recorded how): scoring refuses this model by default"
    return f"{CropRecipe.from_json(labels.recipe).describe()}; every scoring path makes its crops this way"


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}%"


def _ci(ci: list | None, pct: bool = True) -> str:
    if not ci:
        return ""
    return f" [{_pct(ci[0])}, {_pct(ci[1])}]" if pct else f" [{ci[0]:.3f}, {ci[1]:.3f}]"


def _metric_lines(kind: str, m: dict) -> list[str]:
    if kind == "regression":
        base = m.get("baseline") or {}
        r = m.get("pearson")
        lines = [
            f"- Pearson correlation: {'–' if r is None else f'{r:.4f}'}{_ci(m.get('pearson_ci95'), pct=False)}"
            f" (95% interval), n = {m.get('n')}",
            f"- MAE: {m.get('mae', float('nan')):.4f} "
            f"(baseline, always the training mean: {base.get('mae', float('nan')):.4f})",
            f"- RMSE: {m.get('rmse', float('nan')):.4f} (baseline: {base.get('rmse', float('nan')):.4f})",
        ]
        return lines
    base = m.get("baseline") or {}
    lines = [
        f"- Accuracy: {_pct(m.get('accuracy'))}{_ci(m.get('accuracy_ci95'))} (95% Wilson interval), "
        f"{m.get('correct')} of {m.get('n')} test rows",
        f"- Majority-class baseline ({base.get('class')}): {_pct(base.get('accuracy'))}{_ci(base.get('ci95'))}; "
        f"chance 1/k: {_pct(m.get('chance'))}",
    ]
    if m.get("roc_auc") is not None:
        lines.append(f"- ROC-AUC: {m['roc_auc']:.3f}")
    if m.get("ece") is not None:
        lines.append(f"- Calibration: expected calibration error {m['ece']:.3f} of the predicted class's probability "
                     "(10 bins; plots/reliability.png)")  # fmt: skip
    for name, pcm in (m.get("per_class") or {}).items():
        lines.append(
            f"- {name}: precision {_pct(pcm['precision'])}, recall {_pct(pcm['recall'])}, support {pcm['support']}"
        )
    return lines


def card_markdown(f: dict[str, Any]) -> str:
    """MODEL_CARD.md from :func:`card_facts`."""
    d = f["data"]
    lines = [f"# Model card: {f['model_id']}", "", "## Task", ""]
    lines.append(f"- Task: `{f['task']}` ({f['kind']})")
    if f["class_names"]:
        lines.append(f"- Classes (index order): {', '.join(f['class_names'])}")
    lines += ["", "## Training data", ""]
    ds = d.get("dataset") or {}
    if d["kind"] == "imported":
        lines.append(
            f"- Imported data set: {ds.get('name') or '(unnamed)'}" + (f" <{ds['url']}>" if ds.get("url") else "")
        )
        lines.append(f"- Licence terms: {ds.get('licence') or 'not given (set labels.imported.licence)'}")
        if ds.get("citation"):
            lines.append(f"- Citation: {ds['citation']}")
        src = d.get("source") or {}
        lines.append(f"- Imported from: {src.get('kind')} {src.get('csv') or src.get('folders') or src.get('images')}"
                     f" on {d.get('imported_at')}")  # fmt: skip
    else:
        lines.append(f"- Crawled sites: {', '.join(d['sites']) or 'none recorded'}")
        for site, c in d.get("crawled", {}).items():
            lines.append(f"  - {site} ({c['dataset']}): crawled {c['first']} to {c['last']}")
        if ds:
            lines.append(f"- Data set: {ds.get('name')}; licence terms: {ds.get('licence') or 'not given'}")
    lines.append(f"- Protocol: {f['protocol']}")
    rows = f["rows"]
    lines += ["", "| split | rows |" + ("".join(f" {c} |" for c in f["class_names"]) if "per_class" in rows else ""),
              "|---|---|" + ("---|" * len(f["class_names"]) if "per_class" in rows else "")]  # fmt: skip
    for s, n in rows["per_split"].items():
        cells = "".join(f" {rows['per_class'][s][c]} |" for c in f["class_names"]) if "per_class" in rows else ""
        lines.append(f"| {s} | {n} |{cells}")
    lines += ["", "## Test metrics", ""]
    kf = f.get("kfold")
    if kf:
        lines.append(f"- {kf['folds']}-fold cross validation, mean ± std (sample) over the folds' test sets:")
        lines += [
            f"  - {k}: {v:.4f} ± {(kf['std'].get(k) or 0):.4f}"
            for k, v in kf["mean"].items()
            if isinstance(v, int | float) and "[" not in k
        ]
        lines.append(f"- The exported model is fold {kf['exported_fold']}; its own test set:")
    lines += _metric_lines(f["kind"], f["metrics"])
    ds_pub = ds.get("published")
    if ds_pub:
        lines.append(f"- Published figure to compare with: {ds_pub}")
    lines += ["", "## Factors", ""] + _factor_lines(f["metrics"])
    if f.get("inputs"):
        lines += ["", "## Inputs", "", f"- {f['inputs']}"]
    b = f["backbone"]
    lines += [
        "",
        "## Model",
        "",
        f"- Backbone: {b['name']} at {b['image_size']} px",
        f"- Starting weights: {b['origin']}",
    ]
    t = f["training"]
    lines.append(
        f"- Schedule: {t['epochs']} epochs, head only for {t['freeze_epochs']}; lr {t['lr']}, backbone lr scale "
        f"{t['backbone_lr_scale']}; label smoothing {t['label_smoothing']}; mixup {t['mixup']}"
    )
    lines += ["", "## Intended use", "", f["intended_use"], "", "## Limits", ""] + [f"- {x}" for x in f["limits"]]
    return "\n".join(lines) + "\n"
