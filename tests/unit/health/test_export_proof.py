"""The offline export check binds each exported resource to the version the ledger anchored."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest

from careledger.core.canonical import canonical_bytes
from careledger.errors import VerificationError
from careledger.health.export_proof import _check_records
from careledger.vault.crypto import content_hash

SALT = b"s" * 32
RESOURCE = {"resourceType": "Observation", "id": "o1", "status": "final"}


def files(tmp_path: Path, hashed: str) -> dict[str, Path]:
    salt = base64.urlsafe_b64encode(SALT).decode().rstrip("=")
    (tmp_path / "Observation.ndjson").write_bytes(orjson.dumps(RESOURCE) + b"\n")
    entry = {"type": "Observation", "id": "o1", "version": 1, "patient": "p", "anchor_tx": "t",
             "leaf_index": 3, "hash": hashed, "salt": salt}  # fmt: skip
    (tmp_path / "records.ndjson").write_bytes(orjson.dumps(entry) + b"\n")
    return {p.name: p for p in tmp_path.iterdir()}


def test_a_resource_must_be_the_version_the_ledger_anchored(tmp_path: Path) -> None:
    right = content_hash(canonical_bytes(RESOURCE), SALT)
    assert _check_records(files(tmp_path, right), {("o1", 1): (right, "t")}) == 1
    with pytest.raises(VerificationError, match="anchor does not hold"):
        _check_records(files(tmp_path, right), {("o1", 1): ("0" * 64, "t")})
    with pytest.raises(VerificationError, match="anchor does not hold"):
        _check_records(files(tmp_path, right), {})  # not anchored at all
    wrong = "f" * 64  # listed and anchored, but not what the resource hashes to
    with pytest.raises(VerificationError, match="not the version"):
        _check_records(files(tmp_path, wrong), {("o1", 1): (wrong, "t")})


def test_a_chain_replays_to_what_it_holds_and_the_request_says_what_was_asked() -> None:
    """The one reading of a holdings chain (the records contract's), and the terms of the
    signed kick-off the verifier holds the export to."""
    from careledger.contracts.records import replay_holding
    from careledger.fhir.types import RECORD_TYPES
    from careledger.health.export_proof import _request_terms

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    ops = [
        ["put", "o1", 1, a, 1_000, 5],
        ["put", "o2", 1, b, 2_000, 6],
        ["shred", "o2", 1, b, 3_500, 8],
        ["put", "o1", 2, c, 4_000, 12],
    ]
    _, held = replay_holding(ops)
    assert held == {"o1": (2, c, 4_000)}
    url = ("http://n/fhir/$export?_type=Observation,Condition&_since=2024-01-01T00:00:00Z"
           "&_typeFilter=Observation%3Fcategory%3Dlaboratory")  # fmt: skip
    assert _request_terms(url) == (
        frozenset({"Observation", "Condition"}), 1_704_067_200_000, frozenset({"Observation"})
    )
    assert _request_terms("http://n/fhir/$export")[0] == RECORD_TYPES
