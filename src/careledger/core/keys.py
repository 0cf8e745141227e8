"""Ed25519 keys, signatures and their text form, on libsodium (PyNaCl).

Every node must accept exactly the same signatures, or replicas diverge. The rule set is the one
of the libsodium bundled with PyNaCl (1.0.20-stable in PyNaCl 1.6.2),
``crypto_sign_ed25519_verify_detached``, reached via ``crypto_sign_open``, which calls it:

* ``S`` must be canonical (``S < L``), so signatures are not malleable;
* ``R`` must not be one of the small-order points, and is compared byte-for-byte with the
  canonical encoding of the recomputed point, so non-canonical ``R`` encodings fail;
* ``A`` (the public key) must be a canonical encoding (``y < p``) and not of small order;
* the equation is the cofactorless one, ``[S]B == R + [k]A``. A mixed-order key (prime-order
  point plus torsion) is accepted if that equation holds; a signature that only satisfies the
  cofactored equation is refused.

This is RFC 8032's strict verification plus the small-order blocklist. The tests pin it with the
1,024 SUPERCOP known answers, every Wycheproof case, and hand-built edge cases, so a libsodium
upgrade that moves the line fails loudly instead of forking the ledger.

Key *generation* needs randomness and lives in ``careledger.keyfile``; everything here is pure.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from dataclasses import dataclass

from nacl.bindings import crypto_sign, crypto_sign_open, crypto_sign_seed_keypair
from nacl.exceptions import BadSignatureError

from careledger.errors import ValidationError, VerificationError

__all__ = [
    "KEY_ID_LENGTH",
    "PUBLIC_KEY_SIZE",
    "SEED_SIZE",
    "SIGNATURE_SIZE",
    "KeyPair",
    "b64url_decode",
    "b64url_encode",
    "decode_public_key",
    "decode_signature",
    "key_id",
    "require_signature",
    "verify_signature",
]

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
SEED_SIZE = 32
#: ``key_id`` is the base64url of the first 16 bytes (128 bits) of SHA-256(public key).
KEY_ID_LENGTH = 22

_B64URL = re.compile(r"[A-Za-z0-9_-]*")
_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_TO_URL = bytes.maketrans(b"+/", b"-_")


def b64url_encode(data: bytes) -> str:
    """Base64url without padding (RFC 4648 §5): the one text form of keys and signatures."""
    return binascii.b2a_base64(data, newline=False).translate(_TO_URL).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict inverse of ``b64url_encode``: exactly one text per byte string, or ValidationError.

    Padding, whitespace, the ``+/`` alphabet, impossible lengths and non-zero trailing bits are
    refused, so a signed document cannot be re-encoded into a different but "equal" one. The
    decoder below is lenient on purpose (it is fast); the round trip is what enforces all that.
    """
    if not isinstance(text, str):
        raise ValidationError("not base64url: expected a string")
    if len(text) % 4 == 1:
        raise ValidationError("not base64url: impossible length")
    try:
        raw = text.encode("ascii").translate(_TO_STANDARD) + b"=" * (-len(text) % 4)
        data = binascii.a2b_base64(raw)
    except (binascii.Error, ValueError):
        raise ValidationError("not base64url: only A-Z a-z 0-9 - _ are allowed") from None
    if b64url_encode(data) != text:
        if not _B64URL.fullmatch(text):
            raise ValidationError("not base64url: only A-Z a-z 0-9 - _, without padding")
        raise ValidationError("not canonical base64url: unused trailing bits must be zero")
    return data


def _sized(text: str, size: int, what: str) -> bytes:
    data = b64url_decode(text)
    if len(data) != size:
        raise ValidationError(f"{what} must be {size} bytes, got {len(data)}")
    return data


def decode_public_key(text: str) -> bytes:
    """A 32-byte Ed25519 public key from base64url (its point is checked at verification)."""
    return _sized(text, PUBLIC_KEY_SIZE, "public key")


def decode_signature(text: str) -> bytes:
    """A 64-byte Ed25519 signature from base64url."""
    return _sized(text, SIGNATURE_SIZE, "signature")


def key_id(public_key: bytes) -> str:
    """Short stable name of a key: base64url(SHA-256(public key)[:16]), 22 characters.

    An index for lookups and logs, not an authenticator: verification always uses the full key.
    """
    if len(public_key) != PUBLIC_KEY_SIZE:
        raise ValidationError(f"public key must be {PUBLIC_KEY_SIZE} bytes")
    return b64url_encode(hashlib.sha256(public_key).digest()[:16])


@dataclass(frozen=True, slots=True)
class KeyPair:
    """An Ed25519 seed and its public key; the seed is never shown by ``repr``.

    The pair is checked on construction: signing with a public key that does not belong to the
    seed would produce invalid signatures, and two such signatures can reveal the private key.
    """

    seed: bytes
    public_key: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.seed, bytes) or len(self.seed) != SEED_SIZE:
            raise ValidationError(f"seed must be {SEED_SIZE} bytes")
        if not isinstance(self.public_key, bytes) or len(self.public_key) != PUBLIC_KEY_SIZE:
            raise ValidationError(f"public key must be {PUBLIC_KEY_SIZE} bytes")
        derived, _ = crypto_sign_seed_keypair(self.seed)
        if derived != self.public_key:
            raise ValidationError("public key does not match the seed")

    @classmethod
    def from_seed(cls, seed: bytes) -> KeyPair:
        """The pair for a 32-byte seed (RFC 8032 private key)."""
        if not isinstance(seed, bytes) or len(seed) != SEED_SIZE:
            raise ValidationError(f"seed must be {SEED_SIZE} bytes")
        public_key, _ = crypto_sign_seed_keypair(seed)
        return cls(seed=seed, public_key=public_key)

    def sign(self, message: bytes) -> bytes:
        """Deterministic 64-byte Ed25519 signature of ``message``."""
        # libsodium's secret key is seed || public key; the signed message follows the signature.
        return crypto_sign(message, self.seed + self.public_key)[:SIGNATURE_SIZE]

    @property
    def public_b64(self) -> str:
        """The public key as base64url, as it appears in documents."""
        return b64url_encode(self.public_key)

    @property
    def key_id(self) -> str:
        """``key_id(self.public_key)``."""
        return key_id(self.public_key)

    def __repr__(self) -> str:
        return f"KeyPair(public_key={self.public_b64!r})"


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True only if ``signature`` is valid under the rule set above; never raises for bad input.

    Wrong sizes count as invalid (and are checked here, because libsodium reads fixed sizes).
    """
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(bytes(signature) + message, bytes(public_key))
    except BadSignatureError:
        return False
    return True


def require_signature(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Like ``verify_signature`` but raises ``VerificationError``, for code that must stop."""
    if not verify_signature(public_key, message, signature):
        raise VerificationError("signature does not verify")
