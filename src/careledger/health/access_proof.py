"""A patient's "who saw my data" as a file that verifies offline (issue 19).

The file holds every access event of the patient's log: the ``audit.access`` transaction that
recorded it (envelope, receipt, inclusion proof) and the entry as the ledger state holds it, so
it reads without the node; and one checkpoint, of a tree that holds them all, signed by the
node (in a cluster, with every peer's cosignature the node has for it).

What it proves, given the verifier keys of the nodes you trust (``--node-key``; without one
nothing is accepted, as anyone can make a key and sign): each event's transaction is in that
checkpoint's log, was signed by its signer and accepted by the ledger, records an access to this
patient's data, and says who (accessor, organisation, app), what (records, readings, action),
why (purpose) and on what basis, exactly as the readable entry does; the time the node signed
it (``created``). What it takes on the node's word: that the list is complete (the ledger state
is not proven by the file), the block time of each event, and its custodian.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from careledger.callers.caller import Caller
from careledger.core.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    parse_checkpoint,
    parse_note,
    parse_vkey,
)
from careledger.errors import CareLedgerError, Conflict, ValidationError, VerificationError
from careledger.health.bulk_export import proven_tx
from careledger.health.export_proof import verify_proven_tx
from careledger.health.service import HealthRecords
from careledger.ledger.engine import Ledger

FORMAT = "careledger-access-proof"
VERSION = 1
ACCESS = ("audit", "access")
# Fields of an access entry the envelope's args must hold alike (absent in both, or equal).
FROM_ARGS = ("accessor", "accessor_org", "action", "purpose", "app", "interaction", "recipient")
LISTS = ("records", "windows")  # absent from the args: none
# Fields the ledger writes that the file cannot prove (the signer's organisation, the block's
# time), or that are checked otherwise (patient, basis, break_glass, height, tx).
STATE_ONLY = ("custodian", "time")
ENTRY_FIELDS = frozenset(
    {*FROM_ARGS, *LISTS, *STATE_ONLY, "patient", "basis", "break_glass", "height", "tx"}
)


@dataclass
class AccessProofReport:
    patient: str
    chain: str
    tree_size: int
    signers: tuple[str, ...]  # the trusted keys that signed the checkpoint
    accesses: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "patient": self.patient,
            "chain": self.chain,
            "tree_size": self.tree_size,
            "signers": list(self.signers),
            "accesses": self.accesses,
        }


def _mismatch(message: str) -> VerificationError:
    return VerificationError(message, code="ACCESS_PROOF_MISMATCH")


def _untrusted(message: str) -> VerificationError:
    return VerificationError(message, code="ACCESS_PROOF_UNTRUSTED")


# -- building (on the node) ----------------------------------------------------------------


def build_access_proof(records: HealthRecords, caller: Caller, patient: str) -> dict[str, Any]:
    """The proof file of ``patient``'s access log, for those who may read that log."""
    entries = records.access_log(caller, patient)  # Forbidden for anyone else
    # Listed before the tree size is chosen: every listed event is in the tree.
    needed = max((_leaf_of(records.ledger, str(e["tx"])) + 1 for e in entries), default=1)
    note = _best_checkpoint(records, needed)
    state = [{k: v for k, v in e.items() if k in ENTRY_FIELDS} for e in entries]
    return access_proof_document(records.ledger, patient, state, checkpoint=note)


def access_proof_document(
    ledger: Ledger,
    patient: str,
    entries: Iterable[Mapping[str, Any]],
    *,
    checkpoint: str | None = None,
) -> dict[str, Any]:
    """The file for ``entries`` (access entries as the ledger state holds them), proven against
    ``checkpoint`` (default: the node's own, at the current size)."""
    note = ledger.checkpoint() if checkpoint is None else checkpoint
    size = parse_checkpoint(parse_note(note).body).size
    return {
        "format": FORMAT,
        "version": VERSION,
        "patient": patient,
        "chain": ledger.chain,
        "node": ledger.verifier_key(),
        "tree_size": size,
        "checkpoint": note,
        "accesses": [{**proven_tx(ledger, str(e["tx"]), size), "entry": dict(e)} for e in entries],
    }


def _leaf_of(ledger: Ledger, tx_id: str) -> int:
    found = ledger.store.find_tx(tx_id)
    return -1 if found is None else found[1].leaf_index  # missing: proven_tx says so


def _best_checkpoint(records: HealthRecords, needed: int) -> str:
    """The newest checkpoint the most nodes cosigned of a tree of at least ``needed`` leaves;
    alone (or before any peer cosigned one so large), the node's own at the current size."""
    own = records.ledger.checkpoint()
    witness = records.node.witness
    if witness is None:
        return own
    most = MAX_SIGNATURES
    try:
        witness.cosigned(most + 1)
    except Conflict as exc:  # always (no note carries more): it says how many the best carries
        most = int(getattr(exc, "extra", {}).get("signatures", most))
    for minimum in range(most, 1, -1):
        try:
            note = witness.cosigned(minimum)
        except Conflict:
            continue
        if parse_checkpoint(parse_note(note).body).size >= needed:
            return note
    return own


# -- verifying (anywhere, offline) -----------------------------------------------------------


