"""A real, separate Ray head on 127.0.0.1 for tests and local tries: started, authenticated, always stopped.

:func:`ray_head` runs ``ray start --head --block`` in a new session with its own ``--temp-dir``, free ports
for every listener, every listener on 127.0.0.1, no cloud-metadata probe, and token authentication on
(``RAY_AUTH_MODE=token`` with a fresh ``RAY_AUTH_TOKEN``; :mod:`pipeline.ray_env`). It waits, bounded, until the
job API answers, and on exit stops exactly the processes it started, found by session id (``ray stop`` would
stop *every* Ray on the machine, also other people's). Clients authenticate with :attr:`RayHead.client_env`
(the ``ray`` CLI), :attr:`RayHead.headers` (``JobSubmissionClient(headers=...)``) or :meth:`RayHead.driver_env` (a
driver process that calls ``ray.init()`` on the head).

Example::

    from pipeline.testing import ray_head
    with ray_head(num_cpus=2) as head:
        subprocess.run(["ray", "job", "submit", "--working-dir", ".", "--", "python", "jobs/labels.py", ...],
                       env=head.client_env, check=True, timeout=300)
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from pipeline import ray_env

# Ray's listeners besides the GCS and the dashboard: each gets a free port so that two heads never collide.
_PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--runtime-env-agent-port",
    "--metrics-export-port",
    "--node-manager-port",
    "--object-manager-port",
)


class RayHeadError(RuntimeError):
    """The Ray head did not come up in time (the message holds the tail of its log)."""


@dataclass
class RayHead:
    """A running head: its addresses, its token, and the environment a client needs."""

    gcs_address: str
    dashboard_url: str
    token: str
    temp_dir: str
    pid: int
    log_path: str
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers for ``JobSubmissionClient(address, headers=...)`` and plain requests."""
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def client_env(self) -> dict[str, str]:
        """``os.environ`` plus what the ``ray`` CLI needs to talk to this head with its token."""
        env = dict(os.environ)
        env.update(RAY_ADDRESS=self.dashboard_url, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        return env

    def driver_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) plus what a driver process (``ray.init()``) needs to join this head:
        its GCS address and token, and loopback resolution (Ray would otherwise turn ``127.0.0.1`` into this
        machine's network address, where the head does not listen)."""
        env = dict(os.environ if base is None else base)
        env.update(RAY_ADDRESS=self.gcs_address, RAY_AUTH_TOKEN=self.token)
        env.pop("RAY_AUTH_TOKEN_PATH", None)
        ray_env.secure_env(env, loopback=True)
        return env


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    try:
        for _ in range(n):  # hold them all open at once so that no two are equal
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in socks:
            s.close()
    return ports


def ray_executable() -> str:
    """The ``ray`` CLI beside this interpreter (the venv's), else the one on PATH."""
    beside = Path(sys.executable).with_name("ray")
    return str(beside) if beside.exists() else (shutil.which("ray") or "ray")


def job_api_ready(dashboard_url: str, headers: Mapping[str, str], timeout_s: float = 2.0) -> bool:
    """True when the job API answers an authenticated ``GET /api/jobs/``."""
    req = urllib.request.Request(f"{dashboard_url}/api/jobs/", headers=dict(headers))
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _session_procs(sid: int) -> list:
    """Every live process in session ``sid`` (the head's ``ray start`` and everything it spawned)."""
    import psutil

    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                found.append(p)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return found


def stop_session(pid: int, grace_s: float = 5.0) -> int:
    """Stop the process ``pid`` started with ``start_new_session=True`` and all its session; returns how many."""
    import psutil

    procs = _session_procs(pid)
    try:
        procs += [c for c in psutil.Process(pid).children(recursive=True) if c not in procs]
    except psutil.Error:
        pass
    for p in procs:
        try:
            p.send_signal(signal.SIGTERM)
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    _kill(alive)
    # Workers re-parented to init while we waited are still in the session: one more sweep.
    late = _session_procs(pid)
    _kill(late)
    return len(procs) + len(late)


def _kill(procs: list) -> None:
    """SIGKILL ``procs`` and wait for them (bounded)."""
    import psutil

    for p in procs:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=5)


