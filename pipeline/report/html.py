"""The model report: one static, self-contained HTML page per trained model (every image inlined as a data URI).

    python -m pipeline report --run data/demo/models/<run_id>      # → <run dir>/report.html

What it shows: a link to the model card (``MODEL_CARD.md``); the model's test metrics (intervals, baseline, per
class, confusion matrix, k-fold mean ± std); the top and bottom scored faces as image grids; a histogram of the scores;
the training curve and the confusion matrix or scatter written by training (the model dir's PNGs); a 2-D t-SNE map
of the penultimate-layer embeddings with thumbnails (:mod:`pipeline.report.tsne`).

Beside the page, ``report.images.json`` lists the full sha256 of every face it shows (the grids and the t-SNE
thumbnails): ``forget`` deletes every report that shows a forgotten person's face. A report is written under the
``report`` lock, which ``forget`` also holds, and leaves out every image on the opt-out list; right before the page
is written the list is read again, and a face on it stops the write (:class:`OptedOutFaceError`).

Two steps: :func:`gather_report` returns what the page shows (:class:`ReportData`: the model's facts, metrics and
plots, the faces with their scores, the t-SNE points), :func:`render_report` turns that into the page.

The scores come from the score stage's output for this model id. When the model has not scored anything yet, up to
``score.report_tsne_points`` face crops of the face stage are scored on the spot, and the page says so.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
import posixpath
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from pipeline.config import Config
from pipeline.locks import LockLostError, stage_lock
from pipeline.model.meta import RecipeError, model_recipe
from pipeline.plots import png_bytes, pyplot
from pipeline.privacy import OptOut, report_sidecar
from pipeline.store import FACES_DS, SCORES_DS, DataRoot

CARD_FILE = "MODEL_CARD.md"  # written by the export (pipeline/train/card.py), linked from the page


def _uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def histogram_png(scores: np.ndarray, title: str) -> bytes:
    """A histogram of scores as PNG bytes."""
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    ax.hist(scores, bins=min(40, max(5, len(scores) // 4)), color="#4477aa", edgecolor="white")
    ax.set_xlabel("score")
    ax.set_ylabel("images")
    ax.set_title(title)
    return png_bytes(fig, dpi=90)


def _model_pngs(fs: pafs.FileSystem, model_dir: str) -> list[tuple[str, bytes]]:
    """Every PNG the training run left in its model dir (plots), except checkpoints."""
    infos = fs.get_file_info(pafs.FileSelector(model_dir, recursive=True, allow_not_found=True))
    out = []
    for f in sorted(infos, key=lambda i: i.path):
        rel = posixpath.relpath(f.path, model_dir)
        if f.type == pafs.FileType.File and rel.lower().endswith(".png") and not rel.startswith("checkpoints"):
            with fs.open_input_stream(f.path) as s:
                out.append((rel, s.read()))
    return out


def _read_json(fs: pafs.FileSystem, path: str) -> dict:
    try:
        with fs.open_input_stream(path) as s:
            return json.loads(s.read())
    except (OSError, ValueError):
        return {}


def _scores_for(root: DataRoot, model_id: str) -> pa.Table:
    if not root.has(SCORES_DS):
        return pa.table({"image_sha256": pa.array([], pa.string()), "score": pa.array([], pa.float64())})
    flt = (pc.field("model_id") == model_id) & (pc.field("status") == "ok")
    t = root.read(SCORES_DS, columns=["image_sha256", "score", "predicted", "percentile"], filter=flt)
    return t


def _crops(root: DataRoot, shas: list[str] | None, limit: int | None, recipe: str | None) -> dict[str, bytes]:
    """image_sha256 → the ``faces`` crop JPEG (kept faces made by ``recipe``, the model's: the crops it scores),
    for ``shas`` or the first ``limit``."""
    if recipe is None or not root.has(FACES_DS):
        return {}
    flt = (pc.field("kept") == True) & (pc.field("recipe") == recipe)  # noqa: E712 - a pyarrow expression
    if shas is not None:
        flt = flt & pc.field("image_sha256").isin(shas)
    t = root.read(FACES_DS, columns=["image_sha256", "crop_jpeg"], filter=flt)
    t = t.filter(pc.is_valid(t["crop_jpeg"]))
    if limit is not None:
        t = t.sort_by("image_sha256").slice(0, limit)
    return dict(zip(t["image_sha256"].to_pylist(), t["crop_jpeg"].to_pylist(), strict=True))


def _grid(title: str, items: list[tuple[str, bytes, float, str | None]]) -> str:
    cells = "".join(
        f'<figure><img src="{_uri(jpeg, "image/jpeg")}" alt="{html.escape(sha[:12])}" width="112" height="112">'
        f"<figcaption>{score:.3f}{(' · ' + html.escape(str(pred))) if pred else ''}</figcaption></figure>"
        for sha, jpeg, score, pred in items
    )
    return f"<section><h2>{html.escape(title)}</h2><div class='grid'>{cells or '<p>none</p>'}</div></section>"


def _figure(title: str, png: bytes) -> str:
    return f"<section><h2>{html.escape(title)}</h2><img class='plot' src='{_uri(png, 'image/png')}' alt=''></section>"


def _interval(ci: Any) -> str:
    return f" [{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, list) and len(ci) == 2 else ""


def _groups_table(g: dict | None) -> str:
    """The per-group test metric (the model card's factors), the largest gap and the groups too small to judge."""
    if not g:
        return ""
    metric = g["metric"]
    body = "".join(
        f"<tr><th>{html.escape(str(name))}</th><td>{v['n']}</td><td>{v[metric]:.3f}"
        f"{_interval(v.get(metric + '_ci95'))}</td></tr>"
        for name, v in g["groups"].items()
    )
    gap = g.get("gap")
    note = (
        f"largest gap {gap['value']:.3f} ({html.escape(' vs '.join(gap['between']))})"
        if gap
        else "no gap judged (fewer than two groups with enough rows)"
    )
    small = f"; too small to judge (under {g['min_n']} rows): {html.escape(', '.join(g['too_small']))}"
    return (
        f"<h3>Per {html.escape(g['column'])}</h3><table><tr><th></th><th>n</th><th>{metric}</th></tr>{body}</table>"
        f"<p>{note}{small if g['too_small'] else ''}</p>"
    )


def _metrics_table(metrics: dict) -> str:
    """Scalar test metrics, accuracy or Pearson with its 95% interval, the baseline beside it, the per-class
    precision / recall, the confusion matrix and, for a k-fold run, mean ± std over the folds."""
    test = metrics.get("test", metrics)
    rows = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{v:.4g}{_interval(test.get(f'{k}_ci95'))}</td></tr>"
        for k, v in test.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    )
    base = test.get("baseline") or {}
    if base:
        what = ", ".join(f"{k} {v:.4g}" for k, v in base.items() if isinstance(v, int | float))
        label = f" ({html.escape(str(base.get('class')))})" if base.get("class") is not None else ""
        rows += (
            f"<tr><th>baseline{label}</th><td>{html.escape(what)}{_interval(base.get('ci95'))} · "
            f"{html.escape(str(base.get('rule', '')))}</td></tr>"
        )
    if metrics.get("protocol"):
        rows += f"<tr><th>protocol</th><td>{html.escape(str(metrics['protocol']))}</td></tr>"
    out = f"<section><h2>Test metrics</h2><table>{rows or '<tr><td>none recorded</td></tr>'}</table>"
    per_class = test.get("per_class") or {}
    if per_class:
        body = "".join(
            f"<tr><th>{html.escape(str(n))}</th><td>{c['precision']:.3f}</td><td>{c['recall']:.3f}</td>"
            f"<td>{c['support']}</td></tr>"
            for n, c in per_class.items()
        )
        head = "<tr><th></th><th>precision</th><th>recall</th><th>support</th></tr>"
        out += f"<h3>Per class</h3><table>{head}{body}</table>"
    confusion = test.get("confusion")
    if confusion and per_class:
        names = list(per_class)
        head = "".join(f"<th>{html.escape(str(n))}</th>" for n in names)
        body = "".join(
            f"<tr><th>{html.escape(str(names[i]))}</th>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
            for i, row in enumerate(confusion)
        )
        out += f"<h3>Confusion matrix (rows true, columns predicted)</h3><table><tr><th></th>{head}</tr>{body}</table>"
    out += _groups_table(test.get("by_group"))
    cal = test.get("calibration")
    if cal:
        out += f"<p>Calibration: expected calibration error {cal['ece']:.3f} ({html.escape(cal['binning'])})</p>"
    kfold = metrics.get("kfold")
    if kfold and kfold.get("mean"):
        body = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{v:.4f} ± {(kfold['std'].get(k) or 0):.4f}</td></tr>"
            for k, v in kfold["mean"].items()
            if isinstance(v, int | float) and "[" not in k
        )
        out += f"<h3>k-fold: mean ± std over the folds (kfold.md: per fold)</h3><table>{body}</table>"
    return out + "</section>"


CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;text-align:center;font-size:12px}
figure img{display:block;border-radius:4px;object-fit:cover}
img.plot{max-width:100%;border:1px solid #ddd}
table{border-collapse:collapse}th,td{padding:2px 10px;border-bottom:1px solid #eee;text-align:left}
.note{color:#a60}
"""


class OptedOutFaceError(LockLostError):
    """A face the report was about to show joined the opt-out list under the report's lock (so the lock did not
    hold: the CLI exits 4 as for a lost lock); ``str(err)`` is one line."""


def write_report(run_dir: str, cfg: Config) -> str:
    """Write ``<run_dir>/report.html`` (self-contained) for the model in ``run_dir``; returns its path.

    Holds the ``report`` lock (``forget`` holds it too, so a report never shows a face erased while it was built).
    """
    with stage_lock(cfg, "report"):
        return _write_report(run_dir, cfg)


Face = tuple[str, bytes, float, str | None]  # image_sha256, crop JPEG, score, predicted class


@dataclass
class ReportData:
    """What the page shows, gathered from the model dir and the data root (:func:`gather_report`); no HTML."""

    fs: pafs.FileSystem  # where the model dir is (the page is written there)
    mdir: str
    model_id: str
    task: str
    class_names: list[str]
    n_scored: int  # faces with a score (those on the opt-out list left out)
    note: str  # why the faces were scored on the spot, or ""
    has_card: bool  # the model dir holds MODEL_CARD.md
    metrics: dict  # metrics.json
    top: list[Face]
    bottom: list[Face]
    scores: np.ndarray  # every score, for the histogram
    training_plots: list[tuple[str, bytes]]  # the model dir's PNGs by relative path
    tsne: tuple[np.ndarray, list[Any], np.ndarray] | None  # 2-D points, thumbnails, their scores; None under 5 faces
    shown: set[str]  # every face the page shows: the grids and the t-SNE thumbnails (the sidecar's list)


def _write_report(run_dir: str, cfg: Config) -> str:
    root = DataRoot(cfg.data_root)
    data = gather_report(root, run_dir, cfg)
    page = render_report(data)
    out = posixpath.join(data.mdir, "report.html")
    listed = OptOut(root, cfg.privacy)  # read again right before the write
    if any(listed.blocks("image", h) for h in data.shown):
        n = sum(listed.blocks("image", h) for h in data.shown)
        raise OptedOutFaceError(f"{out}: {n} of its faces joined the opt-out list while it was built: not written")
    _write_with_sidecar(data.fs, data.mdir, out, page.encode("utf-8"), data.shown)
    return out if "://" not in root.uri else f"{root.uri.split('://')[0]}://{out}"


def gather_report(root: DataRoot, run_dir: str, cfg: Config) -> ReportData:
    """The model in ``run_dir``, its metrics and plots, its top and bottom scored faces (scored now when it has
    scored none) and their t-SNE map, without the faces on the opt-out list."""
    from pipeline.imaging import decode_image
    from pipeline.model.loaded import LoadedModel
    from pipeline.model.meta import model_location, resolve_model_dir
    from pipeline.report.tsne import tsne_2d

    model_dir = resolve_model_dir(root, run_dir)
    fs, mdir = model_location(model_dir, root)
    model = LoadedModel.load(model_dir, root, device="cpu")
    by_sha, crops, vals, note = _scored_faces(root, model, cfg)
    sc = cfg.score
    ranked = sorted((h for h in by_sha if h in crops), key=lambda h: -by_sha[h][0])
    n = sc.report_grid
    top = [(h, crops[h], *by_sha[h]) for h in ranked[:n]]
    bottom = [(h, crops[h], *by_sha[h]) for h in ranked[::-1][:n]]

    with_crops = [h for h in by_sha if h in crops][: sc.report_tsne_points]
    tsne = None
    if len(with_crops) >= 5:
        thumbs = [decode_image(crops[h]) for h in with_crops]
        xy = tsne_2d(np.asarray(model.embed(thumbs)), seed=sc.seed)
        tsne = (xy, thumbs, np.array([by_sha[h][0] for h in with_crops]))
    return ReportData(
        fs=fs,
        mdir=mdir,
        model_id=str(model.model_id),
        task=str(getattr(model, "task", "")),
        class_names=[str(c) for c in getattr(model, "class_names", None) or []],
        n_scored=len(by_sha),
        note=note,
        has_card=fs.get_file_info(posixpath.join(mdir, CARD_FILE)).type == pafs.FileType.File,
        metrics=_read_json(fs, posixpath.join(mdir, "metrics.json")),
        top=top,
        bottom=bottom,
        scores=vals,
        training_plots=_model_pngs(fs, mdir),
        tsne=tsne,
        shown={h for h, *_ in top + bottom} | (set(with_crops) if tsne is not None else set()),
    )


def _scored_faces(
    root: DataRoot, model: Any, cfg: Config
) -> tuple[dict[str, tuple[float, Any]], dict[str, bytes], np.ndarray, str]:
    """image_sha256 → (score, predicted class) of the faces the model scored, or when it scored none of the face
    stage's crops scored now; the crops the page may show; every score; a note when they were scored now. The faces
    on the opt-out list left out."""
    from pipeline.imaging import decode_image

    optout = OptOut(root, cfg.privacy)
    sc = cfg.score
    try:
        recipe: str | None = model_recipe(model.model_id, model.meta.inputs, cfg.faces, sc.unrecorded_inputs).to_json()
    except RecipeError:  # a model that does not record its crops: no faces are shown or scored for it
        recipe = None

    scores = _scores_for(root, model.model_id)
    keep = [not optout.blocks("image", h) for h in scores["image_sha256"].to_pylist()]
    scores = scores.filter(pa.array(keep, pa.bool_()))
    note = ""
    shas = scores["image_sha256"].to_pylist()
    vals = np.asarray(scores["score"].to_pylist(), dtype=np.float64)
    preds = scores["predicted"].to_pylist() if "predicted" in scores.column_names else [None] * len(shas)
    if len(shas):
        order = np.argsort(-vals, kind="stable")
        want = [shas[i] for i in order[: sc.report_grid * 3]] + [shas[i] for i in order[::-1][: sc.report_grid * 3]]
        rng = np.random.default_rng(sc.seed)
        sample_idx = rng.choice(len(shas), size=min(len(shas), sc.report_tsne_points), replace=False)
        want += [shas[i] for i in sample_idx]
        crops = _crops(root, sorted(set(want)), None, recipe)
    else:  # nothing scored yet: score the face stage's crops now (those made the model's way)
        crops = _crops(root, None, sc.report_tsne_points, recipe)
        crops = {h: c for h, c in crops.items() if not optout.blocks("image", h)}
        shas = list(crops)
        if shas:  # the score stage's own post-processing (LoadedModel.score)
            vals, _, preds = model.score([decode_image(crops[h]) for h in shas])
        note = "This model has not scored any images yet: the faces below were scored while writing this report."
    by_sha = {h: (float(v), p) for h, v, p in zip(shas, vals, preds, strict=True)}
    return by_sha, crops, vals, note


def render_report(data: ReportData) -> str:
    """The page of :func:`gather_report`'s data: one self-contained HTML document, every image a data URI."""
    from pipeline.report.tsne import tsne_png

    parts = [
        f"<h1>Model {html.escape(data.model_id)}</h1>",
        f"<p>task: {html.escape(data.task)} · classes: {html.escape(', '.join(data.class_names)) or '—'} · "
        f"{data.n_scored} scored images · written {dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC</p>",
    ]
    if data.note:
        parts.append(f"<p class='note'>{html.escape(data.note)}</p>")
    if data.has_card:
        parts.append(
            f"<p>Model card: <a href='{CARD_FILE}'>{CARD_FILE}</a> (data origin and licence, rows per split and "
            "class, intended use and limits)</p>"
        )
    parts.append(_metrics_table(data.metrics))
    parts.append(_grid(f"Top {len(data.top)} scored faces", data.top))
    parts.append(_grid(f"Bottom {len(data.bottom)} scored faces", data.bottom))
    if len(data.scores):
        parts.append(_figure("Score histogram", histogram_png(data.scores, f"{len(data.scores)} images")))
    for rel, png in data.training_plots:
        parts.append(_figure(f"Training: {rel}", png))
    if data.tsne is not None:
        parts.append(_figure("t-SNE of the penultimate layer", tsne_png(*data.tsne)))
    else:
        parts.append("<section><h2>t-SNE</h2><p>fewer than 5 faces: no map.</p></section>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>facerank report {html.escape(data.model_id)}</title><style>{CSS}</style></head><body>"
        + "\n".join(parts)
        + "</body></html>"
    )


def _write_with_sidecar(fs: pafs.FileSystem, mdir: str, out: str, page: bytes, shown: set[str]) -> None:
    """Write the page and its sidecar so that at every moment the sidecar lists every face of the page on disk:
    first the old and the new faces, then the page, then the new faces only (``forget`` trusts the sidecar)."""
    side = report_sidecar(out)
    old = _read_json(fs, side).get("image_sha256")
    if old is None and fs.get_file_info(out).type == pafs.FileType.File:
        fs.delete_file(out)  # a page without a readable sidecar: its faces are unknown

    def listing(shas: set[str]) -> bytes:
        return json.dumps({"report": posixpath.basename(out), "image_sha256": sorted(shas)}).encode()

    _write(fs, mdir, side, listing(shown | set(old or [])))
    _write(fs, mdir, out, page)
    _write(fs, mdir, side, listing(shown))


def _write(fs: pafs.FileSystem, mdir: str, path: str, data: bytes) -> None:
    """Write ``data`` under a temporary name in ``mdir``, then rename it to ``path``."""
    tmp = posixpath.join(mdir, f".report-{dt.datetime.now(dt.UTC):%H%M%S%f}.tmp")
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)
