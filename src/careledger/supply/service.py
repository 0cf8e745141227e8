"""EPCIS capture and query on a node: validate, hash, anchor on the ledger, keep the bodies.

A capture document is accepted whole or refused whole: its events are validated (schema and
CBV rules), hashed (CBV 2.0 event hash IDs), anchored in one ``supply.anchor_events``
transaction, and only then stored for queries. A refused document leaves a failed capture with
its per-event errors, and nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import orjson

from careledger.callers.caller import Caller
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.supply import MAX_CAPTURE_EVENTS, capture_of
from careledger.contracts.supply import NAMESPACE as SUPPLY
from careledger.core.canonical import canonical_bytes
from careledger.core.tx import MAX_ENVELOPE_BYTES
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex
from careledger.errors import CareLedgerError, ValidationError
from careledger.node import Node
from careledger.supply.access import require_supply
from careledger.supply.cbv import vocabulary_word
from careledger.supply.epcis_ops import supply_op
from careledger.supply.epcis_validate import (
    EpcisRejected,
    refuse_ignore_fields,
    validate_document,
)
from careledger.supply.event_hash import document_event_hash_ids
from careledger.supply.identifiers import normalise_epc
from careledger.supply.repository import EpcisRepository, EventQuery, StoredEvent

ENVELOPE_OVERHEAD = 1024  # the envelope's own fields around the args
_EPC_ROLES = (
    ("epcList", "epc"),
    ("childEPCs", "child"),
    ("inputEPCList", "input"),
    ("outputEPCList", "output"),
)


MAX_NESTING = 64  # far beyond any EPCIS extension seen; orjson itself stops at 255


def nesting_depth(value: object) -> int:
    """How deep objects and arrays nest (iteratively: a hostile document cannot recurse us)."""
    deepest = 0
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Iterable[object] = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        deepest = max(deepest, depth + 1)
        if deepest > MAX_NESTING:
            return deepest
        stack.extend((child, depth + 1) for child in children)
    return deepest


def canonical_epc(value: str) -> str:
    try:
        return normalise_epc(value)
    except ValidationError:
        return value


def utc_millis(value: object) -> str:
    if not isinstance(value, str):
        raise ValidationError("eventTime must be a timestamp", code="BAD_EVENT_TIME")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("eventTime is not ISO 8601", code="BAD_EVENT_TIME") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _epcs(event: Mapping[str, Any]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for key, role in _EPC_ROLES:
        for value in event.get(key) or []:
            if isinstance(value, str):
                found.append((canonical_epc(value), role))
    parent = event.get("parentID")
    if isinstance(parent, str):
        found.append((canonical_epc(parent), "parent"))
    return found


def stored_event(event: Mapping[str, Any], hash_id: str) -> StoredEvent:
    location = event.get("bizLocation")
    location_id = location.get("id") if isinstance(location, dict) else None
    return StoredEvent(
        hash=hash_id,
        type=str(event.get("type")),
        event_time=utc_millis(event.get("eventTime")),
        biz_step=vocabulary_word(event.get("bizStep")),
        disposition=vocabulary_word(event.get("disposition")),
        biz_location=canonical_epc(location_id) if isinstance(location_id, str) else None,
        epcs=_epcs(event),
        body={**event, "eventID": event.get("eventID", hash_id)},
    )


Prepared = tuple[list[StoredEvent], list[dict[str, Any]], list[Any]]


def prepare_capture(document: object) -> Prepared | list[dict[str, Any]]:
    """Validate, hash and map a document: (stored events, ledger anchors, the events), or its
    errors.

    Pure and picklable both ways (errors are plain dicts, not exceptions), so it runs in a
    worker process.
    """
    try:
        if nesting_depth(document) > MAX_NESTING:
            raise ValidationError(
                f"the document nests deeper than {MAX_NESTING} levels", code="NESTING_TOO_DEEP"
            )
        events = validate_document(document)
        if len(events) > MAX_CAPTURE_EVENTS:
            raise ValidationError(
                f"a capture holds at most {MAX_CAPTURE_EVENTS} events", code="CAPTURE_TOO_LARGE"
            )
        assert isinstance(document, dict)
        hashes = document_event_hash_ids(document)
        stored = [stored_event(e, h) for e, h in zip(events, hashes, strict=True)]
    except EpcisRejected as exc:
        return [_error_json(e) for e in exc.errors]
    except CareLedgerError as exc:
        return [{"code": exc.code, "message": exc.message}]
    return stored, [_anchor(s, e) for s, e in zip(stored, events, strict=True)], list(events)


class EpcisService:
    def __init__(
        self,
        node: Node,
        repository: EpcisRepository,
        *,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self.node = node
        self.repository = repository
        self._clock = clock  # a capture's creation time
        self._random = random  # capture ids

    def capture(self, caller: Caller, document: object) -> dict[str, Any]:
        require_supply(caller, "write")
        refuse_ignore_fields(document)  # a 4xx before anything is stored or anchored
        capture_id = f"cap-{token_hex(self._random, 12)}"
        created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._clock.time()))
        # Validation and hashing are pure and CPU-bound: they run in the node's worker
        # processes, so captures overlap with the committer instead of queuing on the GIL.
        prepared = self.node.verify_pool.submit(prepare_capture, document).result()
        if isinstance(prepared, list):
            return self._failed(capture_id, caller, created, prepared)
        stored, anchors, events = prepared
        args: dict[str, Any] = {"capture": capture_id, "events": anchors}
        if self.node.ledger.rules().contracts["supply"].version >= 2:
            # r3 on: the ledger reads the events themselves (hashes and operations recomputed
            # by every node); the document's @context gives their extensions' namespaces.
            args["events"] = events
            if isinstance(document, dict) and document.get("@context") is not None:
                args["context"] = document["@context"]
        if "node" not in caller.roles:
            args["actor"] = caller.member  # the ledger judges ownership as this member's
        if len(canonical_bytes(args)) > MAX_ENVELOPE_BYTES - ENVELOPE_OVERHEAD:
            too_large = {
                "code": "CAPTURE_TOO_LARGE",
                "message": "the document's ledger transaction would exceed "
                f"{MAX_ENVELOPE_BYTES} bytes; split it into smaller captures",
            }
            return self._failed(capture_id, caller, created, [too_large])
        try:
            self.repository.begin_capture(capture_id, caller.org, created, stored)
        except CareLedgerError as exc:  # not storable: nothing reaches the ledger
            return self._failed(
                capture_id, caller, created, [{"code": exc.code, "message": exc.message}]
            )
        try:
            ((receipt, why),) = self.node.execute_explained([("supply", "anchor_events", args)])
        except CareLedgerError as exc:
            self.repository.finish_capture(
                capture_id, errors=[{"code": exc.code, "message": exc.message}]
            )
            raise
        if receipt["result"] != "accepted":
            error: dict[str, Any] = {"code": receipt["code"]}
            if why is not None and why.code == receipt["code"]:
                error["message"] = why.message
                if isinstance(why.detail.get("event"), int):
                    error["index"] = why.detail["event"]
            else:
                error["message"] = "the ledger refused the capture"
            self.repository.finish_capture(capture_id, tx_id=receipt["tx_id"], errors=[error])
        else:
            self.repository.finish_capture(capture_id, tx_id=receipt["tx_id"])
        return self.repository.capture(capture_id)

    def recover(self) -> int:
        """Finish captures a stopped node left staged: published if the ledger anchored them,
        dropped otherwise. Returns how many were finished."""
        for capture_id in self.repository.running_captures():
            anchored = capture_of(self.node.ledger.state, capture_id)
            if anchored is not None:
                tx_id = self._anchoring_tx(capture_id, int(anchored["height"]))
                self.repository.finish_capture(capture_id, tx_id=tx_id)
            else:
                lost = {"code": "NODE_RESTARTED", "message": "the node stopped before anchoring"}
                self.repository.finish_capture(capture_id, errors=[lost])
        return len(self.repository.running_captures())

    def _anchoring_tx(self, capture_id: str, height: int) -> str | None:
        """The accepted transaction of the block at ``height`` that anchored the capture (the
        ledger's capture entry names its block, not its transaction)."""
        for stored in self.node.ledger.store.block_txs(height):
            body = orjson.loads(stored.envelope).get("body", {})
            accepted = orjson.loads(stored.receipt).get("result") == "accepted"
            if (
                accepted
                and (body.get("contract"), body.get("method")) in _ANCHORING
                and body.get("args", {}).get("capture") == capture_id
            ):
                return str(stored.tx_id)
        return None

    def _failed(
        self, capture_id: str, caller: Caller, created: str, errors: Sequence[Mapping[str, Any]]
    ) -> dict[str, Any]:
        self.repository.begin_capture(capture_id, caller.org, created)
        self.repository.finish_capture(capture_id, errors=errors)
        return self.repository.capture(capture_id)

    def query(self, q: EventQuery) -> tuple[list[dict[str, Any]], int | None]:
        return self.repository.query(q)


_ANCHORING = {(SUPPLY, "anchor_events")}


def _anchor(stored: StoredEvent, event: Mapping[str, Any]) -> dict[str, Any]:
    anchor: dict[str, Any] = {"hash": stored.hash, "type": stored.type}
    op = supply_op(event, stored.hash)
    if op is not None:
        anchor["op"] = op
    return anchor


def _error_json(error: Any) -> dict[str, Any]:
    return {"index": error.index, "path": error.path, "code": error.code, "message": error.message}
