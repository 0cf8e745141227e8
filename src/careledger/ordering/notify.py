"""After a block is durable: its commit listeners, then its waiters, off the committing thread.

Every orderer commits with ``Ledger.commit(..., notify=False)`` and posts the block here. One
thread runs the ledger's listeners for it (``Ledger.notify``) and then resolves the futures of
its transactions, block after block in commit order. The committing thread meanwhile goes on
with the next block, so a slow listener delays receipts, never commits (ports.Orderer).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, InvalidStateError
from typing import Any

from careledger.core.tx import Transaction
from careledger.errors import Conflict, StorageError
from careledger.ledger.engine import Ledger
from careledger.ledger.execute import Executed

log = logging.getLogger("careledger.orderer")

Settle = Callable[[], None]


def settle(
    fut: Future[dict[str, Any]],
    *,
    result: dict[str, Any] | None = None,
    exc: BaseException | None = None,
) -> None:
    """Resolve a transaction's future, unless its waiter gave up and cancelled it (asyncio does
    when a request with ?wait times out): set_result on a cancelled future raises, and would
    stop the thread that resolves every later transaction's future."""
    try:
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(result)  # type: ignore[arg-type]
    except InvalidStateError:
        pass  # cancelled: nobody waits for it any more


def settle_block(
    batch: Sequence[tuple[Transaction, Future[dict[str, Any]]]], executed: Executed | None
) -> None:
    """Each future of a committed batch: its receipt (two copies of one transaction in the batch
    both get its one receipt), or Conflict for a replay left out."""
    receipts = {} if executed is None else executed.receipts
    skipped = {} if executed is None else executed.skipped
    for tx, fut in batch:
        rec = receipts.get(tx.tx_id)
        if rec is not None:
            settle(fut, result=rec)
        else:
            code = skipped.get(tx.tx_id, "NONCE_REPLAY")
            settle(fut, exc=Conflict("the transaction was not committed (replay)", code=code))


def fail_block(batch: Sequence[tuple[Transaction, Future[dict[str, Any]]]], why: str) -> None:
    for _, fut in batch:
        settle(fut, exc=StorageError(f"the block could not be committed{why}"))


class CommitNotifier:
    def __init__(self, ledger: Ledger, name: str = "careledger-listeners") -> None:
        self.ledger = ledger
        self.name = name
        self._queue: queue.SimpleQueue[tuple[Executed | None, Settle] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()

    def post(self, executed: Executed | None, then: Settle) -> None:
        """After ``executed`` is durable (None: the batch made no block): its listeners, then
        ``then`` (which resolves the batch's futures)."""
        with self._lock:
            if self._thread is not None:
                self._queue.put((executed, then))
                return
        self._deliver(executed, then)  # not running (stopped): here, rather than never

    def stop(self, timeout: float = 10.0) -> None:
        """Deliver what was posted, then end (a listener still running after ``timeout`` is
        left to finish on its own)."""
        with self._lock:
            thread, self._thread = self._thread, None
            if thread is not None:
                self._queue.put(None)
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning("a commit listener is still running after %.0f s", timeout)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            self._deliver(*item)

    def _deliver(self, executed: Executed | None, then: Settle) -> None:
        if executed is not None:
            self.ledger.notify(executed)
        try:
            then()
        except Exception:  # keep delivering: every later block's waiters depend on it
            log.exception("resolving the futures of a block failed")
