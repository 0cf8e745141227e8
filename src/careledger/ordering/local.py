"""The embedded orderer: batches admitted transactions by count or time and commits them.

One committer thread owns the write side of the ledger. A transaction's future resolves with
its receipt only after its block is durable in the store and the block's commit listeners ran
(on the notifier's thread: see ordering/notify.py). It implements ports.Orderer.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

from careledger.core.tx import Transaction
from careledger.errors import CareLedgerError, Pushback
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import Executed
from careledger.ordering.notify import CommitNotifier, fail_block, settle, settle_block

log = logging.getLogger("careledger.orderer")

Clock = Callable[[], int]
Item = tuple[Transaction, Future[dict[str, Any]]]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Unsettled:
    """How many submitted transactions wait for their futures, bounded by ``limit``: checked
    and taken in one step, so concurrent submissions cannot overshoot it."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.count = 0
        self._lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self._lock:
            if self.count + n > self.limit:
                return False
            self.count += n
            return True

    def give(self, n: int) -> None:
        with self._lock:
            self.count -= n


def commit_batch(
    ledger: Ledger,
    notifier: CommitNotifier,
    batch: list[Item],
    time_ms: int,
    settled: Callable[[int], None],
) -> Executed | None:
    """Commit ``batch`` as one block, then have ``notifier`` run the block's listeners and
    resolve each future (calling ``settled(len(batch))`` first, so a waiter that wakes sees
    them no longer queued). The block, or None if it made none."""
    txs = [tx for tx, _ in batch]
    try:
        executed = ledger.commit(txs, time_ms, notify=False)
    except Exception as exc:  # keep the committer alive; tell every waiting client
        if isinstance(exc, CareLedgerError):
            log.error("block not committed: %s", exc.message)
            why = ""
        else:
            log.exception("committer failed")
            why = f": {type(exc).__name__}"
        ledger.release(txs)

        def failed() -> None:
            settled(len(batch))
            fail_block(batch, why)

        notifier.post(None, failed)
        return None

    def committed() -> None:
        settled(len(batch))
        settle_block(batch, executed)

    notifier.post(executed, committed)
    return executed


class LocalOrderer:
    def __init__(
        self,
        ledger: Ledger,
        *,
        max_batch: int = 2000,
        max_wait: float = 0.002,
        max_queue: int = 100_000,
        clock: Clock = wall_clock_ms,
    ) -> None:
        self.ledger = ledger
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.max_queue = max_queue
        self.clock = clock
        self._queue: queue.Queue[Item | None] = queue.Queue()
        self._unsettled = Unsettled(max_queue)
        self._notifier = CommitNotifier(ledger)
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.blocks_committed = 0
        self.txs_committed = 0

    def start(self) -> None:
        if self._thread is None:
            self._notifier.start()
            self._thread = threading.Thread(
                target=self._run, name="careledger-committer", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            self._stopping.set()
            self._queue.put(None)
            thread.join(timeout)
            if not thread.is_alive():
                self._refuse_left_over()
            self._notifier.stop(timeout)

    def _refuse_left_over(self) -> None:
        """Transactions queued behind the stop (a submit racing it): refused, not forgotten."""
        left: list[Item] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                left.append(item)
        if left:
            self.ledger.release([tx for tx, _ in left])
            self._unsettled.give(len(left))
            for _, fut in left:
                settle(fut, exc=Pushback("the node stopped", code="NODE_STOPPING"))

    @property
    def queued(self) -> int:
        """Submitted transactions whose futures are not resolved yet (waiting to be ordered,
        being committed, or waiting for their block's listeners)."""
        return self._unsettled.count

    def submit(self, txs: Sequence[Transaction]) -> list[Future[dict[str, Any]]]:
        """Queue admitted transactions; Pushback when the queue is full (nothing is queued)."""
        self.ledger.refuse_in_listener(txs)
        if self._thread is None or self._stopping.is_set():
            self.ledger.release(txs)
            raise Pushback("the node is not accepting transactions", code="NODE_STOPPING")
        if not self._unsettled.take(len(txs)):
            self.ledger.release(txs)
            raise Pushback("too many transactions waiting to be ordered; retry later")
        futures: list[Future[dict[str, Any]]] = []
        for tx in txs:
            fut: Future[dict[str, Any]] = Future()
            futures.append(fut)
            self._queue.put((tx, fut))
        return futures

    def _next_batch(self) -> list[Item] | None:
        first = self._queue.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    item = self._queue.get(timeout=remaining)
                except queue.Empty:
                    break
            if item is None:
                self._queue.put(None)
                break
            batch.append(item)
        return batch

    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            executed = commit_batch(
                self.ledger, self._notifier, batch, self.clock(), self._unsettled.give
            )
            if executed is not None:
                self.blocks_committed += 1
                self.txs_committed += len(executed.receipts)
