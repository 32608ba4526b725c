"""The labels stage (posts + staff + faces → ``labels/selfie``, ``labels/department``, the report): re-exports.

Modules: :mod:`~pipeline.labels.stage` (``run``, the stage's entry), :mod:`~pipeline.labels.selfie` (the
group-ranking rule), :mod:`~pipeline.labels.departments` (classes and balanced weights),
:mod:`~pipeline.labels.beauty` (imported scores, ``labels/beauty``), :mod:`~pipeline.labels.splits` (person-hash
splits), :mod:`~pipeline.labels.report` (HTML/JSON report), :mod:`~pipeline.labels.io` (lazy scans).
"""

from pipeline.labels.stage import run

__all__ = ["run"]
