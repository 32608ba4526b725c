"""Privacy: the opt-out key (:mod:`.key`), the keyed opt-out list (:mod:`.optout`), erasure (:mod:`.erasure`) and
raw-image retention (:mod:`.retention`). The names below are re-exported: ``from pipeline.privacy import OptOut``.
Erasure and retention are imported only when asked for, so the crawl (which needs :class:`OptOut`) loads the list
and the key alone.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.privacy.key import KEY_ENV, MIN_KEY_CHARS, SCHEME_KEYED, KeyMismatchError, init_key, load_key, root_key
from pipeline.privacy.optout import LISTS, OptOut, keyed, migrate_lists, normal_acct, plain_hash, subject_hash

_LAZY = {
    "KINDS": "erasure",
    "SIDECAR_SUFFIX": "erasure",
    "forget": "erasure",
    "report_sidecar": "erasure",
    "apply_retention": "retention",
}

__all__ = [
    "KEY_ENV",
    "LISTS",
    "MIN_KEY_CHARS",
    "SCHEME_KEYED",
    "KeyMismatchError",
    "OptOut",
    "init_key",
    "keyed",
    "load_key",
    "migrate_lists",
    "normal_acct",
    "plain_hash",
    "root_key",
    "subject_hash",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"pipeline.privacy.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'pipeline.privacy' has no attribute {name!r}")
