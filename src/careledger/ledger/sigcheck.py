"""Signature checks spread over workers (threads or processes).

libsodium runs without the GIL, but a thread must take the GIL back after every signature, and
while the committer thread holds it those threads wait; a process pool avoids that contention.
Workers receive plain (public key, message, signature) tuples so either kind of pool works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import TypeVar

from careledger.core.keys import verify_signature
from careledger.core.tx import Transaction

_MIN_PARALLEL = 64
Item = tuple[bytes, bytes, bytes]
In = TypeVar("In")
Out = TypeVar("Out")


def verify_items(items: Sequence[Item]) -> list[bool]:
    return [verify_signature(pk, msg, sig) for pk, msg, sig in items]


def submit_chunks(
    check: Callable[[int, Sequence[In]], list[Out]],
    items: Sequence[In],
    pool: Executor | None,
    workers: int,
) -> Callable[[], list[Out]]:
    """Run ``check(offset, chunk)`` over ``workers`` consecutive chunks of ``items``; the
    returned function waits for the results, concatenated in order.

    ``check`` must be a module-level function (a process pool pickles it by name) that depends
    only on its arguments, so where it runs cannot change the answer. Few items, or no pool,
    run here and now.
    """
    if pool is None or len(items) < _MIN_PARALLEL or workers < 1:
        results = check(0, items)
        return lambda: results
    size = -(-len(items) // workers)
    futures = [pool.submit(check, i, items[i : i + size]) for i in range(0, len(items), size)]
    return lambda: [out for future in futures for out in future.result()]


def _verify_chunk(offset: int, items: Sequence[Item]) -> list[bool]:
    return verify_items(items)


def submit_signatures(
    txs: Sequence[Transaction], pool: Executor | None = None, workers: int = 2
) -> Callable[[], list[bool]]:
    """Start checking; the returned function waits for the results, in order.

    The caller can do other work meanwhile: the checks run in the pool's workers.
    """
    items = [(tx.signer_key, tx.signed_bytes, tx.sig) for tx in txs]
    return submit_chunks(_verify_chunk, items, pool, workers)


def verify_signatures(
    txs: Sequence[Transaction], pool: Executor | None = None, workers: int = 2
) -> list[bool]:
    return submit_signatures(txs, pool, workers)()
