"""A node's own PHI-bearing metadata, sealed at rest: visit reasons and room links, alert values
and rule state of monitored devices.

These are small values the node reads and writes itself (not records with their own data keys,
which the vault seals per record). They are sealed with AES-256-GCM under a key derived (HKDF)
from the node's key, so they are exactly as safe as the node's key file; each value is bound to
its row (associated data) so a sealed value cannot be moved to another row. Values written
before sealing (plain JSON or text, never starting with the mark byte) are still read.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from careledger.core.keys import KeyPair
from careledger.errors import VerificationError

MARK = b"\x01"  # sealed, version 1 (plain JSON starts with '{' or '[', text with a printable)


class AtRest:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("an at-rest key is 32 bytes")
        self._aead = AESGCM(key)

    @classmethod
    def for_node(cls, node_key: KeyPair, purpose: str) -> AtRest:
        """The node's at-rest key for one store (``purpose``: which store)."""
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"careledger at rest v1",
            info=purpose.encode(),
        ).derive(node_key.seed)
        return cls(derived)

    def seal(self, plaintext: bytes, row: str) -> bytes:
        nonce = os.urandom(12)
        return MARK + nonce + self._aead.encrypt(nonce, plaintext, row.encode())

    def open(self, blob: bytes, row: str) -> bytes:
        if not blob.startswith(MARK):
            return blob  # written before sealing
        try:
            return self._aead.decrypt(blob[1:13], blob[13:], row.encode())
        except InvalidTag:
            raise VerificationError(
                f"a sealed value of {row.split(':', 1)[0]} does not open: changed or moved",
                code="SEALED_VALUE_TAMPERED",
            ) from None
