"""Checking a bulk export offline: the manifest the node signed, the files it names, and every
exported record against the anchor the ledger holds for it.

What it proves, given the verifier key of the node you trust (``--node-key``; without one
nothing is accepted, as anyone can make a key and sign): the manifest and the checkpoint of the
ledger state it reflects are that node's; the files are exactly those it signed for (SHA-256 of
their bytes, line counts, no blank lines); each resource hashes, with its salt, to the value
``records.ndjson`` names for it; that hash is the one the ledger anchored for that version, in
a transaction accepted and included in the checkpoint (``anchors.ndjson``: each anchoring
envelope, its receipt and its inclusion proof); nothing is listed twice, or listed and not
exported, or exported and not listed.

And that nothing was left out, for each patient and type whose holdings the export attests
(ruleset r8): the attesting transaction is in the checkpoint, accepted and signed by the node
(the ledger accepted it only if it named the chain heads it held); the chain's operations hash
to that head; replayed up to the export's height (less records shredded since, and versions
older than ``_since``) they give exactly the versions exported or named as withheld by
``_typeFilter``. What it still takes on the node's word: which patients are in a system or
Patient export, and types it did not attest (a query-restricted scope, or records anchored
before r8).

A Group export (r10) proves its patients too: ``group.ndjson`` holds the Group, which must hash
with its salt to the version the ledger anchored; the organisation's Group holdings, attested
for this export, must hold that very version; the Group's members (read here, by the same
function the node uses) are the export's patients, and every requested type of every member
must be attested, a member with nothing held by an empty chain.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson

from careledger.contracts.records import replay_holding
from careledger.core.canonical import canonical_bytes
from careledger.core.checkpoint import parse_checkpoint, parse_vkey, verify_note
from careledger.core.keys import decode_public_key
from careledger.core.tx import check_signature, decode_envelope
from careledger.errors import CareLedgerError, VerificationError
from careledger.fhir.extract import group_patients
from careledger.fhir.types import RECORD_TYPES
from careledger.health.bulk_export import (
    ANCHORS_FILE,
    ATTESTATIONS_FILE,
    GROUP_FILE,
    HOLDINGS_FILE,
    INDEX_FILE,
    PROOF_EXTENSION,
    PROOF_FILES,
    WITHHELD_FILE,
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
    holdings: int = 0  # (patient, type) pairs proven complete
    withheld: int = 0  # records held and visible, left out by the request's _typeFilter
    unproven: int = 0  # exported records outside every attested holding
    excused: int = 0  # (patient, requested type) pairs not attested, with the node's reason
    attested_heights: tuple[int, int] | None = None  # blocks of the attestations
    group: str | None = None  # a Group export's Group, whose members the export proves
    members: int = 0  # how many patients that Group lists
    complete: bool = False  # attested holdings, every requested type covered, none unproven


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
    manifest: Mapping[str, Any],
    files: Iterable[Path],
    trusted_keys: Iterable[str] = (),
    *,
    allow_unproven: bool = False,
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
        if name not in PROOF_FILES and counts.get(kind) != lines:
            raise _fail(f"the manifest's count for {kind} differs from its file")
        report.files.append((name, lines))
    anchored = _check_anchors(given, str(proof["checkpoint"]), str(proof["node"]))
    report.records = _check_records(given, anchored)
    group = _group_of(str(manifest.get("request", "")))
    if HOLDINGS_FILE in given and ATTESTATIONS_FILE in given and WITHHELD_FILE in given:
        try:
            members = (
                _check_group(given, anchored, group, _instant_ms(manifest))
                if group is not None
                else None
            )
            _check_holdings(manifest, given, proof, report, members)
        except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as exc:
            raise _fail(f"a proof file is malformed: {type(exc).__name__}") from None
        report.complete = report.unproven == 0 and report.excused == 0
    elif not allow_unproven:
        raise VerificationError(
            "the export proves no holdings (a ledger before r8, or files left out): it may "
            "lack records; --allow-unproven to check the rest",
            code="EXPORT_UNPROVEN",
        )
    return report


@dataclass(frozen=True)
class ProvenTx:
    """A transaction an offline proof carries, checked: in the signed checkpoint, accepted."""

    tx_id: str
    body: dict[str, Any]
    receipt: dict[str, Any]
    signers: tuple[str, ...]  # the trusted keys that signed the checkpoint


def verify_proven_tx(
    entry: Mapping[str, Any],
    checkpoint: str,
    verifier_keys: Iterable[str],
    methods: Collection[tuple[str, str]],
    *,
    min_signatures: int = 1,
) -> ProvenTx:
    """Check one transaction as ``bulk_export.proven_tx`` writes it, against ``checkpoint``:
    the receipt is a leaf of the checkpoint's tree (RFC 9162 inclusion proof) and the checkpoint
    is signed by ``min_signatures`` of the trusted keys; the envelope is well formed, signed by
    its signer, and is the one the receipt names (tx id = SHA-256 of the RFC 8785 body, envelope
    hash, chain); the ledger accepted it; it is a call of one of ``methods``.

    VerificationError whose message completes "the transaction ..." (callers say which one).
    """
    from careledger.sdk import verify_tx_proof

    if not isinstance(entry, Mapping):
        raise VerificationError("is malformed: not a JSON object")
    try:
        verified = verify_tx_proof(
            {**entry, "checkpoint": checkpoint}, verifier_keys, min_signatures=min_signatures
        )
    except CareLedgerError as exc:
        raise VerificationError(f"does not verify against the checkpoint: {exc.message}") from None
    try:
        envelope = entry["envelope"]
        tx = decode_envelope(envelope)
        check_signature(tx)
    except CareLedgerError as exc:
        raise VerificationError(f"has an envelope that does not verify: {exc.message}") from None
    except (KeyError, TypeError) as exc:
        raise VerificationError(f"is malformed: {exc}") from None
    receipt = verified.receipt
    if (
        tx.tx_id != entry.get("tx")
        or receipt.get("tx_id") != tx.tx_id
        or receipt.get("envelope_hash") != tx.envelope_hash()
        or receipt.get("chain") != tx.chain
    ):
        raise VerificationError("is not the one its receipt names")
    if receipt.get("result") != "accepted":
        raise VerificationError("was refused by the ledger")
    if (tx.contract, tx.method) not in methods:
        names = " or ".join(sorted(".".join(m) for m in methods))
        raise VerificationError(f"is not a call of {names}")
    return ProvenTx(tx.tx_id, dict(tx.body), receipt, verified.signers)


def _proven(
    path: Path, checkpoint: str, vkey: str, methods: set[tuple[str, str]]
) -> Iterable[ProvenTx]:
    """Each line's transaction: in the signed checkpoint by its inclusion proof, accepted, and
    a call of one of ``methods``."""
    for line in _lines(path):
        try:
            yield verify_proven_tx(orjson.loads(line), checkpoint, [vkey], methods)
        except VerificationError as exc:
            raise _fail(f"a transaction in {path.name} {exc.message}") from None


def _proven_txs(
    path: Path, checkpoint: str, vkey: str, methods: set[tuple[str, str]]
) -> Iterable[tuple[str, dict[str, Any]]]:
    """(tx id, body) of each line's transaction, as ``_proven`` checks it."""
    for proven in _proven(path, checkpoint, vkey, methods):
        yield proven.tx_id, proven.body


