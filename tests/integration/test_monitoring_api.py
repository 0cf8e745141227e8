"""Remote monitoring over real HTTP: the MIMIC-II simulator as a device, alerts pushed to the
care team, acknowledged, readings proven end to end, a WebSocket stream, an ended binding."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from websockets.sync.client import connect

from careledger.keyfile import generate_keypair, read_key_file, write_key_file
from careledger.monitoring import mimic
from careledger.monitoring.device import sign_batch
from careledger.sdk import Client
from tests.support.nodes import Server, demo_node, login, run_cli, serving, wait_for
from tests.support.vectors import vector_path

pytestmark = pytest.mark.integration
SHORT = "s25047-2704-05-04-10-44n.csv"
SPO2_LOW = {"id": "spo2-low", "kind": "threshold", "code": "59408-5", "op": "<", "value": 90}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("monitoring") / "node"
    demo_node(data, with_records=False, with_supply=False)
    node_file = data / "node.json"
    settings = json.loads(node_file.read_text())
    settings["monitoring"] = {"window_ms": 200, "tick_seconds": 0.5}
    node_file.write_text(json.dumps(settings))
    with serving(data) as running:
        yield running


class AlertListener(threading.Thread):
    """The care team's SSE stream, collected in the background."""

    def __init__(self, http: httpx.Client) -> None:
        super().__init__(daemon=True)
        self.http = http
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with self.http.stream("GET", "/v1/monitoring/alerts/stream", timeout=60) as response:
                kind = ""
                for line in response.iter_lines():
                    if line.startswith(": connected"):
                        self.ready.set()
                    elif line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: "):
                        self.events.append((kind, json.loads(line[6:])))
        except httpx.HTTPError:
            return  # the client closed at the end of the test


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    keys = server.data_dir / "keys"
    admin = login(server, keys / "st-mary-admin.key")
    clinician = login(server, keys / "dr-ana-silva.key")
    made = clinician.post(
        "/fhir/Patient",
        content=json.dumps({"resourceType": "Patient", "gender": "female"}),
        headers={"content-type": "application/fhir+json"},
    )
    assert made.status_code == 201, made.text
    patient_id = made.json()["id"]
    patient = login(server, keys / "patients" / f"{patient_id}.key")
    device_key = generate_keypair()
    key_file = tmp_path_factory.mktemp("device") / "oxi-7.key"
    write_key_file(key_file, device_key, name="oxi-7")
    try:
        yield {
            "admin": admin,
            "clinician": clinician,
            "patient": patient,
            "patient_id": patient_id,
            "device_key": device_key,
            "key_file": key_file,
        }
    finally:
        for http in (admin, clinician, patient):
            http.close()


