"""A stage's placement (``ray.placement.<stage>`` in the config) as the Ray options that carry it out.

:func:`remote_args` gives the keyword arguments for an actor's ``.options(...)`` and for Ray Data's
``map_batches(...)`` (custom ``resources``; node ``labels`` as ``label_selector``, and with ``soft`` a
``fallback_strategy`` of any node); :func:`train_scaling` the ``ScalingConfig`` arguments
(``resources_per_worker`` additions and ``label_selector``). docs/cluster.md "Placement" says where each applies.
:func:`require_node` is the bounded wait every stage with placed work does first (scrape, faces, train, score, and
score's own face detection under ``ray.placement.faces``): Ray leaves an actor or a Train worker group whose hard
placement no node offers pending, with no time limit, so the stage waits ``node_wait_s`` for such a node to join
(an autoscaler's new node, a restarted one) and then fails with one line. docs/cluster.md "From one node to N".

Example::

    from pipeline.placement import remote_args
    FaceActor.options(num_cpus=1, **remote_args(cfg.ray.placement.faces))
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.config import ConfigError, Placement

log = logging.getLogger(__name__)


class PlacementError(ConfigError):
    """No alive node offers a stage's ``ray.placement`` (after waiting ``node_wait_s``): one line, exit 2."""


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


def _label_ok(want: str, have: str | None) -> bool:
    """One label selector value (``v``, ``!v``, ``in(a, b)``, ``!in(a, b)``) against a node's label (or None)."""
    neg = want.startswith("!")
    want = want[1:] if neg else want
    if want.startswith("in(") and want.endswith(")"):
        hit = have in {v.strip() for v in want[3:-1].split(",")}
    else:
        hit = have == want
    return hit != neg


def offers(p: Placement, node: Mapping[str, Any]) -> bool:
    """True when ``node`` (an entry of ``ray.nodes()``: ``Alive``, ``Resources``, ``Labels``) is alive and has every
    custom resource of ``p`` (total, not free) and, unless ``soft``, every label."""
    if not node.get("Alive"):
        return False
    res, labels = node.get("Resources") or {}, node.get("Labels") or {}
    if any(res.get(name, 0) < amount for name, amount in p.resources.items()):
        return False
    return p.soft or all(_label_ok(v, labels.get(k)) for k, v in p.labels.items())


def describe(p: Placement) -> str:
    """``resources {...}, labels {...}``: the placement as an error line shows it."""
    parts = [f"resources {dict(p.resources)}"] if p.resources else []
    if p.labels:
        parts.append(f"labels {dict(p.labels)}{' (soft)' if p.soft else ''}")
    return ", ".join(parts) or "anywhere"


def _node_line(n: Mapping[str, Any]) -> str:
    """``<id8> [resources] {labels}`` without Ray's own ``node:*`` resources and ``ray.io/*`` labels."""
    res = sorted(k for k in (n.get("Resources") or {}) if not k.startswith("node:"))
    labels = {k: v for k, v in (n.get("Labels") or {}).items() if not k.startswith("ray.io/")}
    return f"{str(n.get('NodeID', '?'))[:8]} {res} {labels}"


def require_node(
    stage: str,
    p: Placement,
    nodes: Callable[[], list[dict]] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    key: str | None = None,
) -> None:
    """Return once some alive node offers ``p`` (at once for an empty or soft-labels-only placement); wait at most
    ``p.node_wait_s`` for one to join, then raise :class:`PlacementError`: ``stage faces: no alive node offers
    ray.placement.faces (labels {...}) after 600s; alive nodes: ...``. ``nodes``: ``ray.nodes`` (Ray connected);
    ``key``: the placement's name under ``ray.placement`` when it is not the stage's own (score's face detection)."""
    key = key or stage
    if not p.resources and (p.soft or not p.labels):
        return
    if nodes is None:
        import ray

        nodes = ray.nodes
    deadline, warned = clock() + p.node_wait_s, False
    while True:
        alive = [n for n in nodes() if n.get("Alive")]
        if any(offers(p, n) for n in alive):
            return
        if clock() >= deadline:
            seen = "; ".join(_node_line(n) for n in alive)
            raise PlacementError(
                f"stage {stage}: no alive node offers ray.placement.{key} ({describe(p)}) after {p.node_wait_s:.0f}s;"
                f" alive nodes: {seen or 'none'}"
            )
        if not warned:
            log.warning("stage %s: waiting up to %.0fs for a node that offers ray.placement.%s (%s)", stage,
                        p.node_wait_s, key, describe(p))  # fmt: skip
            warned = True
        sleep(min(2.0, max(0.0, deadline - clock())))
