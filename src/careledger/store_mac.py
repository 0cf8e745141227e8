"""Keyed integrity codes for the node's SQLite stores (ADR 0019).

Every table of every store the node keeps beside its ledger (vault, EPCIS, monitoring, visits,
links, SMART, export, trials, federation) carries a ``mac`` column: HMAC-SHA256 under a key
derived from the node's key and the store's file name (``k_row``) over the store's file name,
the table and every other column's value with its SQLite type. SQLite computes it itself, as a
stored generated column calling ``careledger_row_mac``, an application-defined function
registered only on the connections the node opens: the write paths do not change, and a
connection without the function (an ``sqlite3`` shell, a script) cannot insert, update or
delete a row at all ("unknown function"). Each value reaches the function as its type and, for
text, its bytes (``CAST(... AS BLOB)``): a text that is not UTF-8 is coded, never refused.

Each table also has a set digest in the store's ``integrity`` table: the XOR, over the table's
rows, of HMAC-SHA256 under a second key (``k_set``) of each row's code and rowid, kept by AFTER
INSERT, UPDATE and DELETE triggers (``careledger_set_xor``). The element of a removed row is
taken from its values, recomputed, never from the code stored beside them. The digest is never
stored in the clear: each write advances the table's counter ``seq``, and the row holds the
accumulator XOR a keyed mask of ``seq``, followed by a keyed tag over ``(seq, rows, masked)``;
so two copies of the file tell nothing of the row written between them. A row changed, added or
deleted behind the node's back then breaks its own code or its table's digest, and only the
holder of the node's key can make them agree again. The row ``tbl = ''`` of ``integrity``
records which tables are coded, since when (``since``) and how many of their rows were taken as
they were found (``vouched``: rows of a store made before codes existed, coded at its first
open), under ``k_row``.

The node writes a store only while its ``sqlite_master`` holds nothing but what the node's
modules create (``SchemaGuard``: checked at open and whenever ``PRAGMA schema_version`` moved),
and an authorizer lets code inside a trigger or view run only in the node's own integrity
triggers: a trigger, view or index someone planted in the file can neither make the node's
connection compute codes for chosen values nor write rows with the node's key.

``careledger.node_audit.integrity`` checks all of it; ``connect`` opens a store by hand the way
the node does (for repairs and tests); ``python -m careledger.store_mac enrol FILE`` re-codes a
store whose codes were removed, after showing what it would vouch for.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import importlib
import os
import re
import sqlite3
import struct
import sys
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

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
    "Entry",
    "RawText",
    "SchemaGuard",
    "StoreKeys",
    "apply_layout",
    "coded_tables",
    "connect",
    "create_schema",
    "data_columns",
    "enrol",
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
    "rows INTEGER NOT NULL, since TEXT NOT NULL, vouched INTEGER NOT NULL, "
    "seq INTEGER NOT NULL)"
)
_SALT = b"careledger store integrity v1"
_NEW = "__integrity_new"  # a table's name while it is made again with its code column
_CONSTRAINTS = frozenset({"CONSTRAINT", "PRIMARY", "UNIQUE", "CHECK", "FOREIGN"})
_TYPES = {"null": 0, "integer": 1, "real": 2, "text": 3, "blob": 4}
# SQLite's own tables that may appear in a store the node did not make them in (ANALYZE)
_SQLITE_EXTRAS = frozenset({"sqlite_stat1", "sqlite_stat4"})


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


def typed_values(pairs: Sequence[object]) -> list[object]:
    """The values SQL passes a function as ``typeof(c), <c, its bytes if text>`` pairs (so no
    text is ever decoded): text as ``RawText``, the rest as they are."""
    if len(pairs) % 2:
        raise ValueError("not (type, value) pairs")
    values: list[object] = []
    for kind, value in zip(pairs[::2], pairs[1::2], strict=True):
        tag = _TYPES.get(_text(kind)) if isinstance(kind, str | bytes) else None
        if tag == 3 and isinstance(value, bytes):
            values.append(RawText(value))
        elif (tag, type(value)) in ((0, type(None)), (1, int), (2, float), (4, bytes)):
            values.append(value)
        else:
            raise ValueError("a value does not have the type SQLite gave")
    return values


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(CODE_SIZE, "big")


class StoreKeys:
    """One store's two integrity keys, derived from the node's key and the store's file name
    (so no store's code, digest or mask is any other store's); never shown."""

    __slots__ = ("_row", "_set", "store")

    def __init__(self, row: bytes, set_: bytes, store: str) -> None:
        if len(row) != 32 or len(set_) != 32:
            raise ValueError("integrity keys are 32 bytes")
        self._row = row
        self._set = set_
        self.store = store

    def __repr__(self) -> str:
        return f"StoreKeys({self.store!r}, ...)"

    @classmethod
    def for_node(cls, node_key: KeyPair, store: str) -> StoreKeys:
        if not store:
            raise ValueError("integrity keys are a store's: its file name is needed")
        derived = HKDF(
            algorithm=hashes.SHA256(), length=64, salt=_SALT,
            info=b"k_row|k_set|" + store.encode(),
        ).derive(node_key.seed)  # fmt: skip
        return cls(derived[:32], derived[32:], store)

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
        """A table's digest (the accumulator, unmasked), from each row's code and rowid."""
        found = self.genesis(store, table, since)
        for code, rowid in rows:
            found = _xor(found, self.element(code, rowid))
        return found

    def _mask(self, table: str, seq: int) -> bytes:
        return hmac.digest(self._set, b"M" + encode(self.store, table, [seq]), "sha256")

    def _tag(self, table: str, seq: int, rows: int, masked: bytes) -> bytes:
        values = [seq, rows, masked]
        return hmac.digest(self._set, b"T" + encode(self.store, table, values), "sha256")

    def seal(self, table: str, digest: bytes, seq: int, rows: int) -> bytes:
        """What ``integrity`` holds for a table whose accumulator is ``digest`` after ``seq``
        writes, with ``rows`` rows: the accumulator masked under ``seq``, and a tag over all
        three. A write changes the mask, so two copies of the file say nothing of a row's
        share of the digest."""
        masked = _xor(digest, self._mask(table, seq))
        return masked + self._tag(table, seq, rows, masked)

    def unseal(self, table: str, held: object, seq: object, rows: object) -> bytes | None:
        """The accumulator a table's ``integrity`` row holds (None: not one the node sealed)."""
        if type(held) is not bytes or len(held) != 2 * CODE_SIZE:
            return None
        if type(seq) is not int or type(rows) is not int:
            return None
        masked, tag = held[:CODE_SIZE], held[CODE_SIZE:]
        if not hmac.compare_digest(tag, self._tag(table, seq, rows, masked)):
            return None
        return _xor(masked, self._mask(table, seq))

    def enrolment(self, store: str, since: str, vouched: int,
                  tables: Sequence[tuple[str, str, int]]) -> bytes:  # fmt: skip
        """The code of the ``tbl = ''`` row: the coded tables, each with its since and vouched."""
        values: list[object] = [since, vouched]
        for table, table_since, table_vouched in sorted(tables):
            values += [table, table_since, table_vouched]
        return hmac.digest(self._row, b"E" + encode(store, STORE_ROW, values), "sha256")

    def _step(self, table: object, held: object, seq: object, rows: object, delta: object,
              old_code: object, old_rowid: object, new_code: object, new_rowid: object,
              *, cache: dict[str, tuple[int, int, bytes, bytes]] | None = None,
              ) -> bytes:  # fmt: skip
        """A table's ``integrity`` digest after one write: the removed row's element out, the
        added row's in, the counter advanced. A digest that was not the node's stays wrong
        (its tag zero), whatever the node writes after. ``cache``: the connection's last
        result per table (its seq, rows, sealed digest, accumulator), so a run of writes does
        not check the tag and recompute the mask it has just made."""
        if not isinstance(table, str) or type(delta) is not int:
            raise ValueError("not a table and a change of its row count")
        for code, rowid in ((old_code, old_rowid), (new_code, new_rowid)):
            if code is not None and (type(code) is not bytes or len(code) != CODE_SIZE):
                raise ValueError("not a code")
            if not (rowid is None or type(rowid) is int):
                raise ValueError("not a rowid")
        if type(seq) is not int or type(rows) is not int:
            return bytes(2 * CODE_SIZE)  # a count that is no count: never the node's again
        last = None if cache is None else cache.get(table)
        if last is not None and last[0] == seq and last[1] == rows and last[2] == held:
            found: bytes | None = last[3]
        else:
            found = self.unseal(table, held, seq, rows)
        broken = found is None
        if found is None:
            masked = held[:CODE_SIZE] if type(held) is bytes and len(held) >= CODE_SIZE else None
            found = bytes(CODE_SIZE) if masked is None else _xor(masked, self._mask(table, seq))
        if type(old_code) is bytes:
            found = _xor(found, self.element(old_code, old_rowid))  # type: ignore[arg-type]
        if type(new_code) is bytes:
            found = _xor(found, self.element(new_code, new_rowid))  # type: ignore[arg-type]
        sealed = self.seal(table, found, seq + 1, rows + delta)
        if broken:
            return sealed[:CODE_SIZE] + bytes(CODE_SIZE)
        if cache is not None:
            cache[table] = (seq + 1, rows + delta, sealed, found)
        return sealed

    def attach(self, conn: sqlite3.Connection) -> None:
        """Make ``conn`` able to write this store's coded tables: the two functions (which code
        for this store only, whatever store a caller names), and recursive triggers (so a row
        an INSERT OR REPLACE removes leaves its table's digest too)."""
        own = self.store

        def row_mac(store: object, table: object, *pairs: object) -> bytes:
            if store != own or not isinstance(table, str):
                raise ValueError("codes are this store's only")
            return self.row_mac(own, table, typed_values(pairs))

        cache: dict[str, tuple[int, int, bytes, bytes]] = {}  # this connection's last steps

        def step(*args: object) -> bytes:
            return self._step(*args, cache=cache)  # type: ignore[misc]

        conn.create_function(ROW_FUNCTION, -1, row_mac, deterministic=True)
        conn.create_function(SET_FUNCTION, 9, step, deterministic=True)
        conn.execute("PRAGMA recursive_triggers=ON")


