"""Record versions the vault has already opened and checked, kept in memory, bounded.

Opening a version (unwrap its data key, decrypt, recompute its salted hash, parse) was the
largest single cost of a FHIR read or search: about a seventh of the node's CPU in the FHIR mix
(issue 20), and a search sorted by date opens every candidate. What a version decrypts to is a
function of its stored row (ciphertext, nonce, salt, content hash, type and the reader's
wrapped key), so the vault still reads the row on every open and serves the kept result only
when the row's fingerprint is the one it opened: a byte changed on disk, a shredded row or a
re-wrapped key is opened the slow way, and refused the way it always was (VAULT_TAMPERED,
RECORD_SHREDDED, NOT_A_RECIPIENT).

The resource is kept as JSON bytes, so every caller gets a dict of its own and none can alter
what the next reader gets; at most ``max_bytes``, counting each entry's JSON and a fixed
``ENTRY_OVERHEAD`` for its key, fingerprint and bookkeeping, and at most ``max_entries``, least
recently used first out.

A shredded record must leave memory for good: ``drop`` is called before and after the vault's
keys are destroyed, and an open that began before a drop (``generation``) may not put what it
decrypted back (``put(..., since=...)``), so a read racing the shredding cannot leave the
plaintext behind.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from typing import Any

import orjson

MAX_OPENED_BYTES = 32 * 1024 * 1024  # held, at most, overheads counted
MAX_OPENED_ENTRIES = 50_000
ENTRY_OVERHEAD = 512  # bytes: key tuple, fingerprint, OrderedDict node, index set entry

Key = tuple[str, int, str]  # record id, version, reader (base64url public key)


def _cost(raw: bytes) -> int:
    return len(raw) + ENTRY_OVERHEAD


def fingerprint(*parts: bytes | str) -> bytes:
    """One digest of every input that decides what a version opens to, length-prefixed."""
    digest = hashlib.blake2b(digest_size=32)
    for part in parts:
        raw = part.encode() if isinstance(part, str) else part
        digest.update(len(raw).to_bytes(8, "big"))
        digest.update(raw)
    return digest.digest()


class OpenedVersions:
    """(record, version, reader) -> (the row's fingerprint, the resource as JSON)."""

    def __init__(
        self, max_bytes: int = MAX_OPENED_BYTES, max_entries: int = MAX_OPENED_ENTRIES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._items: OrderedDict[Key, tuple[bytes, bytes]] = OrderedDict()
        self._keys: dict[str, set[Key]] = {}
        self._readers: dict[str, str] = {}  # one copy of each reader's key string
        self._bytes = 0
        self._drops = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: Key, row: bytes) -> dict[str, Any] | None:
        """The resource opened from a row of this fingerprint (a fresh dict), or None."""
        with self._lock:
            found = self._items.get(key)
            if found is None or found[0] != row:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            self.hits += 1
        resource: dict[str, Any] = orjson.loads(found[1])
        return resource

    def generation(self) -> int:
        """Taken before reading a row: ``put`` refuses if any record was dropped since."""
        with self._lock:
            return self._drops

    def put(self, key: Key, row: bytes, resource: dict[str, Any], *, since: int) -> None:
        try:
            # a copy of its own: orjson's buffer keeps kilobytes of spare room otherwise
            raw = bytes(memoryview(orjson.dumps(resource)))
        except orjson.JSONEncodeError:  # not exactly representable: opened each time instead
            return
        if _cost(raw) > self.max_bytes:
            return
        with self._lock:
            if self._drops != since:  # a shredding happened meanwhile: perhaps of this record
                return
            record_id, version, reader = key
            key = (record_id, version, self._readers.setdefault(reader, reader))
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= _cost(old[1])
            self._items[key] = (row, raw)
            self._keys.setdefault(record_id, set()).add(key)
            self._bytes += _cost(raw)
            while self._bytes > self.max_bytes or len(self._items) > self.max_entries:
                oldest, (_, old_raw) = self._items.popitem(last=False)
                self._bytes -= _cost(old_raw)
                self._forget_key(oldest)

    def drop(self, record_id: str) -> None:
        """Every version of a record, for every reader (it was shredded: out of memory now),
        and no open that began before this call may put it back."""
        with self._lock:
            self._drops += 1
            for key in self._keys.pop(record_id, set()):
                _, raw = self._items.pop(key)
                self._bytes -= _cost(raw)

    def _forget_key(self, key: Key) -> None:
        keys = self._keys.get(key[0])
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self._keys[key[0]]

    def __len__(self) -> int:
        return len(self._items)

    @property
    def held_bytes(self) -> int:
        return self._bytes


__all__ = [
    "ENTRY_OVERHEAD",
    "MAX_OPENED_BYTES",
    "MAX_OPENED_ENTRIES",
    "OpenedVersions",
    "fingerprint",
]
