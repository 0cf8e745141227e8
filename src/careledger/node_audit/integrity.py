"""Every store's integrity codes (ADR 0019): each row's ``mac`` and each table's digest,
recomputed under the node's key.

What is checked, for every table of the store (one row in memory at a time; ``progress(1)``
for each): the row's code is HMAC-SHA256 under the store's row key over the store, the table and
every column's value with its SQLite type; the table's digest in ``integrity`` is the XOR of its
rows' elements (recomputed from their values, never taken from the stored codes) over the
table's genesis, masked under the table's write counter ``seq`` and tagged with it and the row
count, which is the table's; the ``integrity`` row ``tbl = ''`` is the node's record of exactly
the tables that have digests, with their ``since`` and ``vouched`` (which ``enrolment`` reads
for ``careledger verify`` to show: a store coded afresh is seen by its ``since``).

A row whose code differs "is not as this node wrote it": a byte of any column changed, the row
moved to another key, or written by a connection without the node's key. A digest that differs
means rows were added or removed outside the node (or an older copy of a row put back, whose own
code still holds). Both name the store and table; a row by its ``rowid`` (by its key columns in
a table without one, never a blob of them).

What cannot be checked here, and why:

* Anything written with the node's key: a change made through the node (or by whoever holds
  ``keys/<node>.key``) is coded like any other; the store checkers' comparisons with the ledger
  are what see those.
* A table put back whole, with its digest row, to an earlier state of itself (an older copy of
  the file, or of one table): the older codes and digest were the node's own. The ledger
  contradicts such a copy where it anchors what the rows hold (each checker's docstring).
* Rows a store held before it was first coded (``vouched`` in the ``integrity`` table, with the
  time in ``since``): they were taken as they were found.
* A store stripped of every code (its ``integrity`` table, triggers and code columns removed,
  each table made again as the module's script makes it) looks like one made before codes
  existed, and the node codes it afresh at its next open: its ``since`` then moves to that time
  (``careledger verify`` shows it), which this audit cannot tell from a first enrolment. (With
  any code column or integrity trigger left, the node refuses to open the store.)
* ``sqlite_sequence`` (SQLite's own table, which takes no trigger): the EPCIS checker bounds it.
"""

from __future__ import annotations

import contextlib
import hmac
import sqlite3
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from careledger.node_audit.check import Difference, NodeContext, unreadable
from careledger.store_mac import (
    INTEGRITY,
    MAC,
    STORE_ROW,
    Entry,
    RawText,
    StoreKeys,
    coded_tables,
    data_columns,
    enrolment_holds,
    entries,
    has_code,
    has_rowid,
    key_columns,
    typed_values,
)

__all__ = ["Enrolment", "IntegrityCheck", "enrolment"]

ROW_CHANGED = "the row is not as this node wrote it (its integrity code differs)"
ROWS_CHANGED = (
    "rows were added or removed outside the node, or an older copy of a row put back "
    "(the table's integrity digest differs)"
)
MALFORMED = "the table's integrity row is not of the form the node writes"


@dataclass(frozen=True)
class Enrolment:
    """When a store was coded and how many rows were then taken as found (None: not known)."""

    store: str
    since: str | None
    vouched: int | None

    def to_json(self) -> dict[str, object]:
        return {"store": self.store, "since": self.since, "vouched": self.vouched}


