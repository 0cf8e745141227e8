"""Keyed blind-index tokens: search terms as the vault stores them.

A term such as ``Observation.code=http://loinc.org|8867-4`` is PHI. The vault stores only
HMAC-SHA256 of it under a key derived (HKDF) from the custodian node's key, truncated to 128
bits: equal terms give equal tokens, so the node can find candidates, and nobody holding the
vault file without the node's key can test a guess. What the tokens still tell (which records
share a term, and how many) is weighed in ADR 0014.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from careledger.core.keys import KeyPair

TOKEN_BYTES = 16


class BlindIndex:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("a blind-index key is 32 bytes")
        self._key = key

    @classmethod
    def for_node(cls, node_key: KeyPair) -> BlindIndex:
        derived = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"careledger blind index v1",
            info=b"vault search terms",
        ).derive(node_key.seed)
        return cls(derived)

    def token(self, term: str) -> bytes:
        return hmac.new(self._key, term.encode(), hashlib.sha256).digest()[:TOKEN_BYTES]

    def tokens(self, terms: Iterable[str]) -> list[bytes]:
        return sorted({self.token(t) for t in terms})

    def __repr__(self) -> str:
        return "BlindIndex(<key hidden>)"
