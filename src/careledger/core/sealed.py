"""The shape of a message sealed on the ledger for a few named members. Pure.

A contract checks only this shape; sealing and opening (``careledger.sealing``) need randomness
and keys, which the pure core never holds.
"""

from __future__ import annotations

MAX_RECIPIENTS = 6
MAX_BOX_CHARS = 2048
PAD = 128
SEALED_KEY_CHARS = 107  # 80 bytes: an ephemeral X25519 key, the 32-byte key and a 16-byte tag


def well_formed(sealed: object) -> bool:
    """``{"box": base64url, "keys": {member: base64url sealed key}}``, within bounds."""
    if not isinstance(sealed, dict) or set(sealed) != {"box", "keys"}:
        return False
    box, keys = sealed["box"], sealed["keys"]
    if not isinstance(box, str) or not 0 < len(box) <= MAX_BOX_CHARS or not _b64url(box):
        return False
    if not isinstance(keys, dict) or not 0 < len(keys) <= MAX_RECIPIENTS:
        return False
    return all(
        isinstance(v, str) and len(v) == SEALED_KEY_CHARS and _b64url(v) for v in keys.values()
    )


def _b64url(text: str) -> bool:
    return all(c.isascii() and (c.isalnum() or c in "-_") for c in text)
