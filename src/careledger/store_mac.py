"""Keyed integrity codes for the node's SQLite stores (ADR 0019).

Every table of every store the node keeps beside its ledger (vault, EPCIS, monitoring, visits,
links, SMART, export, trials, federation) carries a ``mac`` column: HMAC-SHA256 under a key
derived from the node's key (``k_row``) over the store's file name, the table and every other
column's value with its SQLite type. SQLite computes it itself, as a stored generated column
calling ``careledger_row_mac``, an application-defined function registered only on the
connections the node opens: the write paths do not change, and a connection without the function
(an ``sqlite3`` shell, a script) cannot insert, update or delete a row at all ("unknown
function").

Each table also has a set digest in the store's ``integrity`` table: the XOR, over the table's
rows, of HMAC-SHA256 under a second key (``k_set``) of each row's code and rowid, kept by AFTER
INSERT, UPDATE and DELETE triggers (``careledger_set_xor``). The element of a removed row is
taken from its values, recomputed, never from the code stored beside them. A row changed,
added or deleted behind the node's back then breaks its own code or its table's digest, and
only the holder of the node's key can make them agree again. The row ``tbl = ''`` of
``integrity`` records which tables are coded, since when (``since``) and how many of their rows
were taken as they were found (``vouched``: rows of a store made before codes existed, coded at
its first open), under ``k_row``.

``careledger.node_audit.integrity`` checks all of it; ``connect`` opens a store by hand the way
the node does (for repairs and tests).
"""

from __future__ import annotations

import contextlib
import hmac
import os
import re
import sqlite3
import struct
import threading
import time
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from careledger.core.keys import KeyPair
from careledger.errors import CareLedgerError, StorageError

__all__ = [
    "INTEGRITY",
    "MAC",
    "ROW_FUNCTION",
    "SET_FUNCTION",
    "STORE_ROW",
    "RawText",
    "StoreKeys",
    "apply_layout",
    "coded_tables",
    "connect",
    "create_schema",
    "data_columns",
    "enrolment_holds",
    "entries",
    "has_code",
    "has_rowid",
    "key_columns",
    "keys_for",
]

MAC = "mac"
INTEGRITY = "integrity"
STORE_ROW = ""  # the row of ``integrity`` that records the coded tables
ROW_FUNCTION = "careledger_row_mac"
SET_FUNCTION = "careledger_set_xor"
CODE_SIZE = 32
INTEGRITY_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS integrity(tbl TEXT PRIMARY KEY, digest BLOB NOT NULL, "
    "rows INTEGER NOT NULL, since TEXT NOT NULL, vouched INTEGER NOT NULL)"
)
_SALT = b"careledger store integrity v1"
_OLD = "__integrity_old"  # a table's name while it is rebuilt with its code column
_CONSTRAINTS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})


class RawText(bytes):
    """A TEXT value as the bytes SQLite holds (``text_factory``): a changed byte that is no
    longer UTF-8 is still read, and encoded as the text it was written as."""


