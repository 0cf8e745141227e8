"""Strictly increasing nonces without a round trip: microseconds, bumped past the last one."""

from __future__ import annotations

import threading
import time


class NonceSource:
    def __init__(self, last: int = 0) -> None:
        self._last = last
        self._lock = threading.Lock()
        # Held by callers that must hand nonces to the ledger in the order they were drawn.
        self.lock = threading.RLock()

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns() // 1000)
            return self._last
