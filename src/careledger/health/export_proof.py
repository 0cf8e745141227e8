"""Checking a bulk export offline: the manifest the node signed, the files it names, and every
exported record against the anchor the ledger holds for it.

What it proves: the files are exactly those the node signed for (SHA-256 and line counts), each
resource is the very version whose salted hash the named transaction anchored, nothing is
listed twice or missing between the files and ``records.ndjson``, and the checkpoint of the
ledger state the export reflects is signed by the same node. With the node's verifier key given
(``--node-key``), that node is the one trusted; without it, the check says who signed.
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
from careledger.health.bulk_export import INDEX_FILE, PROOF_EXTENSION, manifest_body
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
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
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
        if trusted and str(proof["node"]) not in trusted:
            raise _fail("the manifest is signed by a node you did not name (--node-key)")
        body, _ = verify_note(str(proof["signature"]), [vkey])
        if body != manifest_body(manifest):
            raise _fail("the manifest was changed after the node signed it")
        checkpoint_body, _ = verify_note(str(proof["checkpoint"]), [vkey])
        checkpoint = parse_checkpoint(checkpoint_body)
    except CareLedgerError as exc:
        if isinstance(exc, VerificationError) and exc.code == "EXPORT_MISMATCH":
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
        if name != INDEX_FILE and counts.get(kind) != lines:
            raise _fail(f"the manifest's count for {kind} differs from its file")
        report.files.append((name, lines))
    report.records = _check_records(given)
    return report


def _check_records(given: Mapping[str, Path]) -> int:
    """Every resource is listed once in records.ndjson and hashes to the anchored value."""
    index: dict[tuple[str, str], dict[str, Any]] = {}
    for line in _lines(given[INDEX_FILE]):
        entry = orjson.loads(line)
        key = (str(entry["type"]), str(entry["id"]))
        if key in index:
            raise _fail(f"{key[0]}/{key[1]} is listed twice")
        index[key] = entry
    seen = 0
    for name, path in given.items():
        if name == INDEX_FILE:
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
