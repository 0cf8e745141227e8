"""A clock and a source of randomness to hand a service instead of the real ones, so a test
sets the time and sees where each id came from (careledger.clock, careledger.entropy)."""

from __future__ import annotations


class FakeClock:
    """The time is what the test sets (``now``, seconds since the epoch)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def now_ms(self) -> int:
        return int(self.now * 1000)


class CountingRandom:
    """Bytes 0, 1, 2 ... : predictable, to see where ids come from."""

    def __init__(self) -> None:
        self.next = 0

    def token_bytes(self, n: int) -> bytes:
        out = bytes((self.next + i) % 256 for i in range(n))
        self.next += n
        return out


def counted(start: int, n: int) -> bytes:
    """What ``CountingRandom`` hands out from its ``start``-th byte on, ``n`` bytes of it."""
    return bytes((start + i) % 256 for i in range(n))
