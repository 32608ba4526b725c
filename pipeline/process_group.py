"""Where training's torch.distributed process group listens: nowhere for one worker, loopback on one node.

Ray Train's torch backend always starts a process group, rendezvousing through a c10d ``TCPStore`` on rank 0, which
listens on every interface (``*``/``::``) whatever address it is given, unauthenticated. :class:`TorchConfig` (a
drop-in ``torch_config`` for ``TorchTrainer``) changes that:

* one worker (the default CPU layout): no process group at all, so no store and no port (the training loop only
  uses ``torch.distributed`` with several workers);
* several workers on one node: the rendezvous is a ``FileStore`` in a fresh temporary folder of that node (no
  socket), and gloo's and NCCL's own sockets are bound to the loopback interface (``GLOO_SOCKET_IFNAME``,
  ``NCCL_SOCKET_IFNAME``);
* workers on several nodes: Ray Train's own setup, its ``_TorchBackend`` (``MASTER_ADDR`` is rank 0's node
  address, a free port). That port, like Ray's own, is reachable by whoever reaches the cluster's network and has
  no authentication: keep the nodes on a private network (docs/cluster.md).

The module does not import torch: Ray Train's controller unpickles the config and its backend, and a controller
that never trains need not spend seconds importing torch before it starts the workers.

Example::

    TorchTrainer(loop, torch_config=TorchConfig(), scaling_config=..., run_config=...)
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.backend import Backend, BackendConfig

log = logging.getLogger("facerank.train")

# Torch-free on purpose: Ray Train's controller unpickles this config and its backend (its callbacks hold them)
# before it starts any worker, and ``ray.train.torch.config`` imports torch, seconds of CPU on the path to the
# first training step (docs/benchmarks.md, train section). What runs in the workers, or on several nodes, imports
# Ray's torch backend where it runs (:func:`_ray_torch`).


def _ray_torch():
    """Ray's torch backend module (imports torch)."""
    import ray.train.torch.config as ray_torch

    return ray_torch


def _set_env_vars() -> None:
    """In a worker: the torch.distributed environment (RANK, WORLD_SIZE, LOCAL_RANK...) as Ray Train sets it."""
    _ray_torch()._set_torch_distributed_env_vars()


def _setup_group(**kwargs) -> None:
    """In a worker: Ray Train's ``_setup_torch_process_group``."""
    _ray_torch()._setup_torch_process_group(**kwargs)


def _shutdown(destroy_process_group: bool) -> None:
    """In a worker: Ray Train's ``_shutdown_torch`` (destroys the process group, empties the CUDA cache)."""
    _ray_torch()._shutdown_torch(destroy_process_group=destroy_process_group)


def _is_v1(worker_group: Any) -> bool:
    from ray.train._internal.worker_group import WorkerGroup as V1WorkerGroup

    return isinstance(worker_group, V1WorkerGroup)


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


def _backend_name(worker_group: Any, config: TorchConfig) -> str:
    """The backend Ray Train would pick: the configured one, else nccl with GPUs, else gloo."""
    if config.backend is not None:
        return config.backend
    return "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"


class _LoopbackTorchBackend(Backend):
    """Ray Train's torch backend, without a listening store for one worker or one node (module docstring); on
    several nodes (or another backend) Ray's own ``_TorchBackend``."""

    share_cuda_visible_devices: bool = True  # as Ray's _TorchBackend: GPU workers of a node see each other's GPUs
    store_path: str | None = None

    def on_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        n = len(worker_group)
        backend = _backend_name(worker_group, backend_config)
        one_node = n == 1 or len(set(worker_group.execute(_node_id))) == 1
        if not one_node or backend not in ("gloo", "nccl"):
            return _ray_torch()._TorchBackend().on_start(worker_group, backend_config)
        if not _is_v1(worker_group):
            worker_group.execute(_set_env_vars)
        if n == 1:
            return None  # nothing to connect to
        self.store_path = worker_group.execute_single(0, _new_store_path)
        worker_group.execute(_bind_loopback)
        ray.get(
            [
                worker_group.execute_single_async(
                    i,
                    _setup_group,
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

    def on_training_start(self, worker_group: Any, backend_config: TorchConfig) -> None:
        if _is_v1(worker_group):  # as Ray's _TorchBackend: v1 worker groups get the env vars here
            worker_group.execute(_set_env_vars)

    def on_shutdown(self, worker_group: Any, backend_config: TorchConfig) -> None:
        # Ray's _TorchBackend.on_shutdown, its timeout included: calling it would import torch in the controller,
        # seconds on the path from the workers' end to fit() returning
        from ray._private import ray_constants
        from ray.exceptions import GetTimeoutError
        from ray.train.constants import (
            DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S,
        )

        futures = worker_group.execute_async(_shutdown, destroy_process_group=len(worker_group) > 1)
        timeout_s = ray_constants.env_integer(
            TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S, DEFAULT_TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S
        )
        try:
            ray.get(futures, timeout=timeout_s)
        except GetTimeoutError:
            log.warning("Torch process group shutdown timed out after %s seconds", timeout_s)
        if self.store_path:
            worker_group.execute_single(0, _remove_store, self.store_path)


@dataclass
class TorchConfig(BackendConfig):
    """Ray Train's ``TorchConfig`` (the same fields and defaults) whose backend starts no listening store on one
    node and which the controller unpickles without importing torch (module docstring)."""

    backend: str | None = None
    init_method: str = "env"
    timeout_s: int = 1800

    @property
    def backend_cls(self):  # noqa: ANN201 (Ray's own signature)
        return _LoopbackTorchBackend

    @property
    def train_func_context(self):  # noqa: ANN201 (read in the driver, run in the workers)
        return _ray_torch().TorchConfigContextManager

    @property
    def framework(self):  # noqa: ANN201
        from ray.train.v2._internal.util import TrainingFramework

        return TrainingFramework.TORCH

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "init_method": self.init_method, "timeout_s": self.timeout_s}
