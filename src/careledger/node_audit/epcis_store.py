"""The EPCIS repository (``epcis.sqlite``) against the ledger.

The ledger anchors each captured event (``supply/event/{sha256}``: capture, index, type,
organisation) and each capture (``supply/capture/{id}``: organisation, event count, height);
from r3 on, the anchoring ``supply.anchor_events`` transaction carries the events themselves and
the document's ``@context``, before r3 each event's hash, type and unit operation. The node keeps
the bodies; this checker reads them back and compares.

Checked, table by table:

* ``events``: each body is a JSON object, re-hashes (``event_hash_id``, with the ``@context``
  the ledger holds) to its hash ID, and gives the row's columns as the node derives them
  (``service.stored_event``); the hash is anchored in the row's capture at the row's position,
  with its type and organisation; from r3 the body is the ledger's copy (the ``eventID`` the
  node adds aside), before r3 the anchor (hash, type, unit operation) is the one the body
  derives; an event of a failed capture, or of no capture, is reported.
* ``event_epcs``: exactly the (EPC, role) rows the node derives from each event (merge-joined
  in seq order): missing, extra and changed rows, rows naming no event.
* ``captures``: status, errors, id, organisation and form of each row; a published capture is
  anchored with its organisation and event count, its events are all stored, and its
  ``tx_id`` names the accepted transaction of this node that anchored it; a failed one is not
  anchored, keeps no events, and a ledger refusal it records is that transaction's, with its
  code; a staged ('running') capture is reported (anchored: the node stopped before
  publishing it; not anchored: before anchoring; the API's ``recover`` finishes both);
  ``created`` is no later than the anchoring transaction's ``created``. Every
  ``anchor_events`` transaction this node signed (one pass over the ledger's blocks) has its
  capture in the store.
* ``alerts`` (once the API has run): each alert's transaction, height, block time, unit,
  location, organisation, brand owner and detail against the ledger event it came from; a
  refusal alert's transaction was refused with its code by the organisation named; a
  verified-after-decommission alert against its verification and the unit's retired status;
  every alert the ledger calls for up to ``alert_meta``'s height is stored.
* ``alert_meta``: one ``height`` row, not above the ledger's head nor below a stored alert.
* ``verifications``: consecutive seq numbers (the log only grows), the response against the
  row (timestamp, ``verified``, ``corrUUID``), the requester a ledger member or app of
  ``requester_org``, the brand owner and responder GLN from the ledger, and an answer that
  the unit's identity could have given (an unknown unit never verifies; lot and expiry never
  change).
* ``sqlite_sequence``: one row per AUTOINCREMENT table, never below its largest seq (for the
  log, equal to it); ``sqlite_master``: the objects and SQL the modules create;
  ``PRAGMA integrity_check`` for the file itself.

Not checkable, and why:

Every row is also vouched for by its integrity code and its table's digest (``integrity``,
ADR 0019): a byte changed, a row deleted, added or put back from an older copy, by anyone
without the node's key, is named there, whatever the ledger knows of it. What follows is what
these comparisons cannot tell when the change was made with the node's key (by the node itself,
wrongly, or by whoever holds ``keys/<node>.key``), or when a whole table or store was put back
with its digests to an older copy of itself.

* a capture refused before it reached the ledger (a validation error, a duplicate within the
  store, a transaction that failed to commit) leaves no trace on the ledger: such a row, and
  its ``events`` count, are checked only for their form;
* ``created`` is the node's clock; it is only bounded by the transaction's own time;
* a published capture whose ``tx_id`` is empty is accepted: ``recover`` publishes an
  anchored capture without it (the ledger's capture record holds no transaction id);
* before r3 the ledger holds no body: fields outside the hash (``eventID``, ``recordTime``,
  ``errorDeclaration``, comments) cannot be compared, and the document's ``@context`` is not
  kept, so an event whose extensions use prefixes only the document declared re-hashes
  differently and is reported (a false difference this checker cannot avoid);
* a refusal alert's unit, location and detail come from re-running the refused transaction
  against the state of the time (``Ledger.explain``); the audit does not re-execute;
* whether a verification should have raised a verified-after-decommission alert: the ledger
  does not say whether the unit was already retired at the moment (node clock) of the read;
* ``alert_meta``'s height, not below the last alert, as the node wrote it; ``sqlite_sequence``
  (SQLite's own table, which takes no trigger, so no code): raised for ``events`` or ``alerts``
  it looks like dropped events of failed captures or ignored duplicate alerts, which skip
  numbers too;
* verifications are reads, never on the ledger: that a request was made, when, by whom and
  with what lot, expiry or GLN, and the answer's state-dependent part (recalled, suspect,
  expired, dispensed at that moment) cannot be compared with anything but the node's own row;
* an alert's brand owner is compared with today's prefix owner (ownership of a prefix never
  changes).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from careledger.contracts.apps import app_of
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import key_key, member_key, org_key
from careledger.contracts.supply import (
    CAPTURE_ID,
    EVENT_HASH_ID,
    MAX_CAPTURE_EVENTS,
    prefix_owner,
    unit_view,
)
from careledger.contracts.supply import NAMESPACE as SUPPLY
from careledger.core.block import REJECTED
from careledger.core.canonical import canonical_bytes
from careledger.core.tx import Transaction, decode_stored_envelope
from careledger.errors import CareLedgerError
from careledger.ledger.ports import StoredTx
from careledger.node_audit.check import (
    Difference,
    NodeContext,
    schema_created_by,
    schema_of,
    unreadable,
)
from careledger.sqlite_threads import iso_ms
from careledger.supply.alerts import ALERT_KINDS, REFUSAL_KINDS
from careledger.supply.alerts import SCHEMA as ALERTS_SCHEMA
from careledger.supply.epcis_ops import supply_op
from careledger.supply.event_hash import event_hash_id
from careledger.supply.repository import SCHEMA as REPOSITORY_SCHEMA
from careledger.supply.service import stored_event
from careledger.supply.verification import OUT_OF_CIRCULATION, verify_unit
from careledger.supply.verification_log import SCHEMA as VERIFICATIONS_SCHEMA

STORE = "epcis.sqlite"
CAPTURES = "captures"
EVENTS = "events"
EVENT_EPCS = "event_epcs"
ALERTS = "alerts"
ALERT_META = "alert_meta"
VERIFICATIONS = "verifications"
SEQUENCE = "sqlite_sequence"
MASTER = "sqlite_master"
FILE = "(file)"

ACCEPTED = "accepted"
STATUSES = frozenset({"running", "succeeded", "failed"})
CREATED = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$")
ISO_MS = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3}Z$")
# Failure reasons that depend only on the unit's identity (lot and expiry never change).
MISMATCH_REASONS = frozenset(
    {"No_match_GTIN_Serial_Lot", "No_match_GTIN_Serial_Expiry", "No_match_GTIN_Serial_Lot_Expiry"}
)
UNKNOWN_UNIT = {"verified": False, "verificationFailureReason": "No_match_GTIN_Serial"}
BLOCK_ALERT_EVENTS = {"supply.alert", "supply.illegitimate"}
INTEGRITY_LINES = 20


# The supply contract's state keys (contracts/supply.py, "State"): it exports no helpers for them.
def _event_key(hash_id: str) -> str:
    return f"event/{hash_id.split(';', 1)[1][:64]}"


def _capture_key(capture: str) -> str:
    return f"capture/{capture}"


def _gln_key(gln: str) -> str:
    return f"gln/{gln}"


@dataclass(frozen=True)
class AnchorTx:
    """A ``supply.anchor_events`` transaction as the ledger holds it."""

    height: int
    stored: StoredTx
    tx: Transaction
    receipt: Mapping[str, Any]

    @property
    def accepted(self) -> bool:
        return self.receipt.get("result") == ACCEPTED

    @property
    def events(self) -> list[Any]:
        events = self.tx.args.get("events")
        return events if isinstance(events, list) else []

    @property
    def carries_events(self) -> bool:
        """r3 on: the events themselves, not (hash, type, op) anchors."""
        return not any(isinstance(e, dict) and "hash" in e for e in self.events)


@dataclass(frozen=True)
class CaptureSeen:
    """What the events pass needs of one capture: its row, ledger record and transaction."""

    id: object
    org: object = None
    status: object = None
    in_store: bool = False
    tx: AnchorTx | None = None


class EpcisStoreCheck:
    """The EPCIS repository's checker (see the module docstring)."""

    store = STORE

    def size(self, context: NodeContext) -> int:
        conn = context.open_store(STORE)
        if conn is None:
            return 0
        try:
            return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
        except sqlite3.Error:
            return 0
        finally:
            conn.close()

    def check(self, context: NodeContext, progress: Callable[[int], None]) -> Iterator[Difference]:
        conn = context.open_store(STORE)
        if conn is None:
            return
        try:
            yield from _Audit(context, conn, progress).run()
        finally:
            conn.close()


