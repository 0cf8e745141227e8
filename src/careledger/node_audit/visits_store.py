"""The visits store (``visits.sqlite``: links, reasons) against the ledger.

What is checked:

* Schema: the tables are exactly those ``VisitsService`` creates (none missing or altered, no
  trigger, view or other object added), and SQLite's quick check passes.
* ``links``: each names a visit on the ledger, scheduled by this node's organisation (the
  scheduling node keeps the link); it opens with the node's at-rest key, sealed for that row;
  its SHA-256 is the link hash the ledger holds for the visit. A visit this node scheduled for
  a clinician (its ``visits.on_behalf`` schedule is signed with the node's key, as
  ``VisitsService.schedule`` does) has its link here, and so does any visit whose reason is
  here (the node keeps a visit's link before its reason).
* ``reasons``: each names a visit on the ledger of this node's organisation; it opens with the
  node's at-rest key, sealed for that row, and is what the node accepts (1 to 512 characters).

What cannot be checked, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* A reason's text: the ledger holds no trace of it (no free text goes on the ledger, not even
  hashed), so a reason is only as good as its seal. A changed byte, a reason moved from another
  visit, or one written in clear is caught; a sealed reason can only have come from this node,
  for this visit, and is written once (visit ids are never reused), so no older value exists.
* Whether a visit had a reason: it is optional and the ledger does not say, so a visit whose
  reason the node (or its key) removed looks like a visit scheduled without one.
* The link of a visit scheduled other than through this node's visits API (a clinician's own
  signed ``visits.schedule`` sent to ``/v1/tx``, as the demo's visit is): whether any node kept
  a link for it is not on the ledger, so its absence is a difference only when its reason is
  held here. A link that is held is checked in full.

Values in clear (not sealed with the node's key) are differences: the node has sealed them
since issue 15, and a value in clear could have been written by anyone. Differences name
visits and fields, never a link or a reason.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import orjson

from careledger.contracts.visits import NAMESPACE as VISITS
from careledger.contracts.visits import visit_ids, visit_of
from careledger.monitoring.visits import SCHEMA, VISITS_FILE
from careledger.node_audit.check import Difference, NodeContext, row_count, unreadable
from careledger.node_audit.monitoring_store import open_sealed, schema_differences
from careledger.vault.at_rest import AtRest

MAX_REASON = 512  # VisitsService.schedule refuses longer reasons
LISTED = 100_000_000  # keys of the ledger listed at most: an audit reads them all
TABLES = ("links", "reasons")


class VisitsStoreCheck:
    """The visits store against the ledger (see the module's docstring)."""

    store = VISITS_FILE

    def size(self, context: NodeContext) -> int:
        return row_count(context, self.store, TABLES)

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(self.store)
        audit = _Audit(context, progress)
        if conn is None:
            yield from audit.unheld_links(set(), set())
            return
        try:
            yield from schema_differences(self.store, conn, SCHEMA)
            links = _rows(conn, "links", "link")
            reasons = _rows(conn, "reasons", "reason")
            for table, rows in (("links", links), ("reasons", reasons)):
                if isinstance(rows, str):
                    yield Difference(self.store, table, "", f"the table cannot be read: {rows}")
            links = {} if isinstance(links, str) else links
            reasons = {} if isinstance(reasons, str) else reasons
            yield from audit.links(links)
            yield from audit.reasons(reasons)
            yield from audit.unheld_links(set(links), set(reasons))
        except sqlite3.DatabaseError as exc:
            why = f"the store cannot be read ({unreadable(exc)})"
            yield Difference(self.store, "(file)", "", why)
        finally:
            conn.close()


def _rows(conn: sqlite3.Connection, table: str, column: str) -> dict[str, object] | str:
    """A table's rows by visit (or why it cannot be read)."""
    try:
        rows = conn.execute(f"SELECT visit, {column} FROM {table} ORDER BY visit").fetchall()  # noqa: S608 - our names
    except sqlite3.Error as exc:
        return str(exc)
    return {str(visit): value for visit, value in rows}


class _Audit:
    def __init__(self, context: NodeContext, progress: Callable[[int], None]) -> None:
        self.context = context
        self.progress = progress
        self.sealed = AtRest.for_node(context.node_key, "visits")
        self.signer = context.node_key.public_b64
        self._blocks: dict[int, list[dict[str, Any]]] = {}

    @staticmethod
    def _difference(table: str, row: str, problem: str) -> Difference:
        return Difference(VISITS_FILE, table, row, problem)

    def visit(self, visit_id: str) -> dict[str, Any] | None:
        held = visit_of(self.context.state, visit_id)
        return None if held is None else dict(held)

    def _visit_problem(self, visit: dict[str, Any] | None, what: str) -> str:
        if visit is None:
            return f"{what} of a visit the ledger does not know"
        if visit.get("org") != self.context.org:
            return f"{what} of another organisation's visit: only the scheduling node keeps it"
        return ""

    def links(self, rows: dict[str, object]) -> Iterator[Difference]:
        for visit_id, value in rows.items():
            self.progress(1)
            visit = self.visit(visit_id)
            problem = self._visit_problem(visit, "the link")
            if problem:
                yield self._difference("links", visit_id, problem)
            link, why = open_sealed(self.sealed, value, f"links:{visit_id}")
            if link is None:
                yield self._difference("links", visit_id, f"the link: {why}")
            elif visit is not None and hashlib.sha256(link).hexdigest() != visit.get("link_hash"):
                yield self._difference(
                    "links", visit_id, "the link does not hash to the link hash the ledger holds"
                )

    def reasons(self, rows: dict[str, object]) -> Iterator[Difference]:
        for visit_id, value in rows.items():
            self.progress(1)
            problem = self._visit_problem(self.visit(visit_id), "the reason")
            if problem:
                yield self._difference("reasons", visit_id, problem)
            reason, why = open_sealed(self.sealed, value, f"reasons:{visit_id}")
            if reason is None:
                yield self._difference("reasons", visit_id, f"the reason: {why}")
                continue
            try:
                text = reason.decode()
            except UnicodeDecodeError:
                text = ""
            if not 0 < len(text) <= MAX_REASON:
                yield self._difference(
                    "reasons", visit_id, f"not a reason the node keeps (1..{MAX_REASON} characters)"
                )

    def unheld_links(self, links: set[str], reasons: set[str]) -> Iterator[Difference]:
        """Visits whose link must be here and is not."""
        for visit_id in sorted(reasons - links):
            if not self._visit_problem(self.visit(visit_id), ""):  # else named with its reason
                yield self._difference(
                    "links", visit_id, "the visit's reason is held, its link is not"
                )
        for visit_id in visit_ids(self.context.state_keys, LISTED):
            if visit_id in links or visit_id in reasons:
                continue
            visit = self.visit(visit_id)
            if visit is None or visit.get("org") != self.context.org:
                continue
            if self._scheduled_here(visit):
                yield self._difference(
                    "links", visit_id, "this node scheduled the visit; its link is not held"
                )

    def _scheduled_here(self, visit: dict[str, Any]) -> bool:
        """Whether this node signed the visit's schedule (for a clinician it authenticated)."""
        for body in self._block(int(visit.get("scheduled", -1))):
            args = body.get("args") or {}
            if body.get("contract") != VISITS or body.get("method") != "on_behalf":
                continue
            inner = args.get("args") or {}
            if args.get("method") == "schedule" and inner.get("id") == visit.get("id"):
                return body.get("signer") == self.signer
        return False

    def _block(self, height: int) -> list[dict[str, Any]]:
        if height not in self._blocks:
            bodies = []
            if height >= 0:
                for tx in self.context.ledger.block_txs(height):
                    bodies.append(dict(orjson.loads(tx.envelope)["body"]))
            self._blocks[height] = bodies
        return self._blocks[height]
