"""The labels report: ``labels/report.html`` (PNG plots inlined) and ``labels/report.json`` beside the Parquet.

What it shows: for selfies, the posts left after each filter (in the rule's order), the label balance per group,
histograms of likes and likes/followers; class counts of the department labels; the beauty targets' histogram;
and, when the demo's hidden quality is given (``truth``: a table ``item_id, quality``, from
``pipeline.demo.truth``), how well each signal recovers it: Spearman and Pearson correlation with quality of the
group-ranked label, the within-group like percentile, and raw likes. The group ranking should do clearly better
than raw likes, which mostly measure followers.

Statistics are computed with polars over only the columns they need; histograms use at most
``labels.report_sample_rows`` rows (every k-th row, deterministic).

Example::

    stats = write_report(DataRoot("data"), cfg, truth=pipeline.demo.truth(n_posts=700, seed=0))
"""

from __future__ import annotations

import base64
import html
from typing import Any

import polars as pl

from pipeline.config import Config
from pipeline.labels.io import scan
from pipeline.labels.selfie import FILTER_ORDER
from pipeline.labels.tasks import TASKS
from pipeline.plots import png_bytes, pyplot
from pipeline.store import LABELS_DS, STATUS_OK, DataRoot


def _filter_slot(reason: str) -> int:
    for i, f in enumerate(FILTER_ORDER):
        if f.endswith("*") and reason.startswith(f[:-1]) or f == reason:
            return i
    return FILTER_ORDER.index("face_*")  # the faces stage's own reasons (no_face, low_prob, ...)


def filter_cascade(reasons: dict[str | None, int]) -> list[dict[str, Any]]:
    """``[{"filter", "removed", "remaining"}]`` in rule order, from counts per reason (None = kept)."""
    total = sum(reasons.values())
    rows = [{"filter": "input", "removed": 0, "remaining": total}]
    left = total
    for reason, n in sorted(((r, n) for r, n in reasons.items() if r is not None), key=lambda x: _filter_slot(x[0])):
        left -= n
        rows.append({"filter": reason, "removed": n, "remaining": left})
    return rows


