"""Privacy: the keyed opt-out list (:mod:`.optout`), erasure (:mod:`.forget`) and raw-image retention
(:mod:`.retention`). The names below are re-exported so ``from pipeline.privacy import OptOut, forget`` keeps working.
"""

from pipeline.privacy.forget import KINDS, SIDECAR_SUFFIX, forget, report_sidecar
from pipeline.privacy.optout import (
    KEY_ENV,
    LISTS,
    MIN_KEY_CHARS,
    SCHEME_KEYED,
    OptOut,
    keyed,
    load_key,
    migrate_lists,
    plain_hash,
    subject_hash,
)
from pipeline.privacy.retention import apply_retention

__all__ = [
    "KEY_ENV",
    "KINDS",
    "LISTS",
    "MIN_KEY_CHARS",
    "SCHEME_KEYED",
    "SIDECAR_SUFFIX",
    "OptOut",
    "apply_retention",
    "forget",
    "keyed",
    "load_key",
    "migrate_lists",
    "plain_hash",
    "report_sidecar",
    "subject_hash",
]