# -- the node's key, found from the store's directory ------------------------------------------

_cache: dict[tuple[str, int, int, int, str], StoreKeys] = {}
_cache_lock = threading.Lock()


def keys_for(path: Path) -> StoreKeys | None:
    """The integrity keys of the store ``path`` of the node whose directory holds it (None: the
    file is not in a node directory, as a store of a unit test). The node key is read as the
    node reads it (``CARELEDGER_KEY_PASSPHRASE``); one that cannot be read is a
    ``StorageError``, never a store written without codes."""
    from careledger.config import NODE_FILE, Settings

    data_dir = Path(path).parent
    if not (data_dir / NODE_FILE).is_file():
        return None
    try:
        key_file = Settings.load(data_dir).node_key_file
        stat = key_file.stat()
        ident = (str(key_file.resolve()), stat.st_mtime_ns, stat.st_size, stat.st_ino,
                 Path(path).name)  # fmt: skip
        with _cache_lock:
            found = _cache.get(ident)
        if found is None:
            from careledger.keyfile import read_key_file

            passphrase = os.environ.get("CARELEDGER_KEY_PASSPHRASE") or None
            _, node_key = read_key_file(key_file, passphrase=passphrase)
            found = StoreKeys.for_node(node_key, Path(path).name)
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
    repairs by hand, and tests. Refused (``StorageError``) when the file holds an object no
    module of the node creates. Outside a node directory, a plain connection."""
    keys = keys_for(Path(path))
    conn = sqlite3.connect(path)
    if keys is not None:
        try:
            keys.attach(conn)
            guard = SchemaGuard.for_store(Path(path).name)
            guard.authorize(conn)
            guard.check(conn, None, strict=False)  # a repair may find the layout incomplete
        except BaseException:
            conn.close()
            raise
    return conn


# -- the schema a store may hold ---------------------------------------------------------------

# The schema scripts of every module that writes a store of a node, by the store's file name:
# together they are everything the node's connections to that file accept to find in it.
_NODE_SCHEMAS: dict[str, tuple[str, ...]] = {
    "vault.sqlite": ("careledger.vault.store",),
    "epcis.sqlite": (
        "careledger.supply.repository",
        "careledger.supply.alerts",
        "careledger.supply.verification_log",
    ),
    "monitoring.sqlite": ("careledger.monitoring.store",),
    "visits.sqlite": ("careledger.monitoring.visits",),
    "links.sqlite": ("careledger.health.share_links",),
    "smart.sqlite": ("careledger.smart.grants",),
    "export.sqlite": ("careledger.health.bulk_export",),
    "trials.sqlite": ("careledger.trials.recruitment", "careledger.trials.consent_records"),
    "federation.sqlite": ("careledger.health.replay_guard",),
}

SchemaRow = tuple[str, str, str, str | None]  # type, name, table, SQL


def node_scripts(store: str) -> tuple[str, ...]:
    """The schema scripts of the modules that write the node's store ``store`` (none: a file
    this software does not know)."""
    scripts: list[str] = []
    for module in _NODE_SCHEMAS.get(store, ()):
        schema = importlib.import_module(module).SCHEMA
        scripts += [schema] if isinstance(schema, str) else list(schema)
    return tuple(scripts)


def _objects(conn: sqlite3.Connection) -> set[SchemaRow]:
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {(_text(k), _text(n), _text(t), None if q is None else _text(q)) for k, n, t, q in rows}


@functools.lru_cache(maxsize=64)
def _expected(store: str, scripts: tuple[str, ...]) -> tuple[frozenset[SchemaRow],
                                                            frozenset[SchemaRow]]:  # fmt: skip
    """What ``scripts`` make in ``store``: with the integrity layout, and without (a store made
    before codes existed, which the node codes at its open)."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for script in scripts:
            conn.executescript(script)
        plain = frozenset(_objects(conn))
        apply_layout(conn, store)
        return frozenset(_objects(conn)), plain
    finally:
        conn.close()


