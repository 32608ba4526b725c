"""Test support that ships with the library: a real, local, token-authenticated Ray head for tests and local tries.

Not used by any stage. It is what this project's own tests start jobs on, and what a user's tests may use the same
way (as Ray's ``ray.cluster_utils`` serves Ray's): ``with ray_head(num_cpus=2) as head:`` runs
``ray start --head --block`` on 127.0.0.1 in its own process session and always stops exactly that session
(:mod:`pipeline.testing.head`). It needs ``psutil`` (a core dependency: :mod:`pipeline.locks` uses it too).
"""

from pipeline.testing.head import (
    RayHead,
    RayHeadError,
    RayNode,
    job_api_ready,
    ray_executable,
    ray_head,
    ray_worker_node,
    stop_session,
)

__all__ = [
    "RayHead",
    "RayHeadError",
    "RayNode",
    "job_api_ready",
    "ray_executable",
    "ray_head",
    "ray_worker_node",
    "stop_session",
]
