"""SQLite LedgerStore: one file, WAL, one writer, fsync before a block is acknowledged.

Each block is one ``BEGIN IMMEDIATE … COMMIT`` transaction with ``synchronous=FULL``, so after
``append_block`` returns the block survives a power cut, and a crash mid-write leaves no trace
of it. Readers use their own connections (one per thread) and see only committed blocks.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import orjson

from careledger.core.block import BlockHeader, header_from_json
from careledger.errors import StorageError, ValidationError
from careledger.ledger.ports import BlockWrite, NodeId, StoredEvent, StoredTx
from careledger.sqlite_threads import insert_rows

SCHEMA_VERSION = "1"
SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS local_meta(name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks(
  height INTEGER PRIMARY KEY, hash TEXT NOT NULL, header BLOB NOT NULL, writeset BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS txs(
  leaf INTEGER PRIMARY KEY, tx_id TEXT NOT NULL UNIQUE, height INTEGER NOT NULL,
  envelope BLOB NOT NULL, receipt BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS txs_by_height ON txs(height);
CREATE TABLE IF NOT EXISTS nodes(
  level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
  PRIMARY KEY(level, idx)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS state(
  ns TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, PRIMARY KEY(ns, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS events(
  height INTEGER NOT NULL, seq INTEGER NOT NULL, tx_index INTEGER NOT NULL, type TEXT NOT NULL,
  data BLOB NOT NULL, PRIMARY KEY(height, seq)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_by_type ON events(type, height, seq);
"""
_NODE_QUERY_CHUNK = 400  # keeps bound parameters well under SQLite's limit
# Page cache of the connection that appends blocks (SQLite's default is 2 MiB): the txs' tx_id
# index and the state table take keys in random order, and with the default cache a block of
# 2,000 transactions rereads their pages. Readers keep the default; this bounds the extra memory.
_WRITER_CACHE_KIB = 32 * 1024


_FIRST_KEYS = "SELECT key FROM state WHERE ns = ? AND key >= ? AND key < ? ORDER BY key LIMIT ?"
_LAST_KEYS = (
    "SELECT key FROM state WHERE ns = ? AND key >= ? AND key < ? ORDER BY key DESC LIMIT ?"
)


