"""The device side: signing batches of readings, and checking a reading's proof. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from careledger.core import merkle
from careledger.core.canonical import canonical_bytes
from careledger.core.keys import KeyPair, b64url_decode, b64url_encode
from careledger.core.vitals import ReadingError, from_json, from_observation
from careledger.errors import VerificationError
from careledger.vault.crypto import content_hash


def sign_batch(key: KeyPair, batch: Mapping[str, Any]) -> dict[str, Any]:
    """``{"batch", "sig"}``: the device's Ed25519 signature over the batch's RFC 8785 bytes."""
    return {"batch": dict(batch), "sig": b64url_encode(key.sign(canonical_bytes(batch)))}


def check_reading_proof(answer: Mapping[str, Any]) -> bytes:
    """Check a reading's path to its window root; the root (to be found on the ledger, in the
    anchoring transaction's arguments). Raises VerificationError."""
    (reading,) = from_json([answer["reading"]])
    window = answer["window"]
    digest = content_hash(reading.leaf_bytes(answer["device"]), b64url_decode(answer["salt"]))
    leaf = merkle.leaf_hash(bytes.fromhex(digest))
    root = bytes.fromhex(window["root"])
    merkle.verify_inclusion(
        leaf, window["index"], window["count"], [bytes.fromhex(p) for p in window["path"]], root
    )
    try:
        same = from_observation(answer["observation"]) == reading
    except ReadingError:
        same = False
    if not same:
        raise VerificationError("the observation is not the proven reading")
    return root
