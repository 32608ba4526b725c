"""The opt-out list: keyed hashes of subjects, old lists migrated, and the matching the crawl does.

The crawl's hot path imports this module alone (not the erasure). Neither list (``optout/``, ``audit/``) holds an erased
id, only ``HMAC-SHA256(key, sha256(subject))`` (hex, column ``subject_hash``, ``scheme`` = ``hmac-sha256``), where
``subject`` is ``kind:id`` or ``kind@site:id``. The key lives outside the data root and is checked against the data
root's record of it (:mod:`pipeline.privacy.key`). Lists written before the key existed hold the plain
``sha256(subject)`` (no ``scheme``): :func:`migrate_lists` rewrites them keyed on first use (the HMAC is taken over that
plain hash, so the id is not needed), and :class:`OptOut` matches them in memory when the data root cannot be written.
Losing the key means the opt-out list can no longer be matched (nobody is blocked any more) and the audit can no longer
be tied to a person: back the key up beside the data root's backups, never inside the data root.

Example::

    from pipeline.privacy.optout import OptOut
    OptOut(DataRoot(cfg.data_root), cfg.privacy).blocks("person", "prof-7", site="uni-cs")  # True once forgotten
"""

from __future__ import annotations

import hashlib
import hmac
import logging

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.config import ConfigError, PrivacyConfig
from pipeline.privacy.key import SCHEME_KEYED, check_root_key, key_source, load_key, recorded, root_key
from pipeline.store import AUDIT_DS, OPTOUT_DS, DataRoot, to_table

log = logging.getLogger("facerank")

LISTS = (OPTOUT_DS, AUDIT_DS)


# ---------------------------------------------------------------------------------------------------- keyed hashes
def plain_hash(kind: str, value: str, site: str | None = None) -> str:
    """The old, unkeyed scheme: ``sha256("kind:id")`` or ``sha256("kind@site:id")`` (reversible by guessing ids)."""
    subject = f"{kind}:{value}" if site is None else f"{kind}@{site}:{value}"
    return hashlib.sha256(subject.encode()).hexdigest()


def normal_acct(acct: str) -> str:
    """A fediverse account as the lists hash it: ``user@host`` in lower case, without a leading ``@``."""
    return acct.strip().lstrip("@").lower()


def keyed(key: bytes, plain: str) -> str:
    return hmac.new(key, plain.encode(), hashlib.sha256).hexdigest()


def subject_hash(kind: str, value: str, key: bytes, site: str | None = None) -> str:
    """What the lists store for a subject: ``HMAC-SHA256(key, plain_hash(...))`` as hex."""
    return keyed(key, plain_hash(kind, value, site))


# ---------------------------------------------------------------------------------------------------- lists
def _old_rows(table: pa.Table) -> pa.Array:
    """Rows still in the unkeyed scheme: no ``scheme`` (column or value) and a non-empty hash."""
    has_hash = pc.fill_null(pc.not_equal(table.column("subject_hash"), ""), False)
    if "scheme" not in table.column_names:
        return has_hash
    return pc.and_(has_hash, pc.is_null(table.column("scheme")))


def _rekeyed(table: pa.Table, old: pa.Array, key: bytes) -> pa.Table:
    hashes = table.column("subject_hash").to_pylist()
    flags = old.to_pylist()
    new_hash = [keyed(key, h) if f else h for h, f in zip(hashes, flags, strict=True)]
    schemes = table.column("scheme").to_pylist() if "scheme" in table.column_names else [None] * table.num_rows
    new_scheme = [SCHEME_KEYED if f else s for s, f in zip(schemes, flags, strict=True)]
    table = table.set_column(table.column_names.index("subject_hash"), "subject_hash", pa.array(new_hash, pa.string()))
    if "scheme" in table.column_names:
        return table.set_column(table.column_names.index("scheme"), "scheme", pa.array(new_scheme, pa.string()))
    return table.append_column("scheme", pa.array(new_scheme, pa.string()))


