"""The opt-out key: where it comes from, the one explicit step that makes one, and the data root's record of it.

The key is ``$FACERANK_OPTOUT_KEY`` (the key itself), else the file ``privacy.key_file`` (default
``~/.config/facerank/optout.key``). It is never made on first use: a missing key is a config error (exit 2) that
names ``python -m pipeline privacy init-key``, the one step that creates a key file (32 random bytes as hex, mode
0600). A key made silently per container would hash opt-outs that a crawl in another container never matches.

The data root remembers which key its lists are made with: ``optout/_key.json`` holds a fingerprint of the key
(``HMAC-SHA256(key, "facerank opt-out key fingerprint")``, which does not reveal the key), written by ``init-key``
or by the first use of a key on a root whose lists hold no keyed row yet. Every use of the key on a data root
(the crawl's :class:`~pipeline.privacy.optout.OptOut`, ``forget``, ``report``) compares fingerprints and stops with
one line (:class:`KeyMismatchError`, exit 2) when they differ, or when the lists hold keyed rows but no fingerprint
was recorded (a root from before the record: ``init-key --adopt`` records the key in use as theirs).

Example::

    key = root_key(DataRoot(cfg.data_root), cfg.privacy)  # raises KeyMismatchError for another key
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.config import ConfigError, PrivacyConfig
from pipeline.store import AUDIT_DS, OPTOUT_DS, DataRoot, now

log = logging.getLogger("facerank")

KEY_ENV = "FACERANK_OPTOUT_KEY"
MIN_KEY_CHARS = 32
SCHEME_KEYED = "hmac-sha256"
INIT_COMMAND = "python -m pipeline privacy init-key"
_FINGERPRINT_INPUT = b"facerank opt-out key fingerprint"


class KeyMismatchError(ConfigError):
    """The key in use is not the one the data root's opt-out list was made with; ``str(err)`` is one line."""


def fingerprint(key: bytes) -> str:
    """A fingerprint of the key that does not reveal it (hex)."""
    return hmac.new(key, _FINGERPRINT_INPUT, hashlib.sha256).hexdigest()


def _inside(path: Path, data_root: str | None) -> bool:
    if not data_root or "://" in data_root:
        return False
    root = Path(data_root).expanduser().resolve()
    return path.resolve() == root or root in path.resolve().parents


def _key_file(privacy: PrivacyConfig | None, data_root: str | None) -> Path:
    path = Path((privacy or PrivacyConfig()).key_file).expanduser()
    if _inside(path, data_root):
        raise ConfigError(f"privacy.key_file {path} is inside the data root {data_root}: keep the key outside it")
    return path


def key_source(privacy: PrivacyConfig | None = None) -> str:
    """Where the key in use comes from, for messages: the variable's name or the file's path (never the key)."""
    return KEY_ENV if os.environ.get(KEY_ENV) else str(Path((privacy or PrivacyConfig()).key_file).expanduser())


def load_key(privacy: PrivacyConfig | None = None, data_root: str | None = None) -> bytes:
    """The opt-out key: ``$FACERANK_OPTOUT_KEY``, else ``privacy.key_file``; none is a :class:`ConfigError`."""
    env = os.environ.get(KEY_ENV, "")
    if env:
        if len(env) < MIN_KEY_CHARS:
            raise ConfigError(f"{KEY_ENV} is shorter than {MIN_KEY_CHARS} characters")
        return env.encode()
    path = _key_file(privacy, data_root)
    if not path.exists():
        raise ConfigError(
            f"no opt-out key: set {KEY_ENV} (from your secrets, the same on every node and job driver) or run "
            f"`{INIT_COMMAND}` once to create {path}"
        )
    key = path.read_text(encoding="utf-8").strip()
    if len(key) < MIN_KEY_CHARS:
        raise ConfigError(f"privacy.key_file {path}: the key is shorter than {MIN_KEY_CHARS} characters")
    return key.encode()


def _create_key_file(path: Path) -> bool:
    """32 random bytes as hex, mode 0600, published with a hard link; whether this call made it."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32) + "\n")
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False  # another process created it first: use theirs
    finally:
        tmp.unlink()


# ---------------------------------------------------------------------------------------------------- the record
def recorded(root: DataRoot) -> dict[str, Any] | None:
    """The data root's record of its key (``optout/_key.json``), or None when there is none."""
    path = root.optout_key_path()
    if root.fs.get_file_info(path).type == pafs.FileType.NotFound:
        return None
    try:
        rec = root.read_json(path)
    except ValueError:
        rec = None
    if not isinstance(rec, dict) or not isinstance(rec.get("fingerprint"), str):
        raise KeyMismatchError(f"{path} is not a key record: restore it from a backup, or remove it and run "
                               f"`{INIT_COMMAND} --adopt` with the list's key")  # fmt: skip
    return rec


