"""What every store checker of the node audit works with: the node's context (its directory,
ledger state and key), the differences it reports, the store schemas it compares, and the
``StoreCheck`` protocol each checker module implements. The package (``careledger.node_audit``)
runs the checkers; they import this, never the package.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import orjson

from careledger.core.keys import KeyPair
from careledger.ledger.ports import LedgerStore


@dataclass(frozen=True)
class Difference:
    """Something in a store that does not match the ledger (or itself)."""

    store: str  # the file, e.g. "vault.sqlite"
    table: str
    row: str  # what names the row: a record id and version, an event hash, a window
    problem: str

    def to_json(self) -> dict[str, str]:
        return {"store": self.store, "table": self.table, "row": self.row,
                "problem": self.problem}  # fmt: skip


@dataclass(frozen=True)
class NodeContext:
    """What a checker needs: the node's directory, its ledger (read-only) and its key."""

    data_dir: Path
    ledger: LedgerStore
    node_key: KeyPair
    node_name: str
    org: str

    def state(self, namespace: str, key: str) -> Any:
        raw = self.ledger.get_state(namespace, key)
        return None if raw is None else orjson.loads(raw)

    def state_keys(self, namespace: str, prefix: str, limit: int = 100_000_000) -> list[str]:
        return self.ledger.state_keys(namespace, prefix, limit)

    def open_store(self, name: str) -> sqlite3.Connection | None:
        """A store of the node's directory, read-only (None: the node has none)."""
        path = self.data_dir / name
        if not path.exists():
            return None
        # as a URI with the path escaped: a '?' or '#' in a directory name must not end it
        return sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)


SchemaObjects = dict[str, tuple[str, str, str | None]]  # name -> (type, table, SQL)


def schema_of(conn: sqlite3.Connection) -> SchemaObjects:
    """Every object of a store as SQLite records it (``sqlite_master``), by name."""
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master").fetchall()
    return {str(name): (str(kind), str(table), None if sql is None else str(sql))
            for kind, name, table, sql in rows}  # fmt: skip


def schema_created_by(*scripts: str, store: str) -> SchemaObjects:
    """What the store modules' own schema scripts create in the node's ``store``, as SQLite
    records it, with the integrity layout the node adds (code columns, triggers, ``integrity``:
    ``careledger.store_mac``): the reference a store's file is compared with (built in memory,
    so no copy of the schema is kept here)."""
    from careledger.store_mac import apply_layout

    conn = sqlite3.connect(":memory:", isolation_level=None)
    try:
        for script in scripts:
            conn.executescript(script)
        apply_layout(conn, store)
        return schema_of(conn)
    finally:
        conn.close()


class StoreCheck(Protocol):
    """One store's checker. ``size`` is the work it will report to ``progress`` (rows)."""

    store: str

    def size(self, context: NodeContext) -> int: ...

    def check(
        self, context: NodeContext, progress: Callable[[int], None]
    ) -> Iterator[Difference]: ...


def unreadable(exc: BaseException) -> str:
    """What went wrong reading a store, without SQLite's message: it may quote a damaged
    column's text (a patient's id), and the audit's output never carries patients."""
    return f"{type(exc).__name__}; the file is damaged or not the node's"


def written_columns(conn: sqlite3.Connection, table: str) -> str:
    """The columns a store's module writes, comma-separated, in table order: ``table_info``
    leaves out the integrity code, a generated column (ADR 0019). sqlite3.Error if the table
    cannot be read."""
    info = conn.execute(f"PRAGMA table_info({table})").fetchall()
    return ", ".join(str(r[1]) for r in info)


def row_count(context: NodeContext, store: str, tables: Sequence[str]) -> int:
    """Rows of a store's tables, for a checker's progress bar (0 without the store; a table it
    cannot count is left out: the check itself then says why)."""
    conn = context.open_store(store)
    if conn is None:
        return 0
    total = 0
    try:
        for table in tables:
            with contextlib.suppress(sqlite3.Error):
                total += int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 - our table names
    finally:
        conn.close()
    return total
