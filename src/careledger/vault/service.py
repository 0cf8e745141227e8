"""Vault: seal FHIR resources into the store and open them for a recipient.

``seal`` canonicalises the resource (RFC 8785), draws a fresh data key, nonce and salt for the
version, encrypts, wraps the data key for the patient and the custodian, and stores it.
``open`` unwraps with the reader's key, decrypts, and recomputes the salted content hash from the
decrypted bytes: a record whose hash no longer matches what was stored is refused. Callers that
hold the ledger anchor pass it as ``expected_content_hash`` (or compare it themselves): the
anchor, not the vault, is the root of authenticity, because a sealed box proves nothing about
who sealed it.

Randomness comes from ``rng`` (``os.urandom`` by default), time from ``clock``; libsodium draws
the sealed boxes' ephemeral keys itself.
"""

from __future__ import annotations

import hmac
import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import orjson

from careledger.core.canonical import MAX_SAFE_INTEGER, MIN_SAFE_INTEGER, canonical_bytes
from careledger.core.keys import KeyPair, b64url_encode
from careledger.errors import ValidationError, VerificationError
from careledger.vault.crypto import (
    DATA_KEY_SIZE,
    NONCE_SIZE,
    SALT_SIZE,
    content_hash,
    open_resource,
    record_aad,
    seal_resource,
    unwrap_key,
    wrap_key,
)
from careledger.vault.opened import OpenedVersions, fingerprint
from careledger.vault.ports import SealedRecordStore
from careledger.vault.store import SealedRecord, _utc_now

__all__ = ["Vault"]


def _tampered(message: str) -> VerificationError:
    return VerificationError(message, code="VAULT_TAMPERED")


