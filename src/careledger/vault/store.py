"""VaultStore: encrypted record versions and their wrapped keys in one SQLite file.

Same discipline as the ledger's SQLite store: WAL, ``synchronous=FULL``, one ``BEGIN IMMEDIATE``
transaction per write, one connection per thread, sqlite errors become ``StorageError``. Plus
``secure_delete=ON``: when a record is shredded its wrapped keys, ciphertext, nonce and salt are
overwritten with zeros in the database pages, and the write-ahead log, which still holds the old
page images, is checkpointed and truncated right after (see ``shred``).

The store holds only ciphertext, wrapped keys and pseudonymous metadata; it never sees a data
key or plaintext. It does not verify anything either: ``Vault.open`` does.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from careledger import store_mac
from careledger.errors import Conflict, NotFound, StorageError, ValidationError
from careledger.sqlite_threads import GroupCommit, ProcessGroupCommit, insert_rows

__all__ = ["SealedRecord", "VaultStore"]

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records(
  record_id TEXT NOT NULL, version INTEGER NOT NULL, resource_type TEXT NOT NULL,
  patient TEXT NOT NULL, custodian TEXT NOT NULL, nonce BLOB, ciphertext BLOB, salt BLOB,
  content_hash TEXT NOT NULL, created TEXT NOT NULL, shredded_at TEXT,
  PRIMARY KEY(record_id, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_by_patient ON records(patient);
CREATE TABLE IF NOT EXISTS wrapped_keys(
  record_id TEXT NOT NULL, version INTEGER NOT NULL, recipient TEXT NOT NULL,
  wrapped BLOB NOT NULL, PRIMARY KEY(record_id, version, recipient)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS blind(
  token BLOB NOT NULL, record_id TEXT NOT NULL, version INTEGER NOT NULL,
  PRIMARY KEY(token, record_id, version)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS blind_by_record ON blind(record_id);
"""
_TOKEN_QUERY_CHUNK = 400
_TYPE_QUERY_CHUNK = 400  # keeps bound parameters well under SQLite's limit


def _utc_now() -> str:
    # time.gmtime() alone reads C's time(), the kernel's coarse clock, which can still show the
    # last second a few ms after time.time() shows the next: a version sealed right after its
    # meta.lastUpdated (stamped from time.time()) was then "created" a second before it, and
    # the node audit said so.
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time()))


@dataclass(frozen=True, slots=True)
class SealedRecord:
    """One stored, encrypted version of a record.

    ``wrapped_keys`` maps each recipient (base64url Ed25519 public key) to its sealed data key.
    ``repr`` shows metadata only: never ciphertext, nonce, salt or wrapped keys.
    """

    record_id: str
    version: int
    resource_type: str
    patient: str
    custodian: str
    content_hash: str
    created: str
    nonce: bytes = field(repr=False)
    ciphertext: bytes = field(repr=False)
    salt: bytes = field(repr=False)
    wrapped_keys: Mapping[str, bytes] = field(repr=False, hash=False)

    def __post_init__(self) -> None:
        # A read-only copy, so a frozen record cannot be changed through the caller's dict.
        object.__setattr__(self, "wrapped_keys", MappingProxyType(dict(self.wrapped_keys)))

    @property
    def recipients(self) -> tuple[str, ...]:
        """The base64url public keys the data key is wrapped for, sorted."""
        return tuple(sorted(self.wrapped_keys))

    def __reduce__(self) -> tuple[type[SealedRecord], tuple[object, ...]]:
        # to a writer process (ProcessGroupCommit): a read-only mapping does not pickle
        return (SealedRecord, (
            self.record_id, self.version, self.resource_type, self.patient, self.custodian,
            self.content_hash, self.created, self.nonce, self.ciphertext, self.salt,
            dict(self.wrapped_keys),
        ))  # fmt: skip


