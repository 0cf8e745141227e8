"""Signature checks spread over workers (threads or processes).

libsodium runs without the GIL, but a thread must take the GIL back after every signature, and
while the committer thread holds it those threads wait; a process pool avoids that contention.
Workers receive plain (public key, message, signature) tuples so either kind of pool works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor

from careledger.core.keys import verify_signature
from careledger.core.tx import Transaction

_MIN_PARALLEL = 64
Item = tuple[bytes, bytes, bytes]


def verify_items(items: Sequence[Item]) -> list[bool]:
    return [verify_signature(pk, msg, sig) for pk, msg, sig in items]


def submit_signatures(
    txs: Sequence[Transaction], pool: Executor | None = None, workers: int = 2
) -> Callable[[], list[bool]]:
    """Start checking; the returned function waits for the results, in order.

    The caller can do other work meanwhile: the checks run in the pool's workers.
    """
    items = [(tx.signer_key, tx.signed_bytes, tx.sig) for tx in txs]
    if pool is None or len(items) < _MIN_PARALLEL or workers < 1:
        results = verify_items(items)
        return lambda: results
    size = -(-len(items) // workers)
    futures = [pool.submit(verify_items, items[i : i + size]) for i in range(0, len(items), size)]
    return lambda: [ok for future in futures for ok in future.result()]


def verify_signatures(
    txs: Sequence[Transaction], pool: Executor | None = None, workers: int = 2
) -> list[bool]:
    return submit_signatures(txs, pool, workers)()
