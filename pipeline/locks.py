"""One run of a stage at a time on a data root: the per-stage lock, its heartbeat, and the takeover of stale locks.

Owns the lock records at ``<root>/_locks/<stage>.lock`` (the path comes from :meth:`DataRoot.lock_path`). A record
is a small JSON object: stage, owner, host, pid, when it started, a heartbeat that a background thread refreshes
every ``locks.heartbeat_s``, the holder's ttl and a random token. Every change to a record is a compare-and-swap
against the version last read, so two runs can never both hold one stage:

* local folder: created by ``link()`` of a fully written, fsynced temp file (atomic, fails when the lock exists);
  heartbeat, takeover and release replace or remove it under a ``flock`` on ``<stage>.lock.guard`` held for a
  read and a rename, after checking it is still the record that was read;
* ``s3://``: a lease object written with ``If-None-Match: *`` (create) and ``If-Match: <etag>`` (heartbeat,
  takeover, release) through boto3, since pyarrow's S3 filesystem cannot send conditional writes;
* any other filesystem, or S3 without boto3: read, check, write (best effort; a warning says so).

A lock is stale, and taken over with a warning in the log, when its holder ran on this machine (same hostname, pid
namespace and boot) and that process is gone, or, for a holder on another machine, when its heartbeat is older than
the larger of ``locks.ttl_s`` and the holder's own ttl (clocks must agree to well within that). A holder with this
hostname and pid namespace but another boot id counts as another machine (two hosts may share a name, and every
host's initial pid namespace has the same link): it waits for its ttl too, also after a real reboot. A live holder on
this machine is never taken over, however old its heartbeat (a suspended laptop wakes up and beats again). A second
run gets :class:`StageLockedError`, whose text is one line (the CLI prints it and exits 4).

Fencing: a run whose lock was taken over must stop writing, not only learn it at the end. Every write and commit of
a :class:`~pipeline.store.DataRoot` in a process that holds locks on that root calls :func:`fence` first, which
raises :class:`LockLostError` (one line, exit 4) unless each lease is still this run's: its record on the storage
still carries this run's token, and its heartbeat was written within its ttl (past that another host may take it
over at any moment, so the run stops itself first). A check and the write after it are two steps, so a takeover in
between is caught at the next write; writes made by Ray workers (other processes) are not fenced, the driver's are.

Re-entrant within one thread: the CLI takes the stage's lock before Ray starts, and the stage's ``run`` (wrapped by
:func:`pipeline.runtime.stage_entry`, so a ``run(cfg)`` called from Python is protected too) enters it again
silently. Every holder takes the lock through :func:`hold`; a stage's run (:func:`stage_lock`) also has the stage's own
temporaries removed right after the lock is first taken (``clean_temporaries``, :meth:`DataRoot.clean_stage_tmp`),
while ``forget``, under every stage's lock, reads them to remove exactly the forgotten person's rows
(:mod:`pipeline.privacy`). This module sits above the store: the store knows nothing of locks.

Example::

    with hold(DataRoot("data"), "faces", ttl_s=300, heartbeat_s=30, clean_temporaries=True):
        ...  # no other run of the faces stage writes under data/ meanwhile
"""

from __future__ import annotations

import datetime as dt
import errno
import fcntl
import getpass
import hashlib
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

import pyarrow.fs as pafs

from pipeline.store import DataRoot, register_fence

if TYPE_CHECKING:
    from pipeline.config import Config

log = logging.getLogger("facerank.locks")

TRIES = 5  # create or take over, each a compare-and-swap that another run may win
# Commands that write under a data root outside the five stages. Each holds its own lock while it writes (the CLI
# takes "imports" and "retention", write_report takes "report"); forget holds these with every stage's lock.
TOOLS = ("imports", "report", "retention")


class StageLockedError(RuntimeError):
    """Another live run holds the stage's lock on this data root; ``str(err)`` is one line."""