class Vault:
    def __init__(
        self,
        store: SealedRecordStore,
        rng: Callable[[int], bytes] = os.urandom,
        *,
        clock: Callable[[], str] = _utc_now,
    ) -> None:
        self.store = store
        self._rng = rng
        self._clock = clock
        self.opened = OpenedVersions()  # what rows of a given fingerprint opened to (opened.py)

    def _random(self, size: int) -> bytes:
        value = self._rng(size)
        if not isinstance(value, bytes) or len(value) != size:
            raise ValidationError(f"rng returned the wrong number of bytes (wanted {size})")
        return value

    def seal(
        self,
        resource: Mapping[str, object],
        *,
        record_id: str,
        resource_type: str,
        version: int,
        patient: str,
        patient_key: bytes,
        custodian: str,
        custodian_key: bytes,
    ) -> SealedRecord:
        """Encrypt and store one version of a resource (see :meth:`encrypt`). Many versions
        at once: ``encrypt`` each, then ``store.put_many`` (one transaction, one fsync)."""
        record = self.encrypt(
            resource,
            record_id=record_id,
            resource_type=resource_type,
            version=version,
            patient=patient,
            patient_key=patient_key,
            custodian=custodian,
            custodian_key=custodian_key,
        )
        self.store.put(record)
        return record

    def encrypt(
        self,
        resource: Mapping[str, object],
        *,
        record_id: str,
        resource_type: str,
        version: int,
        patient: str,
        patient_key: bytes | None,
        custodian: str,
        custodian_key: bytes,
    ) -> SealedRecord:
        """Encrypt one version of a resource; the result carries its ``content_hash``.

        The resource must be a JSON object; if it names a ``resourceType`` it must be
        ``resource_type``. ``patient_key`` and ``custodian_key`` are the recipients' Ed25519
        ledger public keys. An organisation's own record (about no patient) has ``patient``
        "" and no ``patient_key``: it is sealed for the custodian alone.
        """
        if not isinstance(resource, Mapping):
            raise ValidationError("a vault record is one JSON object (a FHIR resource)")
        declared = resource.get("resourceType", resource_type)
        if declared != resource_type:
            raise ValidationError(
                "resource.resourceType differs from resource_type", code="RESOURCE_TYPE_MISMATCH"
            )
        if not isinstance(patient, str) or bool(patient) != (patient_key is not None):
            raise ValidationError(
                "a patient's record names the patient and their key; an organisation's neither"
            )
        if not isinstance(custodian, str) or not custodian:
            raise ValidationError("custodian must be a non-empty string")
        record_aad(record_id, resource_type, version)  # validates the binding fields
        canonical = canonical_bytes(resource if type(resource) is dict else dict(resource))

        data_key = self._random(DATA_KEY_SIZE)
        nonce = self._random(NONCE_SIZE)
        salt = self._random(SALT_SIZE)
        wrapped = {}
        if patient_key is not None:
            wrapped[b64url_encode(patient_key)] = wrap_key(data_key, patient_key)
        wrapped[b64url_encode(custodian_key)] = wrap_key(data_key, custodian_key)
        record = SealedRecord(
            record_id=record_id,
            version=version,
            resource_type=resource_type,
            patient=patient,
            custodian=custodian,
            content_hash=content_hash(canonical, salt),
            created=self._clock(),
            nonce=nonce,
            ciphertext=seal_resource(
                canonical,
                record_id=record_id,
                resource_type=resource_type,
                version=version,
                data_key=data_key,
                nonce=nonce,
            ),
            salt=salt,
            wrapped_keys=wrapped,
        )
        return record

    def open(
        self,
        record_id: str,
        version: int | None,
        reader: KeyPair,
        *,
        expected_content_hash: str | None = None,
        keep: bool = True,
    ) -> tuple[dict[str, object], SealedRecord]:
        """Decrypt a record version (the latest when ``version`` is None) for ``reader``.

        ``keep=False``: what it opened to is not kept in memory (a scan over every record, such
        as a trial's feasibility count, must not leave the plaintext of patients nobody read
        there, nor push out what readers read).

        Raises ``NotFound(UNKNOWN_RECORD | RECORD_SHREDDED)``, ``VerificationError
        (NOT_A_RECIPIENT)`` when the data key is not wrapped for the reader, and
        ``VerificationError(VAULT_TAMPERED)`` when anything stored was altered: ciphertext,
        nonce, salt, content hash, record binding, or the reader's wrapped key (also when
        ``expected_content_hash``, the ledger anchor, differs from the record's).
        """
        since = self.opened.generation()  # before the row is read (see opened.py)
        record = self.store.get(record_id, version)
        wrapped = record.wrapped_keys.get(reader.public_b64)
        if wrapped is None:
            raise VerificationError(
                "the data key is not wrapped for this key", code="NOT_A_RECIPIENT"
            )
        key = (record.record_id, record.version, reader.public_b64)
        row = fingerprint(record.ciphertext, record.nonce, record.salt, record.content_hash,
                          record.resource_type, wrapped)  # fmt: skip
        kept = self.opened.get(key, row)
        if kept is not None:  # this very row opened and checked before: its hash is its content's
            if expected_content_hash is not None and not hmac.compare_digest(
                record.content_hash.encode(), expected_content_hash.encode()
            ):
                raise _tampered("the record's content hash differs from the ledger anchor")
            return kept, record
        try:
            data_key = unwrap_key(wrapped, reader)
        except VerificationError:
            # Listed for this reader but not openable by it: the stored wrap was altered.
            raise _tampered("the wrapped data key for this reader was altered") from None
        plaintext = open_resource(
            record.ciphertext,
            record_id=record.record_id,
            resource_type=record.resource_type,
            version=record.version,
            data_key=data_key,
            nonce=record.nonce,
        )
        if len(record.salt) != SALT_SIZE:
            raise _tampered("the record's salt was altered")
        recomputed = content_hash(plaintext, record.salt)
        if not hmac.compare_digest(recomputed, record.content_hash):
            raise _tampered("the record's content hash does not match its content")
        if expected_content_hash is not None and not hmac.compare_digest(
            recomputed.encode(), expected_content_hash.encode()
        ):
            raise _tampered("the record's content hash differs from the ledger anchor")
        try:
            resource = orjson.loads(plaintext)
        except orjson.JSONDecodeError:
            raise _tampered("the decrypted record is not JSON") from None
        if not isinstance(resource, dict):
            raise _tampered("the decrypted record is not a JSON object")
        if _LONG_DIGITS.search(plaintext):
            resource = _as_doubles(resource)
        if keep:
            self.opened.put(key, row, resource, since=since)
        return resource, record


# An integer beyond 2**53 - 1 has at least 16 digits. Sealed bytes are RFC 8785, which refuses such
# integers, so one in the plaintext is a float that JCS wrote without a fraction (JCS prints
# 6.9e16 as 69000000000000000). Reading it back as that float keeps ``open`` the inverse of
# ``seal`` and the opened resource re-canonicalisable. Strings with long digit runs also match;
# that only costs the walk.
_LONG_DIGITS = re.compile(rb"[0-9]{16}")


def _as_doubles(value: Any) -> Any:
    if type(value) is int and not MIN_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER:
        return float(value)
    if type(value) is dict:
        return {k: _as_doubles(v) for k, v in value.items()}
    if type(value) is list:
        return [_as_doubles(v) for v in value]
    return value
