"""Each member's share of the ledger: how many transactions and bytes it may write, and how fast.

Anyone with a key can sign; without a budget one patient key stored 300 junk transactions (37 MB)
in two seconds. Every signer gets two token buckets (transactions and bytes), refilled at a steady
rate with a burst on top; a request that would overdraw either is refused whole with 429
RATE_LIMITED and Retry-After, before anything is ordered. The node's own key is not budgeted: it
writes on behalf of everyone it serves, and each of those workflows has its own limits.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from careledger.errors import RateLimited


@dataclass(frozen=True)
class Budget:
    # Generous in count (bulk loads and scripts write thousands of small transactions), tight in
    # bytes (a member has no reason to store megabytes a second on a ledger that holds no PHI).
    tx_burst: float = 2000
    tx_per_second: float = 200
    bytes_burst: float = 4 * 1024 * 1024
    bytes_per_second: float = 256 * 1024


class WriteBudget:
    def __init__(self, budget: Budget, clock: Callable[[], float], max_signers: int = 100_000):
        self.budget = budget
        self.clock = clock
        self.max_signers = max_signers
        self._buckets: dict[str, tuple[float, float, float]] = {}  # key -> (txs, bytes, at)
        self._lock = threading.Lock()

    def charge(self, writes: Iterable[tuple[str, int]]) -> None:
        """Take ``(signer, bytes)`` for each write, all or none (RateLimited otherwise)."""
        wanted: dict[str, tuple[int, int]] = {}
        for signer, size in writes:
            count, total = wanted.get(signer, (0, 0))
            wanted[signer] = (count + 1, total + size)
        b = self.budget
        with self._lock:
            now = self.clock()
            refilled = {s: self._refill(s, now) for s in wanted}
            for signer, (count, total) in wanted.items():
                txs, size, _ = refilled[signer]
                if count > txs or total > size:
                    wait = max(
                        (count - txs) / b.tx_per_second if count > txs else 0.0,
                        (total - size) / b.bytes_per_second if total > size else 0.0,
                    )
                    if count > b.tx_burst or total > b.bytes_burst:
                        raise RateLimited(
                            "this request is larger than one member may write at once: split it",
                            retry_after=max(1, math.ceil(wait)),
                        )
                    raise RateLimited(
                        "this member is writing faster than the node allows; retry later",
                        retry_after=max(1, math.ceil(wait)),
                    )
            if len(self._buckets) + len(wanted) > self.max_signers:
                self._buckets.clear()  # forget idle signers; all refill to their burst
            for signer, (count, total) in wanted.items():
                txs, size, _ = refilled[signer]
                self._buckets[signer] = (txs - count, size - total, now)

    def _refill(self, signer: str, now: float) -> tuple[float, float, float]:
        b = self.budget
        txs, size, at = self._buckets.get(signer, (b.tx_burst, b.bytes_burst, now))
        elapsed = max(0.0, now - at)
        return (
            min(b.tx_burst, txs + elapsed * b.tx_per_second),
            min(b.bytes_burst, size + elapsed * b.bytes_per_second),
            now,
        )