def _keyed_list(root: DataRoot, dataset: str, key: bytes, rewrite: bool = True) -> tuple[list[str], int]:
    """Every keyed hash of ``dataset``; old rows are rekeyed in memory and rewritten where the root allows (and
    ``rewrite``)."""
    out: list[str] = []
    migrated = 0
    for path in root.part_files(dataset):
        table = pq.read_table(path, filesystem=root.fs)
        old = _old_rows(table)
        n = pc.sum(old).as_py() or 0
        if n:
            table = _rekeyed(table, old, key)
            if not rewrite:
                out += table.column("subject_hash").to_pylist()
                continue
            try:
                root.rewrite_part(path, to_table(table, root.schema(dataset)))
                migrated += n
            except OSError as err:
                log.warning("privacy: %s: cannot rewrite %s keyed (%s); matched in memory", dataset, path, err)
        out += table.column("subject_hash").to_pylist()
    return out, migrated


def migrate_lists(root: DataRoot, key: bytes) -> dict[str, int]:
    """Rewrite the unkeyed rows of ``optout/`` and ``audit/`` keyed; returns the rows migrated per list."""
    done = {ds: _keyed_list(root, ds, key)[1] for ds in LISTS}
    if any(done.values()):
        log.info("privacy: rows rewritten from plain sha256 to HMAC-SHA256: %s", done)
    return done


class OptOut:
    """The opt-out list of a data root; ``blocks(kind, id, site)`` tells a scraper to skip that user, person or image.

    Built where the list is read (the scrape driver); it carries the key and the keyed hashes, so it can be handed
    to workers as is. Building it migrates old unkeyed lists (see the module docstring).
    """

    def __init__(self, root: DataRoot, privacy: PrivacyConfig | None = None, key: bytes | None = None):
        self.key = key or root_key(root, privacy)
        hashes, migrated = _keyed_list(root, OPTOUT_DS, self.key)
        self.hashes: set[str] = {h for h in hashes if h}
        if migrated:
            _keyed_list(root, AUDIT_DS, self.key)
            log.info("privacy: %d opt-out rows rewritten from plain sha256 to HMAC-SHA256", migrated)

    @classmethod
    def peek(cls, root: DataRoot, privacy: PrivacyConfig | None = None) -> tuple[OptOut | None, str]:
        """The list as the crawl would match it, read without writing anything (``scrape check-feed``): (list, "")
        or (None, why it was not read): no opt-out rows, no record of the root's key, or no usable key here (the
        crawl would stop on those two)."""
        if not root.part_files(OPTOUT_DS):
            return None, f"no opt-out list under {root.uri}"
        try:
            if recorded(root) is None:
                return None, f"the opt-out list under {root.uri} has no record of its key"
            key = load_key(privacy, root.uri)
            check_root_key(root, key, key_source(privacy))  # a record exists: checked, nothing written
        except ConfigError as err:  # no key here, or not the root's key
            return None, str(err)
        self = cls.__new__(cls)
        self.key = key
        self.hashes = {h for h in _keyed_list(root, OPTOUT_DS, key, rewrite=False)[0] if h}
        return self, ""

    def blocks(self, kind: str, value: str | None, site: str | None = None) -> bool:
        """Whether the subject is opted out: on every site, or (``site`` given) on that site.

        ``kind="acct"``: a fediverse account (``user@host``, the posts' ``user_acct``), the same person through any
        server, so ``site`` plays no part: ``blocks("acct", "Alice@social.example")``.
        """
        if not value:
            return False
        if kind == "acct":
            return subject_hash(kind, normal_acct(value), self.key) in self.hashes
        if subject_hash(kind, value, self.key) in self.hashes:
            return True
        return site is not None and subject_hash(kind, value, self.key, site) in self.hashes

    def __len__(self) -> int:
        return len(self.hashes)