class LockLostError(StageLockedError):
    """The run's lock was taken over by another run while it ran (its heartbeat could not be written in time)."""


class _Record(NamedTuple):
    data: bytes
    version: str  # a digest of the bytes (local) or the object's ETag (S3)
    age_s: float  # seconds since the record was last written, by the storage's clock


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ------------------------------------------------------------------------------------------------ backends
class _LocalBackend:
    """A lock file on a local (or NFS) folder: link() to create, flock-guarded compare-and-swap to change."""

    def __init__(self, path: str):
        self.path, self.dir = path, posixpath.dirname(path)
        self.guard = path + ".guard"

    def read(self) -> _Record | None:
        try:
            with open(self.path, "rb") as f:
                data, mtime = f.read(), os.fstat(f.fileno()).st_mtime
        except FileNotFoundError:
            return None
        return _Record(data, _digest(data), max(0.0, _now().timestamp() - mtime))

    def _temp(self, data: bytes) -> str:
        tmp = posixpath.join(self.dir, f".{posixpath.basename(self.path)}.{uuid.uuid4().hex}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return tmp

    def _sync_dir(self) -> None:
        fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def create(self, data: bytes) -> str | None:
        os.makedirs(self.dir, exist_ok=True)
        tmp = self._temp(data)
        try:
            os.link(tmp, self.path)  # atomic, and the lock appears whole
        except FileExistsError:
            return None
        except OSError as err:  # a filesystem without hard links (some FUSE mounts): O_EXCL, written at once
            if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
                raise
            return self._create_exclusive(data)
        finally:
            os.unlink(tmp)
        self._sync_dir()
        return _digest(data)

    def _create_exclusive(self, data: bytes) -> str | None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return None
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._sync_dir()
        return _digest(data)

    @contextmanager
    def _guarded(self) -> Iterator[None]:
        fd = os.open(self.guard, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # held for one read and one rename
            yield
        finally:
            os.close(fd)

    def replace_if(self, version: str, data: bytes) -> str | None:
        with self._guarded():
            cur = self.read()
            if cur is None or cur.version != version:
                return None
            os.replace(self._temp(data), self.path)
            self._sync_dir()
        return _digest(data)

    def delete_if(self, version: str) -> bool:
        with self._guarded():
            cur = self.read()
            if cur is None or cur.version != version:
                return False
            os.unlink(self.path)
        return True


class _S3Backend:
    """A lease object on S3, changed only by conditional PUT/DELETE (boto3 with pyarrow's own settings)."""

    LOST = {"PreconditionFailed", "ConditionalRequestConflict", "NoSuchKey", "404", "412", "409"}

    def __init__(self, fs: pafs.S3FileSystem, path: str):
        import boto3
        from botocore.config import Config as BotoConfig
        from botocore.exceptions import ClientError

        kw = fs.__reduce__()[1][0]  # the settings pyarrow parsed from the data root's URI: keys, region, endpoint
        endpoint = kw.get("endpoint_override") or None
        if endpoint and "://" not in endpoint:
            endpoint = f"{kw.get('scheme') or 'https'}://{endpoint}"
        self.client = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint,
            region_name=kw.get("region") or None,
            aws_access_key_id=kw.get("access_key") or None,
            aws_secret_access_key=kw.get("secret_key") or None,
            aws_session_token=kw.get("session_token") or None,
            config=BotoConfig(connect_timeout=5, read_timeout=10, retries={"max_attempts": 3, "mode": "standard"}),
        )
        self.ClientError = ClientError
        self.bucket, _, self.key = path.partition("/")

    def _code(self, err: Exception) -> str:
        return str(getattr(err, "response", {}).get("Error", {}).get("Code", ""))

    def read(self) -> _Record | None:
        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self.key)
        except self.ClientError as err:
            if self._code(err) in ("NoSuchKey", "404"):
                return None
            raise
        age = (_now() - obj["LastModified"]).total_seconds()
        return _Record(obj["Body"].read(), obj["ETag"], max(0.0, age))

    def _put(self, data: bytes, **cond: str) -> str | None:
        try:
            return self.client.put_object(Bucket=self.bucket, Key=self.key, Body=data, **cond)["ETag"]
        except self.ClientError as err:
            if self._code(err) in self.LOST:
                return None
            raise

    def create(self, data: bytes) -> str | None:
        return self._put(data, IfNoneMatch="*")

    def replace_if(self, version: str, data: bytes) -> str | None:
        return self._put(data, IfMatch=version)

    def delete_if(self, version: str) -> bool:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self.key, IfMatch=version)
            return True
        except self.ClientError as err:
            if self._code(err) in self.LOST:
                return False
            if self._code(err) not in ("NotImplemented", "InvalidArgument", "InvalidRequest"):
                raise
        cur = self.read()  # a store without conditional DELETE: check, then delete
        if cur is None or cur.version != version:
            return False
        self.client.delete_object(Bucket=self.bucket, Key=self.key)
        return True


