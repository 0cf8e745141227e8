"""Checking a bulk export offline: the manifest the node signed, the files it names, and every
exported record against the anchor the ledger holds for it.

What it proves, given the verifier key of the node you trust (``--node-key``; without one
nothing is accepted, as anyone can make a key and sign): the manifest and the checkpoint of the
ledger state it reflects are that node's; the files are exactly those it signed for (SHA-256 of
their bytes, line counts, no blank lines); each resource hashes, with its salt, to the value
``records.ndjson`` names for it; that hash is the one the ledger anchored for that version, in
a transaction accepted and included in the checkpoint (``anchors.ndjson``: each anchoring
envelope, its receipt and its inclusion proof); nothing is listed twice, or listed and not
exported, or exported and not listed. What it takes on the node's word: that nothing the app
could see was left out.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from careledger.core.canonical import canonical_bytes
from careledger.core.checkpoint import parse_checkpoint, parse_vkey, verify_note
from careledger.errors import CareLedgerError, VerificationError
from careledger.health.bulk_export import (
    ANCHORS_FILE,
    INDEX_FILE,
    PROOF_EXTENSION,
    manifest_body,
)
from careledger.vault.crypto import content_hash


@dataclass
class ExportReport:
    signer: str
    trusted: bool
    height: int
    tree_size: int
    files: list[tuple[str, int]] = field(default_factory=list)  # (name, lines)
    records: int = 0


def _fail(message: str) -> VerificationError:
    return VerificationError(message, code="EXPORT_MISMATCH")


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _lines(path: Path) -> Iterable[bytes]:
    """Every line, exactly as written; a blank one is not the node's (it writes none)."""
    with path.open("rb") as handle:
        for line in handle:
            if not line.strip():
                raise _fail(f"{path.name} holds a blank line the node did not write")
            yield line


def verify_export(
    manifest: Mapping[str, Any], files: Iterable[Path], trusted_keys: Iterable[str] = ()
) -> ExportReport:
    """VerificationError(EXPORT_MISMATCH) at the first thing that does not hold."""
    proof = (manifest.get("extension") or {}).get(PROOF_EXTENSION)
    if not isinstance(proof, dict):
        raise _fail("the manifest carries no export proof")
    try:
        vkey = parse_vkey(str(proof["node"]))
        trusted = [str(k) for k in trusted_keys]
        if not trusted:
            raise VerificationError(
                "name the node you trust (--node-key, from GET /v1/checkpoint/keys): anyone can "
                "make a key and sign a manifest",
                code="EXPORT_UNTRUSTED",
            )
        if str(proof["node"]) not in trusted:
            raise _fail("the manifest is signed by a node you did not name (--node-key)")
        body, _ = verify_note(str(proof["signature"]), [vkey])
        if body != manifest_body(manifest):
            raise _fail("the manifest was changed after the node signed it")
        checkpoint_body, _ = verify_note(str(proof["checkpoint"]), [vkey])
        checkpoint = parse_checkpoint(checkpoint_body)
    except CareLedgerError as exc:
        if isinstance(exc, VerificationError) and exc.code in (
            "EXPORT_MISMATCH",
            "EXPORT_UNTRUSTED",
        ):
            raise
        raise _fail(f"a signature does not verify: {exc.message}") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail(f"the export proof is malformed: {exc}") from None
    if checkpoint.size != int(proof["tree_size"]):
        raise _fail("the checkpoint is not of the ledger size the export names")
    given = {p.name: p for p in files}
    listed = {str(f["name"]): f for f in proof["files"]}
    unknown = sorted(set(given) - set(listed))
    if unknown:
        raise _fail(f"{unknown[0]} is not a file of this export")
    missing = sorted(set(listed) - set(given))
    if missing:
        raise _fail(f"{missing[0]} is missing (every file of the export is needed)")
    counts = {o["type"]: int(o["count"]) for o in manifest.get("output", [])}
    report = ExportReport(vkey.name, bool(trusted), int(proof["height"]), checkpoint.size)
    for name, entry in sorted(listed.items()):
        digest = hashlib.sha256()
        lines = 0
        for line in _lines(given[name]):
            digest.update(line)
            lines += 1
        if digest.hexdigest() != entry["sha256"] or lines != int(entry["count"]):
            raise _fail(f"{name} is not the file the node signed for (hash or count)")
        kind = name.removesuffix(".ndjson")
        if name not in (INDEX_FILE, ANCHORS_FILE) and counts.get(kind) != lines:
            raise _fail(f"the manifest's count for {kind} differs from its file")
        report.files.append((name, lines))
    anchored = _check_anchors(given, str(proof["checkpoint"]), str(proof["node"]))
    report.records = _check_records(given, anchored)
    return report


