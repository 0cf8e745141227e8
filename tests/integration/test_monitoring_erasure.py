"""A patient's erasure of their device readings (``monitoring.erase_readings``, r4) reaches every
copy on the owner node, whatever the timing (issue 14): a stop just after the erasure, a batch
accepted between the erasure and the scrub, a batch whose write lands just after the shred, a
shred that fails, a store file from before the erasure index, a device bound to another patient
since. Real demo node, real SQLite files, the node's own services wired as the API wires them.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from careledger import store_mac
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.contracts.monitoring import SKEW
from careledger.core.keys import KeyPair
from careledger.demo import DEMO_DEVICE
from careledger.health.service import HealthRecords
from careledger.keyfile import generate_keypair, read_key_file
from careledger.monitoring.device import sign_batch
from careledger.monitoring.ingest import Ack, Ingestor
from careledger.monitoring.readings import ReadingsService
from careledger.monitoring.service import MonitoringService
from careledger.monitoring.store import ERASED_ALERT_FIELDS, MONITORING_FILE, ReadingsStore
from careledger.node import Node
from careledger.node_audit import Difference, NodeContext
from careledger.node_audit.monitoring_store import MonitoringStoreCheck
from careledger.storage.sqlite import SQLiteStore
from tests.support.nodes import demo_node, wait_for

pytestmark = pytest.mark.integration
SPO2 = "59408-5"
RATE = {"id": "spo2-fall", "kind": "rate", "code": SPO2, "op": "<", "delta": 30, "minutes": 60}
NO_SHRED = (
    "CREATE TRIGGER no_shred BEFORE UPDATE OF wrapped ON batches"
    " BEGIN SELECT RAISE(ABORT, 'the store refuses writes'); END"
)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("monitoring-erasure") / "node"
    demo_node(data, with_supply=False)
    return data


@pytest.fixture
def node(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "node"
    shutil.copytree(pristine, copy)
    return copy


@dataclass
class Live:
    """The node's monitoring services, wired as the API wires them (both erasure listeners)."""

    data: Path
    node: Node
    records: HealthRecords
    store: ReadingsStore
    ingestor: Ingestor
    service: MonitoringService
    patient: str
    patient_key: KeyPair

    def key(self, name: str) -> KeyPair:
        return read_key_file(self.data / "keys" / f"{name}.key")[1]

    def run(self, key: KeyPair, method: str, args: dict[str, Any]) -> None:
        (receipt,) = self.node.execute([("monitoring", method, args)], keypair=key)
        assert receipt["result"] == "accepted", receipt

    def set_rate_rule(self, patient: str | None = None) -> None:
        args = {"patient": patient or self.patient, "device": DEMO_DEVICE, "rules": [RATE]}
        self.run(self.key("dr-ana-silva"), "set_rules", args)

    def send(self, t0: int, *values: float) -> tuple[int, Ack]:
        """One signed batch of SpO2 readings a second apart from ``t0``: its number and ack."""
        state = self.store.device_state(DEMO_DEVICE)
        seq = (0 if state is None else int(state["last_seq"])) + 1
        rows = [[1000 * i, v] for i, v in enumerate(values)]
        batch = {"device": DEMO_DEVICE, "seq": seq, "compact": {"t0": t0, "codes": [SPO2],
                                                                 "rows": rows}}  # fmt: skip
        device_key = self.key(f"devices/{DEMO_DEVICE}")
        return seq, self.ingestor.accept(DEMO_DEVICE, sign_batch(device_key, batch))

    def erase(self, patient: str | None = None) -> None:
        who = patient or self.patient
        roles = frozenset({"patient"})
        caller = Caller(who, self.node.settings.org, roles, parse_scopes(default_scopes(roles)))
        receipt = self.service.erase_readings(caller, who, None)  # as DELETE .../readings does
        assert receipt["result"] == "accepted", receipt

    def memory(self) -> list[tuple[int, float]]:
        """What the rate rule remembers of recent values (stored device state)."""
        state = self.store.device_state(DEMO_DEVICE)
        assert state is not None
        return [(int(t), float(v)) for t, v in state["evaluator"].get("spo2-fall", {}).get(
            "recent", [])]  # fmt: skip


