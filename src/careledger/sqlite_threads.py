"""One SQLite connection per thread for a node-side file, all of them closed together.

API requests run on a thread pool and commit listeners on the committer thread; sqlite3
connections are cheap but must not be shared across threads mid-transaction, so each thread
gets its own, and ``close`` closes every one of them (not only the caller's).

In a node's directory every connection can write the store's integrity codes
(``careledger.store_mac``, ADR 0019), and ``schema`` gives a store its coded layout. From then
on ``get`` hands out a connection only while the file's schema is what the node's modules make:
it checks ``PRAGMA schema_version`` at every call (one pragma, about 2 us) and the whole of
``sqlite_master`` when that moved, so a trigger, view or index planted in the file is refused
(``StorageError``) before the node writes anything through it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import BrokenExecutor, Executor
from pathlib import Path
from typing import Any, Protocol

from careledger import store_mac
from careledger.errors import CareLedgerError, StorageError


class ThreadConnections:
    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: list[sqlite3.Connection] = []
        self._closed = False
        self._keys = store_mac.keys_for(path)
        self._guard: store_mac.SchemaGuard | None = None

    def get(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            if self._guard is not None:
                self._local.checked = self._guard.check(conn, self._local.checked)
            return conn
        with self._lock:
            if self._closed:
                raise StorageError(f"the {self.what} is closed")
            try:
                conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=FULL")
                conn.execute("PRAGMA busy_timeout=10000")
                if self._keys is not None:
                    self._keys.attach(conn)
                checked = None
                if self._guard is not None:
                    self._guard.authorize(conn)
                    checked = self._guard.check(conn, None)
            except sqlite3.Error as exc:
                raise StorageError(f"cannot open the {self.what}: {exc}") from None
            except StorageError:
                conn.close()
                raise
            self._all.append(conn)
        self._local.conn = conn
        self._local.checked = checked
        return conn

    def schema(self, *scripts: str) -> None:
        """Run the store's schema scripts, then give it its integrity layout (in a node's
        directory): code columns, triggers, digests."""
        try:
            conn = self.get()
            guard = store_mac.create_schema(conn, self.path, self._keys, scripts)
            if guard is not None:
                # it knows the scripts of every module that writes this file
                self._local.checked = guard.check(conn, None)
                self._guard = guard
        except sqlite3.Error as exc:
            raise StorageError(f"cannot set up the {self.what}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            conns, self._all = self._all, []
            self._closed = True
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()
        self._local = threading.local()


Work = Callable[[sqlite3.Connection], None]


class _Pending:
    __slots__ = ("done", "error", "work")

    def __init__(self, work: Work) -> None:
        self.work = work
        self.done = False
        self.error: BaseException | None = None


def statements(items: Sequence[tuple[str, Sequence[Any]]]) -> Work:
    """Work that runs SQL statements in order."""

    def run(conn: sqlite3.Connection) -> None:
        for sql, params in items:
            conn.execute(sql, params)

    return run


class GroupCommit:
    """Writes from many threads committed together: one transaction and one fsync for all the
    writes queued while the previous commit ran (leader/follower, no extra thread).

    Each write is a function of the connection that must apply atomically; one that raises
    (a constraint, a conflict it detects) makes the group retry its writes one by one, so a
    bad write fails alone, with its own error.
    """

    def __init__(
        self,
        connect: Callable[[], sqlite3.Connection],
        what: str,
        lock: threading.Lock | None = None,
    ) -> None:
        """``lock``: the store's own writer lock, when it also writes outside this group."""
        self._connect = connect
        self._what = what
        self._queue_lock = threading.Lock()
        self._write_lock = lock or threading.Lock()
        self._pending: list[_Pending] = []

    def write(self, work: Work) -> None:
        item = _Pending(work)
        with self._queue_lock:
            self._pending.append(item)
        with self._write_lock:
            if not item.done and item.error is None:
                with self._queue_lock:
                    group, self._pending = self._pending, []
                self._commit(group)
        if item.error is not None:
            raise item.error

    def _commit(self, group: list[_Pending]) -> None:
        try:
            self._transaction(group)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # interrupted: none of these writes happened
                for item in group:
                    item.error = StorageError(f"the {self._what} write was interrupted")
                raise
            if len(group) > 1:
                for item in group:
                    self._commit([item])
                return
            if isinstance(exc, CareLedgerError):
                group[0].error = exc
            else:
                group[0].error = StorageError(f"the {self._what} write failed: {exc}")
            return
        for item in group:
            item.done = True

    def run_together(self, works: Sequence[Work]) -> None:
        """``works`` in one transaction, now, all or none: what a group's leader runs (here,
        for a ``ProcessGroupCommit`` of another process)."""
        with self._write_lock:
            self._transaction([_Pending(work) for work in works])

    def _transaction(self, group: list[_Pending]) -> None:
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for item in group:
                item.work(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise


class WritesHere(Protocol):
    """A store opened in a worker process for a ``ProcessGroupCommit``."""

    def run_together(self, works: Sequence[Work]) -> None: ...

    def close(self) -> None: ...


# In a worker process: the store each ProcessGroupCommit writes through, by path, with the id of
# the ProcessGroupCommit it serves (a new one, for a store opened again, gets a fresh open: the
# file may have been replaced since).
_WRITERS: dict[str, tuple[str, WritesHere]] = {}
_WRITERS_LOCK = threading.Lock()


def _run_in_worker(
    opener: Callable[[str], WritesHere], path: str, instance: str, works: list[Work]
) -> None:
    with _WRITERS_LOCK:
        held = _WRITERS.get(path)
        if held is None or held[0] != instance:
            if held is not None:
                held[1].close()
            held = _WRITERS[path] = (instance, opener(path))
    held[1].run_together(works)


def _no_connection() -> sqlite3.Connection:
    raise StorageError("a store written from a worker process has no connection here")


class ProcessGroupCommit(GroupCommit):
    """A group commit whose transactions run in a worker process of ``pool``.

    Why: a store with integrity codes (ADR 0019) calls a Python function from inside SQLite
    for every row written, twice, and each call must take the GIL back. In the node's process,
    under load, a vault group of 2-3 records then took 39 ms of wall time for 6 ms of CPU
    (issue 20); a worker process has its GIL to itself. Same semantics as ``GroupCommit``: one
    transaction for the group, one by one when one write fails; each write must be picklable
    (a module-level callable holding plain data). ``opener(path)`` opens the store in the
    worker, once, and writes there in-process (``WritesHere``). The store's own ``lock`` still
    orders these writes with the ones it makes here, so one group is in flight at a time.
    """

    def __init__(
        self,
        pool: Executor,
        opener: Callable[[str], WritesHere],
        path: Path,
        what: str,
        lock: threading.Lock | None = None,
    ) -> None:
        super().__init__(_no_connection, what, lock)
        self._pool = pool
        self._opener = opener
        self._path = str(path)
        self._instance = os.urandom(8).hex()  # an id, not a secret

    def _transaction(self, group: list[_Pending]) -> None:
        works = [item.work for item in group]
        try:
            future = self._pool.submit(
                _run_in_worker, self._opener, self._path, self._instance, works
            )
        except RuntimeError:  # the pool was shut down: the node is stopping
            raise StorageError(f"the {self._what} writer has stopped") from None
        try:
            future.result()
        except BrokenExecutor:
            raise StorageError(f"the {self._what} writer process died") from None


ROWS_PER_STATEMENT = 400  # under SQLite's 500 terms of one compound VALUES


def insert_rows(conn: sqlite3.Connection, head: str, rows: Sequence[Sequence[Any]]) -> None:
    """``head`` (``INSERT ... INTO table(columns)``) for every row, a few hundred rows a
    statement, in order: what ``executemany`` does, in one statement step per chunk.

    ``executemany`` steps its statement once per row, and each step lets go of the GIL and
    takes it back. Under load the committer waited for the GIL at each of the ~90 row steps of
    a block: writing a block took 24 ms of wall time for 2.5 ms of CPU (issue 20).
    """
    if not rows:
        return
    one = "(" + ",".join("?" * len(rows[0])) + ")"
    for start in range(0, len(rows), ROWS_PER_STATEMENT):
        chunk = rows[start : start + ROWS_PER_STATEMENT]
        conn.execute(
            f"{head} VALUES {','.join([one] * len(chunk))}", [v for row in chunk for v in row]
        )


def page_of(rows: list[Any], limit: int) -> tuple[list[Any], int | None]:
    """Rows fetched with ``LIMIT limit + 1`` (first column the sequence): the page, and the
    sequence to continue after when there is more (None: that was the last page)."""
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (int(rows[-1][0]) if more and rows else None)


def iso_ms(ms: int) -> str:
    """Milliseconds since the epoch as ISO 8601 UTC with milliseconds (…T…:…:….mmmZ)."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + f".{ms % 1000:03d}Z"
