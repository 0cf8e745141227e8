"""The monitoring store's checker on a real demo node: a clean node passes; one change, deletion
or insertion in any table is named by store and table; a patient's erasure of their readings
(through the node's own path) still passes; an open window is checked against the device's
state."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

from careledger import store_mac
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.demo import DEMO_DEVICE
from careledger.health.service import HealthRecords
from careledger.keyfile import read_key_file
from careledger.monitoring.device import sign_batch
from careledger.monitoring.ingest import Ingestor
from careledger.monitoring.readings import ReadingsService
from careledger.monitoring.service import MonitoringService
from careledger.monitoring.store import MONITORING_FILE, Erasure, ReadingsStore
from careledger.node import Node
from careledger.node_audit import Difference, NodeContext
from careledger.node_audit.monitoring_store import MonitoringStoreCheck
from careledger.storage.sqlite import SQLiteStore
from tests.support.nodes import demo_node, wait_for

pytestmark = pytest.mark.integration
Tamper = Callable[[sqlite3.Connection], object]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("monitoring-audit") / "node"
    demo_node(data, with_supply=False)
    with closing(store_mac.connect(data / MONITORING_FILE)) as conn:
        statuses = [s for (s,) in conn.execute("SELECT status FROM windows")]
        ((batches,),) = conn.execute("SELECT COUNT(*) FROM batches").fetchall()
    assert len(statuses) >= 2 and set(statuses) == {"anchored"}
    assert batches > len(statuses)  # some window has several batches
    return data


@pytest.fixture
def node(pristine: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "node"
    shutil.copytree(pristine, copy)
    return copy


def audit(data: Path) -> list[Difference]:
    settings = Settings.load(data)
    store = SQLiteStore(settings.store_path, readonly=True)
    try:
        key = read_key_file(settings.node_key_file)[1]
        context = NodeContext(data, store, key, settings.node_name, settings.org)
        check = MonitoringStoreCheck()
        done: list[int] = []
        found = list(check.check(context, done.append))
        assert sum(done) == check.size(context)  # the progress bar ends full
        return found
    finally:
        store.close()


def patient_of(data: Path) -> str:
    with closing(store_mac.connect(data / MONITORING_FILE)) as conn:
        ((patient,),) = conn.execute("SELECT DISTINCT patient FROM windows").fetchall()
    return str(patient)


def tamper(data: Path, change: Tamper) -> None:
    with closing(store_mac.connect(data / MONITORING_FILE)) as conn:
        change(conn)
        conn.commit()


def flip(table: str, column: str, where: str) -> Tamper:
    """One bit of one value changed (the last byte: for a sealed value, its tag)."""

    def change(conn: sqlite3.Connection) -> None:
        (value,) = conn.execute(f"SELECT {column} FROM {table} WHERE {where}").fetchone()
        changed = bytearray(value if isinstance(value, bytes) else str(value).encode())
        changed[-1] ^= 1
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (bytes(changed),))

    return change


def sql(*statements: str) -> Tamper:
    def change(conn: sqlite3.Connection) -> None:
        for statement in statements:
            conn.execute(statement)

    return change


BATCH_COPY = (
    "INSERT INTO batches SELECT device, 999, window, first_index, count, patient, first_ms,"
    " last_ms, received_ms, body_hash, nonce, ciphertext, salt, wrapped, digests FROM batches"
    " WHERE seq = 1"
)
WINDOW_COPY = (
    "INSERT INTO windows SELECT device, 99, patient, count, first_ms, last_ms, root,"
    " rules_version, alerts, status, tx FROM windows WHERE window = 0"
)

CASES: list[tuple[str, str, Tamper]] = [
    ("devices", "change state", flip("devices", "state", "1")),
    ("devices", "delete", sql("DELETE FROM devices")),
    ("devices", "insert", sql("INSERT INTO devices SELECT 'oxi-stray', state FROM devices")),
    ("batches", "change ciphertext", flip("batches", "ciphertext", "seq = 2")),
    ("batches", "change digests", flip("batches", "digests", "seq = 1")),
    ("batches", "change salt", flip("batches", "salt", "seq = 3")),
    ("batches", "change count", sql("UPDATE batches SET count = count - 1 WHERE seq = 1")),
    ("batches", "change patient", sql("UPDATE batches SET patient = 'pt-other' WHERE seq = 2")),
    ("batches", "change times", sql("UPDATE batches SET last_ms = last_ms + 1 WHERE seq = 2")),
    ("batches", "change window", sql("UPDATE batches SET window = window + 1 WHERE seq = 1")),
    ("batches", "destroy keys", sql("UPDATE batches SET wrapped = x'7b7d' WHERE seq = 1")),
    ("batches", "wrapped keys a list", sql("UPDATE batches SET wrapped = x'5b5d' WHERE seq = 1")),
    ("batches", "delete", sql("DELETE FROM batches WHERE seq = 2")),
    ("batches", "insert", sql(BATCH_COPY)),
    (
        "windows",
        "change root",
        sql("UPDATE windows SET root = printf('%064d', 0) WHERE window = 1"),
    ),
    ("windows", "change count", sql("UPDATE windows SET count = count + 1 WHERE window = 1")),
    ("windows", "change alerts", flip("windows", "alerts", "window = 0")),
    ("windows", "truncate alerts", sql("UPDATE windows SET alerts = x'01' WHERE window = 2")),
    ("windows", "change rules", sql("UPDATE windows SET rules_version = 9 WHERE window = 0")),
    ("windows", "change status", sql("UPDATE windows SET status = 'closed' WHERE window = 1")),
    ("windows", "change tx", sql("UPDATE windows SET tx = NULL WHERE window = 1")),
    ("windows", "delete", sql("DELETE FROM windows WHERE window = 1")),
    ("windows", "insert", sql(WINDOW_COPY)),
    (
        "batches",
        "add a trigger",
        sql("CREATE TRIGGER t AFTER INSERT ON batches BEGIN SELECT 1; END"),
    ),
    ("windows", "drop an index", sql("DROP INDEX windows_status")),
    ("batches", "drop the patient index", sql("DROP INDEX batches_patient")),
    ("erasures", "drop the table", sql("DROP TABLE erasures")),
    (
        "erasures",
        "record an erasure the ledger does not hold",
        sql("INSERT INTO erasures SELECT DISTINCT patient, '', 7 FROM windows"),
    ),
    (
        "erasures",
        "record a device's erasure the ledger does not hold",
        sql(f"INSERT INTO erasures SELECT DISTINCT patient, '{DEMO_DEVICE}', 7 FROM windows"),
    ),
]


def test_a_clean_node_has_no_difference(node: Path) -> None:
    assert audit(node) == []


@pytest.mark.parametrize(("table", "how", "change"), CASES, ids=[f"{t}: {h}" for t, h, _ in CASES])
def test_a_tampered_table_is_named(node: Path, table: str, how: str, change: Tamper) -> None:
    patient = patient_of(node)
    tamper(node, change)
    found = audit(node)
    assert any(d.store == MONITORING_FILE and d.table == table for d in found), found
    for d in found:  # a difference names rows and fields, never the patient
        assert patient not in d.row + d.problem


def test_a_missing_store_is_a_difference_when_the_node_anchored_windows(node: Path) -> None:
    (node / MONITORING_FILE).unlink()
    found = audit(node)
    assert {d.table for d in found} == {"devices", "windows"}


def test_values_in_clear_are_differences(node: Path) -> None:
    tamper(node, sql("UPDATE windows SET alerts = '[]' WHERE window = 1"))
    (found,) = audit(node)
    assert (found.table, found.row) == ("windows", f"{DEMO_DEVICE}/1")
    assert "in clear" in found.problem


@contextmanager
def running(data: Path) -> Iterator[tuple[Node, HealthRecords, ReadingsStore, ReadingsService]]:
    """The node's own services, as the API wires them (the erasure listener included)."""
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    store = ReadingsStore.for_node(data / MONITORING_FILE, node.ledger.node_key)
    readings = ReadingsService(records, store)
    node.ledger.commit_listeners.append(readings.on_commit)
    try:
        yield node, records, store, readings
    finally:
        store.close()
        records.close()
        node.stop()


