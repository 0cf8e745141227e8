"""Vault cryptography: AES-256-GCM bound to the record, sealed-box key wrapping, salted hash."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from nacl.public import PrivateKey, SealedBox
from nacl.signing import SigningKey

from careledger.core.keys import KeyPair
from careledger.errors import ValidationError, VerificationError
from careledger.vault.crypto import (
    DATA_KEY_SIZE,
    NONCE_SIZE,
    SALT_SIZE,
    WRAPPED_KEY_SIZE,
    content_hash,
    open_resource,
    record_aad,
    seal_resource,
    unwrap_key,
    wrap_key,
)

PATIENT = KeyPair.from_seed(hashlib.sha256(b"patient").digest())
CUSTODIAN = KeyPair.from_seed(hashlib.sha256(b"custodian").digest())
STRANGER = KeyPair.from_seed(hashlib.sha256(b"stranger").digest())
KEY = bytes(range(32))
NONCE = bytes(range(100, 112))
PLAINTEXT = (
    b'{"birthDate":"1931-02-29","name":[{"text":"Zyxwvut Qqqplorn"}],"resourceType":"Patient"}'
)
BINDING: dict[str, Any] = {"record_id": "rec-1", "resource_type": "Patient", "version": 3}


def sealed() -> bytes:
    return seal_resource(PLAINTEXT, **BINDING, data_key=KEY, nonce=NONCE)


# -- associated data ------------------------------------------------------------------------


def test_aad_is_the_rfc8785_form_of_id_type_version() -> None:
    assert record_aad("rec-1", "Patient", 3) == b'{"id":"rec-1","type":"Patient","version":3}'
    assert (
        record_aad("é", "Observation", 1) == '{"id":"é","type":"Observation","version":1}'.encode()
    )


@pytest.mark.parametrize(
    ("record_id", "resource_type", "version"),
    [
        ("", "Patient", 1),
        ("r", "", 1),
        ("r", "Patient", 0),
        ("r", "Patient", -1),
        ("r", "Patient", True),
        ("r", "Patient", "1"),
        (1, "Patient", 1),
        ("r", None, 1),
    ],
)
def test_aad_refuses_bad_binding_fields(record_id: Any, resource_type: Any, version: Any) -> None:
    with pytest.raises(ValidationError):
        record_aad(record_id, resource_type, version)


# -- AES-256-GCM ----------------------------------------------------------------------------


def test_seal_open_round_trip() -> None:
    ciphertext = sealed()
    assert len(ciphertext) == len(PLAINTEXT) + 16
    assert b"Zyxwvut" not in ciphertext
    assert ciphertext == sealed()  # pure: same inputs, same bytes
    assert open_resource(ciphertext, **BINDING, data_key=KEY, nonce=NONCE) == PLAINTEXT


def test_empty_plaintext_round_trips() -> None:
    ciphertext = seal_resource(b"", **BINDING, data_key=KEY, nonce=NONCE)
    assert open_resource(ciphertext, **BINDING, data_key=KEY, nonce=NONCE) == b""


def _flip(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 0x01
    return bytes(out)


@pytest.mark.parametrize(
    "change",
    [
        {"record_id": "rec-2"},
        {"resource_type": "Observation"},
        {"version": 2},
        {"version": 4},
        {"nonce": _flip(NONCE, 0)},
        {"nonce": _flip(NONCE, 11)},
        {"data_key": _flip(KEY, 31)},
        {"data_key": KEY[:16]},  # wrong size from a damaged store is tampering, not bad input
        {"nonce": NONCE + b"\x00"},
    ],
    ids=repr,
)
def test_any_changed_binding_or_key_is_tampering(change: dict[str, Any]) -> None:
    args: dict[str, Any] = {**BINDING, "data_key": KEY, "nonce": NONCE, **change}
    with pytest.raises(VerificationError) as caught:
        open_resource(sealed(), **args)
    assert caught.value.code == "VAULT_TAMPERED"
    assert b"Zyxwvut" not in str(caught.value).encode()


def test_every_single_ciphertext_byte_is_covered() -> None:
    ciphertext = sealed()
    for index in range(len(ciphertext)):
        with pytest.raises(VerificationError) as caught:
            open_resource(_flip(ciphertext, index), **BINDING, data_key=KEY, nonce=NONCE)
        assert caught.value.code == "VAULT_TAMPERED"


@pytest.mark.parametrize("ciphertext", [b"", b"short", sealed()[:-1], sealed() + b"\x00"])
def test_truncated_or_extended_ciphertext_is_tampering(ciphertext: bytes) -> None:
    with pytest.raises(VerificationError) as caught:
        open_resource(ciphertext, **BINDING, data_key=KEY, nonce=NONCE)
    assert caught.value.code == "VAULT_TAMPERED"


@pytest.mark.parametrize(("key", "nonce"), [(KEY[:16], NONCE), (KEY, NONCE[:8]), (KEY, None)])
def test_seal_refuses_wrong_key_or_nonce_sizes(key: bytes, nonce: Any) -> None:
    with pytest.raises(ValidationError):
        seal_resource(PLAINTEXT, **BINDING, data_key=key, nonce=nonce)


# -- key wrapping ---------------------------------------------------------------------------


@pytest.mark.parametrize("recipient", [PATIENT, CUSTODIAN], ids=["patient", "custodian"])
def test_wrap_unwrap_round_trip(recipient: KeyPair) -> None:
    wrapped = wrap_key(KEY, recipient.public_key)
    assert len(wrapped) == WRAPPED_KEY_SIZE
    assert KEY not in wrapped
    assert unwrap_key(wrapped, recipient) == KEY


def test_wrapping_is_randomised() -> None:
    assert wrap_key(KEY, PATIENT.public_key) != wrap_key(KEY, PATIENT.public_key)


@pytest.mark.parametrize("reader", [CUSTODIAN, STRANGER], ids=["other-recipient", "stranger"])
def test_a_key_it_was_not_wrapped_for_cannot_unwrap(reader: KeyPair) -> None:
    wrapped = wrap_key(KEY, PATIENT.public_key)
    with pytest.raises(VerificationError) as caught:
        unwrap_key(wrapped, reader)
    assert caught.value.code == "NOT_A_RECIPIENT"


def test_altered_wrapped_key_does_not_unwrap() -> None:
    wrapped = wrap_key(KEY, PATIENT.public_key)
    for bad in [_flip(wrapped, 0), _flip(wrapped, 40), _flip(wrapped, 79), wrapped[:47], b""]:
        with pytest.raises(VerificationError) as caught:
            unwrap_key(bad, PATIENT)
        assert caught.value.code == "NOT_A_RECIPIENT"


def test_a_wrapped_value_that_is_not_a_data_key_is_refused() -> None:
    box = SealedBox(SigningKey(PATIENT.seed).verify_key.to_curve25519_public_key())
    with pytest.raises(VerificationError) as caught:
        unwrap_key(box.encrypt(b"sixteen byte key"), PATIENT)
    assert caught.value.code == "NOT_A_RECIPIENT"


def test_wrapping_interoperates_with_pynacl_sealed_boxes() -> None:
    """The X25519 keys are libsodium's standard conversion of the Ed25519 ledger keys."""
    signing = SigningKey(PATIENT.seed)
    assert bytes(signing.verify_key) == PATIENT.public_key
    x_private: PrivateKey = signing.to_curve25519_private_key()
    assert SealedBox(x_private).decrypt(wrap_key(KEY, PATIENT.public_key)) == KEY
    foreign = SealedBox(signing.verify_key.to_curve25519_public_key()).encrypt(KEY)
    assert unwrap_key(foreign, PATIENT) == KEY


