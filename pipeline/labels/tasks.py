"""The label tasks, one record each: what writes ``labels/<task>``, and what its report shows.

A :class:`LabelTask` names its builder (the labels stage runs every task that has one: ``(root, cfg, faces,
notes) -> counts``, or a note and None when its input is absent), or the command that writes it instead; its
report statistics, HTML block and plot (``labels/report.html``). Functions are ``module:function`` paths,
imported when called (as Scrapy's handler tables do), so this table imports nothing and nothing imports in a
cycle through it. The schema of ``labels/<task>`` is the store's (``pipeline.store.LABEL_SCHEMAS``; any other
task name is an imported one: ``IMPORTED_LABELS``).

Adding a computed task is one module (builder, stats, html, plot) and one record here, plus its schema in the
store when it adds columns.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class LabelTask:
    """One ``labels/<task>``: how it is written and reported."""

    name: str
    title: str
    build: str | None  # "module:function"(root, cfg, faces, notes) -> counts | None; None: written by `written_by`
    stats: str  # "module:function"(root, dataset, cfg, truth) -> dict (keys starting with "_" stay out of JSON)
    html: str  # "module:function"(stats) -> list of HTML parts
    plot: str | None = None  # "module:function"(stats, plt) -> (title, figure) or None
    written_by: str = "the labels stage"

    def call(self, what: str, *args: Any) -> Any:
        """Call this task's ``what`` (``build``, ``stats``, ``html``, ``plot``) with ``args``."""
        module, _, fn = getattr(self, what).partition(":")
        return getattr(importlib.import_module(module), fn)(*args)


_R = "pipeline.labels.report"
TASKS: dict[str, LabelTask] = {
    t.name: t
    for t in (
        LabelTask(
            "selfie",
            "Selfies",
            "pipeline.labels.selfie:build",
            f"{_R}:selfie_stats",
            f"{_R}:selfie_html",
            f"{_R}:selfie_plot",
        ),  # fmt: skip
        LabelTask(
            "department",
            "Departments",
            "pipeline.labels.departments:build",
            f"{_R}:department_stats",
            f"{_R}:department_html",
            f"{_R}:department_plot",
        ),  # fmt: skip
        LabelTask(
            "beauty",
            "Beauty",
            None,
            f"{_R}:beauty_stats",
            f"{_R}:beauty_html",
            f"{_R}:beauty_plot",
            written_by="python -m pipeline labels import-scores",
        ),  # fmt: skip
    )
}