class _FsBackend:
    """Any pyarrow filesystem: read, compare, write. Not atomic; used where nothing better is available."""

    def __init__(self, fs: pafs.FileSystem, path: str):
        self.fs, self.path = fs, path

    def read(self) -> _Record | None:
        info = self.fs.get_file_info(self.path)
        if info.type == pafs.FileType.NotFound:
            return None
        with self.fs.open_input_stream(self.path) as f:
            data = f.read()
        age = (_now() - info.mtime).total_seconds() if info.mtime else 0.0
        return _Record(data, _digest(data), max(0.0, age))

    def _write(self, data: bytes) -> str | None:
        self.fs.create_dir(posixpath.dirname(self.path), recursive=True)
        with self.fs.open_output_stream(self.path) as out:
            out.write(data)
        cur = self.read()  # another writer in between wins; we see it here
        return cur.version if cur is not None and cur.data == data else None

    def create(self, data: bytes) -> str | None:
        return None if self.read() is not None else self._write(data)

    def replace_if(self, version: str, data: bytes) -> str | None:
        cur = self.read()
        return self._write(data) if cur is not None and cur.version == version else None

    def delete_if(self, version: str) -> bool:
        cur = self.read()
        if cur is None or cur.version != version:
            return False
        self.fs.delete_file(self.path)
        return True


def _backend(root: DataRoot, path: str) -> _LocalBackend | _S3Backend | _FsBackend:
    if isinstance(root.fs, pafs.LocalFileSystem):
        return _LocalBackend(path)
    if isinstance(root.fs, pafs.S3FileSystem):
        try:
            return _S3Backend(root.fs, path)
        except ImportError:
            log.warning("boto3 is not installed: the lock %s is best effort (pip install boto3 for a lease)", path)
    return _FsBackend(root.fs, path)


# ------------------------------------------------------------------------------------------------ who holds it
def _machine() -> dict[str, str]:
    """What makes a pid meaningful: the hostname, the pid namespace and the boot."""

    def read(path: str, link: bool = False) -> str:
        try:
            return os.readlink(path) if link else open(path).read().strip()
        except OSError:
            return ""

    return {
        "host": socket.gethostname(),
        "pidns": read("/proc/self/ns/pid", link=True),
        "boot_id": read("/proc/sys/kernel/random/boot_id"),
    }


def _process_started(pid: int) -> float | None:
    import psutil

    try:
        p = psutil.Process(pid)
        return None if p.status() == psutil.STATUS_ZOMBIE else p.create_time()
    except psutil.NoSuchProcess:
        return None
    except psutil.AccessDenied:
        return -1.0  # alive, but not ours to inspect