@pytest.mark.parametrize(
    "public_key",
    [
        bytes(32),  # small order (the identity's y = 0 encoding)
        bytes([1]) + bytes(31),  # the identity point
        b"\xff" * 32,  # y >= p: not canonical
        b"\xec" + b"\xff" * 30 + b"\x7f",  # y = p - 1 with sign 0, a small-order point
    ],
)
def test_wrap_refuses_unusable_recipient_points(public_key: bytes) -> None:
    with pytest.raises(ValidationError) as caught:
        wrap_key(KEY, public_key)
    assert caught.value.code == "BAD_KEY"


@pytest.mark.parametrize(("data_key", "public_key"), [(KEY, b"\x01" * 31), (KEY[:31], None)])
def test_wrap_refuses_wrong_sizes(data_key: bytes, public_key: Any) -> None:
    with pytest.raises(ValidationError):
        wrap_key(data_key, public_key if public_key is not None else PATIENT.public_key)


# -- salted content hash --------------------------------------------------------------------


def _hmac_sha256_by_hand(key: bytes, message: bytes) -> str:
    """RFC 2104 spelled out, so the check does not lean on the code under test's library call."""
    block = key.ljust(64, b"\x00")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block) + message).digest()
    return hashlib.sha256(bytes(b ^ 0x5C for b in block) + inner).hexdigest()


def test_content_hash_is_hmac_sha256_of_the_canonical_bytes() -> None:
    salt = bytes(range(SALT_SIZE))
    digest = content_hash(PLAINTEXT, salt)
    assert digest == _hmac_sha256_by_hand(salt, PLAINTEXT)
    assert len(digest) == 64 and digest == digest.lower()
    assert digest != hashlib.sha256(PLAINTEXT).hexdigest()  # unsalted hash is guessable
    assert content_hash(PLAINTEXT, _flip(salt, 0)) != digest
    assert content_hash(PLAINTEXT + b" ", salt) != digest


def test_rfc4231_case_2_with_the_hand_rolled_hmac() -> None:
    """Pins the by-hand HMAC above to a published answer (RFC 4231, test case 2)."""
    assert _hmac_sha256_by_hand(b"Jefe", b"what do ya want for nothing?") == (
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    )


@pytest.mark.parametrize("salt", [b"", bytes(16), bytes(33)])
def test_content_hash_wants_a_32_byte_salt(salt: bytes) -> None:
    with pytest.raises(ValidationError):
        content_hash(PLAINTEXT, salt)


def test_sizes() -> None:
    assert (DATA_KEY_SIZE, NONCE_SIZE, SALT_SIZE, WRAPPED_KEY_SIZE) == (32, 12, 32, 80)
