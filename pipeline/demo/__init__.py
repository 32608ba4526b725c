"""The bundled demo sites (a selfie feed, a flaky feed, four staff pages) and the hidden truth behind their likes.

``DemoServer`` serves them on 127.0.0.1; ``truth(n_posts, seed)`` (or ``DemoServer.truth()``) gives each post's
hidden quality q, which ``python -m pipeline demo`` passes to the labels stage as its ``truth`` option. See
docs/demo-sites.md for routes, formats and the hidden rule.
"""

from pipeline.demo.content import truth
from pipeline.demo.server import DemoServer

__all__ = ["DemoServer", "truth"]