def _holder_gone(holder: dict[str, Any]) -> str | None:
    """On this machine (same host, pid namespace and boot): why the holder's process is certainly gone, or None."""
    pid = int(holder.get("pid", -1))
    started = _process_started(pid)
    if started is None:
        return f"its process {pid} on {holder.get('host')} is gone"
    if started >= 0 and abs(started - float(holder.get("pid_started", started))) > 1.0:
        return f"its process {pid} on {holder.get('host')} is gone (the pid now belongs to another process)"
    return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable record"
    beat = _age_s(holder)
    return (
        f"{holder.get('owner')}@{holder.get('host')} pid {holder.get('pid')} since {holder.get('started')}"
        f" (heartbeat {beat:.0f}s ago)"
    )


def _age_s(holder: dict[str, Any]) -> float:
    try:
        return (_now() - dt.datetime.fromisoformat(holder["heartbeat"])).total_seconds()
    except (KeyError, TypeError, ValueError):
        return float("inf")


def _parse(data: bytes) -> dict[str, Any] | None:
    try:
        holder = json.loads(data)
    except ValueError:
        return None
    return holder if isinstance(holder, dict) and "token" in holder else None


# ------------------------------------------------------------------------------------------------ the lease
_live: dict[tuple[str, str], list[Lease]] = {}  # (filesystem, lock folder) → every lease this process holds there


def _root_key(root: DataRoot) -> tuple[str, str]:
    return type(root.fs).__name__, posixpath.dirname(root.lock_path("x"))