def _difference(table: str, row: object, problem: str) -> Difference:
    return Difference(STORE, table, str(row), problem)


_BAD: Any = object()  # what _json gives for a value that is not JSON


def _json(raw: object) -> Any:
    """A stored JSON value, or ``_BAD`` when it is not JSON."""
    if not isinstance(raw, bytes | str):
        return _BAD
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return _BAD


def _canonical(value: object) -> bytes | None:
    try:
        return canonical_bytes(value)
    except CareLedgerError:
        return None


class _Audit:
    def __init__(
        self, context: NodeContext, conn: sqlite3.Connection, progress: Callable[[int], None]
    ) -> None:
        self.context = context
        self.conn = conn
        self.progress = progress
        self.ledger = context.ledger
        self.node_signer = context.node_key.public_b64
        self.tables: set[str] = set()

    def run(self) -> Iterator[Difference]:
        try:
            problems = self._integrity()
        except sqlite3.Error as exc:
            yield _difference(FILE, "-", f"cannot be read as SQLite ({unreadable(exc)})")
            return
        for problem in problems:
            yield _difference(FILE, "-", f"integrity check: {problem}")
        sections: list[tuple[str, Callable[[], Iterator[Difference]]]] = [
            (MASTER, self._schema),
            (EVENTS, self._events),
            (CAPTURES, self._captures),
            (CAPTURES, self._ledger_history),
        ]
        if ALERTS in self.tables:
            sections.append((ALERTS, self._alerts))
        if ALERT_META in self.tables:
            sections.append((ALERT_META, self._alert_meta))
        if VERIFICATIONS in self.tables:
            sections.append((VERIFICATIONS, self._verifications))
        sections.append((SEQUENCE, self._sequences))
        for table, section in sections:
            try:
                yield from section()
            except sqlite3.Error as exc:
                yield _difference(table, "-", f"cannot be read ({unreadable(exc)})")

    # -- the file and its schema ---------------------------------------------------------------

    def _integrity(self) -> list[str]:
        rows = self.conn.execute(f"PRAGMA integrity_check({INTEGRITY_LINES})").fetchall()
        self.tables = {
            str(r[0])
            for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
        return [str(r[0]) for r in rows if r[0] != "ok"]

    def _schema(self) -> Iterator[Difference]:
        expected = schema_created_by(REPOSITORY_SCHEMA, store=STORE)
        actual = schema_of(self.conn)
        for optional in (ALERTS_SCHEMA, VERIFICATIONS_SCHEMA):
            objects = schema_created_by(optional, store=STORE)
            if (set(objects) - set(expected)) & set(actual):  # the module has run here
                expected.update(objects)
        for name in sorted(set(expected) | set(actual)):
            if name not in actual:
                yield _difference(MASTER, name, f"missing: the {expected[name][0]} is not there")
            elif name not in expected:
                kind = actual[name][0]
                yield _difference(MASTER, name, f"no module of the node creates this {kind}")
            elif actual[name] != expected[name]:
                kind = expected[name][0]
                yield _difference(MASTER, name, f"the {kind} is not as the node creates it")

    # -- events and their EPCs ---------------------------------------------------------------

    def _events(self) -> Iterator[Difference]:
        epcs = self.conn.cursor().execute(
            "SELECT seq, epc, role FROM event_epcs ORDER BY seq, epc, role"
        )
        pending = epcs.fetchone()
        rows = self.conn.cursor().execute(
            "SELECT seq, hash, capture, type, event_time, biz_step, disposition, biz_location,"
            " body FROM events ORDER BY seq"
        )
        seen = CaptureSeen(id=_BAD)
        position = 0
        for row in rows:
            self.progress(1)
            seq = row[0]
            # SQLite orders numbers before text and blobs: those come last, as strays.
            while pending is not None and isinstance(pending[0], int | float) and pending[0] < seq:
                yield self._stray_epc(pending)
                pending = epcs.fetchone()
            stored: set[tuple[object, object]] = set()
            while pending is not None and pending[0] == seq:
                stored.add((pending[1], pending[2]))
                pending = epcs.fetchone()
            if row[2] != seen.id:
                seen = self._capture_seen(row[2])
                position = self._position(row[2], seq)
            else:
                position += 1
            yield from self._event(row, seen, position, stored)
        while pending is not None:
            yield self._stray_epc(pending)
            pending = epcs.fetchone()

    @staticmethod
    def _stray_epc(row: tuple[Any, ...]) -> Difference:
        seq, epc, role = row
        return _difference(
            EVENT_EPCS, f"seq={seq} epc={epc} role={role}", "extra: no stored event has this seq"
        )

    def _position(self, capture: object, seq: int) -> int:
        found = self.conn.execute(
            "SELECT count(*) FROM events WHERE capture = ? AND seq < ?", (capture, seq)
        ).fetchone()
        return int(found[0])

    def _capture_seen(self, capture: object) -> CaptureSeen:
        if not isinstance(capture, str):
            return CaptureSeen(id=capture)
        row = self.conn.execute(
            "SELECT org, status, tx_id FROM captures WHERE id = ?", (capture,)
        ).fetchone()
        anchored = self.context.state(SUPPLY, _capture_key(capture))
        anchored = anchored if isinstance(anchored, dict) else None
        tx_id = row[2] if row is not None else None
        height = anchored.get("height") if anchored is not None else None
        return CaptureSeen(
            id=capture,
            org=row[0] if row is not None else None,
            status=row[1] if row is not None else None,
            in_store=row is not None,
            tx=self._anchor_tx(capture, tx_id, height),
        )

    def _event(
        self,
        row: tuple[Any, ...],
        seen: CaptureSeen,
        position: int,
        stored_epcs: set[tuple[object, object]],
    ) -> Iterator[Difference]:
        seq, hash_id, capture, kind, *_columns, raw = row
        name = hash_id if isinstance(hash_id, str) else f"seq {seq}"

        def diff(problem: str) -> Difference:
            return _difference(EVENTS, name, problem)

        if not seen.in_store:
            yield diff(f"its capture {capture!r} is not in the captures table")
        elif seen.status == "failed":
            yield diff("its capture failed, and a failed capture keeps no events")
        well_formed = isinstance(hash_id, str) and EVENT_HASH_ID.match(hash_id) is not None
        if not well_formed:
            yield diff("its hash is not a CBV 2.0 event hash ID")
        body = _json(raw)
        if not isinstance(body, dict):
            yield diff("its body is not a JSON object")
            for epc, role in sorted(stored_epcs, key=str):
                yield _difference(
                    EVENT_EPCS, f"seq={seq} epc={epc} role={role}", "its event cannot be read"
                )
            return
        yield from self._derived(row, body, stored_epcs)
        ledger_context = None
        if seen.tx is not None and seen.tx.carries_events:
            ledger_context = seen.tx.tx.args.get("context")
        try:
            rehashed = event_hash_id(body, ledger_context)
        except (CareLedgerError, TypeError, ValueError, KeyError):
            yield diff("its body cannot be hashed (CBV 2.0 event hash)")
        else:
            if rehashed != hash_id:
                yield diff(f"its body hashes to {rehashed}, not to its hash ID")
        if not well_formed or not seen.in_store or seen.status == "failed":
            return
        assert isinstance(hash_id, str)
        entry = self.context.state(SUPPLY, _event_key(hash_id))
        if not isinstance(entry, dict):
            if seen.status == "succeeded":
                yield diff("its hash ID is not anchored on the ledger")
            return
        if entry.get("capture") != capture:
            yield diff(f"the ledger anchored it in capture {entry.get('capture')!r}, not here")
            return
        if entry.get("index") != position:
            yield diff(
                f"it is event {position} of its capture here, event {entry.get('index')} on the"
                " ledger"
            )
        if entry.get("type") != kind:
            yield diff(f"its type is {kind!r}, the ledger anchored a {entry.get('type')!r}")
        if entry.get("org") != seen.org:
            yield diff(f"the ledger anchored it for {entry.get('org')!r}, not {seen.org!r}")
        yield from self._ledger_copy(diff, seen.tx, entry.get("index"), hash_id, body)

    def _derived(
        self,
        row: tuple[Any, ...],
        body: dict[str, Any],
        stored_epcs: set[tuple[object, object]],
    ) -> Iterator[Difference]:
        """The columns and EPC rows the node derives from the body (``stored_event``)."""
        seq, hash_id, _capture, *columns, _raw = row
        name = hash_id if isinstance(hash_id, str) else f"seq {seq}"
        try:
            derived = stored_event(body, str(hash_id))
        except (CareLedgerError, TypeError, ValueError, AttributeError):
            yield _difference(EVENTS, name, "its body is not an event the node could store")
            return
        wanted = (derived.type, derived.event_time, derived.biz_step, derived.disposition,
                  derived.biz_location)  # fmt: skip
        names = ("type", "event_time", "biz_step", "disposition", "biz_location")
        for column, have, want in zip(names, columns, wanted, strict=True):
            if have != want:
                yield _difference(
                    EVENTS, name, f"its {column} is {have!r}, but its body gives {want!r}"
                )
        expected = set(derived.epcs)
        for epc, role in sorted(expected - stored_epcs):
            yield _difference(
                EVENT_EPCS,
                f"seq={seq} epc={epc} role={role}",
                f"missing: event {name} names this EPC ({role})",
            )
        for stray_epc, stray_role in sorted(stored_epcs - expected, key=str):
            yield _difference(
                EVENT_EPCS,
                f"seq={seq} epc={stray_epc} role={stray_role}",
                f"extra: event {name} does not name this EPC as {stray_role!r}",
            )

    @staticmethod
    def _ledger_copy(
        diff: Callable[[str], Difference],
        anchor: AnchorTx | None,
        index: object,
        hash_id: str,
        body: dict[str, Any],
    ) -> Iterator[Difference]:
        """The body against what the anchoring transaction says of it."""
        if anchor is None:
            return  # reported with the capture
        events = anchor.events
        if not isinstance(index, int) or not 0 <= index < len(events):
            yield diff(f"transaction {anchor.stored.tx_id} holds no event {index}")
            return
        item = events[index]
        if anchor.carries_events:
            if not isinstance(item, dict):
                yield diff(f"transaction {anchor.stored.tx_id} holds no event object here")
                return
            want = {**item, "eventID": item.get("eventID", hash_id)}
            mine = _canonical(body)
            if mine is None or mine != _canonical(want):
                yield diff(
                    f"its body is not the event the ledger holds (transaction "
                    f"{anchor.stored.tx_id}, event {index})"
                )
            return
        # Before r3 the anchor is (hash, type, op), the shape those rules fix for good.
        try:
            op = supply_op(body, hash_id)
        except (CareLedgerError, TypeError, ValueError, KeyError):
            yield diff("its unit operation cannot be derived from its body")
            return
        want = {"hash": hash_id, "type": str(body.get("type"))}
        if op is not None:
            want["op"] = op
        if _canonical(want) != _canonical(item):
            yield diff(
                f"its body derives another anchor (hash, type or unit operation) than "
                f"transaction {anchor.stored.tx_id} holds (event {index})"
            )

    # -- captures ----------------------------------------------------------------------------

    def _anchor_tx(self, capture: str, tx_id: object, height: object) -> AnchorTx | None:
        """The transaction anchoring ``capture``: ``tx_id`` if it is one, else the accepted one
        in the block at ``height``."""
        if isinstance(tx_id, str):
            found = self.ledger.find_tx(tx_id)
            if found is not None:
                anchor = self._as_anchor(found[0], found[1])
                if anchor is not None and anchor.tx.args.get("capture") == capture:
                    return anchor
        if isinstance(height, int):
            for stored in self.ledger.block_txs(height):
                anchor = self._as_anchor(height, stored)
                if (
                    anchor is not None
                    and anchor.accepted
                    and anchor.tx.args.get("capture") == capture
                ):
                    return anchor
        return None

    @staticmethod
    def _as_anchor(height: int, stored: StoredTx) -> AnchorTx | None:
        if b'"anchor_events"' not in stored.envelope:
            return None
        try:
            tx = decode_stored_envelope(stored.envelope)
            receipt = orjson.loads(stored.receipt)
        except (CareLedgerError, orjson.JSONDecodeError):
            return None  # the ledger's own verification reports it
        if tx.contract != SUPPLY or tx.method != "anchor_events" or not isinstance(receipt, dict):
            return None
        return AnchorTx(height, stored, tx, receipt)

    def _captures(self) -> Iterator[Difference]:
        rows = self.conn.cursor().execute(
            "SELECT id, org, status, created, events, tx_id, errors FROM captures ORDER BY id"
        )
        for row in rows:
            yield from self._capture(row)

    def _capture(self, row: tuple[Any, ...]) -> Iterator[Difference]:
        capture, org, status, created, count, tx_id, raw_errors = row

        def diff(problem: str) -> Difference:
            return _difference(CAPTURES, capture, problem)

        if not isinstance(capture, str) or CAPTURE_ID.match(capture) is None:
            yield diff("its id is not a capture id")
            return
        if status not in STATUSES:
            yield diff(f"its status {status!r} is none the node writes")
            return
        if not isinstance(org, str) or self.context.state(IDENTITY, org_key(org)) is None:
            yield diff(f"its organisation {org!r} is not on the ledger")
        if not isinstance(created, str) or CREATED.match(created) is None:
            yield diff(f"its creation time {created!r} is not a UTC timestamp")
        if not isinstance(count, int) or not 0 <= count <= MAX_CAPTURE_EVENTS:
            yield diff(f"its event count {count!r} is not a count of 0..{MAX_CAPTURE_EVENTS}")
        stored = int(
            self.conn.execute(
                "SELECT count(*) FROM events WHERE capture = ?", (capture,)
            ).fetchone()[0]
        )
        anchored = self.context.state(SUPPLY, _capture_key(capture))
        anchored = anchored if isinstance(anchored, dict) else None
        if status == "running":
            if tx_id is not None or raw_errors is not None:
                yield diff("staged, yet it records a transaction or errors")
            if anchored is not None:
                yield diff(
                    "left staged: the ledger anchored it, but the node stopped before publishing"
                    " it (the node's API publishes it when it starts)"
                )
            else:
                yield diff(
                    "left staged and never anchored: the node stopped before anchoring it (the"
                    " node's API drops it when it starts)"
                )
            if stored != count:
                yield diff(f"it counts {count} staged events, the store holds {stored}")
            return
        errors = _json(raw_errors)
        if status == "succeeded":
            yield from self._published(diff, row, errors, stored, anchored)
        else:
            yield from self._failed(diff, row, errors, anchored)

    def _published(
        self,
        diff: Callable[[str], Difference],
        row: tuple[Any, ...],
        errors: Any,
        stored: int,
        anchored: Mapping[str, Any] | None,
    ) -> Iterator[Difference]:
        capture, org, _status, created, count, tx_id, _raw = row
        if errors != []:
            yield diff("published, yet it records errors")
        if stored != count:
            yield diff(f"it counts {count} events, the store holds {stored}")
        if anchored is None:
            yield diff("published, but the ledger never anchored it")
            return
        if anchored.get("org") != org:
            yield diff(f"the ledger anchored it for {anchored.get('org')!r}, not {org!r}")
        if anchored.get("events") != count:
            yield diff(f"it counts {count} events, the ledger anchored {anchored.get('events')}")
        anchor = self._anchor_tx(capture, tx_id, anchored.get("height"))
        if anchor is None:
            if tx_id is not None:
                yield diff(f"its transaction {tx_id} did not anchor it")
            else:
                yield diff("the ledger holds no transaction anchoring it")
            return
        if tx_id is not None and anchor.stored.tx_id != tx_id:
            yield diff(f"its transaction {tx_id} did not anchor it")
        if not anchor.accepted:
            yield diff(f"its transaction {tx_id} was refused by the ledger")
        if anchor.height != anchored.get("height"):
            yield diff(f"its transaction {tx_id} is not in the block that anchored it")
        yield from self._own_anchor(diff, anchor, created, count)

    def _own_anchor(
        self, diff: Callable[[str], Difference], anchor: AnchorTx, created: object, count: object
    ) -> Iterator[Difference]:
        if anchor.tx.signer != self.node_signer:
            yield diff(f"transaction {anchor.stored.tx_id} was not signed by this node")
        if isinstance(created, str) and created > str(anchor.tx.body.get("created", "")):
            yield diff(f"created after transaction {anchor.stored.tx_id} that anchored it")
        if len(anchor.events) != count:
            yield diff(f"transaction {anchor.stored.tx_id} carries {len(anchor.events)} events")

    def _failed(
        self,
        diff: Callable[[str], Difference],
        row: tuple[Any, ...],
        errors: Any,
        anchored: Mapping[str, Any] | None,
    ) -> Iterator[Difference]:
        capture, _org, _status, created, count, tx_id, _raw = row
        if (
            not isinstance(errors, list)
            or not errors
            or not all(isinstance(e, dict) and isinstance(e.get("code"), str) for e in errors)
        ):
            yield diff("failed, yet it records no errors")
            errors = [{}]
        if anchored is not None:
            yield diff("failed here, but the ledger anchored it: its events are missing")
        if tx_id is None:
            return  # refused before the ledger saw it: nothing there to compare
        if not isinstance(tx_id, str):
            yield diff(f"its transaction id {tx_id!r} is not one")
            return
        found = self.ledger.find_tx(tx_id)
        anchor = self._as_anchor(*found) if found is not None else None
        if anchor is None or anchor.tx.args.get("capture") != capture:
            yield diff(f"its transaction {tx_id} is not on the ledger as an anchor of it")
            return
        if anchor.accepted:
            yield diff(f"its transaction {tx_id} was accepted, yet the capture failed here")
            return
        if anchor.receipt.get("code") != errors[0].get("code"):
            yield diff(
                f"it failed with {errors[0].get('code')!r}, the ledger refused it with"
                f" {anchor.receipt.get('code')!r}"
            )
        yield from self._own_anchor(diff, anchor, created, count)

    # -- the ledger's side: every capture this node anchored, every alert it calls for --------

    def _ledger_history(self) -> Iterator[Difference]:
        alert_height = self._alert_height() if ALERTS in self.tables else 0
        for height in range(self.ledger.head_height() + 1):
            txs = self.ledger.block_txs(height)
            for stored in txs:
                anchor = self._as_anchor(height, stored)
                if anchor is not None and anchor.tx.signer == self.node_signer:
                    yield from self._anchored_here(anchor)
                if 0 < height <= alert_height and b'"code"' in stored.receipt:
                    yield from self._refusal_alert_kept(height, stored)
            if 0 < height <= alert_height:
                for event in self.ledger.block_events(height):
                    if event.type in BLOCK_ALERT_EVENTS and event.tx_index < len(txs):
                        yield from self._event_alert_kept(
                            event.type, event.data, txs[event.tx_index]
                        )

    def _anchored_here(self, anchor: AnchorTx) -> Iterator[Difference]:
        capture = anchor.tx.args.get("capture")
        if not isinstance(capture, str):
            return
        row = self.conn.execute("SELECT 1 FROM captures WHERE id = ?", (capture,)).fetchone()
        if row is not None:
            return
        outcome = "anchored" if anchor.accepted else "refused"
        yield _difference(
            CAPTURES,
            capture,
            f"missing: this node's capture, {outcome} by the ledger in transaction "
            f"{anchor.stored.tx_id} (height {anchor.height}), is not in the store",
        )

    def _refusal_alert_kept(self, height: int, stored: StoredTx) -> Iterator[Difference]:
        receipt = orjson.loads(stored.receipt)
        kind = REFUSAL_KINDS.get(str(receipt.get("code", "")))
        if kind is None or receipt.get("result") != REJECTED:
            return
        try:
            tx = decode_stored_envelope(stored.envelope)
        except CareLedgerError:
            return
        if tx.contract != SUPPLY:
            return
        found = self.conn.execute(
            "SELECT 1 FROM alerts WHERE tx_id = ? AND kind = ?", (stored.tx_id, kind)
        ).fetchone()
        if found is None:
            yield _difference(
                ALERTS,
                f"{kind} {stored.tx_id}",
                f"missing: the ledger refused transaction {stored.tx_id} (height {height}) with"
                f" {receipt.get('code')}, which is a {kind} alert",
            )

    def _event_alert_kept(self, kind: str, data: bytes, stored: StoredTx) -> Iterator[Difference]:
        event = orjson.loads(data)
        alert_kind = event.get("kind", "illegitimate")
        found = self.conn.execute(
            "SELECT 1 FROM alerts WHERE tx_id = ? AND kind = ? AND gtin IS ? AND serial IS ?",
            (stored.tx_id, alert_kind, event.get("gtin"), event.get("serial")),
        ).fetchone()
        if found is None:
            unit = f"{event.get('gtin')}/{event.get('serial')}"
            yield _difference(
                ALERTS,
                f"{alert_kind} {stored.tx_id} {unit}",
                f"missing: transaction {stored.tx_id} emitted {kind} for {unit}",
            )

    # -- alerts --------------------------------------------------------------------------------

    def _alert_height(self) -> int:
        if ALERT_META not in self.tables:
            return 0
        row = self.conn.execute("SELECT value FROM alert_meta WHERE name = 'height'").fetchone()
        if row is None or not isinstance(row[0], int):
            return 0
        return min(row[0], self.ledger.head_height())

    def _alerts(self) -> Iterator[Difference]:
        rows = self.conn.cursor().execute(
            "SELECT seq, kind, code, gtin, serial, location, org, brand_owner, height, tx_id,"
            " time, detail FROM alerts ORDER BY seq"
        )
        for row in rows:
            seq, kind = row[0], row[1]

            def diff(problem: str, seq: object = seq) -> Difference:
                return _difference(ALERTS, seq, problem)

            if kind not in ALERT_KINDS:
                yield diff(f"its kind {kind!r} is none the node raises")
                continue
            detail = _json(row[11])
            if not isinstance(detail, dict):
                yield diff("its detail is not a JSON object")
                continue
            gtin = row[3]
            brand = prefix_owner(self.context.state, gtin) if isinstance(gtin, str) else None
            if row[7] != brand:
                yield diff(f"its brand owner is {row[7]!r}, the ledger says {brand!r}")
            if kind == "verified_after_decommission":
                yield from self._verification_alert(diff, row, detail)
            else:
                yield from self._block_alert(diff, row, detail)

    def _block_alert(
        self, diff: Callable[[str], Difference], row: tuple[Any, ...], detail: dict[str, Any]
    ) -> Iterator[Difference]:
        # A refusal alert's unit, location and detail come from Ledger.explain: not re-executed.
        _seq, kind, code, _gtin, _serial, _location, org, _brand, height, tx_id, when, _d = row
        found = self.ledger.find_tx(tx_id) if isinstance(tx_id, str) else None
        if found is None:
            yield diff(f"its transaction {tx_id!r} is not on the ledger")
            return
        tx_height, stored = found
        if height != tx_height:
            yield diff(f"its height is {height!r}, its transaction is at {tx_height}")
            return
        header = self.ledger.header(tx_height)
        if header is None or when != header.time:
            yield diff(f"its time is {when!r}, not its block's")
        if not isinstance(height, int) or height > self._alert_height():
            yield diff(f"its height {height!r} is above the height the alert store has reached")
        if code is None:
            yield from self._emitted(diff, row, detail, tx_height, stored)
            return
        receipt = orjson.loads(stored.receipt)
        if receipt.get("result") != REJECTED or receipt.get("code") != code:
            yield diff(f"its transaction was not refused with {code!r}")
            return
        if REFUSAL_KINDS.get(str(code)) != kind:
            yield diff(f"a refusal with {code!r} is no {kind} alert")
        tx = decode_stored_envelope(stored.envelope)
        if tx.contract != SUPPLY:
            yield diff("its transaction is not a supply transaction")
        if org != self._org_of(tx):
            yield diff(f"its organisation is {org!r}, the transaction's is {self._org_of(tx)!r}")

    def _emitted(
        self,
        diff: Callable[[str], Difference],
        row: tuple[Any, ...],
        detail: dict[str, Any],
        height: int,
        stored: StoredTx,
    ) -> Iterator[Difference]:
        _seq, kind, _code, gtin, serial, location, org, _brand, _h, tx_id, _when, _d = row
        txs = self.ledger.block_txs(height)
        index = next((i for i, t in enumerate(txs) if t.tx_id == stored.tx_id), -1)
        wanted = "supply.illegitimate" if kind == "illegitimate" else "supply.alert"
        for event in self.ledger.block_events(height):
            if event.tx_index != index or event.type != wanted:
                continue
            data = orjson.loads(event.data)
            if data.get("gtin") != gtin or data.get("serial") != serial:
                continue
            if data.get("kind", "illegitimate") != kind:
                continue
            if data.get("location") != location:
                yield diff(f"its location is {location!r}, the ledger's {data.get('location')!r}")
            if (data.get("org") or data.get("by")) != org:
                yield diff(f"its organisation is {org!r}, the ledger names another")
            want = {"notify_by": iso_ms(data["notify_by"])} if "notify_by" in data else {}
            if detail != want:
                yield diff("its detail is not what the ledger's event says")
            return
        yield diff(f"transaction {tx_id} emitted no {kind} alert for {gtin}/{serial}")

    def _org_of(self, tx: Transaction) -> object:
        """The organisation behind a transaction: its actor's, else its signer's (as the
        alert watcher names it)."""
        member_id = tx.args.get("actor")
        if not isinstance(member_id, str):
            key = self.context.state(IDENTITY, key_key(tx.signer))
            member_id = key.get("member") if isinstance(key, dict) else None
        member = self.context.state(IDENTITY, member_key(member_id)) if member_id else None
        return member.get("org") if isinstance(member, dict) else None

    def _verification_alert(
        self, diff: Callable[[str], Difference], row: tuple[Any, ...], detail: dict[str, Any]
    ) -> Iterator[Difference]:
        _seq, _kind, code, gtin, serial, location, org, brand, height, tx_id, when, _d = row
        if code is not None or height is not None:
            yield diff("a verification alert has no ledger code or height")
        number = detail.get("verification")
        if tx_id != f"verification-{number}" or not isinstance(number, int):
            yield diff(f"it names verification {number!r} and {tx_id!r}")
            return
        logged = None
        if VERIFICATIONS in self.tables:
            logged = self.conn.execute(
                "SELECT time, requester_org, requestor_gln, gtin, serial, brand_owner"
                " FROM verifications WHERE seq = ?",
                (number,),
            ).fetchone()
        if logged is None:
            yield diff(f"verification {number} is not in the log")
            return
        if (logged[3], logged[4], logged[1], logged[5]) != (gtin, serial, org, brand):
            yield diff(f"verification {number} is about another unit or requester")
        if not isinstance(when, int) or iso_ms(when) != logged[0]:
            yield diff(f"its time is not verification {number}'s")
        if location is not None and location != logged[2]:
            yield diff(f"its location is not the GLN verification {number} gave")
        if location is not None and not self._gln_of(location, org):
            yield diff(f"its location {location!r} is not a GLN of {org!r}")
        unit = unit_view(self.context.state, gtin, serial) if isinstance(gtin, str) else None
        if detail.get("status") not in OUT_OF_CIRCULATION or set(detail) != {
            "status",
            "verification",
        }:
            yield diff("its detail names no status out of circulation")
        if unit is None or unit.get("status") not in OUT_OF_CIRCULATION:
            yield diff("the ledger's unit is not out of circulation")

    def _gln_of(self, gln: object, org: object) -> bool:
        entry = self.context.state(SUPPLY, _gln_key(gln)) if isinstance(gln, str) else None
        return isinstance(entry, dict) and entry.get("org") == org

    def _alert_meta(self) -> Iterator[Difference]:
        head = self.ledger.head_height()
        found = False
        for name, value in self.conn.cursor().execute("SELECT name, value FROM alert_meta"):
            if name != "height":
                yield _difference(ALERT_META, name, "the alert store keeps no such value")
                continue
            found = True
            if not isinstance(value, int) or not 0 < value <= head:
                yield _difference(ALERT_META, name, f"{value!r} is no height of the ledger")
                continue
            top = self.conn.execute("SELECT max(height) FROM alerts").fetchone()[0]
            if isinstance(top, int) and top > value:
                yield _difference(ALERT_META, name, f"{value} is below a stored alert's height")
        if not found and head > 0:
            yield _difference(
                ALERT_META, "height", "missing: the alert watcher records the height it reached"
            )

    # -- the verification log --------------------------------------------------------------------

    def _verifications(self) -> Iterator[Difference]:
        rows = self.conn.cursor().execute(
            "SELECT seq, time, requester, requester_org, requestor_gln, corr_uuid, gtin, serial,"
            " lot, expiry, brand_owner, verified, response FROM verifications ORDER BY seq"
        )
        expected = 1
        for row in rows:
            seq = row[0]
            if seq != expected:
                yield _difference(
                    VERIFICATIONS,
                    f"{expected}..{seq - 1}" if seq - 1 > expected else expected,
                    "missing: the log only grows, and its seq numbers follow one another",
                )
            expected = seq + 1
            yield from self._verification(row)
        reached = self.conn.execute(
            "SELECT seq FROM sqlite_sequence WHERE name = 'verifications'"
        ).fetchone()
        if reached is not None and isinstance(reached[0], int) and reached[0] >= expected:
            yield _difference(
                VERIFICATIONS,
                f"{expected}..{reached[0]}" if reached[0] > expected else expected,
                f"missing: the log reached seq {reached[0]}, and rows are never deleted",
            )

    def _verification(self, row: tuple[Any, ...]) -> Iterator[Difference]:
        seq, when, requester, requester_org, _gln, corr, gtin, serial, lot, expiry = row[:10]
        brand, verified, raw = row[10:]

        def diff(problem: str) -> Difference:
            return _difference(VERIFICATIONS, seq, problem)

        response = _json(raw)
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(response, dict) or not isinstance(data, dict):
            yield diff("its response is not an LMS response")
            return
        if not isinstance(when, str) or ISO_MS.match(when) is None:
            yield diff(f"its time {when!r} is not a UTC timestamp")
        if response.get("verificationTimestamp") != when:
            yield diff("its time is not its response's timestamp")
        if verified not in (0, 1) or data.get("verified") is not bool(verified):
            yield diff("its verified flag is not its response's")
        if response.get("corrUUID") != corr:
            yield diff("its corrUUID is not its response's")
        if requester == "anonymous":
            if requester_org is not None:
                yield diff("an anonymous request has no organisation")
        elif requester_org is None or self._org_of_requester(requester) != requester_org:
            yield diff(f"{requester!r} is no member or app of {requester_org!r} on the ledger")
        if not isinstance(gtin, str) or not isinstance(serial, str) or not serial:
            yield diff("it names no GTIN and serial")
            return
        owner = prefix_owner(self.context.state, gtin)
        if brand != owner:
            yield diff(f"its brand owner is {brand!r}, the ledger says {owner!r}")
        responder = response.get("responderGLN")
        if responder is not None and not self._gln_of(responder, brand):
            yield diff(f"its responder GLN {responder!r} is not the brand owner's")
        unit = unit_view(self.context.state, gtin, serial)
        if unit is None:
            if data != UNKNOWN_UNIT:
                yield diff("the ledger never knew this unit, yet the answer says otherwise")
            return
        identity = verify_unit(unit, lot=lot, expiry=expiry, time_ms=0)
        reason = identity.get("verificationFailureReason")
        given = data.get("verificationFailureReason")
        if reason in MISMATCH_REASONS and data not in (identity, UNKNOWN_UNIT):
            yield diff(f"its lot and expiry give {reason}, the answer says otherwise")
        elif reason not in MISMATCH_REASONS and given in MISMATCH_REASONS:
            yield diff(f"its lot and expiry match the unit, yet the answer says {given}")

    def _org_of_requester(self, requester: object) -> object:
        if not isinstance(requester, str):
            return None
        member = self.context.state(IDENTITY, member_key(requester))
        if isinstance(member, dict):
            return member.get("org")
        app = app_of(self.context.state, requester)
        return app.get("org") if app is not None else None

    # -- sqlite_sequence ---------------------------------------------------------------------------

    def _sequences(self) -> Iterator[Difference]:
        tables = [t for t in (EVENTS, ALERTS, VERIFICATIONS) if t in self.tables]
        seen: set[str] = set()
        for name, value in self.conn.cursor().execute("SELECT name, seq FROM sqlite_sequence"):
            if name not in tables or name in seen:
                yield _difference(SEQUENCE, name, "no AUTOINCREMENT table of this store")
                continue
            seen.add(name)
            top = self.conn.execute(f"SELECT max(seq) FROM {name}").fetchone()[0]  # noqa: S608
            top = top if isinstance(top, int) else 0
            if not isinstance(value, int) or value < top:
                yield _difference(
                    SEQUENCE, name, f"{value!r} is below its largest seq {top}: seqs would repeat"
                )
        for name in tables:
            if name in seen:
                continue
            rows = self.conn.execute(f"SELECT count(*) FROM {name}").fetchone()[0]  # noqa: S608
            if rows:
                yield _difference(
                    SEQUENCE, name, "missing: an AUTOINCREMENT table with rows has one"
                )
