"""Nonces of signed peer requests, kept on disk for as long as a request is fresh.

A federation request is accepted only within MAX_AGE of its signed time, so a nonce needs
remembering exactly that long; keeping it in a file (not in memory) means a restart of the
custodian's node cannot open a window to replay requests it had already served.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path

from careledger.errors import StorageError, Unauthorized
from careledger.sqlite_threads import ThreadConnections

SCHEMA = "CREATE TABLE IF NOT EXISTS seen(nonce TEXT PRIMARY KEY, at INTEGER NOT NULL)"


class ReplayGuard:
    def __init__(self, path: Path, keep_ms: int) -> None:
        self.keep_ms = keep_ms
        self._conns = ThreadConnections(path, "federation nonce store")
        self._lock = threading.Lock()
        self._conns.schema(SCHEMA)
        self._last_purge = 0

    def first_use(self, nonce: str, now: int) -> None:
        """Record ``nonce``; Unauthorized(REPLAYED_REQUEST) if it was seen while fresh."""
        with self._lock:
            conn = self._conns.get()
            if now - self._last_purge > self.keep_ms:
                # stale nonces go; a purge that fails (a damaged row) is tried again later, and
                # never keeps a fresh nonce from being recorded
                self._last_purge = now
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("DELETE FROM seen WHERE at < ?", (now - 2 * self.keep_ms,))
            try:
                conn.execute("INSERT INTO seen(nonce, at) VALUES(?, ?)", (nonce, now))
            except sqlite3.IntegrityError:
                raise Unauthorized("the request was replayed", code="REPLAYED_REQUEST") from None
            except sqlite3.Error as exc:
                raise StorageError(f"the federation nonce store failed: {exc}") from None

    def close(self) -> None:
        self._conns.close()
