"""The owner node's store of device readings: encrypted batches, windows, per-device state.

A batch's readings are one AES-256-GCM ciphertext under a fresh data key wrapped for the patient
and the node (as vault records are); next to it are the readings' salted digests, which are
what the window's Merkle tree commits to (they reveal nothing without the salts). Windows are
open, closed (waiting for their anchor), anchored, or refused (then their batches are deleted:
readings the ledger refused are not kept). A device's state (last batch sequence, current
window, Merkle frontier, the rule evaluator's state) is written in the same transaction as the
batch that changed it, so a restart resumes exactly where the last acknowledged batch left.

A patient's erasure (``monitoring.erase_readings``) destroys the data keys, salts and body
hashes of their batches and the values in their windows' alerts; ``erasures`` records, durably,
which erasure (by ledger height) was applied to the whole store (``device`` '') and which to each
device under the ingestor's lock of that device (see ``Ingestor`` for why both).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from careledger.contracts.monitoring import SKEW, erasure_entry
from careledger.core.keys import KeyPair
from careledger.sqlite_threads import GroupCommit, ThreadConnections
from careledger.sqlite_threads import statements as sql_statements
from careledger.vault.at_rest import AtRest

if TYPE_CHECKING:
    from careledger.ledger.engine import Ledger

MONITORING_FILE = "monitoring.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices(
  device TEXT PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS batches(
  device TEXT NOT NULL, seq INTEGER NOT NULL, window INTEGER NOT NULL,
  first_index INTEGER NOT NULL, count INTEGER NOT NULL, patient TEXT NOT NULL,
  first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
  body_hash TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, salt BLOB NOT NULL,
  wrapped BLOB NOT NULL, digests BLOB NOT NULL,
  PRIMARY KEY(device, seq));
CREATE INDEX IF NOT EXISTS batches_window ON batches(device, window, first_index);
CREATE TABLE IF NOT EXISTS windows(
  device TEXT NOT NULL, window INTEGER NOT NULL, patient TEXT NOT NULL, count INTEGER NOT NULL,
  first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, root TEXT NOT NULL,
  rules_version INTEGER NOT NULL, alerts BLOB NOT NULL, status TEXT NOT NULL, tx TEXT,
  PRIMARY KEY(device, window));
CREATE INDEX IF NOT EXISTS windows_status ON windows(status);
CREATE INDEX IF NOT EXISTS batches_patient ON batches(patient, device);
CREATE INDEX IF NOT EXISTS windows_patient ON windows(patient, device);
CREATE TABLE IF NOT EXISTS erasures(
  patient TEXT NOT NULL, device TEXT NOT NULL, height INTEGER NOT NULL,
  PRIMARY KEY(patient, device));
"""
# Every statement is IF NOT EXISTS: a store made by an older node gains the indexes and the
# erasures table when it is next opened (an erasure recorded nowhere is then applied again, which
# is idempotent).

EVERY_DEVICE = ""  # the erasures row of the store-wide shred (a device id is never empty)
SHREDDED = b"{}"  # the wrapped keys of an erased batch


ERASED_ALERT_FIELDS = ("rule", "index", "at")  # what an erased patient's alert keeps


