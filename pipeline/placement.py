"""A stage's placement (``ray.placement.<stage>`` in the config) as the Ray options that carry it out.

:func:`remote_args` gives the keyword arguments for an actor's ``.options(...)`` and for Ray Data's
``map_batches(...)`` (custom ``resources``; node ``labels`` as ``label_selector``, and with ``soft`` a
``fallback_strategy`` of any node); :func:`train_scaling` the ``ScalingConfig`` arguments
(``resources_per_worker`` additions and ``label_selector``). docs/cluster.md "Placement" says where each applies.

Example::

    from pipeline.placement import remote_args
    FaceActor.options(num_cpus=1, **remote_args(cfg.ray.placement.faces))
"""

from __future__ import annotations

from typing import Any

from pipeline.config import Placement


def remote_args(p: Placement) -> dict[str, Any]:
    """Keyword arguments for ``.options()``/``map_batches()``: ``resources`` and a label selector or strategy."""
    args: dict[str, Any] = {}
    if p.resources:
        args["resources"] = dict(p.resources)
    if p.labels:
        args["label_selector"] = dict(p.labels)
        if p.soft:  # Ray tries the selector first, then the fallback: any node
            args["fallback_strategy"] = [{"label_selector": {}}]
    return args


def train_scaling(p: Placement, resources_per_worker: dict[str, float]) -> dict[str, Any]:
    """``ScalingConfig`` keyword arguments: ``resources_per_worker`` plus the custom resources, and the labels."""
    args: dict[str, Any] = {"resources_per_worker": {**resources_per_worker, **p.resources}}
    if p.labels:
        args["label_selector"] = dict(p.labels)
    return args
