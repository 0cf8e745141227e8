"""One SQLite connection per thread for a node-side file, all of them closed together.

API requests run on a thread pool and commit listeners on the committer thread; sqlite3
connections are cheap but must not be shared across threads mid-transaction, so each thread
gets its own, and ``close`` closes every one of them (not only the caller's).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from careledger.errors import StorageError


class ThreadConnections:
    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._closed = False

    def get(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        with self._lock:
            if self._closed:
                raise StorageError(f"the {self.what} is closed")
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=10000")
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open the {self.what}: {exc}") from None
            self._all.append(conn)
        self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            self._closed = True
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


def page_of(rows: list[Any], limit: int) -> tuple[list[Any], int | None]:
    """Rows fetched with ``LIMIT limit + 1`` (first column the sequence): the page, and the
    sequence to continue after when there is more (None: that was the last page)."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (int(rows[-1][0]) if more and rows else None)


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds (…T…:…:….mmmZ)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
