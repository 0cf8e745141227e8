"""Cosigned checkpoints: every node signs what it derived and checks what its peers derived.

After each block a node publishes a statement on the cluster's NATS (core, not JetStream):
its signed checkpoint note for the new tree size and a signed note of the block header hash at
that height. A peer that derived the same header adds the checkpoint signature to its own note
for that size; one that derived a different header raises an alarm carrying both signed
headers as evidence (log line, metric, ``/v1/cluster``, and an alarm message to every node).
A peer's key is the node member's key on the ledger, so a removed organisation's node is not
believed. ``cosigned(k)`` answers the newest checkpoint carrying at least ``k`` signatures.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from careledger.contracts.identity import resolve_node
from careledger.core.checkpoint import (
    SignedNote,
    format_note,
    format_vkey,
    merge_notes,
    parse_note,
    parse_vkey,
    sign_note,
    verify_note,
)
from careledger.errors import CareLedgerError, Conflict
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import Executed

log = logging.getLogger("careledger.witness")

KEEP = 4096  # tree sizes whose cosignatures are kept
MAX_ALARMS = 100
PENDING = 4096  # peer statements kept for heights this node has not reached yet


def header_body(chain: str, height: int, header_hash: str) -> str:
    return f"{chain}/header\n{height}\n{header_hash}\n"


class Witness:
    def __init__(self, ledger: Ledger, publish: Callable[[str, bytes], None], chain_subject: str):
        self.ledger = ledger
        self.publish = publish
        self.statements_subject = f"{chain_subject}.cosign"
        self.alarms_subject = f"{chain_subject}.alarms"
        self._lock = threading.Lock()
        self._notes: OrderedDict[int, str] = OrderedDict()  # tree size -> merged note
        self._pending: OrderedDict[tuple[str, int], dict[str, Any]] = OrderedDict()
        self.alarms: list[dict[str, Any]] = []

    # -- own statements ------------------------------------------------------------------

    def statement(self, height: int) -> bytes:
        header = self.ledger.store.header(height)
        header_hash = self.ledger.store.header_hash(height)
        if header is None or header_hash is None:
            raise CareLedgerError(f"no block at height {height}", code="UNKNOWN_BLOCK")
        ledger = self.ledger
        note = ledger.checkpoint(header.log_size) if header.log_size else ""
        return orjson.dumps(
            {
                "v": 1,
                "node": ledger.node_name,
                "height": height,
                "size": header.log_size,
                "checkpoint": note,
                "header": sign_note(
                    header_body(ledger.chain, height, header_hash),
                    ledger.node_name,
                    ledger.node_key,
                ),
            }
        )

    def on_commit(self, executed: Executed) -> None:
        header = executed.block.header
        with self._lock:
            self._remember(header.log_size, self.ledger.checkpoint(header.log_size))
        self.publish(self.statements_subject, self.statement(header.height))
        self._recheck(header.height)

    def start_heartbeat(self, interval: float = 2.0) -> None:
        """Re-announce the head now and then: peers that started later, or missed a core NATS
        message, still get to check (and cosign) it. Stops with ``stop_heartbeat``."""
        self._beat = threading.Event()

        def run() -> None:
            while not self._beat.wait(interval):
                try:
                    self.announce_head()
                except Exception:  # a failed announcement must not end the heartbeat
                    log.exception("head announcement failed")

        threading.Thread(target=run, name="careledger-witness", daemon=True).start()

    def stop_heartbeat(self) -> None:
        beat = getattr(self, "_beat", None)
        if beat is not None:
            beat.set()

    def announce_head(self) -> None:
        """On start: let peers check this node's head as it is (a tampered store shows here)."""
        head = self.ledger.head
        if head.log_size:
            with self._lock:
                self._remember(head.log_size, self.ledger.checkpoint(head.log_size))
            self.publish(self.statements_subject, self.statement(head.height))

    def _remember(self, size: int, note: str) -> None:
        current = self._notes.get(size)
        self._notes[size] = note if current is None else merge_notes(current, note)
        self._notes.move_to_end(size)
        while len(self._notes) > KEEP:
            self._notes.popitem(last=False)

    # -- peers' statements ---------------------------------------------------------------

    def on_statement(self, data: bytes) -> None:
        try:
            statement = orjson.loads(data)
            if statement.get("node") == self.ledger.node_name:
                return
            self._check(statement)
        except (CareLedgerError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignored a peer statement: %s", exc)

    def _peer_vkey(self, node: str) -> str:
        _, public_key = resolve_node(self.ledger.state, node)
        return format_vkey(node, public_key)

    def _check(self, statement: dict[str, Any]) -> None:
        node, height = str(statement["node"]), int(statement["height"])
        verifier = parse_vkey(self._peer_vkey(node))
        body, _ = verify_note(statement["header"], [verifier])
        their_hash = body.split("\n")[2]
        if body != header_body(self.ledger.chain, height, their_hash):
            raise CareLedgerError("the header statement names another chain", code="BAD_PEER")
        if height > self.ledger.head.height:
            with self._lock:
                self._pending[(node, height)] = statement
                while len(self._pending) > PENDING:
                    self._pending.popitem(last=False)
            return
        ours = self.ledger.store.header_hash(height)
        if ours != their_hash:
            self._alarm(node, height, ours, statement)
            return
        if statement["checkpoint"]:
            checkpoint_body, _ = verify_note(statement["checkpoint"], [verifier])
            own = self.ledger.checkpoint(int(statement["size"]))
            if parse_note(own).body != checkpoint_body:
                self._alarm(node, height, ours, statement)
                return
            # Only the sender's own line, which verify_note just checked: other lines in its
            # note are unverified claims and must not be counted or displace genuine ones.
            parsed = parse_note(statement["checkpoint"])
            theirs = [
                s
                for s in parsed.signatures
                if s.name == verifier.name and s.key_hash == verifier.key_hash
            ][:1]
            if not theirs:
                return
            line = format_note(SignedNote(body=parsed.body, signatures=tuple(theirs)))
            with self._lock:
                self._remember(int(statement["size"]), merge_notes(own, line))

    def _recheck(self, height: int) -> None:
        with self._lock:
            ready = [k for k in self._pending if k[1] <= height]
            statements = [self._pending.pop(k) for k in ready]
        for statement in statements:
            try:
                self._check(statement)
            except CareLedgerError as exc:
                log.warning("ignored a peer statement: %s", exc)

    def _alarm(self, node: str, height: int, ours: str | None, statement: dict[str, Any]) -> None:
        ledger = self.ledger
        evidence = {
            "height": height,
            "peer": node,
            "ours": {
                "node": ledger.node_name,
                "header": ours,
                "note": sign_note(
                    header_body(ledger.chain, height, str(ours)), ledger.node_name, ledger.node_key
                )
                if ours
                else None,
            },
            "theirs": {"node": node, "note": statement["header"]},
            "detected": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        with self._lock:
            if any(a["height"] == height and a["peer"] == node for a in self.alarms):
                return
            if len(self.alarms) >= MAX_ALARMS:
                return
            self.alarms.append(evidence)
        log.error(
            "FORK: %s derived a different header at height %d than %s; evidence kept",
            node,
            height,
            ledger.node_name,
        )
        self.publish(self.alarms_subject, orjson.dumps(evidence))

    def on_alarm(self, data: bytes) -> None:
        """A peer's alarm, kept only if its evidence holds: two header notes for one height,
        each signed by an active node of this chain, naming different hashes."""
        try:
            evidence = orjson.loads(data)
            height = int(evidence["height"])
            hashes = []
            for side in ("ours", "theirs"):
                signer = str(evidence[side]["node"])
                verifier = parse_vkey(self._peer_vkey(signer))
                body, _ = verify_note(evidence[side]["note"], [verifier])
                lines = body.split("\n")
                if lines[0] != f"{self.ledger.chain}/header" or int(lines[1]) != height:
                    raise CareLedgerError("the evidence names another height", code="BAD_ALARM")
                hashes.append(lines[2])
            if hashes[0] == hashes[1]:
                raise CareLedgerError("the evidence shows no fork", code="BAD_ALARM")
            with self._lock:
                key = (height, evidence["peer"], evidence["ours"]["node"])
                known = {(a["height"], a["peer"], a["ours"]["node"]) for a in self.alarms}
                if key not in known and len(self.alarms) < MAX_ALARMS:
                    self.alarms.append({**evidence, "reported_by": evidence["ours"]["node"]})
        except (CareLedgerError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            log.warning("ignored an alarm: %s", exc)

    def cosigned(self, minimum: int) -> str:
        """The newest checkpoint note with at least ``minimum`` signatures (Conflict if none)."""
        with self._lock:
            best = 0
            for size in reversed(self._notes):
                count = len(parse_note(self._notes[size]).signatures)
                best = max(best, count)
                if count >= minimum:
                    return self._notes[size]
        error = Conflict(
            f"no checkpoint carries {minimum} signatures yet (at most {best})",
            code="NOT_ENOUGH_SIGNATURES",
        )
        error.extra = {"signatures": best}  # type: ignore[attr-defined]
        raise error

    def signatures_at_head(self) -> int:
        with self._lock:
            note = self._notes.get(self.ledger.head.log_size)
        return 0 if note is None else len(parse_note(note).signatures)
