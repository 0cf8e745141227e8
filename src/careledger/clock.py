"""The wall clock, passed in to the services that decide by it (issue 14).

A service that issues or expires something (tokens, challenges, authorization codes, export
jobs, share links, health cards) takes a ``Clock`` and defaults to ``SYSTEM_CLOCK``; a test hands
it a fixed or advancing one instead. Contracts never see a clock: block time is theirs.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Wall-clock time. ``time()`` is seconds since the epoch; ``now_ms()`` the same in whole
    milliseconds. Both MUST read the same instant source."""

    def time(self) -> float: ...

    def now_ms(self) -> int: ...


class SystemClock:
    """The machine's clock."""

    def time(self) -> float:
        return time.time()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


SYSTEM_CLOCK: Clock = SystemClock()

__all__ = ["SYSTEM_CLOCK", "Clock", "SystemClock"]
