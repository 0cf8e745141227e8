"""Block headers, receipts and the state digest.

A header commits to its predecessor (``prev``), to the Merkle log after the block (``log_size``,
``log_root``), to every state change ever made (``state_digest``, a hash chain over each
block's canonical write-set) and to the events the block emitted (``events_digest``). The
receipt is the log leaf: it records the outcome, so an inclusion proof shows what happened to a
transaction, not merely that it was seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from careledger.core.canonical import canonical_bytes, sha256, sha256_hex
from careledger.errors import ValidationError

HEADER_VERSION = 1
ZERO_HASH = "00" * 32
ACCEPTED = "accepted"
REJECTED = "rejected"

# A write is (namespace, key, value); value None deletes the key.
Write = tuple[str, str, Any]


@dataclass(frozen=True, slots=True)
class BlockHeader:
    chain: str
    height: int
    prev: str
    time: int
    log_size: int
    log_root: str
    state_digest: str
    events_digest: str
    tx_count: int
    version: int = HEADER_VERSION

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def canonical(self) -> bytes:
        return canonical_bytes(self.to_json())

    def hash(self) -> str:
        return sha256_hex(self.canonical())


def header_from_json(obj: Mapping[str, Any]) -> BlockHeader:
    fields = BlockHeader.__dataclass_fields__
    if not isinstance(obj, Mapping) or set(obj) != set(fields):
        raise ValidationError("block header has missing or unknown fields", code="BAD_HEADER")
    try:
        header = BlockHeader(**obj)
    except TypeError as exc:
        raise ValidationError(str(exc), code="BAD_HEADER") from None
    ints = (header.height, header.time, header.log_size, header.tx_count, header.version)
    if not all(type(v) is int and v >= 0 for v in ints):
        raise ValidationError(
            "block header numbers must be non-negative integers", code="BAD_HEADER"
        )
    return header


def writeset_bytes(writes: Iterable[Write]) -> bytes:
    """Canonical write-set: sorted by (namespace, key), deletes as null."""
    rows = sorted(([ns, key, value] for ns, key, value in writes), key=lambda r: (r[0], r[1]))
    return canonical_bytes(rows)


def canonical_writeset(rows: Sequence[tuple[str, str, bytes | None]]) -> bytes:
    """``writeset_bytes`` of rows already sorted whose values are canonical bytes (None: a
    delete): the values are embedded as they are instead of being encoded a second time."""
    items: list[list[object]] = []
    for ns, key, raw in rows:
        if type(ns) is not str or type(key) is not str:
            return _joined_writeset(rows)
        items.append([ns, key, orjson.Fragment(_NULL if raw is None else raw)])
    try:
        # Strings need no guard: orjson escapes them exactly as RFC 8785 does (canonical.py).
        return orjson.dumps(items)
    except orjson.JSONEncodeError:  # a lone surrogate: the reference encoder refuses it
        return _joined_writeset(rows)


def _joined_writeset(rows: Sequence[tuple[str, str, bytes | None]]) -> bytes:
    parts = [
        b"["
        + canonical_bytes(ns)
        + b","
        + canonical_bytes(key)
        + b","
        + (_NULL if raw is None else raw)
        + b"]"
        for ns, key, raw in rows
    ]
    return b"[" + b",".join(parts) + b"]"


_NULL = b"null"


def next_state_digest(prev_digest: str, writeset: bytes) -> str:
    return sha256_hex(bytes.fromhex(prev_digest) + sha256(writeset))


def events_digest(events: Iterable[tuple[int, str, bytes]]) -> str:
    """Commits the header to the block's events: (tx index, type, canonical data), in order."""
    parts = [b"[%d," % i + canonical_bytes(kind) + b"," + data + b"]" for i, kind, data in events]
    return sha256_hex(b"[" + b",".join(parts) + b"]")


def receipt(
    *,
    chain: str,
    tx_id: str,
    envelope_hash: str,
    height: int,
    index: int,
    leaf_index: int,
    code: str | None,
) -> dict[str, Any]:
    """The exact object the API returns and the log hashes (as RFC 8785 bytes)."""
    out: dict[str, Any] = {
        "chain": chain,
        "tx_id": tx_id,
        "envelope_hash": envelope_hash,
        "height": height,
        "index": index,
        "leaf_index": leaf_index,
        "result": ACCEPTED if code is None else REJECTED,
    }
    if code is not None:
        out["code"] = code
    return out