def _length(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big")


def encode(store: str, table: str, values: Sequence[object]) -> bytes:
    """A row, unambiguously: store, table, and each value with its SQLite type."""
    out = [b"R", _length(store.encode()), store.encode(), _length(table.encode()),
           table.encode(), len(values).to_bytes(4, "big")]  # fmt: skip
    for value in values:
        if value is None:
            out.append(b"\x00")
        elif isinstance(value, RawText):
            out += (b"\x03", _length(value), value)
        elif isinstance(value, str):
            data = value.encode()
            out += (b"\x03", _length(data), data)
        elif isinstance(value, bytes):
            out += (b"\x04", _length(value), value)
        elif isinstance(value, int):
            out += (b"\x01", value.to_bytes(8, "big", signed=True))
        elif isinstance(value, float):
            out += (b"\x02", struct.pack(">d", value))
        else:
            raise TypeError(f"not an SQLite value: {type(value).__name__}")
    return b"".join(out)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(CODE_SIZE, "big")


class StoreKeys:
    """The two integrity keys, derived from the node's key; never shown."""

    __slots__ = ("_row", "_set")

    def __init__(self, row: bytes, set_: bytes) -> None:
        if len(row) != 32 or len(set_) != 32:
            raise ValueError("integrity keys are 32 bytes")
        self._row = row
        self._set = set_

    def __repr__(self) -> str:
        return "StoreKeys(...)"

    @classmethod
    def for_node(cls, node_key: KeyPair) -> StoreKeys:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=_SALT, info=b"k_row|k_set"
        ).derive(node_key.seed)
        return cls(derived[:32], derived[32:])

    def row_mac(self, store: str, table: str, values: Sequence[object]) -> bytes:
        return hmac.digest(self._row, encode(store, table, values), "sha256")

    def element(self, code: bytes, rowid: int | None) -> bytes:
        """A row's share of its table's digest, from its code and its rowid (None in a table
        without rowids), under the other key: so a row moved to another rowid shows too."""
        where = b"" if rowid is None else rowid.to_bytes(8, "big", signed=True)
        return hmac.digest(self._set, code + where, "sha256")

    def genesis(self, store: str, table: str, since: str) -> bytes:
        """A table's digest with no rows."""
        return hmac.digest(self._set, b"G" + encode(store, table, [since]), "sha256")

    def digest(self, store: str, table: str, since: str,
               rows: Iterator[tuple[bytes, int | None]]) -> bytes:  # fmt: skip
        """A table's digest, from each row's code and rowid."""
        found = self.genesis(store, table, since)
        for code, rowid in rows:
            found = _xor(found, self.element(code, rowid))
        return found

    def enrolment(self, store: str, since: str, vouched: int,
                  tables: Sequence[tuple[str, str, int]]) -> bytes:  # fmt: skip
        """The code of the ``tbl = ''`` row: the coded tables, each with its since and vouched."""
        values: list[object] = [since, vouched]
        for table, table_since, table_vouched in sorted(tables):
            values += [table, table_since, table_vouched]
        return hmac.digest(self._row, b"E" + encode(store, STORE_ROW, values), "sha256")

    def attach(self, conn: sqlite3.Connection) -> None:
        """Make ``conn`` able to write coded tables: the two functions, and recursive triggers
        (so a row an INSERT OR REPLACE removes leaves its table's digest too)."""

        def row_mac(store: str, table: str, *values: object) -> bytes:
            return self.row_mac(store, table, values)

        def set_xor(digest: bytes, code: bytes, rowid: int | None) -> bytes:
            if not isinstance(digest, bytes) or len(digest) != CODE_SIZE:
                raise ValueError("not a digest")
            if not isinstance(code, bytes) or not (rowid is None or isinstance(rowid, int)):
                raise ValueError("not a code and a rowid")
            return _xor(digest, self.element(code, rowid))

        conn.create_function(ROW_FUNCTION, -1, row_mac, deterministic=True)
        conn.create_function(SET_FUNCTION, 3, set_xor, deterministic=True)
        conn.execute("PRAGMA recursive_triggers=ON")


# -- the node's key, found from the store's directory ------------------------------------------

_cache: dict[tuple[str, int, int, int], StoreKeys] = {}
_cache_lock = threading.Lock()


