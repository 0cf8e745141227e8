"""Which state keys a store may hold: a Bloom filter, so that "absent" needs no store read.

Contracts read many keys that do not exist yet (is this member id, this public key, this record
new?). Without the filter each of those reads is a store lookup on the committer's critical
path, and with SQLite each one also lets other threads take the GIL from the committer. The
filter answers "certainly absent" for nearly all of them; "perhaps present" still goes to the
store, so a false positive costs one read and never a wrong answer.

It is correct only while it has seen every key the store holds: the ledger builds it from a
scan of the store and adds each block's keys before the block is written. Keys are never
removed (a deleted key only makes a false positive). One thread (the committer) adds; any
thread may ask.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterable

_MIN_CAPACITY = 1 << 16
# Two probes into 24 bits per key: about 0.7% false positives at capacity. Two probes, taken
# from the two halves of one 64-bit hash, keep a lookup to a few bytecodes.
_BITS_PER_KEY = 24
_MASK64 = (1 << 64) - 1


class _Bloom:
    __slots__ = ("bits", "capacity", "count", "size")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.count = 0
        self.size = capacity * _BITS_PER_KEY
        self.bits = bytearray(self.size // 8 + 1)

    def add(self, digest: int) -> None:
        bits, size = self.bits, self.size
        first, second = digest % size, (digest >> 32) % size
        bits[first >> 3] |= 1 << (first & 7)
        bits[second >> 3] |= 1 << (second & 7)
        self.count += 1

    def might_contain(self, digest: int) -> bool:
        bits, size = self.bits, self.size
        first, second = digest % size, (digest >> 32) % size
        return bool(bits[first >> 3] >> (first & 7) & bits[second >> 3] >> (second & 7) & 1)


class KeyFilter:
    """A growing Bloom filter of (namespace, key) pairs.

    When the current filter reaches its capacity a twice larger one takes the new keys (a
    "scalable" Bloom filter), so the false-positive rate stays bounded without a rescan. The
    digests come from Python's ``hash``, salted per process: the filter is never stored.
    """

    def __init__(self, capacity: int = _MIN_CAPACITY) -> None:
        self._filters = [_Bloom(max(capacity, _MIN_CAPACITY))]

    @classmethod
    def of(cls, keys: Iterable[tuple[str, str]]) -> KeyFilter:
        """A filter holding ``keys``, sized for twice as many before it has to grow."""
        digests = array("Q", (hash(pair) & _MASK64 for pair in keys))
        made = cls(2 * len(digests))
        bloom = made._filters[0]
        for digest in digests:
            bloom.add(digest)
        return made

    def add(self, namespace: str, key: str) -> None:
        current = self._filters[-1]
        if current.count >= current.capacity:
            current = _Bloom(current.capacity * 2)
            self._filters.append(current)
        current.add(hash((namespace, key)) & _MASK64)

    def might_contain(self, namespace: str, key: str) -> bool:
        digest = hash((namespace, key)) & _MASK64
        filters = self._filters
        if len(filters) == 1:
            return filters[0].might_contain(digest)
        # A reader may run while the committer appends a filter: a list iterator sees it.
        return any(bloom.might_contain(digest) for bloom in filters)
