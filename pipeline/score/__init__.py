"""The score stage and its tools: a trained model's scores for new images, one photo, and a schedule.

Modules: :mod:`~pipeline.score.stage` (``run``: plan → build → write → summarise), :mod:`~pipeline.score.inference`
(the Ray Data pieces: face rows, crop preparation, the scoring actor), :mod:`~pipeline.score.photo` (rate one photo,
best crop: ``python -m pipeline rate`` / ``best-crop``), :mod:`~pipeline.score.scheduler` (submits the score job on
a cron schedule: ``python -m pipeline scheduler``). A model's scores and percentiles come from
:meth:`pipeline.model.loaded.LoadedModel.score`, the same for all three.
"""

from pipeline.score.photo import best_crop, format_rating, rate_photo
from pipeline.score.scheduler import Scheduler
from pipeline.score.stage import run

__all__ = ["Scheduler", "best_crop", "format_rating", "rate_photo", "run"]
