"""The owner node's store of device readings: encrypted batches, windows, per-device state.

A batch's readings are one AES-256-GCM ciphertext under a fresh data key wrapped for the patient
and the node (as vault records are); next to it are the readings' salted digests, which are
what the window's Merkle tree commits to (they reveal nothing without the salts). Windows are
open, closed (waiting for their anchor), anchored, or refused (then their batches are deleted:
readings the ledger refused are not kept). A device's state (last batch sequence, current
window, Merkle frontier, the rule evaluator's state) is written in the same transaction as the
batch that changed it, so a restart resumes exactly where the last acknowledged batch left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from careledger.core.keys import KeyPair
from careledger.sqlite_threads import GroupCommit, ThreadConnections
from careledger.sqlite_threads import statements as sql_statements
from careledger.vault.at_rest import AtRest

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
"""


ERASED_ALERT_FIELDS = ("rule", "index", "at")  # what an erased patient's alert keeps


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
        self._conns.get().executescript(SCHEMA)
        self._group = GroupCommit(self._conns.get, "readings store")

    @classmethod
    def for_node(cls, path: Path, node_key: KeyPair) -> ReadingsStore:
        return cls(path, AtRest.for_node(node_key, "monitoring"))

    def close(self) -> None:
        self._conns.close()

    def _state_blob(self, device: str, state: dict[str, Any]) -> bytes:
        return self._sealed.seal(orjson.dumps(state), f"devices:{device}")

    def _window(self, row: Sequence[Any]) -> ClosedWindow:
        values = list(row)
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
                self._sealed.seal(orjson.dumps(w.alerts), f"windows:{w.device}/{w.window}"),
                w.status,
                w.tx,
            ),
        )

    def save_state(self, device: str, state: dict[str, Any]) -> None:
        """A device's live state alone (after an erasure scrubbed its readings' values)."""
        self._write([(
            "INSERT OR REPLACE INTO devices(device, state) VALUES(?, ?)",
            (device, self._state_blob(device, state)),
        )])  # fmt: skip

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

    def shred_patient(self, patient: str) -> int:
        """Destroy the data keys (and ciphertext) of every batch held about ``patient``: the
        readings cannot be read again; windows, roots and digests stay for the proofs. The
        values that fired an alert go too (they are readings): each window keeps of its alerts
        only what the ledger holds (rule, reading index, time)."""
        conn = self._conns.get()
        conn.execute("BEGIN IMMEDIATE")  # keys and alert values go together, or neither
        try:
            shredded = self._shred_locked(conn, patient)
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return shredded

    def _shred_locked(self, conn: Any, patient: str) -> int:
        # The salt and the device's body hash go too: a reading is small (a code, a time the
        # window names, a value on a short grid), so with them its digest could be matched by
        # trying values. The digests alone still make the anchored root.
        cursor = conn.execute(
            "UPDATE batches SET wrapped = ?, ciphertext = ?, salt = zeroblob(length(salt)), "
            "body_hash = '' WHERE patient = ? AND wrapped != ?",
            (b"{}", b"", patient, b"{}"),
        )
        shredded = int(cursor.rowcount)
        for row in conn.execute("SELECT * FROM windows WHERE patient = ?", (patient,)).fetchall():
            window = self._window(row)
            kept = [{k: a[k] for k in ERASED_ALERT_FIELDS if k in a} for a in window.alerts]
            if kept != window.alerts:
                conn.execute(
                    "UPDATE windows SET alerts = ? WHERE device = ? AND window = ?",
                    (self._sealed.seal(orjson.dumps(kept), f"windows:{window.device}/"
                                       f"{window.window}"), window.device, window.window),
                )  # fmt: skip
        return shredded

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
        self._write([self._window_insert(window)])
