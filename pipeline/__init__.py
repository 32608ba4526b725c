"""facerank: a Ray pipeline from public web pages to trained face-image models and scheduled scores.

Stages (each a module or package here, each runnable alone as a Ray job from ``jobs/``):
scrape → faces → labels → train → score. They share nothing but the data root (:mod:`pipeline.store`) and the
typed config (:mod:`pipeline.config`).
"""

__version__ = "0.1.0"