class SchemaGuard:
    """What a store's ``sqlite_master`` may hold for the node to write it: every table, index,
    trigger and view (type, name, table, SQL) one the node's modules create, with the integrity
    layout (``strict``) or, before the node has coded the store, without it. Anything else, a
    trigger, view or index someone planted or a table changed, is a ``StorageError`` naming it:
    a node connection runs every trigger and view of the file with the node's key."""

    def __init__(self, store: str, layout: frozenset[SchemaRow] | None,
                 plain: frozenset[SchemaRow]) -> None:  # fmt: skip
        self.store = store
        self._layout = layout  # None: a file this software does not know (checked generically)
        self._plain = plain
        # the node's integrity triggers, by name: their table; and the modules' own triggers
        # and views (read by the authorizer)
        self.triggers: dict[str, str] = {
            name: table for kind, name, table, _ in layout or ()
            if kind == "trigger" and name in _trigger_names(table)
        }  # fmt: skip
        self.modules: set[str] = {
            name for kind, name, _, _ in layout or ()
            if kind in ("trigger", "view") and name not in self.triggers
        }  # fmt: skip

    @classmethod
    def for_store(cls, store: str, scripts: Sequence[str] = ()) -> SchemaGuard:
        every = node_scripts(store) + tuple(scripts)
        if not every:
            return cls(store, None, frozenset())
        layout, plain = _expected(store, every)
        return cls(store, layout, plain)

    def authorize(self, conn: sqlite3.Connection) -> None:
        """Code compiled inside a trigger or view runs only in the node's integrity triggers,
        and there only as they do: read the row and ``integrity``, update ``integrity``, call
        the two functions. So a trigger planted after the last check (or a view) can make the
        node's connection neither compute a code nor write a row."""
        triggers, modules = self.triggers, self.modules
        allowed_functions = {ROW_FUNCTION, SET_FUNCTION, "typeof"}

        def authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None,
                       source: str | None) -> int:  # fmt: skip
            if source is None or source in modules:
                return sqlite3.SQLITE_OK  # the node's own statement, or its modules' trigger
            table = triggers.get(source)
            if table is None:
                return sqlite3.SQLITE_DENY
            if action == sqlite3.SQLITE_FUNCTION:
                ok = (arg2 or "").lower() in allowed_functions
            elif action == sqlite3.SQLITE_READ:
                ok = arg1 in (table, INTEGRITY)
            elif action == sqlite3.SQLITE_UPDATE:
                ok = arg1 == INTEGRITY
            else:
                ok = False
            return sqlite3.SQLITE_OK if ok else sqlite3.SQLITE_DENY

        conn.set_authorizer(authorizer)

    def check(self, conn: sqlite3.Connection, checked: int | None, *, strict: bool = True) -> int:
        """The store's schema version, once its ``sqlite_master`` is found as it may be; one
        ``PRAGMA schema_version`` when it has not moved since ``checked``. ``strict``: the
        integrity layout must be in place (a store the node has opened)."""
        try:
            (version,) = conn.execute("PRAGMA schema_version").fetchone()
            if version == checked:
                return int(version)
            found = _objects(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot read the schema of {self.store}: {exc}") from None
        if self._layout is None:
            self._check_generic(conn, found)
        else:
            self._check_known(found, strict)
        return int(version)

    def _refuse(self, kind: str, name: str, why: str) -> StorageError:
        return StorageError(
            f"{self.store} holds the {kind} {name!r}, {why}: the node does not write a store "
            "whose schema someone changed (remove it, or restore the file from a backup; "
            "`careledger verify` names what else changed)"
        )

    def _check_known(self, found: set[SchemaRow], strict: bool) -> None:
        assert self._layout is not None
        allowed = self._layout if strict else self._layout | self._plain
        names = {name: (kind, table) for kind, name, table, _ in allowed}
        for kind, name, table, sql in sorted(found, key=lambda r: (r[1], r[0])):
            if (kind, name, table, sql) in allowed:
                continue
            if kind == "table" and name in _SQLITE_EXTRAS:
                continue
            if names.get(name) == (kind, table):
                raise self._refuse(kind, name, "not as the node creates it")
            raise self._refuse(kind, name, "which no module of the node creates")
        if strict:
            tables = {name for kind, name, _, _ in found if kind == "table"}
            present = {name for kind, name, _, _ in found}
            for kind, name, table, _ in sorted(self._layout):
                if kind == "trigger" and table in tables and name not in present:
                    raise self._refuse(
                        "table", table, f"without its integrity trigger {name!r}"
                    )

    def _check_generic(self, conn: sqlite3.Connection, found: set[SchemaRow]) -> None:
        """A store this software does not know (a test's, a repair's): nothing may call the
        node's functions but the layout itself, and the only triggers are the layout's."""
        self.triggers.clear()
        tables = {name for kind, name, _, _ in found if kind == "table"}
        wanted: dict[str, str] = {}
        for table in tables:
            if table != INTEGRITY and not table.startswith("sqlite_") and has_code(conn, table):
                wanted.update(
                    _triggers(self.store, table, data_columns(conn, table), has_rowid(conn, table))
                )
        for kind, name, table, sql in sorted(found, key=lambda r: (r[1], r[0])):
            text = (sql or "").lower()
            if kind == "trigger":
                if wanted.get(name) != sql:
                    raise self._refuse(kind, name, "which is not the node's integrity trigger")
                self.triggers[name] = table
            elif kind == "view":
                raise self._refuse(kind, name, "and the node creates no view")
            elif kind == "table" and name in tables and table != INTEGRITY and has_code(
                conn, name
            ):
                column = _code_column(self.store, name, data_columns(conn, name)).lower()
                if text.count("careledger_") != 1 or column not in text:
                    raise self._refuse(kind, name, "whose code column is not the node's")
            elif "careledger_" in text:
                raise self._refuse(kind, name, "which calls the node's functions")


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


def _typed(column: str) -> str:
    """A column as the functions take it: its type, then its value (text as its bytes)."""
    return (f"typeof({column}), CASE WHEN typeof({column}) = 'text' "
            f"THEN CAST({column} AS BLOB) ELSE {column} END")  # fmt: skip


def _code_expression(store: str, table: str, columns: Sequence[str], prefix: str = "") -> str:
    args = ", ".join([_literal(store), _literal(table), *(_typed(prefix + _quote(c))
                                                          for c in columns)])  # fmt: skip
    return f"{ROW_FUNCTION}({args})"


def _code_column(store: str, table: str, columns: Sequence[str]) -> str:
    return f"{MAC} BLOB GENERATED ALWAYS AS ({_code_expression(store, table, columns)}) STORED"


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


def _with_code_column(sql: str, store: str, table: str, columns: Sequence[str],
                      name: str) -> str:  # fmt: skip
    """``CREATE TABLE`` text for ``name`` (the table's name while it is made again), with the
    code column added after the last column definition."""
    items: list[tuple[int, int]] = []
    depth, start, i, opened = 0, -1, 0, -1
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
                opened = i
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
    if columns_end is None or opened < 0:
        raise ValueError(f"no column definition found in the table {table}")
    column = ", " + _code_column(store, table, columns)
    return (f"CREATE TABLE {_quote(name)}" + sql[opened:columns_end] + column
            + sql[columns_end:])  # fmt: skip


def _trigger(name: str, event: str, table: str, setting: str) -> str:
    head = f"CREATE TRIGGER {_quote(name)} AFTER {event} ON {_quote(table)} BEGIN "
    return head + f"UPDATE {INTEGRITY} SET {setting} WHERE tbl = {_literal(table)}; END"  # noqa: S608 - names from the schema


def _trigger_names(table: str) -> tuple[str, str, str]:
    return tuple(f"integrity_{table}_{event}" for event in ("insert", "update", "delete"))  # type: ignore[return-value]


def _triggers(store: str, table: str, columns: Sequence[str], rowid: bool) -> dict[str, str]:
    """The three triggers that keep ``table``'s digest, by name: a new row's code is the one
    SQLite just computed (``NEW.mac``); a removed row's is recomputed from its values. Each
    advances the table's counter ``seq``, so the digest's mask changes at every write."""
    old_code = _code_expression(store, table, columns, "OLD.")
    new_at, old_at = ("NEW.rowid", "OLD.rowid") if rowid else ("NULL", "NULL")
    name = _literal(table)

    def step(delta: int, old: str, new: str) -> str:
        return f"digest = {SET_FUNCTION}({name}, digest, seq, rows, {delta}, {old}, {new})"

    added = step(1, "NULL, NULL", f"NEW.{MAC}, {new_at}") + ", seq = seq + 1, rows = rows + 1"
    replaced = step(0, f"{old_code}, {old_at}", f"NEW.{MAC}, {new_at}") + ", seq = seq + 1"
    removed = step(-1, f"{old_code}, {old_at}", "NULL, NULL") + ", seq = seq + 1, rows = rows - 1"
    prefix = f"integrity_{table}"
    return {
        f"{prefix}_insert": _trigger(f"{prefix}_insert", "INSERT", table, added),
        f"{prefix}_update": _trigger(f"{prefix}_update", "UPDATE", table, replaced),
        f"{prefix}_delete": _trigger(f"{prefix}_delete", "DELETE", table, removed),
    }


def _rebuild_with_code(
    conn: sqlite3.Connection, store: str, table: str, *, foreign_keys: bool = False
) -> None:
    """Give ``table`` its code column: SQLite adds a stored generated column only by making the
    table again. SQLite's own procedure for it (``ALTER TABLE``, "making other kinds of table
    schema changes"): the new table made under another name, the rows copied into it (which
    codes them as they are), the old one dropped, the new one renamed into its place, so the
    ``REFERENCES`` of other tables still name it; its indexes, other triggers and AUTOINCREMENT
    sequence restored. Foreign keys are off (``create_schema``); ``foreign_keys``: they were
    on, so the table's are checked after."""
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
    new = table + _NEW
    listed = ", ".join(_quote(c) for c in columns)
    conn.execute(_with_code_column(str(sql), store, table, columns, new))
    conn.execute(
        f"INSERT INTO {_quote(new)}({listed}) SELECT {listed} FROM {_quote(table)}"  # noqa: S608 - names from the schema
    )
    conn.execute(f"DROP TABLE {_quote(table)}")
    conn.execute(f"ALTER TABLE {_quote(new)} RENAME TO {_quote(table)}")
    for statement in others:
        conn.execute(statement)
    if sequence is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE name IN (?, ?)", (table, new))
        conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES(?, ?)", (table, sequence[0]))
    if foreign_keys and conn.execute(f"PRAGMA foreign_key_check({_quote(table)})").fetchone():
        raise StorageError(f"the table {table} breaks its foreign keys; it was not coded")


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
    ``node_audit`` and ``SchemaGuard`` to compare a store's ``sqlite_master`` with."""
    for name, arity in ((ROW_FUNCTION, -1), (SET_FUNCTION, 9)):
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
    """Each row's code, recomputed from its values (text as the bytes held), and its rowid."""
    columns = ", ".join(_typed(_quote(c)) for c in data_columns(conn, table))
    at = "rowid" if has_rowid(conn, table) else "NULL"
    for row in conn.execute(f"SELECT {at}, {columns} FROM {_quote(table)}"):  # noqa: S608 - schema names
        yield keys.row_mac(store, table, typed_values(row[1:])), row[0]


class Entry(NamedTuple):
    """A row of ``integrity``: a table's sealed digest, rows, since, vouched and counter (for
    ``tbl = ''``: the code of the record of coded tables, how many, the store's since and
    vouched, 0)."""

    digest: bytes
    rows: int
    since: str
    vouched: int
    seq: int


def entries(conn: sqlite3.Connection) -> dict[str, Entry | None]:
    """The rows of ``integrity`` by table; None for a row that is not of the form the node
    writes (a count that is not an integer, say: never a crash, the audit names it)."""
    found: dict[str, Entry | None] = {}
    for t, d, n, s, v, q in conn.execute(
        f"SELECT tbl, digest, rows, since, vouched, seq FROM {INTEGRITY}"  # noqa: S608
    ):
        well_formed = (type(d) in (bytes, RawText) and type(n) is int and type(v) is int
                       and type(q) is int and isinstance(s, str | bytes))  # fmt: skip
        found[_text(t)] = Entry(bytes(d), n, _text(s), v, q) if well_formed else None
    return found


def enrolment_holds(keys: StoreKeys, store: str, entries: Mapping[str, Entry | None]) -> bool:
    """Whether the ``tbl = ''`` row is the node's record of exactly the tables in ``entries``."""
    own = entries.get(STORE_ROW)
    if own is None or own.seq != 0 or any(e is None for e in entries.values()):
        return False
    tables = [(t, e.since, e.vouched) for t, e in entries.items() if t != STORE_ROW and e]
    expected = keys.enrolment(store, own.since, own.vouched, tables)
    return own.rows == len(tables) and hmac.compare_digest(own.digest, expected)


def _traces(conn: sqlite3.Connection) -> list[str]:
    """What is left of codes in a store without an ``integrity`` table: code columns, integrity
    triggers."""
    found = [f"the code column of {t}" for t in coded_tables(conn) if has_code(conn, t)]
    found += [
        f"the trigger {_text(n)}"
        for (n,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'trigger' "
            "AND name LIKE 'integrity\\_%' ESCAPE '\\'"
        )
    ]
    return found


def _install(
    conn: sqlite3.Connection, store: str, keys: StoreKeys, created: Collection[str],
    *, foreign_keys: bool = False, enrolling: bool = False,
) -> None:  # fmt: skip
    had = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (INTEGRITY,)
    ).fetchone() is not None
    if not had and not enrolling:
        traces = _traces(conn)
        if traces:
            raise StorageError(
                f"{store} has no integrity table but carries {traces[0]}: its integrity codes "
                "were removed, and the node does not vouch for what it holds now. Restore it "
                "from a backup, or re-code it as it is found with `python -m "
                "careledger.store_mac enrol FILE` (which shows what it would vouch for first)"
            )
    conn.execute(INTEGRITY_SCHEMA)
    held = entries(conn)
    trusted = not had or enrolment_holds(keys, store, held)
    now = _utc_now()
    enrolled: dict[str, Entry] = {}
    for table in coded_tables(conn):
        # A table is coded as found only when the store had no codes at all, or when this
        # open's schema made it: otherwise a table someone stripped would be vouched for afresh.
        fresh = not had or table in created
        if not has_code(conn, table):
            if not fresh:
                continue  # its code column was removed: the schema check refuses the store
            _rebuild_with_code(conn, store, table, foreign_keys=foreign_keys)
        _ensure_triggers(conn, store, table)
        if table in held or not fresh:
            continue
        found = list(_rows(conn, keys, store, table))
        digest = keys.seal(table, keys.digest(store, table, now, iter(found)), 0, len(found))
        enrolled[table] = Entry(digest, len(found), now, len(found), 0)
    for table, entry in enrolled.items():
        conn.execute(
            f"INSERT INTO {INTEGRITY}(tbl, digest, rows, since, vouched, seq) "
            "VALUES(?,?,?,?,?,?)",
            (table, *entry),
        )
    if not had:
        vouched = sum(e.vouched for e in enrolled.values())
        tables = [(t, e.since, e.vouched) for t, e in enrolled.items()]
        code = keys.enrolment(store, now, vouched, tables)
        conn.execute(
            f"INSERT INTO {INTEGRITY}(tbl, digest, rows, since, vouched, seq) "
            "VALUES(?,?,?,?,?,0)",
            (STORE_ROW, code, len(tables), now, vouched),
        )
    elif enrolled and trusted:
        # new tables of a newer node: the record of coded tables grows, re-signed only when it
        # held before (a record someone changed stays wrong, for the audit to name)
        own = held[STORE_ROW]
        assert own is not None
        every = {**held, **enrolled}
        tables = [(t, e.since, e.vouched) for t, e in every.items() if t != STORE_ROW and e]
        code = keys.enrolment(store, own.since, own.vouched, tables)
        conn.execute(
            f"UPDATE {INTEGRITY} SET digest = ?, rows = ? WHERE tbl = ?",  # noqa: S608
            (code, len(tables), STORE_ROW),
        )