def _check_anchors(
    given: Mapping[str, Path], checkpoint: str, vkey: str
) -> dict[tuple[str, int], tuple[str, str]]:
    """(record, version) -> (salted hash, anchoring tx) for every anchor whose transaction is,
    by its inclusion proof, in the signed checkpoint, and was accepted."""
    from careledger.sdk import verify_tx_proof

    anchored: dict[tuple[str, int], tuple[str, str]] = {}
    for line in _lines(given[ANCHORS_FILE]):
        entry = orjson.loads(line)
        try:
            verified = verify_tx_proof({**entry, "checkpoint": checkpoint}, [vkey])
        except CareLedgerError as exc:
            raise _fail(f"an anchor's inclusion proof does not verify: {exc.message}") from None
        body = entry["envelope"]["body"]
        receipt = verified.receipt
        tx_id = hashlib.sha256(canonical_bytes(body)).hexdigest()
        if tx_id != entry["tx"] or receipt.get("tx_id") != tx_id:
            raise _fail("an anchor's envelope is not the transaction its receipt names")
        if receipt.get("result") != "accepted":
            raise _fail("an anchoring transaction was refused by the ledger")
        if (body.get("contract"), body.get("method")) not in (
            ("records", "anchor"),
            ("records", "anchor_batch"),
        ):
            raise _fail("an anchoring transaction is not a records anchor")
        args = body.get("args", {})
        for anchor in args.get("anchors", [args]):
            key = (str(anchor["record"]), int(anchor["version"]))
            anchored[key] = (str(anchor["hash"]), tx_id)
    return anchored


def _check_records(
    given: Mapping[str, Path], anchored: Mapping[tuple[str, int], tuple[str, str]]
) -> int:
    """Every resource is listed once in records.ndjson, hashes to the value listed, and that
    value is what the ledger anchored for that version in the transaction named."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for line in _lines(given[INDEX_FILE]):
        entry = orjson.loads(line)
        key = (str(entry["type"]), str(entry["id"]))
        if key in index:
            raise _fail(f"{key[0]}/{key[1]} is listed twice")
        on_ledger = anchored.get((str(entry["id"]), int(entry["version"])))
        if on_ledger != (str(entry["hash"]), str(entry["anchor_tx"])):
            raise _fail(f"{key[0]}/{key[1]}: the ledger's anchor does not hold this version")
        index[key] = entry
    seen = 0
    for name, path in given.items():
        if name in (INDEX_FILE, ANCHORS_FILE):
            continue
        for line in _lines(path):
            resource = orjson.loads(line)
            key = (str(resource.get("resourceType")), str(resource.get("id")))
            entry = index.pop(key, None)
            if entry is None or key[0] != name.removesuffix(".ndjson"):
                raise _fail(f"{key[0]}/{key[1]} is in a file but not in records.ndjson")
            if content_hash(canonical_bytes(resource), _b64(str(entry["salt"]))) != entry["hash"]:
                raise _fail(f"{key[0]}/{key[1]} is not the version its anchor names")
            seen += 1
    if index:
        kind, rid = next(iter(index))
        raise _fail(f"{kind}/{rid} is listed in records.ndjson but in no file")
    return seen