def _request_terms(url: str) -> tuple[frozenset[str], int | None, frozenset[str]]:
    """What the signed kick-off asked: the record types (``_type``, else every type held), the
    ``_since`` instant in ms, and the types a ``_typeFilter`` narrows; read as the node reads
    them (api/routes/bulk.py), so the node cannot prove a narrower export than was asked."""
    pairs = parse_qsl(urlsplit(url).query, keep_blank_values=True)
    types = frozenset(t for k, v in pairs if k == "_type" for t in v.split(",") if t)
    since = None
    for key, value in pairs:
        if key == "_since":
            try:
                since = int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)
            except ValueError:
                raise _fail("the manifest's request has a _since that is not an instant") from None
            break
    filtered = frozenset(
        one.partition("?")[0] for k, v in pairs if k == "_typeFilter" for one in v.split(",")
    )
    return (types or RECORD_TYPES) & RECORD_TYPES, since, filtered


def _instant_ms(manifest: Mapping[str, Any]) -> int:
    """The export's block time (``transactionTime``), in ms: a Group's members are read at it."""
    moment = datetime.fromisoformat(str(manifest["transactionTime"]).replace("Z", "+00:00"))
    return int(moment.timestamp() * 1000)


_GROUP_EXPORT = re.compile(r"/Group/([A-Za-z0-9\-.]{1,64})/\$export$")