def erased_alerts(alerts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Alerts as an erasure leaves them: what the ledger holds, never the value that fired."""
    return [{k: a[k] for k in ERASED_ALERT_FIELDS if k in a} for a in alerts]


@dataclass(frozen=True)
class Erasure:
    """A patient's erasure as the ledger holds it (``erased/{patient}``): the height of its block
    and its block time. It covers the batches the node received up to that time, within the
    contract's clock skew (the bound the node audit holds the store to)."""

    height: int
    before: int

    @property
    def received_by(self) -> int:
        return self.before + SKEW


def erasure_of(ledger: Ledger, patient: str) -> Erasure | None:
    """The patient's last erasure of their readings, as the ledger holds it (None: none)."""
    held = erasure_entry(ledger.state, patient)
    return None if held is None else Erasure(int(held["height"]), int(held["before"]))


@dataclass(frozen=True)
class StoredBatch:
    device: str
    seq: int
    window: int
    first_index: int
    count: int
    patient: str
    first_ms: int
    last_ms: int
    received_ms: int
    body_hash: str
    nonce: bytes
    ciphertext: bytes
    salt: bytes
    wrapped: dict[str, bytes]
    digests: bytes  # count x 32 bytes


@dataclass(frozen=True)
class ClosedWindow:
    device: str
    window: int
    patient: str
    count: int
    first_ms: int
    last_ms: int
    root: str
    rules_version: int
    alerts: list[dict[str, Any]]
    status: str
    tx: str | None


_WINDOW_FIELDS = len(fields(ClosedWindow))


def _batch(row: Sequence[Any]) -> StoredBatch:
    wrapped = {k: bytes.fromhex(v) for k, v in orjson.loads(row[13]).items()}
    return StoredBatch(
        device=str(row[0]),
        seq=int(row[1]),
        window=int(row[2]),
        first_index=int(row[3]),
        count=int(row[4]),
        patient=str(row[5]),
        first_ms=int(row[6]),
        last_ms=int(row[7]),
        received_ms=int(row[8]),
        body_hash=str(row[9]),
        nonce=bytes(row[10]),
        ciphertext=bytes(row[11]),
        salt=bytes(row[12]),
        wrapped=wrapped,
        digests=bytes(row[14]),
    )


class ReadingsStore:
    def __init__(self, path: Path, sealed: AtRest) -> None:
        """``sealed`` seals what the store keeps beside the encrypted batches: each device's
        rule state and each window's alerts (values that fired a rule are PHI)."""
        self._sealed = sealed
        self._conns = ThreadConnections(path, "readings store")
        self._conns.schema(SCHEMA)
        self._group = GroupCommit(self._conns.get, "readings store")

    @classmethod
    def for_node(cls, path: Path, node_key: KeyPair) -> ReadingsStore:
        return cls(path, AtRest.for_node(node_key, "monitoring"))

    def close(self) -> None:
        self._conns.close()

    def _state_blob(self, device: str, state: dict[str, Any]) -> bytes:
        return self._sealed.seal(orjson.dumps(state), f"devices:{device}")

    def _alerts_blob(self, device: str, window: int, alerts: list[dict[str, Any]]) -> bytes:
        return self._sealed.seal(orjson.dumps(alerts), f"windows:{device}/{window}")

    def _window(self, row: Sequence[Any]) -> ClosedWindow:
        values = list(row[:_WINDOW_FIELDS])  # then, in a node's directory, the row's code (mac)
        blob = bytes(values[8]) if isinstance(values[8], bytes) else str(values[8]).encode()
        values[8] = orjson.loads(self._sealed.open(blob, f"windows:{values[0]}/{values[1]}"))
        return ClosedWindow(*values)

    def _write(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> None:
        self._group.write(sql_statements(statements))

    # -- devices ---------------------------------------------------------------------------

    def device_state(self, device: str) -> dict[str, Any] | None:
        row = (
            self._conns.get()
            .execute("SELECT state FROM devices WHERE device = ?", (device,))
            .fetchone()
        )
        if row is None:
            return None
        return dict(orjson.loads(self._sealed.open(bytes(row[0]), f"devices:{device}")))

    def add_batch(
        self,
        batch: StoredBatch,
        state: dict[str, Any],
        closed: ClosedWindow | None = None,
    ) -> None:
        """The batch, the device's new state and (when it closed one) a window: atomically."""
        statements: list[tuple[str, Sequence[Any]]] = [
            (
                "INSERT INTO batches VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    batch.device,
                    batch.seq,
                    batch.window,
                    batch.first_index,
                    batch.count,
                    batch.patient,
                    batch.first_ms,
                    batch.last_ms,
                    batch.received_ms,
                    batch.body_hash,
                    batch.nonce,
                    batch.ciphertext,
                    batch.salt,
                    orjson.dumps({k: v.hex() for k, v in batch.wrapped.items()}),
                    batch.digests,
                ),
            ),
            (
                "INSERT OR REPLACE INTO devices(device, state) VALUES(?, ?)",
                (batch.device, self._state_blob(batch.device, state)),
            ),
        ]
        if closed is not None:
            statements.append(self._window_insert(closed))
        self._write(statements)

    def _window_insert(self, w: ClosedWindow) -> tuple[str, Sequence[Any]]:
        return (
            "INSERT OR REPLACE INTO windows VALUES(?,?,?,?,?,?,?,?,?,?,?)",
            (
                w.device,
                w.window,
                w.patient,
                w.count,
                w.first_ms,
                w.last_ms,
                w.root,
                w.rules_version,
                self._alerts_blob(w.device, w.window, w.alerts),
                w.status,
                w.tx,
            ),
        )

    def close_window(self, window: ClosedWindow, state: dict[str, Any]) -> None:
        """A window closed by time (no batch arrived with it)."""
        self._write(
            [
                self._window_insert(window),
                (
                    "INSERT OR REPLACE INTO devices(device, state) VALUES(?, ?)",
                    (window.device, self._state_blob(window.device, state)),
                ),
            ]
        )

    def batch(self, device: str, seq: int) -> StoredBatch | None:
        row = (
            self._conns.get()
            .execute("SELECT * FROM batches WHERE device = ? AND seq = ?", (device, seq))
            .fetchone()
        )
        return None if row is None else _batch(row)

    def batches_of(self, device: str, window: int) -> list[StoredBatch]:
        rows = (
            self._conns.get()
            .execute(
                "SELECT * FROM batches WHERE device = ? AND window = ? ORDER BY first_index",
                (device, window),
            )
            .fetchall()
        )
        return [_batch(r) for r in rows]

    def batch_at(self, device: str, window: int, index: int) -> StoredBatch | None:
        row = (
            self._conns.get()
            .execute(
                "SELECT * FROM batches WHERE device = ? AND window = ? AND first_index <= ?"
                " ORDER BY first_index DESC LIMIT 1",
                (device, window, index),
            )
            .fetchone()
        )
        batch = None if row is None else _batch(row)
        return batch if batch is not None and index < batch.first_index + batch.count else None

    # -- windows ---------------------------------------------------------------------------

    def window(self, device: str, window: int) -> ClosedWindow | None:
        row = (
            self._conns.get()
            .execute("SELECT * FROM windows WHERE device = ? AND window = ?", (device, window))
            .fetchone()
        )
        return None if row is None else self._window(row)

    def pending(self) -> list[ClosedWindow]:
        rows = (
            self._conns.get()
            .execute("SELECT * FROM windows WHERE status = 'closed' ORDER BY device, window")
            .fetchall()
        )
        return [self._window(r) for r in rows]

    def anchored_windows(self, device: str) -> list[ClosedWindow]:
        rows = (
            self._conns.get()
            .execute(
                "SELECT * FROM windows WHERE device = ? AND status = 'anchored' ORDER BY window",
                (device,),
            )
            .fetchall()
        )
        return [self._window(r) for r in rows]

    # -- erasure --------------------------------------------------------------------------

    def shred_patient(self, patient: str, erasure: Erasure) -> int:
        """Apply ``erasure`` to every device at once: destroy the data keys (and ciphertext,
        salt and body hash) of the patient's batches it covers, and keep of their windows' alerts
        only what the ledger holds (rule, reading index, time); windows, roots and digests stay
        for the proofs. Recorded as applied in the same transaction, so a failure (SQLITE_BUSY)
        leaves it unrecorded and the ingestor applies it again. How many batches were shredded.

        Devices already scrubbed for this erasure under their lock are left out: what they hold
        of the patient now was received after the erasure (see ``Ingestor._reconcile``)."""
        conn = self._conns.get()
        conn.execute("BEGIN IMMEDIATE")  # keys, alert values and the record go together
        try:
            shredded = self._shred(conn, patient, erasure, None)
            self._record(conn, patient, EVERY_DEVICE, erasure)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return shredded

    def scrub_device(
        self, device: str, patient: str, erasure: Erasure, state: dict[str, Any] | None
    ) -> int:
        """Apply ``erasure`` to one device (the ingestor holds the device's lock): shred the
        patient's batches it holds and their windows' alert values, save the device's scrubbed
        ``state`` (when it is the patient's), and record the erasure as applied to the device,
        all in one transaction. How many batches were shredded."""
        shredded: list[int] = []

        def work(conn: sqlite3.Connection) -> None:
            shredded[:] = [self._shred(conn, patient, erasure, device)]
            if state is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO devices(device, state) VALUES(?, ?)",
                    (device, self._state_blob(device, state)),
                )
            self._record(conn, patient, device, erasure)

        self._group.write(work)
        return shredded[0]

    @staticmethod
    def _record(conn: sqlite3.Connection, patient: str, device: str, erasure: Erasure) -> None:
        conn.execute(
            "INSERT INTO erasures(patient, device, height) VALUES(?, ?, ?)"
            " ON CONFLICT(patient, device) DO UPDATE SET height = max(height, excluded.height)",
            (patient, device, erasure.height),
        )

    def _shred(
        self, conn: sqlite3.Connection, patient: str, erasure: Erasure, device: str | None
    ) -> int:
        # The salt and the device's body hash go too: a reading is small (a code, a time the
        # window names, a value on a short grid), so with them its digest could be matched by
        # trying values. The digests alone still make the anchored root.
        if device is None:  # every device not yet scrubbed for this erasure under its lock
            scope = (
                " AND device NOT IN (SELECT device FROM erasures"
                " WHERE patient = ? AND device != '' AND height >= ?)"
            )
            params: tuple[Any, ...] = (patient, erasure.height)
        else:
            scope, params = " AND device = ?", (device,)
        shred = (
            "UPDATE batches SET wrapped = ?, ciphertext = ?, salt = zeroblob(length(salt)),"
            " body_hash = '' WHERE patient = ? AND wrapped != ? AND received_ms <= ?"
        )
        cursor = conn.execute(
            shred + scope,  # one of two fixed clauses, every value bound
            (SHREDDED, b"", patient, SHREDDED, erasure.received_by, *params),
        )
        shredded = int(cursor.rowcount)
        rows = conn.execute(
            "SELECT * FROM windows WHERE patient = ?" + scope,  # noqa: S608 - a fixed clause
            (patient, *params),
        )
        for row in rows.fetchall():
            window = self._window(row)
            kept = erased_alerts(window.alerts)
            if kept != window.alerts:
                conn.execute(
                    "UPDATE windows SET alerts = ? WHERE device = ? AND window = ?",
                    (self._alerts_blob(window.device, window.window, kept), window.device,
                     window.window),
                )  # fmt: skip
        return shredded

    def erasure_applied(self, patient: str, device: str = EVERY_DEVICE) -> int:
        """The height of the patient's last erasure applied to ``device`` (by default: to the
        whole store); 0 for none."""
        row = (
            self._conns.get()
            .execute(
                "SELECT height FROM erasures WHERE patient = ? AND device = ?", (patient, device)
            )
            .fetchone()
        )
        return 0 if row is None else int(row[0])

    def devices_holding(self, patient: str, erasure: Erasure) -> list[str]:
        """Devices holding batches of the patient that ``erasure`` covers, still readable, and
        not scrubbed for it under their lock (after the store-wide shred: a batch whose write
        landed after it)."""
        rows = (
            self._conns.get()
            .execute(
                "SELECT DISTINCT device FROM batches WHERE patient = ? AND wrapped != ?"
                " AND received_ms <= ? AND device NOT IN (SELECT device FROM erasures"
                " WHERE patient = ? AND device != '' AND height >= ?) ORDER BY device",
                (patient, SHREDDED, erasure.received_by, patient, erasure.height),
            )
            .fetchall()
        )
        return [str(r[0]) for r in rows]

    def patients(self) -> list[str]:
        """The patients of the windows held (an open window's are in its device's state)."""
        rows = self._conns.get().execute("SELECT DISTINCT patient FROM windows").fetchall()
        return sorted(str(r[0]) for r in rows)

    def devices(self) -> list[str]:
        rows = self._conns.get().execute("SELECT device FROM devices ORDER BY device").fetchall()
        return [str(r[0]) for r in rows]

    def windows_of_patient(
        self, patient: str, since_ms: int = 0, limit: int = 10_000
    ) -> list[ClosedWindow]:
        rows = (
            self._conns.get()
            .execute(
                "SELECT * FROM windows WHERE patient = ? AND status = 'anchored' AND last_ms >= ?"
                " ORDER BY first_ms LIMIT ?",
                (patient, since_ms, limit),
            )
            .fetchall()
        )
        return [self._window(r) for r in rows]

    def anchored(self, device: str, window: int, tx: str) -> None:
        self._write(
            [
                (
                    "UPDATE windows SET status = 'anchored', tx = ?"
                    " WHERE device = ? AND window = ?",
                    (tx, device, window),
                )
            ]
        )

    def refused(self, device: str, from_window: int, state: dict[str, Any]) -> int:
        """Drop every unanchored window of the device from ``from_window`` on, and their
        readings; the device restarts from ``state``. The number of readings dropped."""
        conn = self._conns.get()
        (dropped,) = conn.execute(
            "SELECT COALESCE(SUM(count), 0) FROM batches WHERE device = ? AND window >= ?"
            " AND window NOT IN"
            " (SELECT window FROM windows WHERE device = ? AND status = 'anchored')",
            (device, from_window, device),
        ).fetchone()
        self._write(
            [
                (
                    "DELETE FROM batches WHERE device = ? AND window >= ? AND window NOT IN"
                    " (SELECT window FROM windows WHERE device = ? AND status = 'anchored')",
                    (device, from_window, device),
                ),
                (
                    "UPDATE windows SET status = 'refused' WHERE device = ? AND window >= ?"
                    " AND status != 'anchored'",
                    (device, from_window),
                ),
                (
                    "INSERT OR REPLACE INTO devices(device, state) VALUES(?, ?)",
                    (device, self._state_blob(device, state)),
                ),
            ]
        )
        return int(dropped)

    def resubmit(self, window: ClosedWindow) -> None:
        """A window judged again (its rules changed before it anchored). It is judged from
        readings read before this write, outside the shred's transaction: if some of them were
        shredded since, the values that fired its alerts are not written back."""
        erased = erased_alerts(window.alerts)

        def work(conn: sqlite3.Connection) -> None:
            shredded = conn.execute(
                "SELECT 1 FROM batches WHERE device = ? AND window = ? AND wrapped = ? LIMIT 1",
                (window.device, window.window, SHREDDED),
            ).fetchone()
            judged = window if shredded is None else replace(window, alerts=erased)
            sql, params = self._window_insert(judged)
            conn.execute(sql, params)

        self._group.write(work)
