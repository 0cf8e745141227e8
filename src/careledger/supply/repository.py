"""The node's EPCIS event repository: event bodies beside the ledger, which anchors their hashes.

One SQLite file (``epcis.sqlite``): captures with their status and per-event errors, events
with the fields the standard queries filter on, and an index of every EPC an event names (in
canonical Digital Link form, so a URN and a Digital Link of one pack find the same events).
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from careledger.errors import Conflict, NotFound, StorageError
from careledger.sqlite_threads import ThreadConnections, page_of

SCHEMA = """
CREATE TABLE IF NOT EXISTS captures(
  id TEXT PRIMARY KEY, org TEXT NOT NULL, status TEXT NOT NULL, created TEXT NOT NULL,
  events INTEGER NOT NULL, tx_id TEXT, errors BLOB);
CREATE TABLE IF NOT EXISTS events(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, hash TEXT NOT NULL UNIQUE, capture TEXT NOT NULL,
  type TEXT NOT NULL, event_time TEXT NOT NULL, biz_step TEXT, disposition TEXT,
  biz_location TEXT, body BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS events_time ON events(event_time);
CREATE INDEX IF NOT EXISTS events_capture ON events(capture);
CREATE TABLE IF NOT EXISTS event_epcs(
  seq INTEGER NOT NULL, epc TEXT NOT NULL, role TEXT NOT NULL, PRIMARY KEY(epc, seq, role))
  WITHOUT ROWID;
"""


@dataclass(frozen=True)
class StoredEvent:
    hash: str
    type: str
    event_time: str  # UTC, ISO 8601 with milliseconds: sorts as it reads
    biz_step: str | None
    disposition: str | None
    biz_location: str | None
    epcs: Sequence[tuple[str, str]]  # (canonical EPC, role)
    body: Mapping[str, Any]


@dataclass(frozen=True)
class EventQuery:
    biz_steps: Sequence[str] = ()
    dispositions: Sequence[str] = ()
    biz_locations: Sequence[str] = ()
    epcs: Sequence[str] = ()  # MATCH_epc: the event's own EPCs (epcList, childEPCs, quantities)
    any_epcs: Sequence[str] = ()  # MATCH_anyEPC: also parentID, input and output EPCs
    ge_time: str | None = None
    lt_time: str | None = None
    after_seq: int = 0
    limit: int = 100


DIRECT_ROLES = ("epc", "child")


class EpcisRepository:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._conns = ThreadConnections(path, "EPCIS repository")
        self._write_lock = threading.Lock()
        self._conns.schema(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        return self._conns.get()

    def begin_capture(
        self, capture: str, org: str, created: str, events: Sequence[StoredEvent] = ()
    ) -> None:
        """Stage a capture and its events before the ledger sees them, in one transaction.

        Staged events are invisible to queries (their capture is 'running'). Storing first means
        a body that cannot be stored fails the capture before anything is anchored, and an
        anchored capture never lacks its bodies (see :meth:`finish_capture` and
        :meth:`running_captures` for the crash between the two).
        """
        with self._write_lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute(
                    "INSERT INTO captures(id, org, status, created, events) VALUES(?,?,?,?,?)",
                    (capture, org, "running", created, len(events)),
                )
                for event in events:
                    cursor = conn.execute(
                        "INSERT INTO events(hash, capture, type, event_time, biz_step, disposition,"
                        " biz_location, body) VALUES(?,?,?,?,?,?,?,?)",
                        (
                            event.hash,
                            capture,
                            event.type,
                            event.event_time,
                            event.biz_step,
                            event.disposition,
                            event.biz_location,
                            orjson.dumps(event.body),
                        ),
                    )
                    conn.executemany(
                        "INSERT OR IGNORE INTO event_epcs(seq, epc, role) VALUES(?,?,?)",
                        [(cursor.lastrowid, epc, role) for epc, role in event.epcs],
                    )
                conn.execute("COMMIT")
            except sqlite3.IntegrityError:
                _rollback(conn)
                raise Conflict(
                    "an event of this capture is already stored", code="DUPLICATE_EVENT"
                ) from None
            except (sqlite3.Error, orjson.JSONEncodeError, OverflowError) as exc:
                _rollback(conn)
                raise StorageError(f"the capture could not be stored: {exc}") from None
            except BaseException:
                _rollback(conn)
                raise

    def finish_capture(
        self,
        capture: str,
        *,
        tx_id: str | None = None,
        errors: Sequence[Mapping[str, Any]] = (),
    ) -> None:
        """Publish a staged capture (anchored), or drop its events and record why it failed."""
        status = "failed" if errors else "succeeded"
        with self._write_lock:
            conn = self._connect()
            try:
                conn.execute("BEGIN IMMEDIATE")
                if errors:
                    conn.execute(
                        "DELETE FROM event_epcs WHERE seq IN "
                        "(SELECT seq FROM events WHERE capture = ?)",
                        (capture,),
                    )
                    conn.execute("DELETE FROM events WHERE capture = ?", (capture,))
                conn.execute(
                    "UPDATE captures SET status = ?, tx_id = ?, errors = ? WHERE id = ?",
                    (status, tx_id, orjson.dumps(list(errors)), capture),
                )
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                _rollback(conn)
                raise StorageError(f"the capture could not be stored: {exc}") from None
            except BaseException:
                _rollback(conn)
                raise

    def running_captures(self) -> list[str]:
        """Captures staged but not finished: a node stopped between staging and finishing."""
        rows = self._connect().execute("SELECT id FROM captures WHERE status = 'running'")
        return [str(r[0]) for r in rows.fetchall()]

    def capture(self, capture: str) -> dict[str, Any]:
        row = (
            self._connect()
            .execute(
                "SELECT id, org, status, created, events, tx_id, errors FROM captures WHERE id = ?",
                (capture,),
            )
            .fetchone()
        )
        if row is None:
            raise NotFound("no capture with that id", code="UNKNOWN_CAPTURE")
        return {
            "captureID": row[0],
            "org": row[1],
            "status": row[2],
            "running": row[2] == "running",
            "success": row[2] == "succeeded",
            "createdAt": row[3],
            "events": row[4],
            "ledgerTransaction": row[5],
            "errors": orjson.loads(row[6]) if row[6] else [],
        }

    def query(self, q: EventQuery) -> tuple[list[dict[str, Any]], int | None]:
        """Matching event bodies in capture order, and the seq to continue after (None: done)."""
        where: list[str] = ["e.seq > ?"]
        params: list[object] = [q.after_seq]
        for column, values in (
            ("biz_step", q.biz_steps),
            ("disposition", q.dispositions),
            ("biz_location", q.biz_locations),
        ):
            if values:
                where.append(f"e.{column} IN ({','.join('?' * len(values))})")
                params.extend(values)
        if q.ge_time:
            where.append("e.event_time >= ?")
            params.append(q.ge_time)
        if q.lt_time:
            where.append("e.event_time < ?")
            params.append(q.lt_time)
        for epcs, roles in ((q.epcs, DIRECT_ROLES), (q.any_epcs, None)):
            if epcs:
                role_clause = f" AND x.role IN ({','.join('?' * len(roles))})" if roles else ""
                # IN (not EXISTS): the planner then starts from the EPC index, not every event.
                where.append(
                    "e.seq IN (SELECT x.seq FROM event_epcs x WHERE x.epc IN "  # noqa: S608
                    f"({','.join('?' * len(epcs))}){role_clause})"
                )
                params.extend(epcs)
                params.extend(roles or ())
        sql = (
            "SELECT e.seq, e.body FROM events e JOIN captures c ON c.id = e.capture "  # noqa: S608
            f"WHERE c.status = 'succeeded' AND {' AND '.join(where)} ORDER BY e.seq LIMIT ?"
        )
        rows = self._connect().execute(sql, [*params, q.limit + 1]).fetchall()
        rows, last = page_of(rows, q.limit)
        bodies = [orjson.loads(body) for _, body in rows]
        return bodies, last

    def close(self) -> None:
        self._conns.close()


def _rollback(conn: sqlite3.Connection) -> None:
    """Never leave a transaction open: a half-written capture would lock the file."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
