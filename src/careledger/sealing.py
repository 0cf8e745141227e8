"""Sealing a small message on the ledger for a few named members only.

Some answers must be recorded on the ledger (so that they are final, ordered and provable) yet
be readable only by the parties to them: a site's recruitment count is for the sponsor who asked
and for the site, not for every node replicating the chain. The message is encrypted once with a
random key (XSalsa20-Poly1305, libsodium's secretbox) and that key is sealed to each recipient's
Ed25519 member key converted to X25519 (libsodium's sealed box, as ``age`` does for ssh-ed25519
keys). The ledger sees only ciphertext and the recipients' member ids. Messages are padded with
spaces (JSON allows them) to a multiple of ``PAD`` bytes, so the length of a box does not tell a
withheld answer from a released one, or a count of 9 from one of 120. The shape a contract
checks is in ``careledger.core.sealed``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import nacl.exceptions
from nacl.public import SealedBox
from nacl.secret import SecretBox
from nacl.signing import SigningKey, VerifyKey

from careledger.core.keys import b64url_decode, b64url_encode
from careledger.core.sealed import MAX_RECIPIENTS, PAD
from careledger.errors import ValidationError


def seal(message: bytes, recipients: Mapping[str, bytes]) -> dict[str, Any]:
    """``{"box", "keys": {member: sealed key}}`` for ``recipients`` (member -> Ed25519 key)."""
    if not 0 < len(recipients) <= MAX_RECIPIENTS:
        raise ValueError(f"1..{MAX_RECIPIENTS} recipients")
    padded = message + b" " * (-len(message) % PAD)
    key = os.urandom(SecretBox.KEY_SIZE)
    box = bytes(SecretBox(key).encrypt(padded))
    keys = {
        member: b64url_encode(SealedBox(VerifyKey(public).to_curve25519_public_key()).encrypt(key))
        for member, public in sorted(recipients.items())
    }
    return {"box": b64url_encode(box), "keys": keys}


def open_sealed(sealed: Mapping[str, Any], member: str, seed: bytes) -> bytes:
    """The message, for ``member`` holding the Ed25519 ``seed``; ValidationError otherwise."""
    try:
        sealed_key = b64url_decode(sealed["keys"][member])
        private = SigningKey(seed).to_curve25519_private_key()
        key = SealedBox(private).decrypt(sealed_key)
        return bytes(SecretBox(key).decrypt(b64url_decode(sealed["box"])))
    except (KeyError, TypeError, ValueError, nacl.exceptions.CryptoError):
        raise ValidationError("not sealed for this member", code="NOT_A_RECIPIENT") from None