def enrolment(context: NodeContext, store: str) -> Enrolment | None:
    """A store's ``since`` and ``vouched`` as its record of coded tables holds them (None: the
    node has no such store); never raises (a store that cannot be read says nothing)."""
    try:
        conn = context.open_store(store)
    except sqlite3.Error:
        return Enrolment(store, None, None)
    if conn is None:
        return None
    try:
        conn.text_factory = RawText
        own = entries(conn).get(STORE_ROW)
    except (sqlite3.Error, ValueError, TypeError, ArithmeticError):
        own = None
    finally:
        conn.close()
    return Enrolment(store, None, None) if own is None else Enrolment(store, own.since, own.vouched)


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class IntegrityCheck:
    """One store's codes and digests (see the module docstring)."""

    def __init__(self, store: str) -> None:
        self.store = store

    def size(self, context: NodeContext) -> int:
        conn = context.open_store(self.store)
        if conn is None:
            return 0
        try:
            total = 0
            for table in coded_tables(conn):
                with contextlib.suppress(sqlite3.Error):
                    (n,) = conn.execute(f"SELECT COUNT(*) FROM {_quote(table)}").fetchone()  # noqa: S608
                    total += int(n)
            return total
        finally:
            conn.close()

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        if conn is None:
            return
        try:
            keys = StoreKeys.for_node(context.node_key, self.store)
            yield from self.check_connection(conn, keys, progress)
        finally:
            conn.close()

    def check_connection(
        self,
        conn: sqlite3.Connection,
        keys: StoreKeys,
        progress: Callable[[int], None],
        *,
        tables: Collection[str] | None = None,
    ) -> Iterator[Difference]:
        """The check on an open connection to the store (its ``text_factory`` is set here);
        ``tables``: the rows of these tables only (the record of coded tables is always
        checked)."""
        conn.text_factory = RawText  # a row's text as the bytes held, UTF-8 or not
        try:
            present = coded_tables(conn)
            held = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (INTEGRITY,)
            ).fetchone()
        except sqlite3.Error as exc:
            yield self._difference("(file)", "-", f"cannot be read ({unreadable(exc)})")
            return
        if held is None:
            yield self._difference(
                INTEGRITY, "-",
                "the store carries no integrity codes: the node has not opened it since codes "
                "were introduced, or they were removed",
            )  # fmt: skip
            return
        try:
            coded = entries(conn)
        except (sqlite3.Error, TypeError, ValueError, ArithmeticError) as exc:
            yield self._difference(INTEGRITY, "-", f"cannot be read ({unreadable(exc)})")
            return
        for table in sorted(t for t, entry in coded.items() if entry is None):
            yield self._difference(INTEGRITY, table or "(tables)", MALFORMED)
        if STORE_ROW not in coded:
            yield self._difference(INTEGRITY, "(tables)", "the record of the coded tables is gone")
        elif not enrolment_holds(keys, self.store, coded):
            yield self._difference(
                INTEGRITY, "(tables)",
                "the record of the coded tables is not the node's: a table's digest row was "
                "added or removed, or its since or vouched changed",
            )  # fmt: skip
        for table in sorted(set(coded) - set(present) - {STORE_ROW}):
            yield self._difference(table, "-", "the node coded this table; it is gone")
        for table in present:
            if tables is not None and table not in tables:
                continue
            try:
                yield from self._table(conn, keys, table, table in coded, coded.get(table),
                                       progress)  # fmt: skip
            except (sqlite3.Error, ValueError, ArithmeticError) as exc:
                yield self._difference(table, "-", f"cannot be read ({unreadable(exc)})")

    def _difference(self, table: str, row: str, problem: str) -> Difference:
        return Difference(self.store, table, row, problem)

    def _table(
        self,
        conn: sqlite3.Connection,
        keys: StoreKeys,
        table: str,
        listed: bool,
        entry: Entry | None,
        progress: Callable[[int], None],
    ) -> Iterator[Difference]:
        if not has_code(conn, table):
            yield self._difference(table, "-", "the table has no integrity code column")
            return
        columns = data_columns(conn, table)
        names = key_columns(conn, table)
        rowid = has_rowid(conn, table)
        # each value as the node's functions take it: its type, and text as its bytes
        typed = [f"typeof({_quote(c)}), {_quote(c)}" for c in columns]
        select = ", ".join(["rowid" if rowid else "NULL", MAC, *typed])
        digest = None if entry is None else keys.genesis(self.store, table, entry.since)
        count = 0
        for row in conn.execute(f"SELECT {select} FROM {_quote(table)}"):  # noqa: S608
            progress(1)
            count += 1
            values: Sequence[Any] = typed_values(row[2:])
            code = keys.row_mac(self.store, table, values)
            stored = row[1]
            if type(stored) is not bytes or not hmac.compare_digest(stored, code):
                name = _row_name(row[0], names, columns, values)
                yield self._difference(table, name, ROW_CHANGED)
            if digest is not None:
                digest = _xor(digest, keys.element(code, row[0]))
        if not listed:
            yield self._difference(
                table, "-",
                "the table has no integrity digest: rows were added or removed outside the node",
            )  # fmt: skip
        elif entry is None:
            return  # its integrity row is malformed: named above
        elif (
            digest is None
            or count != entry.rows
            or not hmac.compare_digest(keys.seal(table, digest, entry.seq, count), entry.digest)
        ):
            yield self._difference(table, "-", ROWS_CHANGED)


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _row_name(rowid: object, keys: list[str], columns: list[str], values: Sequence[Any]) -> str:
    """``rowid N``, or for a table without rowids its key columns (not the blobs among them)."""
    if rowid is not None:
        return f"rowid {rowid}"
    parts = []
    for name in keys:
        value = values[columns.index(name)] if name in columns else None
        if isinstance(value, RawText):
            parts.append(f"{name}={bytes(value).decode(errors='replace')}")
        elif isinstance(value, int | float):
            parts.append(f"{name}={value}")
    return ", ".join(parts) or "-"