@contextlib.contextmanager
def _foreign_keys_off(conn: sqlite3.Connection) -> Iterator[bool]:
    """Foreign keys off while tables are made again (outside a transaction, as SQLite needs);
    yields whether they were on."""
    (on,) = conn.execute("PRAGMA foreign_keys").fetchone()
    if on:
        conn.execute("PRAGMA foreign_keys=OFF")
    try:
        yield bool(on)
    finally:
        if on:
            conn.execute("PRAGMA foreign_keys=ON")


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], None]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        work()
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def create_schema(
    conn: sqlite3.Connection, path: Path, keys: StoreKeys | None, scripts: Sequence[str]
) -> SchemaGuard | None:
    """Run a store module's schema scripts, then (in a node directory) give the store its
    integrity layout: code columns, triggers and digests; a store made before codes existed is
    coded as it is found, once (ADR 0019). ``conn`` is in autocommit mode. Before anything runs,
    the file's schema is checked (``SchemaGuard``: nothing but what the node's modules make),
    and after, the layout; returns the guard that the store's connections check with (None
    outside a node directory)."""
    if keys is None:
        for script in scripts:
            conn.executescript(script)
        return None
    store = Path(path).name
    guard = SchemaGuard.for_store(store, scripts)
    guard.authorize(conn)
    guard.check(conn, None, strict=False)
    before = set(coded_tables(conn))
    for script in scripts:
        conn.executescript(script)
    created = set(coded_tables(conn)) - before
    with _foreign_keys_off(conn) as foreign_keys:
        _in_transaction(
            conn, lambda: _install(conn, store, keys, created, foreign_keys=foreign_keys)
        )
    guard.check(conn, None)
    return guard


