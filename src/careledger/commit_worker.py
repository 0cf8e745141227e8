"""Work a node does because of what the ledger committed, off the committer's thread.

A commit listener runs on the committer thread and must not wait for a commit itself (that
would deadlock); it only picks items out of the block's events. A worker thread then handles
them one by one, and a failure is logged without stopping the next.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

import orjson

from careledger.ledger.engine import Ledger
from careledger.ledger.execute import Executed

log = logging.getLogger(__name__)
T = TypeVar("T")


class CommitWorker(Generic[T]):
    def __init__(
        self,
        ledger: Ledger,
        name: str,
        pick: Callable[[str, dict[str, Any]], T | None],
        handle: Callable[[T], object],
    ) -> None:
        """``pick(event type, event data)``: the item to handle for an event, or None."""
        self.ledger = ledger
        self.name = name
        self._pick = pick
        self._handle = handle
        self._queue: queue.Queue[T] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self, backlog: Iterable[T] = ()) -> None:
        """Listen to commits and start working, first on ``backlog`` (missed while down)."""
        self.ledger.commit_listeners.append(self.on_commit)
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()
        for item in backlog:
            self._queue.put(item)

    def detach(self) -> None:
        with contextlib.suppress(ValueError):
            self.ledger.commit_listeners.remove(self.on_commit)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def on_commit(self, executed: Executed) -> None:
        for event in executed.block.events:
            item = self._pick(event.type, orjson.loads(event.data))
            if item is not None:
                self._queue.put(item)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                item = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self._handle(item)
            except Exception:  # one failure must not stop the next items
                log.exception("%s could not handle %r", self.name, item)
