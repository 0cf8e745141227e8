"""A whole-node audit: every store a node keeps beside its ledger, checked against the ledger.

``careledger verify DIR`` replays the ledger itself (``ledger/verify.py``); this package checks
what the ledger only anchors: the vault's sealed records, the EPCIS repository's events, the
monitoring store's reading windows, the visits store's links, each store's metadata and schema.
Each store has its own checker module; each names the store, table and row of every difference
it finds, so an operator knows exactly what was changed behind the node's back. Before each
store's checker, ``integrity`` recomputes the store's keyed codes (ADR 0019): a row or a set of
rows not as the node wrote them, whatever the ledger knows of them.

A checker reads its store read-only and the ledger's state through ``NodeContext.state``; it
holds the node's key only to open what the node sealed for itself and to recompute its codes
(never to write).
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


def checks() -> list[StoreCheck]:
    """Every store checker this software has, in the order they run."""
    from careledger.node_audit.epcis_store import EpcisStoreCheck
    from careledger.node_audit.export_store import ExportStoreCheck
    from careledger.node_audit.federation_store import FederationStoreCheck
    from careledger.node_audit.integrity import IntegrityCheck
    from careledger.node_audit.links_store import IssuerKeyCheck, LinksStoreCheck
    from careledger.node_audit.monitoring_store import MonitoringStoreCheck
    from careledger.node_audit.smart_store import SmartStoreCheck
    from careledger.node_audit.trials_store import TrialsStoreCheck
    from careledger.node_audit.vault_store import VaultStoreCheck
    from careledger.node_audit.visits_store import VisitsStoreCheck

    by_store: list[StoreCheck] = [
        VaultStoreCheck(), EpcisStoreCheck(), MonitoringStoreCheck(), VisitsStoreCheck(),
        LinksStoreCheck(), SmartStoreCheck(), ExportStoreCheck(), TrialsStoreCheck(),
        FederationStoreCheck()]  # fmt: skip
    # each store's codes first: they name the row a change was made in, whatever it was
    ordered: list[StoreCheck] = []
    for check in by_store:
        ordered += [IntegrityCheck(check.store), check]
        if isinstance(check, LinksStoreCheck):
            ordered.append(IssuerKeyCheck())
    return ordered


def audit_node(
    context: NodeContext,
    progress: Callable[[int], None] = lambda n: None,
    *,
    limit: int = 100,
) -> list[Difference]:
    """The differences in every store (at most ``limit``: the first tell the operator enough)."""
    found: list[Difference] = []
    for check in checks():
        try:
            for difference in check.check(context, progress):
                found.append(difference)
                if len(found) >= limit:
                    return found
        except sqlite3.Error as exc:  # a store that cannot even be opened (a directory, say)
            why = f"cannot be read as SQLite ({type(exc).__name__})"
            found.append(Difference(check.store, "(file)", "-", why))
    return found


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


def store_size(check: StoreCheck, context: NodeContext) -> int:
    """A checker's work, for the progress bar (0 when its store cannot be opened: the check
    itself then says why)."""
    try:
        return check.size(context)
    except sqlite3.Error:
        return 0