def _sample(lf: pl.LazyFrame, n_rows: int, cap: int) -> pl.LazyFrame:
    return lf.gather_every(max(1, -(-n_rows // cap)))


def selfie_stats(root: DataRoot, dataset: str, cfg: Config, truth: Any = None) -> dict[str, Any]:
    """Counts, group balance, histogram data and (with ``truth``) correlations of the selfie labels."""
    return selfie_frame_stats(scan(root, dataset), cfg.labels.report_sample_rows, truth)


def selfie_frame_stats(lf: pl.LazyFrame, cap: int, truth: Any = None) -> dict[str, Any]:
    """:func:`selfie_stats` of a lazy frame of selfie labels (histograms over at most ``cap`` rows)."""
    reasons = lf.group_by("reason").len().collect(engine="streaming")
    counts = {r: int(n) for r, n in reasons.iter_rows()}
    ok = lf.filter(pl.col("status") == STATUS_OK)
    groups = (
        ok.group_by("group_id")
        .agg(pl.col("label").mean().alias("share_good"), pl.len().alias("n"))
        .collect(engine="streaming")
    )
    n_rows = sum(counts.values())
    sample = _sample(lf.select("likes", "likes_per_follower"), n_rows, cap).collect(engine="streaming")
    stats: dict[str, Any] = {
        "rows": n_rows,
        "ok": counts.get(None, 0),
        "excluded": {r: n for r, n in sorted(counts.items(), key=lambda x: str(x[0])) if r is not None},
        "cascade": filter_cascade(counts),
        "groups": groups.height,
        "group_share_good_min": groups["share_good"].min() if groups.height else None,
        "group_share_good_max": groups["share_good"].max() if groups.height else None,
        "groups_exactly_half": int((groups["share_good"] == 0.5).sum()) if groups.height else 0,
        "_groups": groups,
        "_sample": sample,
    }
    if truth is not None:
        stats["truth"] = truth_correlations(ok, truth)
    return stats


def truth_correlations(ok: pl.LazyFrame, truth: Any) -> dict[str, Any]:
    """Correlation with the hidden quality of the label, the like percentile, likes/follower and raw likes."""
    t = truth if isinstance(truth, pl.DataFrame) else pl.from_arrow(truth)
    j = ok.select("item_id", "label", "like_percentile", "likes", "likes_per_follower").join(
        t.lazy().select("item_id", pl.col("quality").cast(pl.Float64)), on="item_id", how="inner"
    )
    res: dict[str, Any] = {"n": 0}
    exprs = []
    for col in ("label", "like_percentile", "likes_per_follower", "likes"):
        for method in ("spearman", "pearson"):
            exprs.append(pl.corr(pl.col(col).cast(pl.Float64), "quality", method=method).alias(f"{col}_{method}"))
    out = j.select(pl.len().alias("n"), *exprs).collect()
    res.update({k: (None if v is None else round(float(v), 4)) for k, v in out.row(0, named=True).items()})
    res["n"] = int(out["n"][0])
    if res.get("label_spearman") is not None and res.get("likes_spearman") is not None:
        res["group_ranking_beats_raw_likes"] = bool(res["label_spearman"] > res["likes_spearman"])
    return res


def _png(fig) -> str:
    return base64.b64encode(png_bytes(fig, dpi=80)).decode()


def _plots(stats: dict[str, Any]) -> list[tuple[str, str]]:
    plt = pyplot()
    out: list[tuple[str, str]] = []
    for name, task in TASKS.items():
        if stats.get(name) and task.plot:
            drawn = task.call("plot", stats[name], plt)
            if drawn is not None:
                out.append((drawn[0], _png(drawn[1])))
    return out


def selfie_plot(s: dict[str, Any], plt) -> tuple[str, Any] | None:
    import numpy as np

    if not s["_sample"].height:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    likes = s["_sample"]["likes"].drop_nulls().to_numpy()
    axes[0].hist(np.log10(1 + np.clip(likes, 0, None)), bins=50)
    axes[0].set_xlabel("log10(1 + likes)")
    lpf = s["_sample"]["likes_per_follower"].drop_nulls().to_numpy()
    if lpf.size:
        axes[1].hist(np.clip(lpf, 0, np.quantile(lpf, 0.99)), bins=50)
    axes[1].set_xlabel("likes / followers (clipped at p99)")
    g = s["_groups"]
    if g.height:
        axes[2].hist(g["share_good"].to_numpy(), bins=21, range=(0, 1))
    axes[2].set_xlabel("share labelled good per group")
    return "Selfie posts", fig


def department_plot(d: dict[str, Any], plt) -> tuple[str, Any] | None:
    if not d["classes"]:
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.bar(list(d["classes"]), list(d["classes"].values()))
    ax.set_ylabel("photos")
    return "Department classes", fig


def beauty_plot(b: dict[str, Any], plt) -> tuple[str, Any] | None:
    if b.get("_targets") is None or not len(b["_targets"]):
        return None
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.hist(b["_targets"], bins=40)
    ax.set_xlabel("beauty score")
    return "Beauty scores", fig


def _table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "<p>(none)</p>"
    head = "".join(f"<th>{html.escape(str(k))}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in r.values()) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(stats: dict[str, Any]) -> str:
    """The report page (self-contained: plots are inline PNGs): each task's block (pipeline/labels/tasks.py)."""
    parts = ["<!doctype html><meta charset=utf-8><title>facerank labels</title>",
             "<style>body{font-family:sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd}"
             "table{border-collapse:collapse;margin-bottom:1em}</style><h1>Labels</h1>"]  # fmt: skip
    for name, task in TASKS.items():
        if stats.get(name):
            parts += task.call("html", stats[name])
    for title, png in _plots(stats):
        parts.append(f"<h3>{html.escape(title)}</h3><img src='data:image/png;base64,{png}'>")
    for note in stats.get("notes", []):
        parts.append(f"<p><i>{html.escape(note)}</i></p>")
    return "\n".join(parts)


def selfie_html(s: dict[str, Any]) -> list[str]:
    parts = [f"<h2>Selfies</h2><p>{s['rows']} posts, {s['ok']} labelled, {s['groups']} groups.</p>",
             "<h3>Posts left after each filter</h3>" + _table(s["cascade"]),
             "<h3>Label balance per group</h3>"
             f"<p>share labelled good: min {s['group_share_good_min']}, max {s['group_share_good_max']}; "
             f"{s['groups_exactly_half']} of {s['groups']} groups exactly half.</p>"]  # fmt: skip
    if "truth" in s:
        t = s["truth"]
        rows = [
            {"signal": k, "spearman": t.get(f"{k}_spearman"), "pearson": t.get(f"{k}_pearson")}
            for k in ("label", "like_percentile", "likes_per_follower", "likes")
        ]
        parts.append(f"<h3>Recovery of the demo's hidden quality (n={t['n']})</h3>" + _table(rows))
    return parts


def department_html(d: dict[str, Any]) -> list[str]:
    return ["<h2>Departments</h2>" + _table([{"class": k, "photos": v} for k, v in d["classes"].items()]),
            _table([{"reason": k, "rows": v} for k, v in d["excluded"].items()])]  # fmt: skip


def beauty_html(b: dict[str, Any]) -> list[str]:
    return [f"<h2>Beauty</h2><p>{b['ok']} of {b['rows']} images scored.</p>",
            _table([{"split": k, "rows": v} for k, v in b["splits"].items()])]  # fmt: skip


def public(stats: dict[str, Any]) -> dict[str, Any]:
    """The JSON-serialisable part of the stats (private ``_`` entries dropped)."""
    if isinstance(stats, dict):
        return {k: public(v) for k, v in stats.items() if not str(k).startswith("_")}
    if isinstance(stats, list):
        return [public(v) for v in stats]
    return stats


def collect_stats(root: DataRoot, cfg: Config, truth: Any = None) -> dict[str, Any]:
    """Statistics of every labels task present under the root (pipeline/labels/tasks.py)."""
    stats: dict[str, Any] = {"notes": []}
    for name, task in TASKS.items():
        dataset = root.labels_dataset(name)
        if root.has(dataset):
            stats[name] = task.call("stats", root, dataset, cfg, truth)
    return stats


def department_stats(root: DataRoot, dataset: str, cfg: Config, truth: Any = None) -> dict[str, Any]:
    d = scan(root, dataset).select("status", "reason", "class_name").collect()
    ok = d.filter(pl.col("status") == STATUS_OK)
    return {
        "rows": d.height,
        "ok": ok.height,
        "classes": dict(ok.group_by("class_name").len().sort("class_name").iter_rows()),
        "excluded": dict(d.filter(pl.col("status") != STATUS_OK).group_by("reason").len().sort("reason").iter_rows()),
    }


def beauty_stats(root: DataRoot, dataset: str, cfg: Config, truth: Any = None) -> dict[str, Any]:
    b = scan(root, dataset).select("status", "split", "target").collect()
    ok = b.filter(pl.col("status") == STATUS_OK)
    return {
        "rows": b.height,
        "ok": ok.height,
        "splits": dict(ok.group_by("split").len().sort("split").iter_rows()),
        "_targets": ok["target"].drop_nulls().to_numpy(),
    }


def write_report(root: DataRoot, cfg: Config, truth: Any = None, notes: list[str] | None = None) -> dict[str, Any]:
    """Write ``labels/report.html`` and ``labels/report.json``; returns the JSON-serialisable stats."""
    stats = collect_stats(root, cfg, truth)
    stats["notes"] = list(notes or [])
    root.write_bytes_atomic(root.path(LABELS_DS, "report.html"), render_html(stats).encode())
    pub = public(stats)
    root.write_json(root.path(LABELS_DS, "report.json"), pub)
    return pub