# -- enrolment by hand: a store whose codes were removed ---------------------------------------


def enrol(path: Path, *, write: bool) -> dict[str, int]:
    """What re-coding the store ``path`` as it is found vouches for (its tables' row counts),
    and, with ``write``, the re-coding: its ``integrity`` table and triggers made anew, every
    row's code recomputed from its values, every row vouched for. For a store that the node
    refuses to open because its codes were removed; the audit cannot tell afterwards what was
    changed before (its ``since`` and ``vouched`` say when it was re-coded, and how much)."""
    path = Path(path)
    keys = keys_for(path)
    if keys is None:
        raise StorageError(f"{path} is not a store of a node's directory")
    store = path.name
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        keys.attach(conn)
        guard = SchemaGuard.for_store(store)
        guard.authorize(conn)
        guard.check(conn, None, strict=False)
        tables = coded_tables(conn)
        counts = {
            t: int(conn.execute(f"SELECT COUNT(*) FROM {_quote(t)}").fetchone()[0])  # noqa: S608
            for t in tables
        }
        if not write:
            return counts

        def recode() -> None:
            for (name,) in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'trigger' "
                "AND name LIKE 'integrity\\_%' ESCAPE '\\'"
            ).fetchall():
                conn.execute(f"DROP TRIGGER {_quote(_text(name))}")
            conn.execute(f"DROP TABLE IF EXISTS {INTEGRITY}")
            for table in tables:
                columns = data_columns(conn, table)
                if has_code(conn, table) and columns:
                    first = _quote(columns[0])
                    conn.execute(f"UPDATE {_quote(table)} SET {first} = {first}")  # noqa: S608 - recomputes the code
            _install(conn, store, keys, (), foreign_keys=foreign_keys, enrolling=True)

        with _foreign_keys_off(conn) as foreign_keys:
            _in_transaction(conn, recode)
        guard.check(conn, None)
        return counts
    finally:
        conn.close()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m careledger.store_mac enrol FILE [--yes]``."""
    args = list(sys.argv[1:] if argv is None else argv)
    write = "--yes" in args
    args = [a for a in args if a != "--yes"]
    if len(args) != 2 or args[0] != "enrol":
        print("usage: python -m careledger.store_mac enrol FILE [--yes]", file=sys.stderr)
        return 2
    try:
        counts = enrol(Path(args[1]), write=write)
    except (CareLedgerError, sqlite3.Error) as exc:
        print(f"not enrolled: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return 1
    print(f"{'vouched for' if write else 'would vouch for'}, as found, in {args[1]}:")
    for table, n in counts.items():
        print(f"  {table}: {n} rows")
    if not write:
        print("run again with --yes to re-code the store")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
