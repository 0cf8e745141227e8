"""Signature checks spread over threads: libsodium runs without the GIL, so threads scale."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Executor

from careledger.core.keys import verify_signature
from careledger.core.tx import Transaction

_MIN_PARALLEL = 64


def _verify_chunk(txs: Sequence[Transaction]) -> list[bool]:
    return [verify_signature(tx.signer_key, tx.signed_bytes, tx.sig) for tx in txs]


def verify_signatures(
    txs: Sequence[Transaction], pool: Executor | None = None, workers: int = 2
) -> list[bool]:
    if pool is None or len(txs) < _MIN_PARALLEL or workers < 2:
        return _verify_chunk(txs)
    size = -(-len(txs) // workers)
    chunks = [txs[i : i + size] for i in range(0, len(txs), size)]
    results: list[bool] = []
    for part in pool.map(_verify_chunk, chunks):
        results.extend(part)
    return results
