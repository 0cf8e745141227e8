"""The vault's cryptography: pure functions, every random input passed in by the caller.

* A record version is encrypted with AES-256-GCM under its own 32-byte data key and 12-byte
  nonce; the associated data is the RFC 8785 form of ``{"id", "type", "version"}``, so a
  ciphertext moved to another record, type or version no longer opens.
* The data key is wrapped for each recipient with a libsodium sealed box (X25519 +
  XSalsa20-Poly1305) to the X25519 form of the recipient's Ed25519 ledger key
  (``crypto_sign_ed25519_pk_to_curve25519``), so members need no second key pair. The sealed
  box draws its ephemeral key from libsodium's own generator: the one exception to "randomness
  passed in" (libsodium offers no seeded sealed box).
* The ledger anchors ``content_hash = HMAC-SHA256(salt, canonical bytes)``; the salt stays in
  the vault, so the anchor reveals nothing about the resource.

Errors never carry plaintext, keys or salts (see ``careledger.errors``).
"""

from __future__ import annotations

import hashlib
import hmac
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from nacl.bindings import (
    crypto_box_seal,
    crypto_box_seal_open,
    crypto_sign_ed25519_pk_to_curve25519,
    crypto_sign_ed25519_sk_to_curve25519,
)
from nacl.exceptions import CryptoError

from careledger.core.canonical import canonical_bytes
from careledger.core.keys import PUBLIC_KEY_SIZE, KeyPair
from careledger.errors import ValidationError, VerificationError

__all__ = [
    "DATA_KEY_SIZE",
    "NONCE_SIZE",
    "SALT_SIZE",
    "WRAPPED_KEY_SIZE",
    "content_hash",
    "open_resource",
    "record_aad",
    "seal_resource",
    "unwrap_key",
    "wrap_key",
]

DATA_KEY_SIZE = 32  # AES-256
NONCE_SIZE = 12  # GCM's 96-bit nonce
SALT_SIZE = 32  # HMAC-SHA256 key of content_hash
#: A sealed box adds an ephemeral X25519 public key (32) and a Poly1305 tag (16).
WRAPPED_KEY_SIZE = DATA_KEY_SIZE + 48


def record_aad(record_id: str, resource_type: str, version: int) -> bytes:
    """Associated data of a record version: RFC 8785 bytes of ``{"id", "type", "version"}``."""
    if not isinstance(record_id, str) or not record_id:
        raise ValidationError("record_id must be a non-empty string")
    if not isinstance(resource_type, str) or not resource_type:
        raise ValidationError("resource_type must be a non-empty string")
    if type(version) is not int or version < 1:
        raise ValidationError("version must be an integer >= 1")
    return canonical_bytes({"id": record_id, "type": resource_type, "version": version})


def _check_key_and_nonce(data_key: bytes, nonce: bytes) -> None:
    if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_SIZE:
        raise ValidationError(f"data key must be {DATA_KEY_SIZE} bytes")
    if not isinstance(nonce, bytes) or len(nonce) != NONCE_SIZE:
        raise ValidationError(f"nonce must be {NONCE_SIZE} bytes")


def seal_resource(
    plaintext: bytes,
    *,
    record_id: str,
    resource_type: str,
    version: int,
    data_key: bytes,
    nonce: bytes,
) -> bytes:
    """AES-256-GCM ciphertext (with its 16-byte tag) of ``plaintext``, bound to the record.

    A (data key, nonce) pair must never be used twice; the service draws a fresh key per version.
    """
    aad = record_aad(record_id, resource_type, version)
    _check_key_and_nonce(data_key, nonce)
    if not isinstance(plaintext, bytes):
        raise ValidationError("plaintext must be bytes")
    return AESGCM(data_key).encrypt(nonce, plaintext, aad)