def _group_of(url: str) -> str | None:
    """The Group a signed kick-off asked for, or None (a system or Patient export)."""
    match = _GROUP_EXPORT.search(urlsplit(url).path)
    return match.group(1) if match else None


def _check_group(
    given: Mapping[str, Path],
    anchored: Mapping[tuple[str, int], tuple[str, str]],
    group: str,
    at_ms: int,
) -> tuple[str, int, str, list[str]]:
    """The Group the export is for, as ``group.ndjson`` carries it: (id, version, hash, its
    member patients). It must be that Group, and hash with its salt to what the ledger
    anchored for that version in the transaction named (``anchors.ndjson``)."""
    if GROUP_FILE not in given:
        raise _fail("a Group export without its Group (group.ndjson) proves no member set")
    lines = list(_lines(given[GROUP_FILE]))
    if len(lines) != 1:
        raise _fail("group.ndjson holds one Group, the one exported")
    try:
        entry = orjson.loads(lines[0])
        resource, version = entry["resource"], int(entry["version"])
        digest, salt = str(entry["hash"]), _b64(str(entry["salt"]))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        raise _fail("group.ndjson is malformed") from None
    if (
        not isinstance(resource, dict)
        or resource.get("resourceType") != "Group"
        or resource.get("id") != group
        or entry.get("id") != group
    ):
        raise _fail("group.ndjson holds another resource than the Group exported")
    if anchored.get((group, version)) != (digest, str(entry.get("anchor_tx"))):
        raise _fail("the Group in group.ndjson is not a version the ledger anchored")
    if content_hash(canonical_bytes(resource), salt) != digest:
        raise _fail("the Group in group.ndjson is not the version its anchor names")
    return group, version, digest, group_patients(resource, at_ms)


