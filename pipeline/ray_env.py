"""What every Ray that facerank starts runs with: token authentication, loopback only, no cloud-metadata probe.

One place for the settings that a local ``ray.init`` (:func:`pipeline.runtime.init_ray`), the test head
(``pipeline/testing/head.py``), ``make demo`` and the container image share. Measured on Ray 2.60 (Linux):

- **Token authentication**: ``RAY_AUTH_MODE=token``. Ray reads it when it is imported, so :func:`apply` also
  refreshes Ray's cached config in a process that imported Ray already. A local start generates its token in
  ``~/.ray/auth_token`` (Ray's default path) unless ``RAY_AUTH_TOKEN`` or ``RAY_AUTH_TOKEN_PATH`` names one.
- **Loopback only** (single node): with ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` Ray takes 127.0.0.1 as the node
  address, as it does on macOS and Windows, and then binds its GCS, raylet, object manager, workers and agents to
  127.0.0.1. Without it, ``--node-ip-address=127.0.0.1`` still left the GCS and raylets on ``*`` and the agents on
  the machine's address (tests/test_network.py checks what listens). A head that other nodes must join cannot do
  this: there, token authentication guards the ports (docs/security.md).
- **No cloud-metadata probe**: Ray's dashboard (``UsageStatsHead.run``, loaded even with the dashboard off) calls
  ``get_cluster_config_to_report("~/ray_bootstrap_config.yaml")`` at every start; only when that file is missing
  does it send requests to 169.254.169.254 and metadata.google.internal, whatever the usage-stats setting. An
  empty bootstrap config (the file Ray's own cluster launcher writes on a head) stops the probe:
  :func:`ensure_bootstrap_config` writes ``{}`` there if, and only if, no such file exists.
- Usage stats off (``RAY_USAGE_STATS_ENABLED=0``).

:func:`scoped_env` sets settings that Ray reads from this process's environment when a call plans or starts its
work (Ray Data's Parquet reader, Ray Train's controller) for that call only.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("facerank")

TOKEN_ENV = {"RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
BOOTSTRAP_NOTE = (
    "# Written by facerank (pipeline/ray_env.py). Ray's dashboard reads this file at start-up; when it is\n"
    "# missing, Ray probes cloud metadata services (169.254.169.254, metadata.google.internal). An empty\n"
    "# config stops that probe. Ray's cluster launcher writes its own file here on a head node.\n"
)


class RayAuthError(RuntimeError):
    """Ray would start without token authentication (``RAY_AUTH_MODE`` set to something else)."""


def bootstrap_config_path(env: MutableMapping[str, str] | None = None) -> Path:
    """``~/ray_bootstrap_config.yaml`` of the environment's home (Ray expands ``~`` in its dashboard process)."""
    home = (env or os.environ).get("HOME") or str(Path.home())
    return Path(home) / "ray_bootstrap_config.yaml"


def ensure_bootstrap_config(env: MutableMapping[str, str] | None = None) -> Path:
    """Create an empty Ray bootstrap config if none exists (an existing one is left as it is)."""
    path = bootstrap_config_path(env)
    if not path.exists():
        try:
            path.write_text(BOOTSTRAP_NOTE + "{}\n")
            log.info("wrote %s so that Ray's dashboard does not probe cloud metadata services", path)
        except OSError as e:  # a read-only home: say so, the probe then happens
            log.warning("could not write %s (%s): Ray's dashboard will probe cloud metadata at start", path, e)
    return path


def secure_env(env: MutableMapping[str, str], *, loopback: bool = True) -> MutableMapping[str, str]:
    """Put token authentication (and, for a single node, loopback binding) into ``env``; returns it.

    Raises :class:`RayAuthError` when ``env`` turns token authentication off explicitly.
    """
    mode = env.get("RAY_AUTH_MODE")
    if mode is not None and mode.lower() != "token":
        raise RayAuthError(
            f"RAY_AUTH_MODE={mode}: facerank starts Ray only with token authentication (unset it or set it to token)"
        )
    env.update(TOKEN_ENV)
    if loopback:
        env.update(LOOPBACK_ENV)
    ensure_bootstrap_config(env)
    return env


def apply(*, loopback: bool = True) -> None:
    """:func:`secure_env` on this process's environment, and make an already imported Ray see it."""
    secure_env(os.environ, loopback=loopback)
    if "ray" not in sys.modules:
        return  # Ray reads the environment when it is imported
    # Ray read both settings at import: refresh them the way Ray itself does (its token setup calls
    # Config.initialize; ENABLE_RAY_CLUSTER is the constant its node-address lookup reads at each call).
    from ray._private import ray_constants
    from ray._raylet import Config

    Config.initialize("")
    if loopback:
        ray_constants.ENABLE_RAY_CLUSTER = False


@contextmanager
def scoped_env(values: Mapping[str, object], *, keep_set: bool = False) -> Iterator[None]:
    """Set ``values`` (as strings) in this process's environment for the block, then restore what was there;
    ``keep_set``: leave alone the ones the environment already sets (the user's choice wins)."""
    todo = {k: str(v) for k, v in values.items() if not (keep_set and k in os.environ)}
    old = {k: os.environ.get(k) for k in todo}
    os.environ.update(todo)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