def open_resource(
    ciphertext: bytes,
    *,
    record_id: str,
    resource_type: str,
    version: int,
    data_key: bytes,
    nonce: bytes,
) -> bytes:
    """Inverse of ``seal_resource``; any failure is ``VerificationError(VAULT_TAMPERED)``.

    A wrong key, nonce, id, type, version or a single changed ciphertext byte all fail the tag
    check; malformed stored inputs (wrong sizes, wrong types) are reported the same way, because
    from the reader's side they are the same thing: the stored record is not what was sealed.
    """
    aad = record_aad(record_id, resource_type, version)
    try:
        _check_key_and_nonce(data_key, nonce)
        return AESGCM(data_key).decrypt(nonce, ciphertext, aad)
    except (InvalidTag, ValidationError, ValueError, TypeError):
        raise VerificationError(
            "record does not decrypt: ciphertext, nonce, key or record binding was altered",
            code="VAULT_TAMPERED",
        ) from None


def _x25519_public(ed25519_public_key: bytes) -> bytes:
    if not isinstance(ed25519_public_key, bytes) or len(ed25519_public_key) != PUBLIC_KEY_SIZE:
        raise ValidationError(f"recipient public key must be {PUBLIC_KEY_SIZE} bytes")
    try:
        return crypto_sign_ed25519_pk_to_curve25519(ed25519_public_key)
    except CryptoError:
        # libsodium refuses non-canonical, small-order and off-subgroup points.
        raise ValidationError(
            "recipient public key is not a usable Ed25519 point", code="BAD_KEY"
        ) from None


def wrap_key(data_key: bytes, recipient_public_key: bytes) -> bytes:
    """Seal ``data_key`` to the holder of the Ed25519 ``recipient_public_key`` (80 bytes out).

    Anyone can seal to a public key: a wrapped key proves nothing about who wrapped it. The
    record's authenticity comes from the ledger anchor (``content_hash``), not from this step.
    """
    if not isinstance(data_key, bytes) or len(data_key) != DATA_KEY_SIZE:
        raise ValidationError(f"data key must be {DATA_KEY_SIZE} bytes")
    x_public = _x25519_public(recipient_public_key)
    try:
        return crypto_box_seal(data_key, x_public)
    except CryptoError:
        raise ValidationError(
            "recipient public key is not a usable X25519 key", code="BAD_KEY"
        ) from None


@lru_cache(maxsize=64)
def _x25519_pair(public_key: bytes, seed: bytes) -> tuple[bytes, bytes]:
    """The X25519 pair of an Ed25519 one, converted once per key: a node opens every record
    it serves with its own key, and the conversion was a fifth of each opening."""
    x_public = crypto_sign_ed25519_pk_to_curve25519(public_key)
    x_secret = crypto_sign_ed25519_sk_to_curve25519(seed + public_key)
    return x_public, x_secret


def unwrap_key(wrapped: bytes, recipient: KeyPair) -> bytes:
    """Open a wrapped data key with the recipient's Ed25519 key pair.

    Failure (sealed to another key, or altered) is ``VerificationError(NOT_A_RECIPIENT)``.
    """
    try:
        x_public, x_secret = _x25519_pair(recipient.public_key, recipient.seed)
        data_key = crypto_box_seal_open(bytes(wrapped), x_public, x_secret)
    except (CryptoError, TypeError, ValueError):
        raise VerificationError(
            "the data key is not wrapped for this key", code="NOT_A_RECIPIENT"
        ) from None
    if len(data_key) != DATA_KEY_SIZE:
        raise VerificationError("the wrapped value is not a data key", code="NOT_A_RECIPIENT")
    return data_key


def content_hash(canonical: bytes, salt: bytes) -> str:
    """Lowercase hex HMAC-SHA256 of the canonical resource bytes, keyed by the record's salt."""
    if not isinstance(salt, bytes) or len(salt) != SALT_SIZE:
        raise ValidationError(f"salt must be {SALT_SIZE} bytes")
    if not isinstance(canonical, bytes):
        raise ValidationError("canonical resource must be bytes")
    return hmac.new(salt, canonical, hashlib.sha256).hexdigest()