def test_a_patients_erasure_passes_and_readings_left_readable_do_not(
    node: Path, pristine: Path
) -> None:
    patient = patient_of(node)
    with running(node) as (live, records, store, readings):
        service = MonitoringService(records, Ingestor(live, store), readings)
        roles = frozenset({"patient"})
        caller = Caller(patient, live.settings.org, roles, parse_scopes(default_scopes(roles)))
        receipt = service.erase_readings(caller, patient, None)  # as DELETE .../readings does
        assert receipt["result"] == "accepted"
    with closing(store_mac.connect(node / MONITORING_FILE)) as conn:
        wait_for(
            lambda: {bytes(w) for (w,) in conn.execute("SELECT wrapped FROM batches")} == {b"{}"},
            "the readings shredded",
        )
    assert audit(node) == []  # the roots stay: the digests still make them
    with closing(store_mac.connect(node / MONITORING_FILE)) as conn:  # nothing to guess from
        assert all(not any(bytes(salt)) and not body for salt, body in conn.execute(
            "SELECT salt, body_hash FROM batches"))  # fmt: skip
    # the values that fired an alert were readings too: gone, what the ledger holds kept
    kept = ReadingsStore.for_node(node / MONITORING_FILE, read_key_file(
        Settings.load(node).node_key_file)[1])  # fmt: skip
    try:
        alerts = [a for d in kept.devices() for w in kept.anchored_windows(d) for a in w.alerts]
    finally:
        kept.close()
    assert alerts and all(set(a) == {"rule", "index", "at"} for a in alerts)
    shutil.copy(pristine / MONITORING_FILE, node / MONITORING_FILE)  # the readings back
    found = audit(node)
    assert found and {d.table for d in found} == {"batches"}
    assert all("erased" in d.problem for d in found)


def test_readings_destroyed_without_an_erasure_are_a_difference(node: Path) -> None:
    store = ReadingsStore.for_node(node / MONITORING_FILE, read_key_file(
        Settings.load(node).node_key_file)[1])  # fmt: skip
    try:  # as an erasure would, but the ledger holds none
        everything = Erasure(height=1, before=int(time.time() * 1000) + 3_600_000)
        assert store.shred_patient(patient_of(node), everything) > 0
    finally:
        store.close()
    found = audit(node)
    assert found and {d.table for d in found} == {"batches", "erasures"}
    assert all("no erasure" in d.problem for d in found if d.table == "batches")
    (recorded,) = [d for d in found if d.table == "erasures"]  # it says it applied one
    assert recorded.problem == "records an erasure the ledger does not hold"


def test_an_open_window_is_checked_against_the_device_state(node: Path) -> None:
    device_key = read_key_file(node / "keys" / "devices" / f"{DEMO_DEVICE}.key")[1]
    with running(node) as (live, _, store, _):
        state = store.device_state(DEMO_DEVICE)
        assert state is not None
        ingest = Ingestor(live, store)  # not started: the window stays open
        for seq in (state["last_seq"] + 1, state["last_seq"] + 2):
            compact = {"t0": int(time.time() * 1000), "codes": ["59408-5"], "rows": [[0, 97]]}
            batch = {"device": DEMO_DEVICE, "seq": seq, "compact": compact}
            ack = ingest.accept(DEMO_DEVICE, sign_batch(device_key, batch))
            assert ack.window == state["window"]
    assert audit(node) == []
    last = state["last_seq"] + 2
    tamper(node, sql(f"DELETE FROM batches WHERE seq = {last}"))
    found = audit(node)
    assert found and {d.table for d in found} == {"batches"}
    assert any("frontier" in d.problem or "state says" in d.problem for d in found)