class SQLiteStore:
    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._readonly = readonly
        self._local = threading.local()
        self._write_lock = threading.Lock()
        if not readonly:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect()
            conn.executescript(SCHEMA)
            conn.execute(
                "INSERT OR IGNORE INTO meta(name, value) VALUES('schema_version', ?)",
                (SCHEMA_VERSION,),
            )
            conn.commit()
        elif not self.path.exists():
            raise StorageError(f"no ledger store at {self.path}")
        version = self.chain_meta("schema_version")
        if version != SCHEMA_VERSION:
            raise StorageError(f"unsupported store schema version {version!r}")

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            # a URI with the path escaped: a '?' or '#' in a directory name must not end it
            uri = Path(self.path).resolve().as_uri() + ("?mode=ro" if self._readonly else "")
            try:
                conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
                if not self._readonly:
                    conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open ledger store {self.path}: {exc}") from None
            self._local.conn = conn
        return conn

    def _one(self, sql: str, params: Sequence[object] = ()) -> tuple[object, ...] | None:
        try:
            row: tuple[object, ...] | None = self._connect().execute(sql, params).fetchone()
        except OverflowError:
            raise ValidationError("a number is out of range", code="OUT_OF_RANGE") from None
        except sqlite3.Error as exc:
            raise StorageError(f"ledger store read failed: {exc}") from None
        return row

    def _all(self, sql: str, params: Sequence[object] = ()) -> list[tuple[object, ...]]:
        try:
            return self._connect().execute(sql, params).fetchall()
        except OverflowError:
            raise ValidationError("a number is out of range", code="OUT_OF_RANGE") from None
        except sqlite3.Error as exc:
            raise StorageError(f"ledger store read failed: {exc}") from None

    def chain_meta(self, name: str) -> str | None:
        row = self._one("SELECT value FROM meta WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def local_meta(self, name: str) -> str | None:
        row = self._one("SELECT value FROM local_meta WHERE name = ?", (name,))
        return None if row is None else str(row[0])

    def set_local_meta(self, name: str, value: str) -> None:
        if self._readonly:
            raise StorageError("the store is open read-only")
        with self._write_lock:
            try:
                self._connect().execute(
                    "INSERT OR REPLACE INTO local_meta(name, value) VALUES(?,?)", (name, value)
                )
            except sqlite3.Error as exc:
                raise StorageError(f"local meta not written: {exc}") from None

    def set_chain_meta(self, name: str, value: str) -> None:
        if self.head() is not None:
            raise StorageError("chain meta is immutable after genesis")
        conn = self._connect()
        conn.execute("INSERT OR REPLACE INTO meta(name, value) VALUES(?, ?)", (name, value))

    def head(self) -> BlockHeader | None:
        row = self._one("SELECT header FROM blocks ORDER BY height DESC LIMIT 1")
        return None if row is None else _header(row[0])

    def head_height(self) -> int:
        row = self._one("SELECT MAX(height) FROM blocks")
        return -1 if row is None or row[0] is None else int(row[0])  # type: ignore[call-overload]

    def header(self, height: int) -> BlockHeader | None:
        row = self._one("SELECT header FROM blocks WHERE height = ?", (height,))
        return None if row is None else _header(row[0])

    def header_hash(self, height: int) -> str | None:
        row = self._one("SELECT hash FROM blocks WHERE height = ?", (height,))
        return None if row is None else str(row[0])

    def block_txs(self, height: int) -> list[StoredTx]:
        rows = self._all(
            "SELECT tx_id, envelope, receipt, leaf FROM txs WHERE height = ? ORDER BY leaf",
            (height,),
        )
        return [_tx(row) for row in rows]

    def block_writeset(self, height: int) -> bytes | None:
        row = self._one("SELECT writeset FROM blocks WHERE height = ?", (height,))
        return None if row is None else _as_bytes(row[0])  # type: ignore[arg-type]

    def block_events(self, height: int) -> list[StoredEvent]:
        rows = self._all(
            "SELECT height, tx_index, seq, type, data FROM events WHERE height = ? ORDER BY seq",
            (height,),
        )
        return [
            StoredEvent(int(h), int(t), int(s), str(ty), _as_bytes(d))  # type: ignore[call-overload,arg-type]
            for h, t, s, ty, d in rows
        ]

    def events_of_types(self, types: Sequence[str], limit: int) -> list[StoredEvent]:
        marks = ",".join("?" for _ in types)  # placeholders only: the types are bound
        rows = self._all(
            "SELECT height, tx_index, seq, type, data FROM events"  # noqa: S608
            f" WHERE type IN ({marks}) ORDER BY height DESC, seq DESC LIMIT ?",
            (*types, limit),
        )
        return [
            StoredEvent(int(h), int(t), int(s), str(ty), _as_bytes(d))  # type: ignore[call-overload,arg-type]
            for h, t, s, ty, d in reversed(rows)
        ]

    def find_tx(self, tx_id: str) -> tuple[int, StoredTx] | None:
        row = self._one(
            "SELECT tx_id, envelope, receipt, leaf, height FROM txs WHERE tx_id = ?", (tx_id,)
        )
        return None if row is None else (int(row[4]), _tx(row))  # type: ignore[call-overload]

    def leaf(self, leaf_index: int) -> StoredTx | None:
        row = self._one(
            "SELECT tx_id, envelope, receipt, leaf FROM txs WHERE leaf = ?", (leaf_index,)
        )
        return None if row is None else _tx(row)

    def get_state(self, namespace: str, key: str) -> bytes | None:
        row = self._one("SELECT value FROM state WHERE ns = ? AND key = ?", (namespace, key))
        return None if row is None else _as_bytes(row[0])  # type: ignore[arg-type]

    def state_items(self) -> Iterator[tuple[str, str, bytes]]:
        cursor = self._connect().execute("SELECT ns, key, value FROM state ORDER BY ns, key")
        for ns, key, value in cursor:
            yield ns, key, _as_bytes(value)

    def state_keys(
        self, namespace: str, prefix: str, limit: int, *, last: bool = False
    ) -> list[str]:
        rows = self._all(
            _LAST_KEYS if last else _FIRST_KEYS, (namespace, prefix, prefix + "\U0010ffff", limit)
        )
        if last:
            rows.reverse()
        return [str(r[0]) for r in rows]

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        found: dict[NodeId, bytes] = {}
        unique = list(dict.fromkeys(ids))
        for start in range(0, len(unique), _NODE_QUERY_CHUNK):
            chunk = unique[start : start + _NODE_QUERY_CHUNK]
            values = ",".join("(?,?)" for _ in chunk)
            params = [v for node in chunk for v in node]
            # A join on a VALUES list is answered by primary-key lookups; a row-value IN scans.
            rows = self._all(
                f"WITH want(l, i) AS (VALUES {values}) "  # noqa: S608 - placeholders only
                "SELECT n.level, n.idx, n.hash FROM want CROSS JOIN nodes n "
                "ON n.level = want.l AND n.idx = want.i",
                params,
            )
            for level, idx, digest in rows:
                found[(int(level), int(idx))] = _as_bytes(digest)  # type: ignore[call-overload,arg-type]
        try:
            return [found[i] for i in ids]
        except KeyError as exc:
            raise StorageError(f"Merkle node {exc.args[0]} is missing") from None

    def append_block(self, block: BlockWrite) -> None:
        if self._readonly:
            raise StorageError("the store is open read-only")
        header = block.header
        with self._write_lock:
            conn = self._connect()
            if not getattr(self._local, "writer", False):
                conn.execute(f"PRAGMA cache_size=-{_WRITER_CACHE_KIB}")
                self._local.writer = True
            try:
                conn.execute("BEGIN IMMEDIATE")
                row = conn.execute(
                    "SELECT height, hash FROM blocks ORDER BY height DESC LIMIT 1"
                ).fetchone()
                expected = 0 if row is None else row[0] + 1
                if header.height != expected:
                    raise StorageError(f"block {header.height} is not head + 1 ({expected})")
                if row is not None and header.prev != row[1]:
                    raise StorageError(f"block {header.height} does not extend the head")
                conn.execute(
                    "INSERT INTO blocks(height, hash, header, writeset) VALUES(?,?,?,?)",
                    (header.height, block.header_hash, header.canonical(), block.writeset),
                )
                # one statement per table, not one step per row (see insert_rows)
                insert_rows(
                    conn,
                    "INSERT INTO txs(leaf, tx_id, height, envelope, receipt)",
                    [
                        (t.leaf_index, t.tx_id, header.height, t.envelope, t.receipt)
                        for t in block.txs
                    ],
                )
                insert_rows(
                    conn,
                    "INSERT INTO nodes(level, idx, hash)",
                    [(lvl, idx, digest) for (lvl, idx), digest in block.nodes],
                )
                insert_rows(
                    conn,
                    "INSERT OR REPLACE INTO state(ns, key, value)",
                    [(ns, k, v) for ns, k, v in block.state if v is not None],
                )
                conn.executemany(
                    "DELETE FROM state WHERE ns = ? AND key = ?",
                    [(ns, k) for ns, k, v in block.state if v is None],
                )
                insert_rows(
                    conn,
                    "INSERT INTO events(height, seq, tx_index, type, data)",
                    [(e.height, e.seq, e.tx_index, e.type, e.data) for e in block.events],
                )
                conn.executemany(
                    "INSERT OR REPLACE INTO local_meta(name, value) VALUES(?,?)",
                    list(block.local.items()),
                )
                conn.execute("COMMIT")
            except StorageError:
                conn.execute("ROLLBACK")
                raise
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise StorageError(f"block {header.height} was not written: {exc}") from None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
            self._local.writer = False


def _as_bytes(value: object) -> bytes:
    """A BLOB cell as bytes; a cell rewritten as TEXT still reads (and then fails to verify)."""
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    raise StorageError(f"a stored cell has the wrong type ({type(value).__name__})")


def _header(raw: object) -> BlockHeader:
    try:
        return header_from_json(orjson.loads(_as_bytes(raw)))  # type: ignore[call-overload]
    except (orjson.JSONDecodeError, ValidationError) as exc:
        raise StorageError(f"a stored block header is unreadable: {exc}") from None


def _tx(row: tuple[object, ...]) -> StoredTx:
    tx_id, envelope, receipt, leaf = row[0], row[1], row[2], row[3]
    return StoredTx(str(tx_id), _as_bytes(envelope), _as_bytes(receipt), int(leaf))  # type: ignore[call-overload,arg-type]
