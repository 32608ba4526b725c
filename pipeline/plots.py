"""Figures to PNG: matplotlib on its Agg backend (no display needed), a figure saved as PNG bytes and closed.

The one place the training plots (``models/<run_id>/plots/*.png``), the labels report's plots and the model report's
histogram and t-SNE map turn a figure into bytes; each caller keeps its own resolution. Imports nothing of
``pipeline``, so stages and the report alike may use it.

Example::

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1])
    png = png_bytes(fig, dpi=100)
"""

from __future__ import annotations

import io
from typing import Any


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend, imported on first use (matplotlib is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def png_bytes(fig: Any, dpi: int) -> bytes:
    """``fig`` as PNG bytes (tight bounding box), and the figure closed."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()