def keyed_rows(root: DataRoot) -> int:
    """How many rows of ``optout/`` and ``audit/`` hold a keyed hash (made with some key)."""
    n = 0
    for ds in (OPTOUT_DS, AUDIT_DS):
        for path in root.part_files(ds):
            if "scheme" in pq.read_schema(path, filesystem=root.fs).names:
                col = pq.read_table(path, columns=["scheme"], filesystem=root.fs).column(0).to_pylist()
                n += sum(1 for s in col if s == SCHEME_KEYED)
    return n


def _record(root: DataRoot, key: bytes, source: str) -> bool:
    """Record the key's fingerprint unless a record exists; whether this call wrote it."""
    body = {"fingerprint": fingerprint(key), "scheme": SCHEME_KEYED, "recorded_at": now().isoformat(), "by": source}
    return root.create_once(root.optout_key_path(), json.dumps(body, indent=2).encode())


def _mismatch(root: DataRoot, source: str, key: bytes, rec: dict[str, Any]) -> KeyMismatchError:
    return KeyMismatchError(
        f"the opt-out key from {source} (fingerprint {fingerprint(key)[:12]}) is not the key this data root's "
        f"opt-out list was made with (fingerprint {rec['fingerprint'][:12]}, {root.optout_key_path()}): "
        f"give every container and job driver that key ({KEY_ENV}); with another key forgotten people are not matched"
    )


def check_root_key(root: DataRoot, key: bytes, source: str) -> None:
    """Stop with :class:`KeyMismatchError` unless ``key`` is the one the root's lists are made with.

    With no record yet: keyed rows mean the key cannot be checked (an error naming ``init-key --adopt``); with no
    keyed rows this key is recorded as the root's (the first user of a root pins its key).
    """
    rec = recorded(root)
    if rec is not None:
        if not hmac.compare_digest(rec["fingerprint"], fingerprint(key)):
            raise _mismatch(root, source, key, rec)
        return
    n = keyed_rows(root)
    if n:
        raise KeyMismatchError(
            f"the opt-out list under {root.uri} holds {n} keyed rows but no record of their key: if the key from "
            f"{source} made them, record it with `{INIT_COMMAND} --adopt`"
        )
    try:
        if not _record(root, key, source):  # another process recorded a key in between: it must be this one
            check_root_key(root, key, source)
    except OSError as err:  # a read-only root: nothing is written to its lists either
        log.warning("privacy: cannot record the opt-out key's fingerprint under %s: %s", root.uri, err)


def root_key(root: DataRoot, privacy: PrivacyConfig | None = None) -> bytes:
    """The key in use, checked against (or recorded as) the data root's key: see :func:`check_root_key`."""
    key = load_key(privacy, root.uri)
    check_root_key(root, key, key_source(privacy))
    return key


def init_key(root: DataRoot, privacy: PrivacyConfig | None = None, *, adopt: bool = False) -> dict[str, Any]:
    """``privacy init-key``: make a key file when no key is given, and record the key in use under the data root.

    A new key is refused when the root already has a record or keyed rows (it could never match them). Recording
    over keyed rows that have no record needs ``adopt`` (the operator says this key made them).
    """
    created = False
    if not os.environ.get(KEY_ENV):
        path = _key_file(privacy, root.uri)
        if not path.exists():
            rec, n = recorded(root), keyed_rows(root)
            if rec is not None or n:
                what = f"a record of its key ({root.optout_key_path()})" if rec else f"{n} keyed rows"
                raise KeyMismatchError(
                    f"no opt-out key here, but the data root {root.uri} has {what}: a new key would never match "
                    f"them; give this machine that key ({KEY_ENV} or {path})"
                )
            created = _create_key_file(path)
            if created:
                log.warning("privacy: created a new opt-out key at %s: back it up outside the data root", path)
    key = load_key(privacy, root.uri)
    source = key_source(privacy)
    rec = recorded(root)
    if rec is None and keyed_rows(root) and not adopt:
        check_root_key(root, key, source)  # raises, naming --adopt
    if rec is None:
        wrote = _record(root, key, source)
        if not wrote:
            check_root_key(root, key, source)
    else:
        check_root_key(root, key, source)
        wrote = False
    return {"key": source, "created": created, "fingerprint": fingerprint(key)[:12], "recorded": wrote}
