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


def test_the_holdings_at_the_export_height_are_what_must_be_exported() -> None:
    """Replayed to the export's height: later versions ignored (the export is of its height),
    a record shredded since is not expected (its content is gone), older than _since left out."""
    from careledger.health.export_proof import _held_at

    a, b, c = "a" * 64, "b" * 64, "c" * 64
    ops = [
        ["put", "o1", 1, a, 1_000, 5],
        ["put", "o2", 1, b, 2_000, 6],
        ["put", "o3", 1, c, 3_000, 7],
        ["shred", "o3", 1, c, 3_500, 8],  # gone before the export
        ["put", "o1", 2, c, 4_000, 12],  # after the export's height
        ["shred", "o2", 1, b, 5_000, 13],  # after the height: its content is gone too
    ]
    assert _held_at(ops, 10, None) == {"o1": (1, a)}
    assert _held_at(ops, 12, None) == {"o1": (2, c)}
    assert _held_at(ops, 7, None) == {"o1": (1, a)}  # o3 was shredded at 8
    assert _held_at(ops, 12, 3_000) == {"o1": (2, c)}
    assert _held_at(ops, 12, 4_500) == {}
