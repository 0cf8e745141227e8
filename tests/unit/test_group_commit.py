"""Group commit: many threads' writes in shared transactions, each atomic, a bad one alone."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from careledger.errors import StorageError
from careledger.sqlite_threads import GroupCommit, ThreadConnections, statements


def test_concurrent_writes_all_land_and_a_bad_write_fails_alone(tmp_path: Path) -> None:
    conns = ThreadConnections(tmp_path / "g.sqlite", "test store")
    conns.get().execute("CREATE TABLE t(k INTEGER PRIMARY KEY, pair INTEGER NOT NULL)")
    group = GroupCommit(conns.get, "test store")
    errors: list[BaseException] = []

    def writer(base: int) -> None:
        for i in range(50):
            k = base * 1000 + i
            try:
                # two statements that must land together
                group.write(
                    statements(
                        [
                            ("INSERT INTO t VALUES(?, ?)", (k, 0)),
                            ("UPDATE t SET pair = 1 WHERE k = ?", (k,)),
                        ]
                    )
                )
            except StorageError as exc:
                errors.append(exc)

    threads = [threading.Thread(target=writer, args=(b,)) for b in range(8)]
    for t in threads:
        t.start()
    with pytest.raises(StorageError):
        group.write(
            statements(
                [
                    ("INSERT INTO t VALUES(?, ?)", (10**6, 0)),
                    ("INSERT INTO t VALUES(?, ?)", (10**6, 0)),
                ]
            )
        )
    for t in threads:
        t.join()
    rows = conns.get().execute("SELECT COUNT(*), SUM(pair) FROM t").fetchone()
    assert errors == [] and rows == (400, 400)  # the bad write took no one down with it
    assert conns.get().execute("SELECT COUNT(*) FROM t WHERE k = 1000000").fetchone() == (0,)
    conns.close()
