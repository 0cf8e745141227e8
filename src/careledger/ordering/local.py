"""The embedded orderer: batches admitted transactions by count or time and commits them.

One committer thread owns the write side of the ledger. A transaction's future resolves with
its receipt only after its block is durable in the store.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from careledger.core.tx import Transaction
from careledger.errors import CareLedgerError, Conflict, Pushback, StorageError
from careledger.ledger.engine import Ledger

log = logging.getLogger("careledger.orderer")

Clock = Callable[[], int]


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


def _settle(
    fut: Future[dict[str, Any]],
    *,
    result: dict[str, Any] | None = None,
    exc: BaseException | None = None,
) -> None:
    """Resolve a transaction's future, unless its waiter gave up and cancelled it (asyncio does
    when a request with ?wait times out): set_result on a cancelled future raises, and would
    stop the committer thread, which every later transaction waits on."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass  # cancelled: nobody waits for it any more


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
        self._queue: queue.Queue[tuple[Transaction, Future[dict[str, Any]]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self.blocks_committed = 0
        self.txs_committed = 0

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name="careledger-committer", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._stopping.set()
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def submit(self, txs: Sequence[Transaction]) -> list[Future[dict[str, Any]]]:
        """Queue admitted transactions; Pushback when the queue is full (nothing is queued)."""
        if self._thread is None or self._stopping.is_set():
            self.ledger.release(txs)
            raise Pushback("the node is not accepting transactions", code="NODE_STOPPING")
        if self._queue.qsize() + len(txs) > self.max_queue:
            self.ledger.release(txs)
            raise Pushback("too many transactions waiting to be ordered; retry later")
        futures: list[Future[dict[str, Any]]] = []
        for tx in txs:
            fut: Future[dict[str, Any]] = Future()
            futures.append(fut)
            self._queue.put((tx, fut))
        return futures

    def _next_batch(self) -> list[tuple[Transaction, Future[dict[str, Any]]]] | None:
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
            self._commit(batch)

    def _commit(self, batch: list[tuple[Transaction, Future[dict[str, Any]]]]) -> None:
        txs = [tx for tx, _ in batch]
        try:
            executed = self.ledger.commit(txs, self.clock())
        except CareLedgerError as exc:
            log.error("block not committed: %s", exc.message)
            self.ledger.release(txs)
            for _, fut in batch:
                _settle(fut, exc=StorageError("the block could not be committed"))
            return
        except Exception as exc:  # keep the committer alive; tell every waiting client
            log.exception("committer failed")
            self.ledger.release(txs)
            for _, fut in batch:
                _settle(fut, exc=StorageError(
                    f"the block could not be committed: {type(exc).__name__}"))  # fmt: skip
            return
        receipts = {} if executed is None else executed.receipts
        skipped = {} if executed is None else executed.skipped
        if executed is not None:
            self.blocks_committed += 1
            self.txs_committed += len(receipts)
        for tx, fut in batch:
            rec = receipts.get(tx.tx_id)
            if rec is not None:
                _settle(fut, result=rec)
            else:
                code = skipped.get(tx.tx_id, "NONCE_REPLAY")
                _settle(fut, exc=Conflict("the transaction was not committed (replay)", code=code))
