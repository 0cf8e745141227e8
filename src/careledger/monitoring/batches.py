"""A batch of readings as the node keeps it: how it is named in the vault's format, the salts and
digests its window commits to, and opening it again with a key its data key is wrapped for.

The ingestor seals batches, the reading service, the monitoring audit and the node audit open or
check them; all of them take these from here, below each of them.
"""

from __future__ import annotations

import hashlib
import hmac

import orjson

from careledger.core.keys import KeyPair
from careledger.core.vitals import Reading, from_json
from careledger.errors import Gone
from careledger.monitoring.store import StoredBatch
from careledger.vault.crypto import content_hash, open_resource, unwrap_key

READINGS_TYPE = "DeviceReadings"


def reading_salt(batch_salt: bytes, index: int) -> bytes:
    """The salt of the ``index``-th reading of a batch (32 bytes, derived: one stored per batch)."""
    return hmac.new(batch_salt, b"reading" + index.to_bytes(4, "big"), hashlib.sha256).digest()


def reading_digest(reading: Reading, device: str, salt: bytes) -> bytes:
    return bytes.fromhex(content_hash(reading.leaf_bytes(device), salt))


def batch_record_id(device: str, seq: int) -> str:
    return f"{device}:{seq}"


def open_batch(batch: StoredBatch, key: KeyPair, recipient: str) -> list[Reading]:
    wrapped = batch.wrapped.get(recipient)
    if wrapped is None:
        raise Gone("the patient erased these readings", code="READINGS_ERASED")
    data_key = unwrap_key(wrapped, key)
    plaintext = open_resource(
        batch.ciphertext,
        record_id=batch_record_id(batch.device, batch.seq),
        resource_type=READINGS_TYPE,
        version=1,
        data_key=data_key,
        nonce=batch.nonce,
    )
    return from_json(orjson.loads(plaintext))