def _start_command(ports: Mapping[str, int], temp_dir: str, num_cpus: int, object_store_mb: int) -> list[str]:
    """``ray start --head --block`` with every listener on 127.0.0.1 and on its own free port."""
    return [
        ray_executable(),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        f"--object-store-memory={object_store_mb * 1024 * 1024}",
        f"--temp-dir={temp_dir}",
        "--disable-usage-stats",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]


def _head_env(token: str, env: Mapping[str, str] | None) -> dict[str, str]:
    """This process's environment, made safe for the head: its own token, no outer address, loopback only."""
    head_env = dict(os.environ)
    for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        head_env.pop(k, None)
    # The job entrypoint's ``python`` is this interpreter (a venv's bin/ first on PATH), as on a real node.
    head_env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), head_env.get("PATH", "")])
    head_env.update(env or {})
    # Token auth, every listener on 127.0.0.1, no cloud-metadata probe: see pipeline/ray_env.py.
    ray_env.secure_env(head_env, loopback=True)
    head_env["RAY_AUTH_TOKEN"] = token
    return head_env


def _wait_until_ready(proc: subprocess.Popen, head: RayHead, timeout_s: float) -> None:
    """Poll the job API until it answers; raise :class:`RayHeadError` with the log's tail if the head dies or the
    time runs out."""
    deadline = time.monotonic() + timeout_s
    while not job_api_ready(head.dashboard_url, head.headers):
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = Path(head.log_path).read_text(errors="replace")[-3000:]
            why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
            raise RayHeadError(f"ray start --head {why} after {timeout_s:.0f}s; log tail:\n{tail}")
        time.sleep(1.0)