class Lease:
    """One acquired stage lock: its record, the heartbeat thread, and its release."""

    def __init__(self, root: DataRoot, stage: str, ttl_s: float, heartbeat_s: float):
        self.stage, self.path = stage, root.lock_path(stage)
        self.where = _root_key(root)
        self.ttl_s, self.heartbeat_s = float(ttl_s), float(heartbeat_s)
        self.backend = _backend(root, self.path)
        self.record: dict[str, Any] = {
            "stage": stage,
            "owner": getpass.getuser(),
            **_machine(),
            "pid": os.getpid(),
            "pid_started": _process_started(os.getpid()),
            "started": _now().isoformat(timespec="seconds"),
            "ttl_s": self.ttl_s,
            "token": uuid.uuid4().hex,
        }
        self.version: str | None = None
        self.lost = False
        self.renewed = 0.0  # time.monotonic() of the last record this run wrote (acquire or heartbeat)
        self.took_over: str | None = None  # why the previous holder's lock was stale, when one was taken over
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _body(self) -> bytes:
        self.record["heartbeat"] = _now().isoformat()
        return json.dumps(self.record, sort_keys=True).encode()

    def _stale(self, holder: dict[str, Any] | None, record: _Record) -> str | None:
        """Why the current holder's lock may be taken over, or None while it counts."""
        ttl = max(self.ttl_s, float((holder or {}).get("ttl_s") or 0))
        if holder is None:
            return f"its record is unreadable and {record.age_s:.0f}s old" if record.age_s > ttl else None
        mine = _machine()
        if all(holder.get(k) == mine[k] for k in ("host", "pidns", "boot_id")):
            return _holder_gone(holder)
        age = _age_s(holder)
        return f"its heartbeat is {age:.0f}s old (ttl {ttl:.0f}s)" if age > ttl else None

    def acquire(self) -> None:
        for _ in range(TRIES):
            self.version = self.backend.create(self._body())
            if self.version:
                break
            cur = self.backend.read()
            if cur is None:
                continue  # released in between: try to create it again
            holder = _parse(cur.data)
            why = self._stale(holder, cur)
            if why is None:
                raise StageLockedError(
                    f"stage {self.stage!r} is already running on this data root: lock {self.path} held by "
                    f"{_describe(holder)}; it is taken over once that process ends, or from another host once its "
                    f"heartbeat is older than {max(self.ttl_s, float((holder or {}).get('ttl_s') or 0)):.0f}s"
                )
            self.version = self.backend.replace_if(cur.version, self._body())
            if self.version:
                self.took_over = why
                log.warning(
                    "stage %s: took over the stale lock %s of %s: %s", self.stage, self.path, _describe(holder), why
                )
                break
        else:
            raise StageLockedError(f"stage {self.stage!r}: lock {self.path} changed {TRIES} times while taking it")
        self.renewed = time.monotonic()
        _live.setdefault(self.where, []).append(self)  # fenced from now on (:func:`fence`)
        self._thread = threading.Thread(target=self._beat, name=f"lock-{self.stage}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                version = self.backend.replace_if(self.version, self._body())
            except Exception as err:  # a lost connection: the next beat tries again, before the ttl runs out
                log.warning("stage %s: lock heartbeat failed (%s); retrying", self.stage, err)
                continue
            if version is None:
                self.lost = True
                log.error("stage %s: another run took over the lock %s while this one ran", self.stage, self.path)
                return
            self.version, self.renewed = version, time.monotonic()

    def check(self) -> None:
        """Raise :class:`LockLostError` unless the lock is still this run's (see "Fencing" in the module docstring)."""
        why = "another run took it over"
        if not self.lost and time.monotonic() - self.renewed > self.ttl_s:
            self.lost, why = True, f"its heartbeat could not be written for over {self.ttl_s:.0f}s"
        if not self.lost:
            cur = self.backend.read()
            holder = _parse(cur.data) if cur is not None else None
            self.lost = holder is None or holder.get("token") != self.record["token"]
        if self.lost:
            raise LockLostError(
                f"stage {self.stage!r}: lock {self.path} is no longer this run's ({why}): stopped before a write"
            )

    def release(self) -> bool:
        """Stop the heartbeat and remove the lock if it is still ours; returns whether it had been lost."""
        self._stop.set()
        if self in _live.get(self.where, ()):
            _live[self.where].remove(self)
        if self._thread is not None:
            self._thread.join(timeout=60)
        if self.lost or self.version is None:
            return True
        try:
            if not self.backend.delete_if(self.version):
                self.lost = True
                log.error("stage %s: the lock %s was no longer this run's when it ended", self.stage, self.path)
        except Exception as err:  # the record stays; the next run takes it over as stale
            log.warning("stage %s: could not remove the lock %s: %s", self.stage, self.path, err)
        return self.lost


_held: dict[tuple[str, str, int], Lease] = {}  # (filesystem, lock path, thread) → the lease this thread holds


def fence(root: DataRoot) -> None:
    """Before a write under ``root``: raise :class:`LockLostError` if a lock this process holds on it was lost."""
    for lease in list(_live.get(_root_key(root), ())):
        lease.check()


register_fence(fence)  # every DataRoot write checks this process's leases first


@contextmanager
def hold(
    root: DataRoot, stage: str, *, ttl_s: float, heartbeat_s: float, clean_temporaries: bool = False
) -> Iterator[Lease]:
    """Hold ``stage``'s lock on ``root`` for the block (re-entrant in one thread); with ``clean_temporaries`` the
    stage's own ``_tmp/`` leftovers are removed once it is taken (a stage's run: :func:`stage_lock`). See the module
    docstring. Raises :class:`StageLockedError` (one line) when another live run holds it."""
    key = (type(root.fs).__name__, root.lock_path(stage), threading.get_ident())
    if key in _held:
        yield _held[key]
        return
    lease = Lease(root, stage, ttl_s, heartbeat_s)
    lease.acquire()
    _held[key] = lease
    finished = False
    try:
        if clean_temporaries:
            root.clean_stage_tmp(stage)  # a dead run's _tmp/ leftovers: safe to remove now that the lock is ours
        yield lease
        finished = True
    finally:
        del _held[key]
        lost = lease.release()
    if lost and finished:
        raise LockLostError(
            f"stage {stage!r}: another run took over the lock {lease.path} while this one ran; check the data root"
        )


def stage_lock(cfg: Config, stage: str):
    """The lock of ``stage`` on ``cfg.data_root`` with the configured ttl and heartbeat (a context manager)."""
    return hold(
        DataRoot(cfg.data_root), stage, ttl_s=cfg.locks.ttl_s, heartbeat_s=cfg.locks.heartbeat_s, clean_temporaries=True
    )
