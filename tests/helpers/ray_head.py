"""The Ray-head fixture of the tests: one definition, each module says what head it needs.

``head = head_fixture(num_cpus=4)`` at module level declares a fixture named ``head`` (module scope unless
``scope`` says otherwise) that yields a running :class:`pipeline.testing.RayHead` and always stops it.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.testing import ray_head


def head_fixture(name: str = "head", *, scope: str = "module", **options: Any):
    """A pytest fixture ``name`` yielding ``pipeline.testing.ray_head(**options)`` (token auth, 127.0.0.1)."""

    @pytest.fixture(scope=scope, name=name)
    def _head():
        with ray_head(**options) as head:
            yield head

    return _head