@contextmanager
def ray_head(
    *,
    num_cpus: int = 2,
    object_store_mb: int = 200,
    token: str | None = None,
    env: Mapping[str, str] | None = None,
    start_timeout_s: float = 120.0,
    keep_temp: bool = False,
) -> Iterator[RayHead]:
    """Start a token-authenticated Ray head on 127.0.0.1, yield it, and always stop it (bounded time).

    ``env`` adds variables to the head's environment (its workers and job drivers inherit them). Other nodes may
    join it: :func:`ray_worker_node`.
    """
    token = token or secrets.token_hex(32)
    temp_dir = tempfile.mkdtemp(prefix="rh", dir="/tmp")  # short: Ray's Unix socket paths must stay < 108
    ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS)), strict=True))
    cmd = _start_command(ports, temp_dir, num_cpus, object_store_mb)
    log_path = os.path.join(temp_dir, "ray-start.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            cmd,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=_head_env(token, env),
            start_new_session=True,
        )
    head = RayHead(
        gcs_address=f"127.0.0.1:{ports['--port']}",
        dashboard_url=f"http://127.0.0.1:{ports['--dashboard-port']}",
        token=token,
        temp_dir=temp_dir,
        pid=proc.pid,
        log_path=log_path,
        ports={k.lstrip("-"): v for k, v in ports.items()},
    )
    try:
        _wait_until_ready(proc, head, start_timeout_s)
        yield head
    finally:
        stop_session(proc.pid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - killed above
            pass
        if not keep_temp:
            shutil.rmtree(temp_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------------ a second node
# A worker node's own listeners (the GCS and the dashboard are the head's).
_NODE_PORT_FLAGS = tuple(f for f in _PORT_FLAGS if f not in ("--port", "--dashboard-port", "--ray-client-server-port"))


# ``ray start --address`` refuses to join when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (its multi-node check reads
# Ray's constant), yet that setting is what binds the node's raylet, object manager and agents to 127.0.0.1. So the
# CLI runs with the constant turned on for its own check only (and 127.0.0.1 kept as it is: with the constant on Ray
# would swap it for the machine's address, where the head does not listen); the processes it starts inherit ``=0``.
_JOIN = (
    "import sys; from ray._private import ray_constants as c, services as s; c.ENABLE_RAY_CLUSTER = True; "
    "s.resolve_ip_for_localhost = lambda host: host; s.node_ip_address_from_perspective = lambda a=None: '127.0.0.1'; "
    "from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"
)


def _is_node(summary: dict, node_manager_port: int) -> bool:
    return int(summary["raylet"].get("nodeManagerPort") or 0) == node_manager_port


@dataclass
class RayNode:
    """A worker node that joined a :class:`RayHead`: its temp folder (to scan), its PID (to kill) and its node id."""

    node_id: str
    temp_dir: str
    pid: int
    log_path: str
    resources: dict[str, float] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    killed: bool = False  # set by :meth:`kill`: the GCS may list the node alive a little longer

    def processes(self) -> list:
        """The node's live processes: ``ray start``, its raylet, object store, agents and every worker it spawned."""
        return _session_procs(self.pid)

    def kill(self) -> int:
        """SIGKILL the node's raylet and all its workers at once (a machine that dies); returns how many."""
        procs = self.processes()
        self.killed = True
        _kill(procs)
        return len(procs)


def _node_ids(head: RayHead) -> dict[str, dict]:
    """Alive nodes of ``head`` by node id (the state API)."""
    import json

    req = urllib.request.Request(f"{head.dashboard_url}/nodes?view=summary", headers=head.headers)
    with urllib.request.urlopen(req, timeout=10) as resp:
        body = json.loads(resp.read())
    nodes = body["data"]["summary"]
    return {n["raylet"]["nodeId"]: n for n in nodes if n["raylet"].get("state") == "ALIVE"}


@contextmanager
def ray_worker_node(
    head: RayHead,
    *,
    num_cpus: int = 1,
    resources: Mapping[str, float] | None = None,
    labels: Mapping[str, str] | None = None,
    object_store_mb: int = 100,
    start_timeout_s: float = 90.0,
) -> Iterator[RayNode]:
    """Join a worker node to ``head``: ``ray start --address --block`` in a new session, every listener on
    127.0.0.1, its own ``--temp-dir``, free ports and the head's token; yield it once the head lists it alive, and
    always stop it (bounded). ``resources``/``labels``: the node's custom resources and node labels."""
    import json

    temp_dir = tempfile.mkdtemp(prefix="rn", dir="/tmp")
    ports = dict(zip(_NODE_PORT_FLAGS, _free_ports(len(_NODE_PORT_FLAGS)), strict=True))
    cmd = [
        sys.executable, "-c", _JOIN, "start", "--block", f"--address={head.gcs_address}", "--node-ip-address=127.0.0.1",
        f"--num-cpus={num_cpus}", "--num-gpus=0", f"--object-store-memory={object_store_mb * 1024 * 1024}",
        f"--temp-dir={temp_dir}", "--disable-usage-stats", *(f"{flag}={port}" for flag, port in ports.items()),
    ]  # fmt: skip
    if resources:
        cmd.append(f"--resources={json.dumps(dict(resources))}")
    if labels:
        cmd.append(f"--labels={json.dumps(dict(labels))}")
    env = _head_env(head.token, None)  # RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 for the node's processes: see _JOIN
    log_path = os.path.join(temp_dir, "ray-start.log")
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not (new := [i for i, n in _node_ids(head).items() if _is_node(n, ports["--node-manager-port"])]):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log_path).read_text(errors="replace")[-3000:]
                why = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                raise RayHeadError(f"ray start --address {why} after {start_timeout_s:.0f}s; log tail:\n{tail}")
            time.sleep(0.5)
        yield RayNode(new[0], temp_dir, proc.pid, log_path, dict(resources or {}), dict(labels or {}))
    finally:
        stop_session(proc.pid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - killed above
            pass
        shutil.rmtree(temp_dir, ignore_errors=True)
