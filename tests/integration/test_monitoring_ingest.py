"""Device readings on a real node: signed batches in, encrypted, windowed, anchored, alerted."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.core.keys import KeyPair
from careledger.errors import CareLedgerError, Conflict, Forbidden, ValidationError
from careledger.health.service import HealthRecords
from careledger.keyfile import generate_keypair, read_key_file
from careledger.monitoring import mimic
from careledger.monitoring.audit import audit_devices, compare
from careledger.monitoring.device import check_reading_proof, sign_batch
from careledger.monitoring.ingest import Ingestor
from careledger.monitoring.readings import ReadingsService
from careledger.monitoring.store import MONITORING_FILE, ReadingsStore
from careledger.node import Node
from tests.support.nodes import demo_node, run_cli, wait_for
from tests.support.vectors import vector_path

pytestmark = pytest.mark.integration
SHORT = "s25047-2704-05-04-10-44n.csv"
SPO2_LOW = {"id": "spo2-low", "kind": "threshold", "code": "59408-5", "op": "<", "value": 90}


class World:
    def __init__(self, data: Path) -> None:
        self.data = data
        self.keys = data / "keys"
        self.node = Node(Settings.load(data))
        self.node.start()
        self.records = HealthRecords.for_node(self.node)
        self.store = ReadingsStore.for_node(data / MONITORING_FILE, self.node.ledger.node_key)
        self.ingest = Ingestor(self.node, self.store, window_ms=200)
        self.ingest.start()
        self.readings = ReadingsService(self.records, self.store)
        self.patient = self.records.create(
            self.records.node_caller(), {"resourceType": "Patient"}, patient_of=None
        ).patient
        patient_key = self.records.custodial_key(self.patient)
        assert patient_key is not None
        self.patient_key: KeyPair = patient_key
        self.device_key = generate_keypair()

    def run(self, key: KeyPair | str, method: str, args: dict[str, Any]) -> dict[str, Any]:
        signer = key if isinstance(key, KeyPair) else read_key_file(self.keys / f"{key}.key")[1]
        (receipt,) = self.node.execute([("monitoring", method, args)], keypair=signer)
        return receipt

    def close(self) -> None:
        self.ingest.stop()
        self.store.close()
        self.records.close()
        self.node.stop()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    made = World(data)
    try:
        yield made
    finally:
        made.close()


def caller(member: str, org: str, roles: set[str]) -> Caller:
    return Caller(member, org, frozenset(roles), parse_scopes(default_scopes(roles)))


def test_mimic_ii_readings_are_anchored_proven_and_alert_once_per_episode(world: World) -> None:
    register = {"id": "oxi-1", "model": "PulseOx", "public_key": world.device_key.public_b64}
    assert world.run("st-mary-admin", "register_device", register)["result"] == "accepted"
    start = world.node.ledger.head.time + 60_000
    batches = list(mimic.batches(vector_path("wfdb-mimic2-numerics", SHORT), start_ms=start))
    first = sign_batch(world.device_key, {"device": "oxi-1", "seq": 1, "compact": batches[0]})
    with pytest.raises(Forbidden) as unbound:
        world.ingest.accept("oxi-1", first)
    assert unbound.value.code == "NOT_BOUND"
    assert world.run(world.patient_key, "bind", {"device": "oxi-1"})["result"] == "accepted"
    rules = {"patient": world.patient, "device": "oxi-1", "rules": [SPO2_LOW]}
    assert world.run("dr-ana-silva", "set_rules", rules)["result"] == "accepted"

    acks = []
    for seq, compact in enumerate(batches, start=1):
        envelope = sign_batch(world.device_key, {"device": "oxi-1", "seq": seq, "compact": compact})
        acks.append(world.ingest.accept("oxi-1", envelope))
    assert world.ingest.accept("oxi-1", envelope) == acks[-1]  # a retry: the same answer
    changed = {"device": "oxi-1", "seq": len(batches), "compact": batches[0]}
    with pytest.raises(Conflict):
        world.ingest.accept("oxi-1", sign_batch(world.device_key, changed))
    forged = sign_batch(generate_keypair(), {"device": "oxi-1", "seq": 99, "compact": batches[0]})
    with pytest.raises(Forbidden) as bad:
        world.ingest.accept("oxi-1", forged)
    assert bad.value.code == "BAD_SIGNATURE"
    world.ingest.flush()

    ledger = world.node.ledger

    def alerts() -> list[dict[str, Any]]:
        keys = ledger.store.state_keys("monitoring", "alert/", 1000)
        return [ledger.state("monitoring", k) for k in keys]

    total = sum(a.readings for a in acks)
    wait_for(
        lambda: (
            sum(
                (ledger.state("monitoring", f"window/oxi-1/{w:012d}") or {}).get("count", 0)
                for w in range(50)
            )
            == total
        ),
        "every reading anchored",
    )
    fired = alerts()
    assert len(fired) == 5 == sum(a.alerts for a in acks)  # five SpO2 < 90 episodes
    assert all("value" not in a and a["rule"] == "spo2-low" for a in fired)  # no PHI on the ledger

    # anyone holding the readings can re-judge them: the alerts follow from the rules
    (report,) = audit_devices(ledger, world.store, ["oxi-1"])
    assert report.as_json()["ok"] and report.alerts == 5 and report.windows >= 1
    audited = run_cli("devices", "audit", str(world.data), "--json")
    assert audited.returncode == 0, audited.stderr
    assert orjson.loads(audited.stdout)[0]["alerts"] == 5
    wrong = [{**fired[0], "index": fired[0]["index"] + 1}, *fired[1:]]
    assert not compare(wrong, fired)

    clinician = caller("dr-ana-silva", "st-mary", {"clinician"})
    inbox = world.readings.inbox(clinician)
    assert {a["id"] for a in inbox} == {a["id"] for a in fired}
    answer = world.readings.reading(clinician, "oxi-1", acks[3].window, acks[3].first_index)
    root = check_reading_proof(answer)
    anchor = ledger.tx_proof(answer["anchor"]["tx_id"])
    assert anchor["receipt"]["result"] == "accepted"
    window = ledger.state("monitoring", f"window/oxi-1/{acks[3].window:012d}")
    assert window["root"] == root.hex()
    tampered = {**answer, "reading": {**answer["reading"], "value": 99.0}}
    with pytest.raises(CareLedgerError):
        check_reading_proof(tampered)
    log = world.records.access_log(caller(world.patient, "st-mary", {"patient"}), world.patient)
    assert any(f"oxi-1/{acks[3].window}" in e.get("windows", []) for e in log)
    series = world.readings.series(caller(world.patient, "st-mary", {"patient"}), world.patient)
    assert len(series["readings"]) == total and len(series["alerts"]) == 5
    assert all(a["value"] < 90 for a in series["alerts"])
    pharmacist = caller("ph-chen-li", "city-pharmacy", {"pharmacist"})
    with pytest.raises(Forbidden):
        world.readings.reading(pharmacist, "oxi-1", acks[3].window, acks[3].first_index)

    # the patient ends the binding: the device's next batch is refused
    unbind = {"device": "oxi-1", "reason": "patient_request"}
    assert world.run(world.patient_key, "unbind", unbind)["result"] == "accepted"
    late = sign_batch(world.device_key, {"device": "oxi-1", "seq": 500, "compact": batches[0]})
    with pytest.raises(Forbidden) as revoked:
        world.ingest.accept("oxi-1", late)
    assert revoked.value.code == "NOT_BOUND"


def test_bad_batches_are_refused_with_codes(world: World) -> None:
    register = {"id": "bp-1", "model": "Cuff", "public_key": world.device_key.public_b64}
    assert world.run("st-mary-admin", "register_device", register)["result"] == "accepted"
    assert world.run(world.patient_key, "bind", {"device": "bp-1"})["result"] == "accepted"
    now = world.node.ledger.head.time

    def send(batch: dict[str, Any]) -> str:
        try:
            world.ingest.accept("bp-1", sign_batch(world.device_key, {"device": "bp-1", **batch}))
        except CareLedgerError as exc:
            return exc.code
        return "accepted"

    compact = {"t0": now, "codes": ["85354-9"], "rows": [[0, [120, 80]]]}
    assert send({"seq": 0, "compact": compact}) == "BAD_BATCH"
    assert send({"seq": 1, "compact": {**compact, "rows": [[0, [999, 80]]]}}) == "IMPLAUSIBLE"
    assert send({"seq": 1, "compact": {**compact, "t0": now - 86_400_000}}) == "BEFORE_BINDING"
    assert send({"seq": 1, "compact": compact, "extra": 1}) == "BAD_BATCH"
    assert send({"seq": 1, "compact": compact}) == "accepted"
    with pytest.raises(ValidationError) as wrong:
        world.ingest.accept("oxi-9", sign_batch(world.device_key, {"device": "bp-1", "seq": 2}))
    assert wrong.value.code == "WRONG_DEVICE"


def test_windows_caught_by_a_rules_change_are_re_evaluated_not_dropped(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    made = World(data)
    made.ingest.stop()  # anchor by hand below, so the race is certain
    try:
        register = {"id": "oxi-r", "model": "x", "public_key": made.device_key.public_b64}
        assert made.run("st-mary-admin", "register_device", register)["result"] == "accepted"
        assert made.run(made.patient_key, "bind", {"device": "oxi-r"})["result"] == "accepted"
        rules = {"patient": made.patient, "device": "oxi-r", "rules": [SPO2_LOW]}
        assert made.run("dr-ana-silva", "set_rules", rules)["result"] == "accepted"
        start = made.node.ledger.head.time
        batches = list(mimic.batches(vector_path("wfdb-mimic2-numerics", SHORT), start_ms=start))
        for seq, compact in enumerate(batches, start=1):  # alerts close windows: several queue up
            batch = {"device": "oxi-r", "seq": seq, "compact": compact}
            made.ingest.accept("oxi-r", sign_batch(made.device_key, batch))
        made.ingest.flush()
        queued = []
        while not made.ingest._closed.empty():
            queued.append(made.ingest._closed.get_nowait())
        assert len(queued) >= 3
        lower = {**rules, "rules": [{**SPO2_LOW, "value": 80}]}  # the clinician edits the rule
        assert made.run("dr-ana-silva", "set_rules", lower)["result"] == "accepted"
        made.ingest.anchor(queued)
        for _ in range(10):  # re-queued windows, in order, until none is left
            again = []
            while not made.ingest._closed.empty():
                again.append(made.ingest._closed.get_nowait())
            if not again:
                break
            made.ingest.anchor(again)
        ledger = made.node.ledger
        anchored = [ledger.state("monitoring", f"window/oxi-r/{w.window:012d}") for w in queued]
        assert all(a is not None for a in anchored)  # nothing dropped
        total = sum(a["count"] for a in anchored)
        assert total == sum(made.ingest.store.window("oxi-r", w.window).count for w in queued)
        keys = ledger.store.state_keys("monitoring", "alert/", 1000)
        assert len(keys) < 5  # re-judged under the lowered rule: fewer episodes below 80
        (report,) = audit_devices(ledger, made.ingest.store, ["oxi-r"])
        assert report.as_json()["ok"], report.mismatches
    finally:
        made.close()