def verify_access_proof(
    doc: Mapping[str, Any], trusted_keys: Iterable[str], min_signatures: int = 1
) -> AccessProofReport:
    """Check an access proof file against the node keys you trust; VerificationError
    (ACCESS_PROOF_UNTRUSTED or ACCESS_PROOF_MISMATCH) at the first thing that does not hold."""
    if type(min_signatures) is not int or min_signatures < 1:
        raise ValidationError("min_signatures must be a positive integer", code="BAD_ARGS")
    if not isinstance(doc, Mapping) or doc.get("format") != FORMAT:
        raise _mismatch("this is not an access proof file")
    if doc.get("version") != VERSION:
        raise _mismatch(f"access proof version {doc.get('version')!r} is not one this knows")
    trusted = _trusted(trusted_keys)
    note = doc.get("checkpoint")
    patient = doc.get("patient")
    accesses = doc.get("accesses")
    if not isinstance(note, str) or not isinstance(patient, str) or not isinstance(accesses, list):
        raise _mismatch("the file lacks its checkpoint, patient or list of accesses")
    checkpoint, signers = _signed_checkpoint(note, trusted, min_signatures)
    if doc.get("tree_size") != checkpoint.size or doc.get("chain") != checkpoint.origin:
        raise _mismatch("the file names another tree size or chain than its checkpoint")
    report = AccessProofReport(patient, checkpoint.origin, checkpoint.size, signers)
    seen: set[str] = set()
    for number, item in enumerate(accesses, 1):
        if not isinstance(item, Mapping):
            raise _mismatch(f"access {number} is not an object")
        try:
            proven = verify_proven_tx(item, note, trusted, {ACCESS}, min_signatures=min_signatures)
        except VerificationError as exc:
            raise _mismatch(f"access {number}: the transaction {exc.message}") from None
        if proven.tx_id in seen:
            raise _mismatch(f"access {number} is listed twice")
        seen.add(proven.tx_id)
        args = proven.body.get("args") or {}
        if proven.receipt.get("chain") != checkpoint.origin:
            raise _mismatch(f"access {number} is of another chain than the checkpoint")
        if args.get("patient") != patient:
            raise _mismatch(f"access {number} is to another patient's data than {patient}'s")
        entry = item.get("entry")
        if not isinstance(entry, Mapping):
            raise _mismatch(f"access {number} has no readable entry")
        why = _entry_differs(entry, args, proven.tx_id, proven.receipt)
        if why:
            raise _mismatch(f"access {number}: the readable entry {why}")
        report.accesses.append(_shown(entry, proven.body))
    return report


def _trusted(keys: Iterable[str]) -> list[str]:
    trusted = [str(k).strip() for k in keys if str(k).strip()]
    if not trusted:
        raise _untrusted(
            "name the node you trust (--node-key, from GET /v1/checkpoint/keys): anyone can "
            "make a key and sign a checkpoint"
        )
    for key in trusted:
        try:
            parse_vkey(key)
        except CareLedgerError as exc:
            raise _untrusted(f"{key!r} is not a node verifier key: {exc.message}") from None
    return trusted


def _signed_checkpoint(
    note: str, trusted: list[str], min_signatures: int
) -> tuple[Checkpoint, tuple[str, ...]]:
    from careledger.sdk import verify_checkpoint

    try:
        return verify_checkpoint(note, trusted, min_signatures=min_signatures)
    except VerificationError as exc:
        if exc.code == "NOTE_UNVERIFIED":  # well signed, but not by enough of the named keys
            raise _untrusted(
                f"the checkpoint is not signed by {min_signatures} of the nodes you named "
                f"({exc.message})"
            ) from None
        raise _mismatch(f"the checkpoint's signature does not verify: {exc.message}") from None
    except CareLedgerError as exc:
        raise _mismatch(f"the checkpoint is malformed: {exc.message}") from None


def _entry_differs(
    entry: Mapping[str, Any],
    args: Mapping[str, Any],
    tx_id: str,
    receipt: Mapping[str, Any],
) -> str:
    """What of the readable entry the transaction does not say ("" when all of it holds)."""
    unknown = sorted(set(entry) - ENTRY_FIELDS)
    if unknown:
        return f"holds a field the ledger does not write: {unknown[0]}"
    if entry.get("tx") != tx_id or entry.get("height") != receipt.get("height"):
        return "names another transaction or block"
    if entry.get("patient") != args.get("patient"):
        return "names another patient"
    for name in FROM_ARGS:
        if entry.get(name) != args.get(name):
            return f"differs from the transaction in {name}"
    for name in LISTS:
        if entry.get(name, []) != args.get(name, []):
            return f"differs from the transaction in {name}"
    basis, said = entry.get("basis"), args.get("basis")
    if not isinstance(basis, Mapping) or not isinstance(said, Mapping):
        return "has no basis"
    if (basis.get("kind"), basis.get("id")) != (said.get("kind"), said.get("id")):
        return "differs from the transaction in basis"
    if set(basis) - {"kind", "id"}:
        return "holds a field the ledger does not write in basis"
    if entry.get("break_glass") != (said.get("kind") == "break_glass"):
        return "says break_glass where the basis does not (or not where it does)"
    return ""


def _shown(entry: Mapping[str, Any], body: Mapping[str, Any]) -> dict[str, Any]:
    """One verified access as reports show it: the signed time first."""
    basis = entry.get("basis") or {}
    return {
        "tx": entry["tx"],
        "created": body.get("created"),  # signed by the node in the envelope
        "time": entry.get("time"),  # the block's time, as the state holds it (not proven)
        "height": entry["height"],
        "accessor": entry.get("accessor"),
        "accessor_org": entry.get("accessor_org"),
        "app": entry.get("app"),
        "action": entry.get("action"),
        "interaction": entry.get("interaction"),
        "records": list(entry.get("records", [])),
        "windows": list(entry.get("windows", [])),
        "purpose": entry.get("purpose"),
        "basis": {"kind": basis.get("kind"), "id": basis.get("id")},
        "break_glass": bool(entry.get("break_glass")),
    }