@dataclass(frozen=True)
class _PutMany:
    """Record versions and their blind-index tokens, written in one transaction: a write for
    the store's group commit, in this process or a writer process (hence plain data)."""

    records: tuple[SealedRecord, ...]
    tokens: Mapping[tuple[str, int], Sequence[bytes]]

    def __call__(self, conn: sqlite3.Connection) -> None:
        for record in self.records:
            VaultStore._put_locked(conn, record)
            found = self.tokens.get((record.record_id, record.version), ())
            insert_rows(
                conn,
                "INSERT OR IGNORE INTO blind(token, record_id, version)",
                [(t, record.record_id, record.version) for t in found],
            )


def writes_of(path: str) -> VaultStore:
    """In a writer process: the vault at ``path``, opened there."""
    return VaultStore(path)


class VaultStore:
    def __init__(
        self,
        path: Path | str,
        *,
        clock: Callable[[], str] = _utc_now,
        writer_pool: Executor | None = None,
    ) -> None:
        """``writer_pool``: record versions are written by a worker process of it (a node's:
        see ``ProcessGroupCommit``); other writes, and all reads, stay in this process."""
        self.path = Path(path)
        self._clock = clock
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._conns_lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        self._writes = GroupCommit(self._connect, "vault store", self._write_lock)
        self._records: GroupCommit = self._writes
        if writer_pool is not None:
            self._records = ProcessGroupCommit(
                writer_pool, writes_of, self.path, "vault store", self._write_lock
            )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._keys = store_mac.keys_for(self.path)  # in a node's directory: rows coded (ADR 0019)
        # the file's schema, checked before every use of a connection (ADR 0019)
        self._guard: store_mac.SchemaGuard | None = None
        conn = self._connect()
        try:
            self._guard = store_mac.create_schema(conn, self.path, self._keys, [SCHEMA])
            if self._guard is not None:
                self._local.checked = self._guard.check(conn, None)
            conn.execute(
                "INSERT OR IGNORE INTO meta(name, value) VALUES('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            row = conn.execute("SELECT value FROM meta WHERE name = 'schema_version'").fetchone()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot initialise vault store {self.path}: {exc}") from None
        found = None if row is None else row[0]
        if found != SCHEMA_VERSION:
            raise StorageError(f"unsupported vault schema version {found!r}")

    # -- connections -------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageError("the vault store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA secure_delete=ON")
                conn.execute("PRAGMA busy_timeout=10000")
                if self._keys is not None:
                    self._keys.attach(conn)
                if self._guard is not None:
                    self._guard.authorize(conn)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open vault store {self.path}: {exc}") from None
            self._local.conn = conn
            self._local.checked = None
            with self._conns_lock:
                self._conns.append(conn)
        if self._guard is not None:
            # one pragma while the schema has not moved; all of sqlite_master when it has
            self._local.checked = self._guard.check(conn, self._local.checked)
        return conn

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        try:
            return self._connect().execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise StorageError(f"vault store read failed: {exc}") from None

    # -- writes ------------------------------------------------------------------------------

    def put(self, record: SealedRecord) -> None:
        """Store one record version and its wrapped keys atomically.

        ``Conflict(RECORD_VERSION_EXISTS)`` if that version exists, ``Conflict(RECORD_SHREDDED)``
        if the record was shredded (an erased record id is never reused),
        ``Conflict(RECORD_TYPE_MISMATCH)`` if earlier versions have another resource type.
        """
        self.put_many([record])

    def put_many(
        self,
        records: Sequence[SealedRecord],
        tokens: Mapping[tuple[str, int], Sequence[bytes]] | None = None,
    ) -> None:
        """Store record versions in one transaction: all of them, or none (as :meth:`put`),
        with each version's blind-index ``tokens`` (so a stored record is always findable).

        Concurrent writers share commits (group commit): one fsync for all the writes that
        queued while the previous one was being made durable.
        """
        for record in records:
            _check_record(record)
        if self._closed:
            raise StorageError("the vault store is closed")
        wanted = {(r.record_id, r.version) for r in records}
        kept = {k: list(v) for k, v in (tokens or {}).items() if k in wanted}
        self._records.write(_PutMany(tuple(records), kept))

    @staticmethod
    def _put_locked(conn: sqlite3.Connection, record: SealedRecord) -> None:
        rows = conn.execute(
            "SELECT version, resource_type, shredded_at FROM records WHERE record_id = ?",
            (record.record_id,),
        ).fetchall()
        if any(shredded is not None for _, _, shredded in rows):
            raise Conflict("the record was shredded; its id is not reused", code="RECORD_SHREDDED")
        if any(version == record.version for version, _, _ in rows):
            raise Conflict(
                f"version {record.version} of the record already exists",
                code="RECORD_VERSION_EXISTS",
            )
        if any(kind != record.resource_type for _, kind, _ in rows):
            raise Conflict(
                "a record keeps one resource type across versions", code="RECORD_TYPE_MISMATCH"
            )
        conn.execute(
            "INSERT INTO records(record_id, version, resource_type, patient, custodian, nonce,"
            " ciphertext, salt, content_hash, created, shredded_at)"
            " VALUES(?,?,?,?,?,?,?,?,?,?,NULL)",
            (
                record.record_id,
                record.version,
                record.resource_type,
                record.patient,
                record.custodian,
                record.nonce,
                record.ciphertext,
                record.salt,
                record.content_hash,
                record.created,
            ),
        )
        conn.executemany(
            "INSERT INTO wrapped_keys(record_id, version, recipient, wrapped) VALUES(?,?,?,?)",
            [
                (record.record_id, record.version, recipient, wrapped)
                for recipient, wrapped in sorted(record.wrapped_keys.items())
            ],
        )

    def discard(self, record_id: str, version: int) -> None:
        """Remove a version that never reached the ledger (its anchor was refused)."""
        with self._write_lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "DELETE FROM wrapped_keys WHERE record_id = ? AND version = ?",
                    (record_id, version),
                )
                conn.execute(
                    "DELETE FROM blind WHERE record_id = ? AND version = ?", (record_id, version)
                )
                conn.execute(
                    "DELETE FROM records WHERE record_id = ? AND version = ?", (record_id, version)
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StorageError(f"vault discard failed: {exc}") from None

    def shred(self, record_id: str) -> list[int]:
        """Crypto-shred every version: wrapped keys deleted, ciphertext, nonce and salt nulled.

        Returns the versions shredded. ``NotFound(UNKNOWN_RECORD)`` if there is no such record,
        ``Conflict(ALREADY_SHREDDED)`` if it was shredded before. Metadata (id, type, patient
        pseudonym, custodian, content hash, times) is kept: it is what the ledger holds anyway,
        and without the salt the content hash can no longer be tested against a guess.
        """
        with self._write_lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    versions = self._shred_locked(conn, record_id)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StorageError(f"vault record was not shredded: {exc}") from None
        # Outside the write lock: the checkpoint may wait (busy_timeout) for readers to move on.
        self._truncate_wal(conn)
        return versions

    def _shred_locked(self, conn: sqlite3.Connection, record_id: str) -> list[int]:
        rows = conn.execute(
            "SELECT version, shredded_at FROM records WHERE record_id = ? ORDER BY version",
            (record_id,),
        ).fetchall()
        if not rows:
            raise NotFound("no such vault record", code="UNKNOWN_RECORD")
        live = [int(version) for version, shredded in rows if shredded is None]
        if not live:
            raise Conflict("the record is already shredded", code="ALREADY_SHREDDED")
        conn.execute("DELETE FROM wrapped_keys WHERE record_id = ?", (record_id,))
        conn.execute("DELETE FROM blind WHERE record_id = ?", (record_id,))  # its terms go too
        conn.execute(
            "UPDATE records SET ciphertext = NULL, nonce = NULL, salt = NULL, shredded_at = ?"
            " WHERE record_id = ? AND shredded_at IS NULL",
            (self._clock(), record_id),
        )
        return live

    def _truncate_wal(self, conn: sqlite3.Connection) -> bool:
        """Copy the WAL into the database and truncate it, so no old page image survives there.

        SQLite waits (up to the busy timeout, 10 s) for readers of older snapshots to finish.
        Returns False if one still holds on: the WAL then keeps the pre-shred frames until the
        next successful ``checkpoint`` or ``close``; the shred itself is committed either way.
        """
        try:
            row = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.Error:
            return False
        return row is not None and row[0] == 0

    def checkpoint(self) -> bool:
        """Checkpoint and truncate the write-ahead log; True when it is now empty."""
        return self._truncate_wal(self._connect())

    # -- reads -------------------------------------------------------------------------------

    def get(self, record_id: str, version: int | None = None) -> SealedRecord:
        """A record version (the latest when ``version`` is None).

        ``NotFound(UNKNOWN_RECORD)`` if it never existed, ``NotFound(RECORD_SHREDDED)`` if shredded.
        """
        conn = self._connect()
        try:
            # One read transaction, so the record row and its wrapped keys are one snapshot.
            conn.execute("BEGIN")
            try:
                if version is None:
                    row = conn.execute(
                        "SELECT record_id, version, resource_type, patient, custodian, nonce,"
                        " ciphertext, salt, content_hash, created, shredded_at FROM records"
                        " WHERE record_id = ? ORDER BY version DESC LIMIT 1",
                        (record_id,),
                    ).fetchone()
                else:
                    row = conn.execute(
                        "SELECT record_id, version, resource_type, patient, custodian, nonce,"
                        " ciphertext, salt, content_hash, created, shredded_at FROM records"
                        " WHERE record_id = ? AND version = ?",
                        (record_id, version),
                    ).fetchone()
                keys = (
                    []
                    if row is None
                    else conn.execute(
                        "SELECT recipient, wrapped FROM wrapped_keys"
                        " WHERE record_id = ? AND version = ?",
                        (row[0], row[1]),
                    ).fetchall()
                )
            finally:
                conn.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StorageError(f"vault store read failed: {exc}") from None
        if row is None:
            raise NotFound("no such vault record or version", code="UNKNOWN_RECORD")
        if row[10] is not None:
            raise NotFound("the record was shredded", code="RECORD_SHREDDED")
        return SealedRecord(
            record_id=str(row[0]),
            version=int(row[1]),
            resource_type=str(row[2]),
            patient=str(row[3]),
            custodian=str(row[4]),
            nonce=_as_bytes(row[5]),
            ciphertext=_as_bytes(row[6]),
            salt=_as_bytes(row[7]),
            content_hash=str(row[8]),
            created=str(row[9]),
            wrapped_keys={str(r): _as_bytes(w) for r, w in keys},
        )

    def versions(self, record_id: str) -> list[int]:
        """Every stored version of a record, ascending, shredded or not.

        ``NotFound(UNKNOWN_RECORD)`` if the record never existed.
        """
        rows = self._all(
            "SELECT version FROM records WHERE record_id = ? ORDER BY version", (record_id,)
        )
        if not rows:
            raise NotFound("no such vault record", code="UNKNOWN_RECORD")
        return [int(r[0]) for r in rows]  # type: ignore[call-overload]

    def is_shredded(self, record_id: str) -> bool:
        """Whether the record was shredded; ``NotFound(UNKNOWN_RECORD)`` if it never existed."""
        rows = self._all(
            "SELECT COUNT(*), COUNT(shredded_at) FROM records WHERE record_id = ?", (record_id,)
        )
        total, shredded = rows[0]
        if not total:
            raise NotFound("no such vault record", code="UNKNOWN_RECORD")
        return bool(shredded)

    def for_patient(
        self, patient: str, resource_types: Collection[str] | None = None
    ) -> list[tuple[str, int, str]]:
        """``(record_id, latest version, resource type)`` of the patient's live records.

        A record belongs to the patient named by its latest version. Shredded records are left
        out. Sorted by record id.
        """
        sql = (
            "SELECT r.record_id, r.version, r.resource_type FROM records r"
            " WHERE r.patient = ? AND r.shredded_at IS NULL"
            " AND r.version = (SELECT MAX(version) FROM records WHERE record_id = r.record_id)"
        )
        if resource_types is None:
            rows = self._all(sql + " ORDER BY r.record_id", (patient,))
        else:
            wanted = sorted(set(resource_types))
            rows = []
            for start in range(0, len(wanted), _TYPE_QUERY_CHUNK):
                chunk = wanted[start : start + _TYPE_QUERY_CHUNK]
                marks = ",".join("?" for _ in chunk)
                rows += self._all(
                    f"{sql} AND r.resource_type IN ({marks})",
                    (patient, *chunk),
                )
            rows.sort()
        return [(str(r), int(v), str(t)) for r, v, t in rows]  # type: ignore[call-overload]

    def live_records(self, resource_types: Collection[str]) -> list[tuple[str, str, int, str]]:
        """``(patient, record_id, latest version, type)`` of every live record of these types.

        For computations a custodian runs over all of its records (trial feasibility counts);
        sorted by patient, then record id.
        """
        wanted = sorted(set(resource_types))[:_TYPE_QUERY_CHUNK]
        marks = ",".join("?" for _ in wanted)
        rows = self._all(
            "SELECT r.patient, r.record_id, r.version, r.resource_type FROM records r"  # noqa: S608
            " WHERE r.shredded_at IS NULL"
            f" AND r.resource_type IN ({marks})"
            " AND r.version = (SELECT MAX(version) FROM records WHERE record_id = r.record_id)"
            " ORDER BY r.patient, r.record_id",
            wanted,
        )
        return [(str(p), str(r), int(v), str(t)) for p, r, v, t in rows]  # type: ignore[call-overload]

    # -- blind index -------------------------------------------------------------------------

    def blind_lookup(self, groups: Sequence[Sequence[bytes]]) -> set[tuple[str, int]]:
        """(record id, version) pairs holding at least one token of every group."""
        found: set[tuple[str, int]] | None = None
        for group in groups:
            hits: set[tuple[str, int]] = set()
            unique = sorted(set(group))
            for start in range(0, len(unique), _TOKEN_QUERY_CHUNK):
                chunk = unique[start : start + _TOKEN_QUERY_CHUNK]
                marks = ",".join("?" for _ in chunk)
                rows = self._all(
                    f"SELECT record_id, version FROM blind WHERE token IN ({marks})",  # noqa: S608
                    chunk,
                )
                hits.update((str(r), int(v)) for r, v in rows)  # type: ignore[call-overload]
            found = hits if found is None else found & hits
            if not found:
                return set()
        return found or set()

    def index_version(self, record_id: str, version: int, tokens: Sequence[bytes]) -> None:
        """Add a version's tokens (building the index for versions stored before it existed)."""

        def work(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT OR IGNORE INTO blind(token, record_id, version) VALUES(?,?,?)",
                [(t, record_id, version) for t in tokens],
            )

        self._writes.write(work)

    def run_together(self, works: Sequence[Callable[[sqlite3.Connection], None]]) -> None:
        """Writes in one transaction here and now (a writer process's side of put_many)."""
        self._writes.run_together(works)

    def meta_value(self, name: str) -> str | None:
        rows = self._all("SELECT value FROM meta WHERE name = ?", (name,))
        return None if not rows else str(rows[0][0])

    def set_meta(self, name: str, value: str) -> None:
        def work(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES(?, ?)", (name, value))

        self._writes.write(work)

    def close(self) -> None:
        """Close every connection this store opened (SQLite then checkpoints and drops the WAL)."""
        with self._conns_lock:
            conns, self._conns = self._conns, []
            self._closed = True
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def _check_record(record: SealedRecord) -> None:
    if not isinstance(record, SealedRecord):
        raise ValidationError("expected a SealedRecord")
    if not record.record_id or not record.resource_type:
        raise ValidationError("record id and resource type must be non-empty")
    if not isinstance(record.patient, str):  # "" for an organisation's own record
        raise ValidationError("patient must be a string")
    if not record.custodian:
        raise ValidationError("custodian must be non-empty")
    if type(record.version) is not int or record.version < 1:
        raise ValidationError("version must be an integer >= 1")
    if not record.wrapped_keys:
        raise ValidationError("a record needs at least one wrapped key")
    for name in ("nonce", "ciphertext", "salt"):
        if not isinstance(getattr(record, name), bytes):
            raise ValidationError(f"{name} must be bytes")


def _as_bytes(value: object) -> bytes:
    """A BLOB cell as bytes; a cell rewritten as TEXT still reads (and then fails to verify)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise StorageError(f"a stored vault cell has the wrong type ({type(value).__name__})")