@contextmanager
def running(data: Path, *, start: bool = False) -> Iterator[Live]:
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    store = ReadingsStore.for_node(data / MONITORING_FILE, node.ledger.node_key)
    readings = ReadingsService(records, store)
    ingestor = Ingestor(node, store)
    node.ledger.commit_listeners.append(readings.on_commit)  # the erasure shreds readings
    node.ledger.commit_listeners.append(ingestor.on_commit)  # and the live values
    patient_file = sorted((data / "keys" / "patients").glob("*.key"))[-1]
    live = Live(
        data, node, records, store, ingestor, MonitoringService(records, ingestor, readings),
        patient_file.stem, read_key_file(patient_file)[1],
    )  # fmt: skip
    try:
        if start:
            ingestor.start()
        yield live
    finally:
        if start:
            ingestor.stop(drain_seconds=0)
        store.close()
        records.close()
        node.stop()


def audit(data: Path) -> list[Difference]:
    settings = Settings.load(data)
    store = SQLiteStore(settings.store_path, readonly=True)
    try:
        key = read_key_file(settings.node_key_file)[1]
        context = NodeContext(data, store, key, settings.node_name, settings.org)
        return list(MonitoringStoreCheck().check(context, lambda _: None))
    finally:
        store.close()


def readable(data: Path, patient: str) -> list[int]:
    """The numbers of the patient's batches whose data keys are still held."""
    with closing(sqlite3.connect(data / MONITORING_FILE)) as conn:
        rows = conn.execute(
            "SELECT seq FROM batches WHERE patient = ? AND wrapped != x'7b7d' ORDER BY seq",
            (patient,),
        ).fetchall()
    return [int(seq) for (seq,) in rows]


def drop_no_shred(data: Path) -> None:
    """The fault goes: a plain connection may drop the planted trigger (it writes no coded
    table), which the node's own connections refuse to open while it is there."""
    with closing(sqlite3.connect(data / MONITORING_FILE)) as conn:
        conn.execute("DROP TRIGGER no_shred")
        conn.commit()


def raw(data: Path, *statements: str) -> None:
    with closing(store_mac.connect(data / MONITORING_FILE)) as conn:
        for statement in statements:
            conn.execute(statement)
        conn.commit()


def now_ms() -> int:
    return int(time.time() * 1000)


# -- 1. the live state: durable, and reconciled before a batch is judged -------------------------


def test_an_erasure_committed_just_before_a_stop_is_applied_at_the_next_start(node: Path) -> None:
    """The node stops between the erasure's commit and the scrub of the live state (the
    anchoring thread never ran): at the next start the rules' memory of the erased values goes."""
    with running(node) as live:
        live.set_rate_rule()
        live.send(now_ms() - 10_000, 97, 96)
        assert live.memory()  # the values the rate rule remembers
        live.erase()
        patient = live.patient
    with running(node, start=True) as live:
        assert live.memory() == []
        assert live.ingestor.forget_erased() == 0  # applied once, and recorded as applied
    assert readable(node, patient) == []
    assert audit(node) == []
    with running(node, start=True) as live:  # a later start finds nothing left to do
        assert live.ingestor.forget_erased() == 0


def test_a_batch_accepted_between_the_erasure_and_the_scrub_is_judged_without_erased_values(
    node: Path,
) -> None:
    """A batch that arrives after the erasure committed, before the anchoring thread scrubbed
    the device: the erased values neither judge it nor stay remembered; its own values stay
    (they were read after the erasure) and its readings stay readable."""
    with running(node) as live:
        live.set_rate_rule()
        t1 = now_ms() - 10_000
        live.send(t1, 97, 96)
        live.erase()
        t2 = now_ms()
        seq, ack = live.send(t2, 60)  # 97 -> 60 would be a fall of 37: not the erased 97's
        assert ack.alerts == 0
        assert live.memory() == [(t2, 60.0)]
        assert live.ingestor.forget_erased() == 0  # the accept already applied the erasure
        assert live.memory() == [(t2, 60.0)]  # what was read after the erasure stays
        assert readable(node, live.patient) == [seq]
        live.ingestor.flush()
    assert audit(node) == []


def test_a_device_bound_to_another_patient_keeps_nothing_of_the_first(node: Path) -> None:
    """The device is re-bound to another patient: the first patient's values do not stay in
    the device's live state (they would judge the next patient, and outlive an erasure)."""
    with running(node) as live:
        live.set_rate_rule()
        live.send(now_ms() - 10_000, 97, 96)
        assert live.memory()
        live.run(live.patient_key, "unbind", {"device": DEMO_DEVICE, "reason": "returned"})
        other = live.records.create(
            live.records.node_caller(), {"resourceType": "Patient"}, patient_of=None
        ).patient
        other_key = live.records.custodial_key(other)
        assert other_key is not None
        live.run(other_key, "bind", {"device": DEMO_DEVICE})
        live.send(now_ms(), 95)
        live.erase()  # the first patient erases
        live.ingestor.forget_erased()
        assert live.memory() == []
        assert readable(node, live.patient) == []
        state = live.store.device_state(DEMO_DEVICE)
        assert state is not None and state["patient"] == other
        live.ingestor.flush()
    assert audit(node) == []


# -- 2. a batch whose write lands just after the shred ---------------------------------------------


def test_a_batch_stored_just_after_the_shred_is_shredded_too(node: Path) -> None:
    """A batch read before the erasure committed, whose group commit lands just after the
    shred (held here behind the store's group-commit lock): the scrub, under the device's lock,
    shreds it; a batch read after the erasure stays readable."""
    with running(node) as live:
        first, _ = live.send(now_ms() - 10_000, 97, 96)
        errors: list[BaseException] = []

        def accept() -> None:
            try:
                live.send(now_ms(), 95)
            except BaseException as exc:  # reported below
                errors.append(exc)

        sender = threading.Thread(target=accept)
        with live.store._group._write_lock:  # the batch's write waits behind a group commit
            sender.start()
            wait_for(lambda: live.store._group._pending, "the batch waiting for its commit")
            live.erase()  # committed, and the committer's shred is done, meanwhile
            assert readable(node, live.patient) == []
        sender.join(timeout=60)
        assert not sender.is_alive() and errors == []
        late = first + 1
        assert readable(node, live.patient) == [late]  # the race: it was stored after the shred
        live.ingestor.forget_erased()
        assert readable(node, live.patient) == []
        after, _ = live.send(now_ms(), 94)
        live.ingestor.forget_erased()
        assert readable(node, live.patient) == [after]
        live.ingestor.flush()
    assert audit(node) == []


def test_a_batch_received_after_the_erasures_time_is_not_destroyed(node: Path) -> None:
    """A node that commits the erasure's block late (catching up) may hold batches received
    after the erasure's block time: the erasure does not cover them (the contract's clock skew
    is the bound the audit applies), so neither the shred nor the scrub destroys them. The
    batch's arrival time is set here past the erasure's time plus the skew, as such a node's
    would be."""
    with running(node) as live:
        seq, _ = live.send(now_ms(), 97)
        raw(node, f"UPDATE batches SET received_ms = received_ms + {2 * SKEW} WHERE seq = {seq}")
        live.erase()
        live.ingestor.forget_erased()
        assert readable(node, live.patient) == [seq]
        live.ingestor.flush()
    assert audit(node) == []


# -- 3. a shred that fails, and the index ------------------------------------------------------------


def test_a_failed_shred_is_applied_again(node: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The shred fails (a store that refuses the write, as SQLITE_BUSY does): the erasure is
    not lost, the next pass applies it. Nothing of the patient's reaches the log."""
    with running(node) as live:
        raw(node, NO_SHRED)
        with caplog.at_level(logging.WARNING):
            live.erase()
            assert readable(node, live.patient)
            assert live.ingestor.forget_erased() == 0  # fails again: kept for the next pass
        assert readable(node, live.patient)
        drop_no_shred(node)  # (the node reads nothing of a store holding a foreign trigger)
        assert live.store.erasure_applied(live.patient) == 0  # not recorded as applied
        assert live.ingestor.forget_erased() == 1
        assert readable(node, live.patient) == []
        assert live.store.erasure_applied(live.patient) > 0
        assert all(live.patient not in r.getMessage() for r in caplog.records)
    assert audit(node) == []


def test_a_failed_shred_is_applied_at_the_next_start(node: Path) -> None:
    """The shred failed and the node stopped before any retry: the store never recorded the
    erasure as applied, so the ingestor's start applies it from the ledger's state."""
    with running(node) as live:
        raw(node, NO_SHRED)
        live.erase()
        patient = live.patient
        assert readable(node, patient)
    drop_no_shred(node)
    with running(node, start=True):
        assert readable(node, patient) == []
    assert audit(node) == []


OLD_SCHEMA = """
CREATE TABLE devices(device TEXT PRIMARY KEY, state BLOB NOT NULL);
CREATE TABLE batches(
  device TEXT NOT NULL, seq INTEGER NOT NULL, window INTEGER NOT NULL,
  first_index INTEGER NOT NULL, count INTEGER NOT NULL, patient TEXT NOT NULL,
  first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, received_ms INTEGER NOT NULL,
  body_hash TEXT NOT NULL, nonce BLOB NOT NULL, ciphertext BLOB NOT NULL, salt BLOB NOT NULL,
  wrapped BLOB NOT NULL, digests BLOB NOT NULL,
  PRIMARY KEY(device, seq));
CREATE INDEX batches_window ON batches(device, window, first_index);
CREATE TABLE windows(
  device TEXT NOT NULL, window INTEGER NOT NULL, patient TEXT NOT NULL, count INTEGER NOT NULL,
  first_ms INTEGER NOT NULL, last_ms INTEGER NOT NULL, root TEXT NOT NULL,
  rules_version INTEGER NOT NULL, alerts BLOB NOT NULL, status TEXT NOT NULL, tx TEXT,
  PRIMARY KEY(device, window));
CREATE INDEX windows_status ON windows(status);
"""


def test_a_store_from_before_the_index_gets_it_and_the_shred_uses_it(tmp_path: Path) -> None:
    """The shred looks a patient's batches and windows up by index (it runs on the committer
    thread: a scan of every batch held stalls every commit); a file made before gets the index
    when the node opens it."""
    path = tmp_path / MONITORING_FILE
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(OLD_SCHEMA)
    ReadingsStore.for_node(path, generate_keypair()).close()
    with closing(sqlite3.connect(path)) as conn:

        def plan(statement: str) -> str:
            rows = conn.execute("EXPLAIN QUERY PLAN " + statement, ("pt",)).fetchall()
            return " / ".join(str(r[-1]) for r in rows)

        shred = plan("UPDATE batches SET wrapped = x'7b7d' WHERE patient = ?")
        assert "USING INDEX" in shred and "SCAN" not in shred, shred
        windows = plan("SELECT * FROM windows WHERE patient = ?")
        assert "USING INDEX" in windows and "SCAN" not in windows, windows


def test_a_window_written_again_after_the_shred_keeps_no_erased_value(node: Path) -> None:
    """A window re-judged after a rules change is written again by the anchoring thread (not
    under the shred's transaction): if the patient erased its readings meanwhile, the values
    that fired its alerts are not written back."""
    with running(node) as live:
        (window, *_) = live.store.anchored_windows(DEMO_DEVICE)
        live.erase()
        judged = replace(window, alerts=[{"rule": "spo2-low", "index": 0, "at": 1, "value": 85.0}])
        live.store.resubmit(judged)  # as _reevaluated does, from readings it read before
        held = live.store.window(DEMO_DEVICE, window.window)
        assert held is not None
        assert held.alerts == [{"rule": "spo2-low", "index": 0, "at": 1}]
        assert all(set(a) <= set(ERASED_ALERT_FIELDS) for a in held.alerts)