def keys_for(path: Path) -> StoreKeys | None:
    """The integrity keys of the node whose directory holds ``path`` (None: the file is not in a
    node directory, as a store of a unit test). The node key is read as the node reads it
    (``CARELEDGER_KEY_PASSPHRASE``); one that cannot be read is a ``StorageError``, never a
    store written without codes."""
    from careledger.config import NODE_FILE, Settings

    data_dir = Path(path).parent
    if not (data_dir / NODE_FILE).is_file():
        return None
    try:
        key_file = Settings.load(data_dir).node_key_file
        stat = key_file.stat()
        ident = (str(key_file.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with _cache_lock:
            found = _cache.get(ident)
        if found is None:
            from careledger.keyfile import read_key_file

            passphrase = os.environ.get("CARELEDGER_KEY_PASSPHRASE") or None
            _, node_key = read_key_file(key_file, passphrase=passphrase)
            found = StoreKeys.for_node(node_key)
            with _cache_lock:
                _cache[ident] = found
        return found
    except (CareLedgerError, OSError) as exc:
        what = exc.message if isinstance(exc, CareLedgerError) else type(exc).__name__
        raise StorageError(
            f"the node key of {data_dir} cannot be read, and its stores are written under it: "
            f"{what}"
        ) from None


def connect(path: Path) -> sqlite3.Connection:
    """A connection to a store that writes as the node does (its codes and digests kept): for
    repairs by hand, and tests. Outside a node directory, a plain connection."""
    keys = keys_for(Path(path))
    conn = sqlite3.connect(path)
    if keys is not None:
        keys.attach(conn)
    return conn


# -- the layout: code column, triggers, integrity table ----------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _text(value: object) -> str:
    """A name read back, whatever the connection's ``text_factory``."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def data_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """The columns a table's code covers: every ordinary column, in order (not generated ones,
    such as ``mac`` itself)."""
    rows = conn.execute(f"PRAGMA table_xinfo({_quote(table)})").fetchall()
    return [_text(r[1]) for r in sorted(rows, key=lambda r: int(r[0])) if int(r[6]) == 0]


def key_columns(conn: sqlite3.Connection, table: str) -> list[str]:
    """A table's primary key columns, in key order."""
    rows = conn.execute(f"PRAGMA table_xinfo({_quote(table)})").fetchall()
    return [_text(r[1]) for r in sorted((r for r in rows if int(r[5]) > 0), key=lambda r: r[5])]


def has_code(conn: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` has its code column."""
    rows = conn.execute(f"PRAGMA table_xinfo({_quote(table)})").fetchall()
    return any(_text(r[1]) == MAC for r in rows)


def coded_tables(conn: sqlite3.Connection) -> list[str]:
    """The tables of a store that carry codes: all but SQLite's own and ``integrity``."""
    rows = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' "
        "ESCAPE '\\' AND name != ? ORDER BY name",
        (INTEGRITY,),
    ).fetchall()
    return [_text(r[0]) for r in rows]


def _code_expression(store: str, table: str, columns: Sequence[str]) -> str:
    args = ", ".join([_literal(store), _literal(table), *(_quote(c) for c in columns)])
    return f"{ROW_FUNCTION}({args})"


def _skip_quoted(sql: str, i: int) -> int:
    """The index after the quoted token starting at ``sql[i]``."""
    close = {"'": "'", '"': '"', "`": "`", "[": "]"}[sql[i]]
    j = i + 1
    while j < len(sql):
        if sql[j] == close:
            if close != "]" and j + 1 < len(sql) and sql[j + 1] == close:
                j += 2
                continue
            return j + 1
        j += 1
    raise ValueError("unterminated quote")


def _with_code_column(sql: str, store: str, table: str, columns: Sequence[str]) -> str:
    """``CREATE TABLE`` text with the code column added after the last column definition."""
    items: list[tuple[int, int]] = []
    depth, start, i = 0, -1, 0
    while i < len(sql):
        ch = sql[i]
        if ch in "'\"`[":
            i = _skip_quoted(sql, i)
            continue
        if ch == "-" and sql.startswith("--", i):
            end = sql.find("\n", i)
            i = len(sql) if end < 0 else end
            continue
        if ch == "/" and sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            i = len(sql) if end < 0 else end + 2
            continue
        if ch == "(":
            depth += 1
            if depth == 1:
                start = i + 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                items.append((start, i))
                break
        elif ch == "," and depth == 1:
            items.append((start, i))
            start = i + 1
        i += 1
    columns_end = None
    for begin, end in items:
        item = sql[begin:end]
        word = re.match(r"\s*([A-Za-z_]+)", item)
        if item.strip() and not (word and word.group(1).upper() in _CONSTRAINTS):
            columns_end = begin + len(sql[begin:end].rstrip())
    if columns_end is None:
        raise ValueError(f"no column definition found in the table {table}")
    column = (
        f", {MAC} BLOB GENERATED ALWAYS AS ({_code_expression(store, table, columns)}) STORED"
    )
    return sql[:columns_end] + column + sql[columns_end:]


def _trigger(name: str, event: str, table: str, setting: str) -> str:
    head = f"CREATE TRIGGER {_quote(name)} AFTER {event} ON {_quote(table)} BEGIN "
    return head + f"UPDATE {INTEGRITY} SET {setting} WHERE tbl = {_literal(table)}; END"  # noqa: S608 - names from the schema


def _triggers(store: str, table: str, columns: Sequence[str], rowid: bool) -> dict[str, str]:
    """The three triggers that keep ``table``'s digest, by name: a new row's code is the one
    SQLite just computed (``NEW.mac``); a removed row's is recomputed from its values."""
    old = ", ".join([_literal(store), _literal(table), *(f"OLD.{_quote(c)}" for c in columns)])
    old_code = f"{ROW_FUNCTION}({old})"
    new_at, old_at = ("NEW.rowid", "OLD.rowid") if rowid else ("NULL", "NULL")
    added = f"{SET_FUNCTION}(digest, NEW.{MAC}, {new_at})"
    removed = f"{SET_FUNCTION}(digest, {old_code}, {old_at})"
    replaced = f"{SET_FUNCTION}({removed}, NEW.{MAC}, {new_at})"
    prefix = f"integrity_{table}"
    return {
        f"{prefix}_insert": _trigger(
            f"{prefix}_insert", "INSERT", table, f"digest = {added}, rows = rows + 1"
        ),
        f"{prefix}_update": _trigger(f"{prefix}_update", "UPDATE", table, f"digest = {replaced}"),
        f"{prefix}_delete": _trigger(
            f"{prefix}_delete", "DELETE", table, f"digest = {removed}, rows = rows - 1"
        ),
    }


def _rebuild_with_code(conn: sqlite3.Connection, store: str, table: str) -> None:
    """Give ``table`` its code column: SQLite adds a stored generated column only by making the
    table again, so its rows are copied into the new one (which codes them as they are), its
    indexes, other triggers and AUTOINCREMENT sequence restored."""
    (sql,) = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
    ).fetchone()
    columns = data_columns(conn, table)
    others = [
        str(r[0])
        for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger') "
            "AND sql IS NOT NULL AND name NOT LIKE 'integrity\\_%' ESCAPE '\\'",
            (table,),
        )
    ]
    has_sequence = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'"
    ).fetchone()
    sequence = (
        conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if has_sequence
        else None
    )
    old = table + _OLD
    listed = ", ".join(_quote(c) for c in columns)
    conn.execute(f"ALTER TABLE {_quote(table)} RENAME TO {_quote(old)}")
    conn.execute(_with_code_column(str(sql), store, table, columns))
    conn.execute(
        f"INSERT INTO {_quote(table)}({listed}) SELECT {listed} FROM {_quote(old)}"  # noqa: S608 - names from the schema
    )
    conn.execute(f"DROP TABLE {_quote(old)}")
    for statement in others:
        conn.execute(statement)
    if sequence is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES(?, ?)", (table, sequence[0]))


