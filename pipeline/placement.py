"""A stage's placement (``ray.placement.<stage>`` in the config) as the Ray options that carry it out.

:func:`remote_args` gives the keyword arguments for an actor's ``.options(...)`` and for Ray Data's
``map_batches(...)`` (custom ``resources``; node ``labels`` as ``label_selector``, and with ``soft`` a
``fallback_strategy`` of any node); :func:`train_scaling` the ``ScalingConfig`` arguments
(``resources_per_worker`` additions and ``label_selector``). docs/cluster.md "Placement" says where each applies.
:func:`require_node` is the bounded wait every stage with placed work does first (scrape, faces, train, score, and
score's own face detection under ``ray.placement.faces``): Ray leaves an actor or a Train worker group whose hard
placement no node offers pending, with no time limit, so the stage waits ``node_wait_s`` for such a node to join
(an autoscaler's new node, a restarted one) and then fails with one line. :class:`NodeWatch` keeps the same bound
after that start: every stage runs inside one (:func:`pipeline.runtime.stage_entry`), ``require_node`` hands it
each placement it confirmed, and when the nodes offering one have all left mid-stage (killed, preempted) and none
joins within ``node_wait_s``, the stage fails with :class:`NodeLostError`, one line, instead of waiting for ever
as Ray Data's restarting actors and Ray Train's rescheduling would. docs/cluster.md "From one node to N".

Example::

    from pipeline.placement import remote_args
    FaceActor.options(num_cpus=1, **remote_args(cfg.ray.placement.faces))
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipeline.config import ConfigError, Placement

log = logging.getLogger("facerank.placement")  # under the logger setup_logging configures


class PlacementError(ConfigError):
    """No alive node offers a stage's ``ray.placement`` (after waiting ``node_wait_s``): one line, exit 2."""


class NodeLostError(RuntimeError):
    """Mid-stage, no alive node offered a placement the stage was using for ``node_wait_s``: one line, exit 1."""


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


def cluster_nodes() -> list[dict]:
    """``ray.nodes()`` (Ray connected): what :func:`require_node` and :class:`NodeWatch` ask by default."""
    import ray

    return ray.nodes()


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
    ray.placement.faces (labels {...}) after 600s; alive nodes: ...``. ``nodes``: :func:`cluster_nodes`;
    ``key``: the placement's name under ``ray.placement`` when it is not the stage's own (score's face detection)."""
    key = key or stage
    if not p.resources and (p.soft or not p.labels):
        return
    nodes = nodes or cluster_nodes
    deadline, warned = clock() + p.node_wait_s, False
    while True:
        alive = [n for n in nodes() if n.get("Alive")]
        if any(offers(p, n) for n in alive):
            if NodeWatch.current is not None:
                NodeWatch.current.add(key, p)
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


class NodeWatch:
    """The running stage's watch over the placements it uses: a context manager, one per stage run.

    A thread asks ``nodes()`` every ``interval`` seconds whether an alive node still offers each placement handed
    to :meth:`add` (by :func:`require_node`). When none has for that placement's ``node_wait_s``, the watch stores
    a :class:`NodeLostError` and interrupts the main thread (SIGUSR2, whose handler raises ``KeyboardInterrupt``:
    the one exception that ``ray.get``, Ray Data's iterators and Ray Train's ``fit`` all give up their wait for;
    repeated every ``interval`` until the stage ends, in case some code catches it); leaving the ``with`` block
    then raises the stored error instead. The job's actors and Train workers end with its driver, as Ray ends
    every job's. Only in the main thread (signals are delivered there); elsewhere the watch does nothing.
    """

    current: NodeWatch | None = None  # the watch of the stage this process is running

    def __init__(
        self,
        stage: str,
        nodes: Callable[[], list[dict]] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = 2.0,
    ) -> None:
        self.stage, self._nodes, self._clock, self.interval = stage, nodes, clock, interval
        self.placements: dict[str, Placement] = {}
        self.error: NodeLostError | None = None
        self._armed = False
        self._lock = threading.Lock()  # no signal is sent once __exit__ has disarmed the watch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._outer: NodeWatch | None = None
        self._prev_handler: Any = None

    def __enter__(self) -> NodeWatch:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread: no watch here
        self._main = threading.main_thread().ident
        self._prev_handler = signal.signal(signal.SIGUSR2, self._on_signal)
        self._outer, NodeWatch.current, self._armed = NodeWatch.current, self, True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._armed:
            return
        with self._lock:
            self._armed = False
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        NodeWatch.current = self._outer
        signal.signal(signal.SIGUSR2, self._prev_handler)
        if exc_type is not None and self.error is not None:
            raise self.error from None

    def add(self, key: str, p: Placement) -> None:
        """Watch ``p`` (named ``ray.placement.<key>``) from now to the end of the stage."""
        if not self._armed:
            return
        self.placements[key] = p
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=f"node-watch-{self.stage}", daemon=True)
            self._thread.start()

    def _on_signal(self, signum, frame) -> None:
        if self._armed and self.error is not None:
            raise KeyboardInterrupt(str(self.error))

    def _loop(self) -> None:
        nodes = self._nodes or cluster_nodes
        missing: dict[str, float] = {}  # placement key -> when it was first seen with no alive node
        while not self._stop.wait(self.interval):
            if self.error is not None:
                self._interrupt()  # again: the stage has not ended yet
                continue
            try:
                alive = [n for n in nodes() if n.get("Alive")]
            except Exception as err:  # the GCS busy or restarting: ask again next time
                log.debug("stage %s: node watch: %s", self.stage, err)
                continue
            now = self._clock()
            for key, p in list(self.placements.items()):
                if any(offers(p, n) for n in alive):
                    missing.pop(key, None)
                    continue
                if key not in missing:
                    missing[key] = now
                    log.warning("stage %s: no alive node offers ray.placement.%s (%s) any more; waiting up to %.0fs"
                                " for one to join", self.stage, key, describe(p), p.node_wait_s)  # fmt: skip
                if now - missing[key] >= p.node_wait_s:
                    seen = "; ".join(_node_line(n) for n in alive)
                    self.error = NodeLostError(
                        f"stage {self.stage}: the nodes that offered ray.placement.{key} ({describe(p)}) left"
                        f" mid-stage and none joined within {p.node_wait_s:.0f}s; alive nodes: {seen or 'none'}"
                    )
                    self._interrupt()
                    break

    def _interrupt(self) -> None:
        with self._lock:
            if self._armed:
                signal.pthread_kill(self._main, signal.SIGUSR2)
