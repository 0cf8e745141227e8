"""Transaction envelopes: ``{"body": {...}, "sig": "<b64url Ed25519>"}``.

The signed bytes and the transaction id are both taken over the RFC 8785 form of the body, so a
client in any language that canonicalises the same body gets the same id. Decoding is strict:
anything the node cannot prove it understood is refused before it is ordered.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from careledger.core.canonical import canonical_bytes, is_canonical_json, sha256_hex
from careledger.core.keys import (
    KeyPair,
    b64url_encode,
    decode_public_key,
    decode_signature,
    verify_signature,
)
from careledger.errors import Rejected, ValidationError

MAX_ENVELOPE_BYTES = 64 * 1024
MAX_NONCE = 2**53 - 1
BODY_FIELDS = frozenset({"chain", "contract", "method", "args", "signer", "nonce", "created"})
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
CHAIN_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")


@dataclass(frozen=True, slots=True)
class Transaction:
    """A decoded envelope. ``signed_bytes`` is the canonical body: what the signature covers."""

    body: Mapping[str, Any]
    sig: bytes
    sig_text: str  # the envelope's "sig": decoding proved it the one base64url form of ``sig``
    signed_bytes: bytes
    tx_id: str
    chain: str
    contract: str
    method: str
    args: Mapping[str, Any]
    signer: str
    signer_key: bytes
    nonce: int

    def envelope(self) -> dict[str, Any]:
        return {"body": dict(self.body), "sig": self.sig_text}

    def envelope_bytes(self) -> bytes:
        # Keys "body" < "sig", so this concatenation is the RFC 8785 form of the envelope.
        return b'{"body":' + self.signed_bytes + b',"sig":"' + self.sig_text.encode() + b'"}'

    def envelope_hash(self) -> str:
        return sha256_hex(self.envelope_bytes())


def _malformed(message: str) -> ValidationError:
    return ValidationError(message, code="MALFORMED_TX")


def decode_envelope(obj: object, *, canonical_body: bytes | None = None) -> Transaction:
    """Check shape and encodings (not the signature, not the ledger state).

    ``canonical_body``, when the caller already holds the body's RFC 8785 bytes (a stored
    envelope, see :func:`decode_stored_envelope`, or one it has just signed, see
    :func:`sign_envelope`), saves encoding it again; they must be that body's bytes.
    """
    if not isinstance(obj, dict):
        raise _malformed("envelope must be a JSON object")
    if set(obj) != {"body", "sig"}:
        raise _malformed("envelope must have exactly the fields 'body' and 'sig'")
    body, sig_text = obj["body"], obj["sig"]
    if not isinstance(body, dict):
        raise _malformed("body must be a JSON object")
    if not isinstance(sig_text, str):
        raise _malformed("sig must be a base64url string")
    if type(body) is not dict or body.keys() != BODY_FIELDS:
        missing = BODY_FIELDS - set(body)
        extra = set(body) - BODY_FIELDS
        if missing or extra:
            detail = f"missing {sorted(missing)}" if missing else f"unknown {sorted(extra)}"
            raise _malformed(f"body fields: {detail}")
    chain, contract, method = body["chain"], body["contract"], body["method"]
    if not isinstance(chain, str) or not CHAIN_PATTERN.match(chain):
        raise _malformed("body.chain must be a chain id")
    if not isinstance(contract, str) or not NAME_PATTERN.match(contract):
        raise _malformed("body.contract must be a lowercase name")
    if not isinstance(method, str) or not NAME_PATTERN.match(method):
        raise _malformed("body.method must be a lowercase name")
    if not isinstance(body["args"], dict):
        raise _malformed("body.args must be a JSON object")
    nonce = body["nonce"]
    if type(nonce) is not int or not 0 < nonce <= MAX_NONCE:
        raise _malformed("body.nonce must be an integer from 1 to 2^53-1")
    created = body["created"]
    if not isinstance(created, str) or len(created) > 64:
        raise _malformed("body.created must be a timestamp string")
    signer = body["signer"]
    if not isinstance(signer, str):
        raise _malformed("body.signer must be a base64url public key")
    try:
        signer_key = _public_key(signer) if type(signer) is str else decode_public_key(signer)
        sig = decode_signature(sig_text)
        signed = canonical_bytes(body) if canonical_body is None else canonical_body
    except ValidationError as exc:
        raise _malformed(exc.message) from None
    return Transaction(
        body=body,
        sig=sig,
        sig_text=sig_text if type(sig_text) is str else b64url_encode(sig),
        signed_bytes=signed,
        tx_id=sha256_hex(signed),
        chain=chain,
        contract=contract,
        method=method,
        args=body["args"],
        signer=signer,
        signer_key=signer_key,
        nonce=nonce,
    )


@lru_cache(maxsize=4096)
def _public_key(text: str) -> bytes:
    """``decode_public_key``, remembered: a handful of signers sign most transactions."""
    return decode_public_key(text)


_BODY_PREFIX = b'{"body":'
_SIG_INFIX = b',"sig":"'


def decode_stored_envelope(raw: bytes) -> Transaction:
    """Decode envelope bytes that must already be RFC 8785 (as the ledger stores them)."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise _malformed("stored envelope is not JSON") from None
    if not is_canonical_json(raw, obj) or not raw.startswith(_BODY_PREFIX):
        raise _malformed("stored envelope is not in canonical form")
    body = raw[len(_BODY_PREFIX) : raw.rindex(_SIG_INFIX)]
    return decode_envelope(obj, canonical_body=body)


def check_signature(tx: Transaction) -> None:
    if not verify_signature(tx.signer_key, tx.signed_bytes, tx.sig):
        raise Rejected("BAD_SIGNATURE", "the signature does not verify for body.signer")


def make_body(
    *,
    chain: str,
    contract: str,
    method: str,
    args: Mapping[str, Any],
    signer: str,
    nonce: int,
    created: str,
) -> dict[str, Any]:
    return {
        "chain": chain,
        "contract": contract,
        "method": method,
        "args": dict(args),
        "signer": signer,
        "nonce": nonce,
        "created": created,
    }


def sign_body(body: Mapping[str, Any], keypair: KeyPair) -> dict[str, Any]:
    """Sign a body as built by :func:`make_body`; the caller supplies nonce and time."""
    return sign_envelope(body, keypair)[0]


def sign_envelope(body: Mapping[str, Any], keypair: KeyPair) -> tuple[dict[str, Any], bytes]:
    """:func:`sign_body`, and the canonical body it signed: whoever decodes the envelope in the
    same call path passes it as ``canonical_body`` rather than encoding the body again."""
    signed = canonical_bytes(body)
    return {"body": dict(body), "sig": b64url_encode(keypair.sign(signed))}, signed