def _ensure_triggers(conn: sqlite3.Connection, store: str, table: str) -> None:
    wanted = _triggers(store, table, data_columns(conn, table), has_rowid(conn, table))
    held = dict(
        conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?",
            (table,),
        ).fetchall()
    )
    for name, sql in wanted.items():
        if held.get(name) != sql:
            if name in held:
                conn.execute(f"DROP TRIGGER {_quote(name)}")
            conn.execute(sql)


def apply_layout(conn: sqlite3.Connection, store: str) -> None:
    """The integrity layout on a store's empty schema, with no key: what the node makes, for
    ``node_audit`` to compare a store's ``sqlite_master`` with."""
    for name, arity in ((ROW_FUNCTION, -1), (SET_FUNCTION, 3)):
        conn.create_function(name, arity, lambda *_: None, deterministic=True)
    conn.execute(INTEGRITY_SCHEMA)
    for table in coded_tables(conn):
        if not has_code(conn, table):
            _rebuild_with_code(conn, store, table)
        _ensure_triggers(conn, store, table)


# -- enrolment: codes given to a store at its first open --------------------------------------


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def has_rowid(conn: sqlite3.Connection, table: str) -> bool:
    """Whether ``table`` has rowids (not a WITHOUT ROWID table)."""
    try:
        conn.execute(f"SELECT rowid FROM {_quote(table)} LIMIT 0")  # noqa: S608 - schema names
    except sqlite3.OperationalError:
        return False
    return True


def _rows(
    conn: sqlite3.Connection, keys: StoreKeys, store: str, table: str
) -> Iterator[tuple[bytes, int | None]]:
    """Each row's code, recomputed from its values, and its rowid."""
    columns = ", ".join(_quote(c) for c in data_columns(conn, table))
    at = "rowid" if has_rowid(conn, table) else "NULL"
    for row in conn.execute(f"SELECT {at}, {columns} FROM {_quote(table)}"):  # noqa: S608 - schema names
        yield keys.row_mac(store, table, row[1:]), row[0]


