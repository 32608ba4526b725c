"""A 2-D t-SNE map of penultimate-layer embeddings, drawn with a thumbnail of each face (scikit-learn + matplotlib).

Example::

    xy = tsne_2d(embeddings)                       # (n, 2)
    png = tsne_png(xy, thumbnails, scores)         # PNG bytes
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from pipeline.plots import png_bytes, pyplot


def tsne_2d(embeddings: np.ndarray, seed: int = 0) -> np.ndarray:
    """Embed ``(n, d)`` features in 2-D with :class:`sklearn.manifold.TSNE` (perplexity adapted to small n)."""
    from sklearn.manifold import TSNE

    x = np.asarray(embeddings, dtype=np.float32).reshape(len(embeddings), -1)
    n = len(x)
    if n < 3:
        return np.zeros((n, 2), dtype=np.float32)
    perplexity = float(max(2.0, min(30.0, (n - 1) / 3.0)))
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed, max_iter=500)
    return tsne.fit_transform(x).astype(np.float32)


def tsne_png(
    xy: np.ndarray, thumbnails: list[Image.Image], scores: np.ndarray | None = None, zoom_px: int = 28
) -> bytes:
    """The map as a PNG: each point a small thumbnail, framed in a colour that follows its score."""
    plt = pyplot()
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    fig, ax = plt.subplots(figsize=(9, 9))
    cmap = plt.get_cmap("viridis")
    s = np.asarray(scores if scores is not None else np.zeros(len(xy)), dtype=np.float64)
    lo, hi = (float(s.min()), float(s.max())) if len(s) else (0.0, 1.0)
    norm = (s - lo) / (hi - lo) if hi > lo else np.full(len(s), 0.5)
    sc = ax.scatter(xy[:, 0], xy[:, 1], c=s, cmap=cmap, s=4)
    for (x, y), im, v in zip(xy, thumbnails, norm, strict=True):
        thumb = np.asarray(im.convert("RGB").resize((zoom_px, zoom_px)))
        box = AnnotationBbox(
            OffsetImage(thumb, zoom=1.0), (x, y), frameon=True, pad=0.1, bboxprops={"edgecolor": cmap(v), "lw": 1.5}
        )
        ax.add_artist(box)
    pad = 0.08 * (np.ptp(xy, axis=0) + 1e-6) if len(xy) else np.ones(2)
    if len(xy):
        ax.set_xlim(xy[:, 0].min() - pad[0], xy[:, 0].max() + pad[0])
        ax.set_ylim(xy[:, 1].min() - pad[1], xy[:, 1].max() + pad[1])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"t-SNE of penultimate-layer embeddings ({len(xy)} faces)")
    fig.colorbar(sc, ax=ax, fraction=0.04, label="score")
    return png_bytes(fig, dpi=90)