def _check_holdings(
    manifest: Mapping[str, Any],
    given: Mapping[str, Path],
    proof: Mapping[str, Any],
    report: ExportReport,
    group: tuple[str, int, str, list[str]] | None = None,
) -> None:
    """Nothing was left out: every requested type of every exported patient is attested (or
    excused, on the node's word, and reported); each attestation is in the checkpoint, signed
    by the node, made for this export, once per patient and type; each chain's operations hash
    to the head attested; and what the chain held then (since ``_since``) is exactly what was
    exported, or withheld by a ``_typeFilter`` the request holds for that type."""
    vkey = str(proof["node"])
    node_key = parse_vkey(vkey).public_key
    requested, since, filtered = _request_terms(str(manifest.get("request", "")))
    if proof.get("since_ms") != since:
        raise _fail("the proof's _since is not the one the request asked for")
    attested: dict[tuple[str, str], tuple[int, str, str]] = {}
    heights = []
    for proven in _proven(given[ATTESTATIONS_FILE], str(proof["checkpoint"]), vkey,
                          {("records", "attest_holdings")}):  # fmt: skip
        body = proven.body
        if decode_public_key(str(body.get("signer"))) != node_key:
            raise _fail("a holdings attestation is signed by another member than the node")
        args = body.get("args", {})
        if args.get("export") != proof.get("job"):
            raise _fail("a holdings attestation was made for another export")
        heights.append(int(proven.receipt["height"]))
        for item in args.get("holdings", []):
            # an organisation's own holding (r10) names no patient: keyed "" (no patient id is)
            key = (str(item.get("patient", "")), str(item["type"]))
            if key in attested:
                raise _fail(f"the holdings of {key[1]} for {key[0]} are attested twice")
            attested[key] = (int(item["n"]), str(item["head"]), proven.tx_id)
    expected: dict[tuple[str, str], dict[str, tuple[int, str]]] = {}
    chained: set[tuple[str, str, str]] = set()  # (patient, type, record) in any proven chain
    own: dict[str, dict[str, tuple[int, str]]] = {}  # the organisation's holdings, by type
    for line in _lines(given[HOLDINGS_FILE]):
        entry = orjson.loads(line)
        key = (str(entry.get("patient", "")), str(entry["type"]))
        head, held = replay_holding(entry["ops"])
        if (
            key in expected
            or key[1] in own
            or attested.get(key) != (len(entry["ops"]), head, str(entry["tx"]))
        ):
            raise _fail(f"the holdings of {key[1]} for {key[0]} are not what the ledger attested")
        if not key[0]:
            own[key[1]] = {r: (v, d) for r, (v, d, _) in held.items()}
            continue
        expected[key] = {
            record: (version, digest)
            for record, (version, digest, at) in held.items()
            if since is None or at >= since
        }
        chained.update((key[0], key[1], str(op[1])) for op in entry["ops"])
    missing = sorted(set(attested) - set(expected) - {("", k) for k in own})
    if missing:
        raise _fail(f"the holdings of {missing[0][1]} for {missing[0][0]} are attested but absent")
    report.holdings = len(expected)
    report.attested_heights = (min(heights), max(heights)) if heights else None
    if heights and min(heights) <= int(proof["height"]):
        # the node attests after it fixes the export's height: an attestation from before it
        # is another (older) export's, passed off as this one's
        raise _fail("a holdings attestation comes from before the export's height")
    withheld: dict[tuple[str, str, str], int] = {}
    for line in _lines(given[WITHHELD_FILE]):
        entry = orjson.loads(line)
        three = (str(entry["patient"]), str(entry["type"]), str(entry["id"]))
        if three[1] not in filtered:
            raise _fail(f"{three[1]}/{three[2]} is said withheld by a _typeFilter not asked for")
        withheld[three] = int(entry["version"])
    excused = proof.get("excused") or {}
    by_type = excused.get("types") or {}
    by_patient = excused.get("patients") or {}
    exported: dict[tuple[str, str, str], tuple[int, str]] = {}
    patients = set()
    for line in _lines(given[INDEX_FILE]):
        entry = orjson.loads(line)
        three = (str(entry["patient"]), str(entry["type"]), str(entry["id"]))
        patients.add(three[0])
        exported[three] = (int(entry["version"]), str(entry["hash"]))
        if three in chained and expected[three[:2]].get(three[2]) != exported[three]:
            raise _fail(f"{three[1]}/{three[2]} is not the version its holdings held")
        if three not in chained:
            report.unproven += 1
    if group is not None:
        group_id, version, digest, members = group
        if own.get("Group", {}).get(group_id) != (version, digest):
            raise _fail(
                "the Group exported is not the version the organisation's attested holdings held"
            )
        strangers = sorted(patients - set(members))
        if strangers:
            raise _fail("a patient in this export is not a member of the Group")
        patients |= set(members)
        report.group, report.members = group_id, len(members)
    for patient in sorted(patients):
        for kind in sorted(requested):
            if (patient, kind) in attested:
                continue
            if kind in by_type or kind in by_patient.get(patient, []):
                report.excused += 1
                continue
            raise _fail(f"{kind} of a patient in this export is neither attested nor excused")
    for (patient, kind), versions in expected.items():
        for record, (version, digest) in versions.items():
            three = (patient, kind, record)
            if exported.get(three) == (version, digest):
                continue
            if withheld.get(three) == version:
                report.withheld += 1
                continue
            raise _fail(
                f"{kind}/{record} (v{version}) was held for a patient in this export when its "
                "holdings were attested, and is missing from it"
            )
    for three in withheld:
        if three[:2] not in expected or three[2] not in expected[three[:2]]:
            raise _fail(f"{three[1]}/{three[2]} is named as withheld but was not held")


def _check_anchors(
    given: Mapping[str, Path], checkpoint: str, vkey: str
) -> dict[tuple[str, int], tuple[str, str]]:
    """(record, version) -> (salted hash, anchoring tx) for every anchor whose transaction is,
    by its inclusion proof, in the signed checkpoint, and was accepted."""
    anchored: dict[tuple[str, int], tuple[str, str]] = {}
    methods = {("records", "anchor"), ("records", "anchor_batch")}
    for tx_id, body in _proven_txs(given[ANCHORS_FILE], checkpoint, vkey, methods):
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
        if name in PROOF_FILES:
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