def entries(conn: sqlite3.Connection) -> dict[str, tuple[bytes, int, str, int]]:
    """The rows of ``integrity``: table -> (digest, rows, since, vouched)."""
    return {
        _text(t): (d if type(d) is bytes else b"", int(n), _text(s), int(v))
        for t, d, n, s, v in conn.execute(
            f"SELECT tbl, digest, rows, since, vouched FROM {INTEGRITY}"  # noqa: S608
        )
    }


def enrolment_holds(keys: StoreKeys, store: str, entries: dict[str, tuple[bytes, int, str, int]]
                    ) -> bool:  # fmt: skip
    """Whether the ``tbl = ''`` row is the node's record of exactly the tables in ``entries``."""
    own = entries.get(STORE_ROW)
    if own is None:
        return False
    code, count, since, vouched = own
    tables = [(t, s, v) for t, (_, _, s, v) in entries.items() if t != STORE_ROW]
    expected = keys.enrolment(store, since, vouched, tables)
    return count == len(tables) and hmac.compare_digest(code, expected)


def _install(
    conn: sqlite3.Connection, store: str, keys: StoreKeys, created: Collection[str]
) -> None:
    had = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (INTEGRITY,)
    ).fetchone() is not None
    conn.execute(INTEGRITY_SCHEMA)
    held = entries(conn)
    trusted = not had or enrolment_holds(keys, store, held)
    now = _utc_now()
    enrolled: dict[str, tuple[bytes, int, str, int]] = {}
    for table in coded_tables(conn):
        # A table is coded as found only when the store had no codes at all, or when this
        # open's schema made it: otherwise a table someone stripped would be vouched for afresh.
        fresh = not had or table in created
        if not has_code(conn, table):
            if not fresh:
                continue  # its code column was removed: the audit names it
            _rebuild_with_code(conn, store, table)
        _ensure_triggers(conn, store, table)
        if table in held or not fresh:
            continue
        found = list(_rows(conn, keys, store, table))
        digest = keys.digest(store, table, now, iter(found))
        enrolled[table] = (digest, len(found), now, len(found))
    for table, (digest, rows, since, vouched) in enrolled.items():
        conn.execute(
            f"INSERT INTO {INTEGRITY}(tbl, digest, rows, since, vouched) VALUES(?,?,?,?,?)",
            (table, digest, rows, since, vouched),
        )
    if not had:
        vouched = sum(v for _, _, _, v in enrolled.values())
        tables = [(t, s, v) for t, (_, _, s, v) in enrolled.items()]
        code = keys.enrolment(store, now, vouched, tables)
        conn.execute(
            f"INSERT INTO {INTEGRITY}(tbl, digest, rows, since, vouched) VALUES(?,?,?,?,?)",
            (STORE_ROW, code, len(tables), now, vouched),
        )
    elif enrolled and trusted:
        # new tables of a newer node: the record of coded tables grows, re-signed only when it
        # held before (a record someone changed stays wrong, for the audit to name)
        since, vouched = held[STORE_ROW][2], held[STORE_ROW][3]
        every = {**held, **enrolled}
        tables = [(t, s, v) for t, (_, _, s, v) in every.items() if t != STORE_ROW]
        code = keys.enrolment(store, since, vouched, tables)
        conn.execute(
            f"UPDATE {INTEGRITY} SET digest = ?, rows = ? WHERE tbl = ?",  # noqa: S608
            (code, len(tables), STORE_ROW),
        )


def create_schema(
    conn: sqlite3.Connection, path: Path, keys: StoreKeys | None, scripts: Sequence[str]
) -> None:
    """Run a store module's schema scripts, then (in a node directory) give the store its
    integrity layout: code columns, triggers and digests; a store made before codes existed is
    coded as it is found, once (ADR 0019). ``conn`` is in autocommit mode."""
    before = set(coded_tables(conn))
    for script in scripts:
        conn.executescript(script)
    if keys is None:
        return
    created = set(coded_tables(conn)) - before
    conn.execute("BEGIN IMMEDIATE")
    try:
        _install(conn, Path(path).name, keys, created)
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise
