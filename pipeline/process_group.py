"""Where training's torch.distributed process group listens: nowhere for one worker, loopback on one node.

Ray Train's torch backend always starts a process group, rendezvousing through a c10d ``TCPStore`` on rank 0, which
listens on every interface (``*``/``::``) whatever address it is given, unauthenticated. :class:`TorchConfig` (a
drop-in ``torch_config`` for ``TorchTrainer``) changes that:

* one worker (the default CPU layout): no process group at all, so no store and no port (the training loop only
  uses ``torch.distributed`` with several workers);
* several workers on one node: the rendezvous is a ``FileStore`` in a fresh temporary folder of that node (no
  socket), and gloo's and NCCL's own sockets are bound to the loopback interface (``GLOO_SOCKET_IFNAME``,
  ``NCCL_SOCKET_IFNAME``);
* workers on several nodes: Ray Train's own setup (``MASTER_ADDR`` is rank 0's node address, a free port). That
  port, like Ray's own, is reachable by whoever reaches the cluster's network and has no authentication: keep the
  nodes on a private network (docs/cluster.md).

Example::

    TorchTrainer(loop, torch_config=TorchConfig(), scaling_config=..., run_config=...)
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import ray
from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup
from ray.train.torch.config import TorchConfig as _RayTorchConfig
from ray.train.torch.config import (
    _set_torch_distributed_env_vars,
    _setup_torch_process_group,
    _TorchBackend,
)


def _node_id() -> str:
    return ray.get_runtime_context().get_node_id()


def loopback_interface() -> str:
    """The name of this machine's loopback interface (``lo`` on Linux)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == "127.0.0.1" for a in addrs):
            return name
    return "lo"


def _bind_loopback() -> None:
    lo = loopback_interface()
    os.environ["GLOO_SOCKET_IFNAME"] = lo
    os.environ["NCCL_SOCKET_IFNAME"] = lo


def _new_store_path() -> str:
    return os.path.join(tempfile.mkdtemp(prefix="facerank-pg-"), "store")


def _remove_store(path: str) -> None:
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)


def _backend_name(worker_group: Any, config: _RayTorchConfig) -> str:
    """The backend Ray Train would pick: the configured one, else nccl with GPUs, else gloo."""
    if config.backend is not None:
        return config.backend
    return "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"


class _LoopbackTorchBackend(_TorchBackend):
    """Ray Train's torch backend, without a listening store for one worker or one node (module docstring)."""

    store_path: str | None = None

    def on_start(self, worker_group: Any, backend_config: _RayTorchConfig) -> None:
        n = len(worker_group)
        backend = _backend_name(worker_group, backend_config)
        one_node = n == 1 or len(set(worker_group.execute(_node_id))) == 1
        if not one_node or backend not in ("gloo", "nccl"):
            return super().on_start(worker_group, backend_config)
        if not isinstance(worker_group, V1WorkerGroup):
            worker_group.execute(_set_torch_distributed_env_vars)
        if n == 1:
            return None  # nothing to connect to
        self.store_path = worker_group.execute_single(0, _new_store_path)
        worker_group.execute(_bind_loopback)
        ray.get(
            [
                worker_group.execute_single_async(
                    i,
                    _setup_torch_process_group,
                    backend=backend,
                    world_rank=i,
                    world_size=n,
                    init_method=f"file://{self.store_path}",
                    timeout_s=backend_config.timeout_s,
                )
                for i in range(n)
            ]
        )
        return None

    def on_shutdown(self, worker_group: Any, backend_config: _RayTorchConfig) -> None:
        super().on_shutdown(worker_group, backend_config)
        if self.store_path:
            worker_group.execute_single(0, _remove_store, self.store_path)


@dataclass
class TorchConfig(_RayTorchConfig):
    """Ray Train's ``TorchConfig`` whose backend starts no listening store on one node (module docstring)."""

    @property
    def backend_cls(self):  # noqa: ANN201 (Ray's own signature)
        return _LoopbackTorchBackend
