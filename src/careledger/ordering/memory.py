"""An orderer for tests: in-process, deterministic, no timer and no fsync of its own.

Each ``submit`` is committed at once, on the caller's thread, as one block (or several of at
most ``max_batch`` transactions), in the order the calls take the orderer's lock. Block time
comes from ``clock`` (by default the head's time: no clock is read). Listeners and futures go
through a CommitNotifier as in the other orderers, so it gives the same guarantees
(ports.Orderer) and runs the same contract tests; durability is the store's (MemoryStore in
unit tests).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from careledger.core.tx import Transaction
from careledger.errors import Pushback
from careledger.ledger.engine import Ledger
from careledger.ordering.local import Item, Unsettled, commit_batch
from careledger.ordering.notify import CommitNotifier


class MemoryOrderer:
    def __init__(
        self,
        ledger: Ledger,
        *,
        max_batch: int = 2000,
        max_queue: int = 100_000,
        clock: Callable[[], int] | None = None,
    ) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self.clock = clock or (lambda: ledger.head.time)
        self._unsettled = Unsettled(max_queue)
        self._notifier = CommitNotifier(ledger, name="careledger-memory-listeners")
        self._lock = threading.Lock()  # one committer at a time: blocks in submission order
        self._running = False
        self.blocks_committed = 0
        self.txs_committed = 0

    def start(self) -> None:
        with self._lock:
            self._notifier.start()
            self._running = True

    def stop(self, timeout: float = 10.0) -> None:
        with self._lock:
            self._running = False
        self._notifier.stop(timeout)

    @property
    def queued(self) -> int:
        return self._unsettled.count

    def submit(self, txs: Sequence[Transaction]) -> list[Future[dict[str, Any]]]:
        self.ledger.refuse_in_listener(txs)
        with self._lock:
            if not self._running:
                self.ledger.release(txs)
                raise Pushback("the node is not accepting transactions", code="NODE_STOPPING")
            if not self._unsettled.take(len(txs)):
                self.ledger.release(txs)
                raise Pushback("too many transactions waiting to be ordered; retry later")
            items: list[Item] = [(tx, Future()) for tx in txs]
            for start in range(0, len(items), self.max_batch):
                batch = items[start : start + self.max_batch]
                executed = commit_batch(
                    self.ledger, self._notifier, batch, self.clock(), self._unsettled.give
                )
                if executed is not None:
                    self.blocks_committed += 1
                    self.txs_committed += len(executed.receipts)
        return [fut for _, fut in items]