def test_a_monitored_patient_from_device_to_acknowledged_alert(
    server: Server, world: dict[str, Any]
) -> None:
    admin, clinician, patient = world["admin"], world["clinician"], world["patient"]
    pid = world["patient_id"]
    body = {"id": "oxi-7", "model": "PulseOx 3", "public_key": world["device_key"].public_b64}
    made = admin.post("/v1/devices", json=body)
    assert made.status_code == 201, made.text
    assert clinician.post("/v1/devices", json={**body, "id": "x"}).json()["code"] == (
        "NOT_AUTHORISED"
    )
    rules = {"device": "oxi-7", "rules": [SPO2_LOW]}
    assert clinician.put(f"/v1/monitoring/patients/{pid}/rules", json=rules).json()["code"] == (
        "NOT_BOUND"
    )
    assert patient.post("/v1/devices/oxi-7/binding").status_code == 200
    assert admin.post("/v1/devices/oxi-7/binding").json()["code"] == "NOT_AUTHORISED"
    set_rules = clinician.put(f"/v1/monitoring/patients/{pid}/rules", json=rules)
    assert set_rules.status_code == 200, set_rules.text
    assert set_rules.json()["rules"]["version"] == 2  # 1: the binding's empty rules

    listener = AlertListener(clinician)
    listener.start()
    assert listener.ready.wait(10)
    csv = vector_path("wfdb-mimic2-numerics", SHORT)
    result = run_cli(
        "devices", "simulate", str(csv), "--device", "oxi-7", "--key", str(world["key_file"]),
        "--speed", "0", "--per-batch", "6", "--url", server.url, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    summary = orjson.loads(result.stdout)
    readings = sum(
        1 for _, values in mimic.rows(csv) for v in values if v is not None
    )  # a BP pair is one reading
    assert summary == {"batches": 12, "readings": readings, "alerts": 5, "refused": {}}

    pushed = wait_for(
        lambda: (
            [d for k, d in listener.events if k == "monitoring.alert"] or None
            if len([1 for k, _ in listener.events if k == "monitoring.alert"]) == 5
            else None
        ),
        "five alerts pushed",
    )
    assert {a["rule"] for a in pushed} == {"spo2-low"} and all("value" not in a for a in pushed)
    inbox = clinician.get("/v1/monitoring/alerts").json()["items"]
    assert len(inbox) == 5
    first = inbox[-1]["id"]
    noted = clinician.post(f"/v1/monitoring/alerts/{first}/ack", json={"note": "phoned"})
    assert noted.status_code == 400  # clinical text never goes to the ledger
    acked = clinician.post(f"/v1/monitoring/alerts/{first}/ack")
    assert acked.status_code == 200, acked.text
    assert acked.json()["alert"]["acknowledged"]["by"] == "dr-ana-silva"
    assert len(clinician.get("/v1/monitoring/alerts").json()["items"]) == 4
    wait_for(
        lambda: any(k == "monitoring.acknowledged" for k, _ in listener.events),
        "the acknowledgement pushed",
    )

    # every reading is provable: reading -> window root -> anchoring transaction -> checkpoint
    series = patient.get(f"/v1/monitoring/patients/{pid}/readings").json()
    assert len(series["readings"]) == readings and len(series["alerts"]) == 5
    assert all(a["value"] < 90 for a in series["alerts"])  # values only where readings are read
    some = series["readings"][len(series["readings"]) // 2]
    answer = clinician.get(
        f"/v1/devices/oxi-7/windows/{some['window']}/readings/{some['index']}"
    ).json()
    assert answer["reading"]["time"] == some["time"]
    reader_key = read_key_file(server.data_dir / "keys" / "patients" / f"{pid}.key")[1]
    with Client(server.url, keypair=reader_key) as c:
        c.login()  # the patient: the anchoring window names them (ADR 0012)
        verified = c.verify_reading(answer, c.verifier_keys())
        assert verified.receipt["result"] == "accepted"
        forged = {**answer, "reading": {**answer["reading"], "value": 42.0}}
        with pytest.raises(Exception, match=r"proof|observation"):
            c.verify_reading(forged, c.verifier_keys())
    pharmacist = login(server, server.data_dir / "keys" / "ph-chen-li.key")
    refused = pharmacist.get(f"/v1/devices/oxi-7/windows/{some['window']}/readings/0")
    assert refused.status_code == 403
    assert pharmacist.get(f"/v1/monitoring/patients/{pid}/readings").status_code == 403
    huge = httpx.post(
        f"{server.url}/v1/devices/oxi-7/readings", content=b"[" + b"1," * 3_000_000 + b"1]"
    )
    assert huge.status_code == 413 and huge.json()["code"] == "REQUEST_TOO_LARGE"
    pharmacist.close()
    # the same file again: said plainly that it lands beside what is there, not merged
    again = run_cli(
        "devices", "simulate", str(csv), "--device", "oxi-7", "--key", str(world["key_file"]),
        "--speed", "0", "--per-batch", "6", "--url", server.url, "--json",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert re.search(r"oxi-7 already had \d+ windows", " ".join(again.stderr.split()))
    assert orjson.loads(again.stdout)["already"]["oxi-7"] > 0


def test_a_websocket_stream_and_an_ended_binding(server: Server, world: dict[str, Any]) -> None:
    """Runs after the device is registered and bound above."""
    key = world["device_key"]
    now = int(time.time() * 1000)
    compact = {"t0": now, "codes": ["8867-4"], "rows": [[0, 71], [1000, 72]]}
    ws_url = server.url.replace("http", "ws", 1) + "/v1/devices/oxi-7/stream"
    with connect(ws_url) as ws:
        ws.send(json.dumps(sign_batch(key, {"device": "oxi-7", "seq": 2**52, "compact": compact})))
        ack = json.loads(ws.recv())
        assert ack["status"] == "accepted" and ack["readings"] == 2
        forged = sign_batch(
            generate_keypair(), {"device": "oxi-7", "seq": 2**52 + 1, "compact": compact}
        )
        ws.send(json.dumps(forged))
        assert json.loads(ws.recv())["code"] == "BAD_SIGNATURE"
        ws.send("not json")
        assert json.loads(ws.recv())["status"] == "refused"
    assert world["patient"].delete("/v1/devices/oxi-7/binding").status_code == 200
    late = sign_batch(key, {"device": "oxi-7", "seq": 2**52 + 2, "compact": compact})
    refused = httpx.post(f"{server.url}/v1/devices/oxi-7/readings", json=late)
    assert refused.status_code == 403 and refused.json()["code"] == "NOT_BOUND"


def test_a_telemedicine_visit_with_consent_join_and_note(
    server: Server, world: dict[str, Any]
) -> None:
    clinician, patient, pid = world["clinician"], world["patient"], world["patient_id"]
    now = int(time.time() * 1000)
    body = {
        "patient": pid,
        "start": now + 5 * 60_000,
        "end": now + 35 * 60_000,
        "link": "https://video.example/room/xyz",
        "recording": True,
        "reason": "blood pressure review",
    }
    assert clinician.post("/v1/visits", json={**body, "link": "ftp://x"}).json()["code"] == (
        "BAD_LINK"
    )
    made = clinician.post("/v1/visits", json=body)
    assert made.status_code == 201, made.text
    visit_id = made.json()["visit"]["id"]
    assert "link" not in made.json()["visit"] and "link_hash" not in made.json()["visit"]
    upcoming = patient.get("/v1/visits").json()["upcoming"]
    assert [v["id"] for v in upcoming] == [visit_id]
    early = patient.post(f"/v1/visits/{visit_id}/join")
    assert early.status_code == 422 and early.json()["code"] == "NO_CONSENT"
    assert "link" not in early.json()
    consented = patient.post(f"/v1/visits/{visit_id}/consent", json={"recording": False})
    assert consented.status_code == 200, consented.text
    assert consented.json()["visit"]["consent"]["recording"] is False
    # nobody can claim a visit's id to swap its link: ids are the node's
    other = clinician.post(
        "/v1/visits", json={**body, "id": visit_id, "link": "https://evil.example/x"}
    )
    assert other.status_code == 201 and other.json()["visit"]["id"] != visit_id
    # an envelope signed for another visit does not open this one's room
    patient_key = read_key_file(server.data_dir / "keys" / "patients" / f"{pid}.key")[1]
    with Client(server.url, keypair=patient_key) as c:
        elsewhere = c.build("visits", "join", {"id": other.json()["visit"]["id"]})
    swapped = patient.post(f"/v1/visits/{visit_id}/join", json={"envelope": elsewhere})
    assert swapped.status_code == 400 and swapped.json()["code"] == "WRONG_ENVELOPE"
    joined = patient.post(f"/v1/visits/{visit_id}/join")
    assert joined.status_code == 200 and joined.json()["link"] == body["link"]
    admin = world["admin"]
    assert admin.post(f"/v1/visits/{visit_id}/join").status_code == 403
    assert clinician.post(f"/v1/visits/{visit_id}/start").status_code == 200
    ended = clinician.post(f"/v1/visits/{visit_id}/end", json={"note": "BP 128/82; continue."})
    assert ended.status_code == 200, ended.text
    visit = ended.json()["visit"]
    assert visit["status"] == "ended" and {n["type"] for n in visit["notes"]} == {
        "Encounter",
        "DocumentReference",
    }
    bundle = patient.get(f"/fhir/Patient/{pid}/$everything").json()
    kinds = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert {"Encounter", "DocumentReference"} <= kinds
    assert [v["id"] for v in patient.get("/v1/visits").json()["past"]] == [visit_id]


def test_a_patients_erasure_reaches_their_readings(server: Server, world: dict[str, Any]) -> None:
    """Readings are crypto-shredded like vault records; the anchored windows and their proofs
    stay (a reading proven before still verifies, over the API, after), and the ledger still
    verifies."""
    clinician, patient, pid = world["clinician"], world["patient"], world["patient_id"]
    series = patient.get(f"/v1/monitoring/patients/{pid}/readings").json()
    some = series["readings"][0]
    path = f"/v1/devices/{some['device']}/windows/{some['window']}/readings/{some['index']}"
    before = clinician.get(path)
    assert before.status_code == 200
    answer = before.json()
    assert clinician.delete(f"/v1/monitoring/patients/{pid}/readings").status_code == 403
    erased = patient.delete(f"/v1/monitoring/patients/{pid}/readings")
    assert erased.status_code == 200, erased.text
    assert erased.json()["receipt"]["result"] == "accepted"
    gone = wait_for(
        lambda: (r := clinician.get(path)).status_code == 410 and r, "the readings shredded"
    )
    assert gone.json()["code"] == "READINGS_ERASED"
    after = patient.get(f"/v1/monitoring/patients/{pid}/readings").json()
    assert after["readings"] == [] and len(after["alerts"]) == len(series["alerts"])
    # The window's root, its anchoring transaction's inclusion proof and the checkpoint, all
    # read from the node after the erasure, still prove the reading its holder kept.
    patient_key = read_key_file(server.data_dir / "keys" / "patients" / f"{pid}.key")[1]
    with Client(server.url, keypair=patient_key) as c:
        c.login()
        verified = c.verify_reading(answer, c.verifier_keys())
        assert verified.receipt["result"] == "accepted"
        assert verified.receipt["tx_id"] == answer["anchor"]["tx_id"]
        forged = {**answer, "reading": {**answer["reading"], "value": -1.0}}
        with pytest.raises(Exception, match=r"proof|observation"):
            c.verify_reading(forged, c.verifier_keys())
    checked = run_cli("verify", str(server.data_dir), "--reexecute")
    assert checked.returncode == 0, checked.stdout + checked.stderr
