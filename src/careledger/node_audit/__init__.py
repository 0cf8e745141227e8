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

import sqlite3
from collections.abc import Callable

from careledger.node_audit.check import (
    Difference,
    NodeContext,
    SchemaObjects,
    StoreCheck,
    row_count,
    schema_created_by,
    schema_of,
    unreadable,
    written_columns,
)

__all__ = [
    "Difference",
    "NodeContext",
    "SchemaObjects",
    "StoreCheck",
    "audit_node",
    "checks",
    "row_count",
    "schema_created_by",
    "schema_of",
    "store_size",
    "unreadable",
    "written_columns",
]


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


def store_size(check: StoreCheck, context: NodeContext) -> int:
    """A checker's work, for the progress bar (0 when its store cannot be opened: the check
    itself then says why)."""
    try:
        return check.size(context)
    except sqlite3.Error:
        return 0