def test_an_erasure_scrubs_the_live_state_of_the_patients_devices(node: Path) -> None:
    """The rules' memory of a patient's recent readings goes with their erasure (the anchoring
    thread scrubs it, under the device's lock); the counters stay, and the audit passes."""
    patient = patient_of(node)
    with running(node) as (live, records, store, readings):
        ingestor = Ingestor(live, store)
        live.ledger.commit_listeners.append(ingestor.on_commit)  # as the API wires it
        clinician = read_key_file(node / "keys" / "dr-ana-silva.key")[1]
        rate = {"id": "spo2-fall", "kind": "rate", "code": "59408-5", "op": "<", "delta": 30,
                "minutes": 60}  # fmt: skip
        (changed,) = live.execute([("monitoring", "set_rules", {
            "patient": patient, "device": DEMO_DEVICE, "rules": [rate]})], keypair=clinician)  # fmt: skip
        assert changed["result"] == "accepted"
        device_key = read_key_file(node / "keys" / "devices" / f"{DEMO_DEVICE}.key")[1]
        seq = store.device_state(DEMO_DEVICE)["last_seq"] + 1
        ingestor.accept(DEMO_DEVICE, sign_batch(device_key, {
            "device": DEMO_DEVICE, "seq": seq, "compact": {
                "t0": int(time.time() * 1000), "codes": ["59408-5"],
                "rows": [[0, 97], [1000, 96]]}}))  # fmt: skip
        memory = store.device_state(DEMO_DEVICE)["evaluator"]
        assert memory["spo2-fall"]["recent"]  # the values the rate rule remembers
        service = MonitoringService(records, ingestor, readings)
        roles = frozenset({"patient"})
        caller = Caller(patient, live.settings.org, roles, parse_scopes(default_scopes(roles)))
        assert service.erase_readings(caller, patient, None)["result"] == "accepted"
        assert ingestor.forget_erased() == 1
        scrubbed = store.device_state(DEMO_DEVICE)["evaluator"]
        assert "recent" not in scrubbed["spo2-fall"]
        assert ingestor.forget_erased() == 0  # once
        ingestor.flush()
    assert audit(node) == []


def test_a_window_whose_readings_were_erased_before_it_anchored_still_anchors(
    node: Path,
) -> None:
    """Rules changed and the patient erased their readings while a window waited to anchor:
    there is nothing left to judge, so it anchors under the new rules with no alert, instead
    of the anchoring thread retrying it for ever (a reviewer's finding)."""
    import queue

    patient = patient_of(node)
    with running(node) as (live, records, store, readings):
        ingestor = Ingestor(live, store)
        live.ledger.commit_listeners.append(ingestor.on_commit)
        device_key = read_key_file(node / "keys" / "devices" / f"{DEMO_DEVICE}.key")[1]
        seq = store.device_state(DEMO_DEVICE)["last_seq"] + 1
        now = int(time.time() * 1000)
        ingestor.accept(DEMO_DEVICE, sign_batch(device_key, {
            "device": DEMO_DEVICE, "seq": seq,
            "compact": {"t0": now, "codes": ["59408-5"], "rows": [[0, 97], [1000, 85]]}}))  # fmt: skip
        clinician = read_key_file(node / "keys" / "dr-ana-silva.key")[1]
        rule = {"id": "spo2-low", "kind": "threshold", "code": "59408-5", "op": "<", "value": 80}
        (changed,) = live.execute([("monitoring", "set_rules", {
            "patient": patient, "device": DEMO_DEVICE, "rules": [rule]})], keypair=clinician)  # fmt: skip
        assert changed["result"] == "accepted"
        service = MonitoringService(records, ingestor, readings)
        roles = frozenset({"patient"})
        caller = Caller(patient, live.settings.org, roles, parse_scopes(default_scopes(roles)))
        assert service.erase_readings(caller, patient, None)["result"] == "accepted"
        ingestor.flush()
        number = None
        for _ in range(3):  # refused for the changed rules, judged again, resubmitted, anchored
            waiting = []
            while True:
                try:
                    waiting.append(ingestor._closed.get_nowait())
                except queue.Empty:
                    break
            if not waiting:
                break
            number = waiting[-1].window
            ingestor.anchor(waiting)  # never raises: the erased readings are not needed
        assert number is not None
        (window,) = [w for w in store.anchored_windows(DEMO_DEVICE) if w.window == number]
        assert window.alerts == [] and window.status == "anchored"
