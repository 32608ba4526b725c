"""Watch the sockets of a set of processes while something runs: what leaves loopback, what listens beyond it.

:class:`SocketWatch` samples ``psutil.net_connections`` every ``interval_s`` in a thread, for the processes that a
``select()`` callable returns at each sample (a process tree, a session), and records two kinds of finding:

- a connection whose peer is neither loopback nor one of this machine's own addresses (``egress``);
- a listening socket beyond loopback held by a process whose environment lacks ``RAY_AUTH_MODE=token``
  (``open_listeners``); with token auth on, such a port refuses whoever lacks the token (tested apart).

Example::

    with SocketWatch(lambda: tree_of(os.getpid())) as watch:
        run_something()
    assert not watch.egress, watch.report()
"""

from __future__ import annotations

import ipaddress
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import psutil


def own_addresses() -> set[str]:
    """Every address of this machine's interfaces (loopback included)."""
    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs}


def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip.split("%")[0])
    except ValueError:
        return False
    if addr.version == 6 and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _plain(ip: str) -> str:
    addr = ipaddress.ip_address(ip.split("%")[0])
    return str(addr.ipv4_mapped) if addr.version == 6 and addr.ipv4_mapped else str(addr)


def tree_of(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants (those alive now)."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def session_of(sid: int) -> list[psutil.Process]:
    """Every live process in session ``sid`` (a Ray head started with ``start_new_session=True``)."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                found.append(p)
        except (OSError, psutil.Error):
            continue
    return found


def _has_token_auth(p: psutil.Process) -> bool:
    try:
        return p.environ().get("RAY_AUTH_MODE", "").lower() == "token"
    except psutil.Error:
        return False


@dataclass
class SocketWatch:
    """Sample the sockets of ``select()``'s processes until the ``with`` block ends."""

    select: Callable[[], Iterable[psutil.Process]]
    interval_s: float = 0.1
    egress: set[tuple] = field(default_factory=set)
    open_listeners: set[tuple] = field(default_factory=set)
    listeners: set[tuple] = field(default_factory=set)
    samples: int = 0
    processes_seen: set[str] = field(default_factory=set)

    def __post_init__(self):
        self._own = {_plain(a) for a in own_addresses() if _is_ip(a)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="socket-watch")

    def __enter__(self) -> SocketWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.sample()  # one last look

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        procs = {p.pid: p for p in self.select()}
        if not procs:
            return
        self.samples += 1
        for c in psutil.net_connections("inet"):
            p = procs.get(c.pid)
            if p is None:
                continue
            try:
                name = p.name()
            except psutil.Error:
                name = "?"
            self.processes_seen.add(name)
            if c.status == psutil.CONN_LISTEN:
                self.listeners.add((name, c.laddr.ip, c.laddr.port))
                if not is_loopback(c.laddr.ip) and not _has_token_auth(p):
                    self.open_listeners.add((name, c.pid, c.laddr.ip, c.laddr.port))
            if c.raddr and not is_loopback(c.raddr.ip) and _plain(c.raddr.ip) not in self._own:
                self.egress.add((name, c.pid, c.raddr.ip, c.raddr.port, c.status))

    def report(self) -> str:
        return (
            f"{self.samples} samples of {sorted(self.processes_seen)}; egress: {sorted(self.egress)}; "
            f"listeners beyond loopback without token auth: {sorted(self.open_listeners)}"
        )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.split("%")[0])
        return True
    except ValueError:
        return False
