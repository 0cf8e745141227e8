"""An organisation's own records over FHIR (ruleset r10): its directory (Organization,
Practitioner, Location, ...), definitions and Group lists, held like a patient's records
(encrypted, anchored, versioned) but about no patient: no consent decides and no access event is
made for the directory; a Group, which lists patients, is read by the custodian's staff alone.
Synthea's bundles as published (Organization and Practitioner entries included) import."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger import store_mac
from tests.support.nodes import Server, demo_node, login, run_cli, serving

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
SYNTHEA = ROOT / "src" / "careledger" / "demo_data" / "synthea"
CORPUS = ROOT / "tests" / "vectors" / "synthea-directory"  # Synthea's as published
FHIR_JSON = {"content-type": "application/fhir+json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("org-records") / "node"
    demo_node(data, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def clients(server: Server) -> Iterator[dict[str, httpx.Client]]:
    names = ("dr-ana-silva", "st-mary-admin", "patient-0001", "ph-chen-li", "dr-ben-okafor")
    made = {n: login(server, server.data_dir / "keys" / f"{n}.key") for n in names}
    yield made
    for client in made.values():
        client.close()


def post(client: httpx.Client, resource: dict[str, Any]) -> httpx.Response:
    kind = resource["resourceType"]
    return client.post(f"/fhir/{kind}", content=json.dumps(resource), headers=FHIR_JSON)


def access_count(client: httpx.Client, patient: str) -> int:
    response = client.get(f"/v1/patients/{patient}/access-log")
    assert response.status_code == 200, response.text
    return len(response.json()["accesses"])


ORG = {
    "resourceType": "Organization",
    "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.7", "value": "hosp-77"}],
    "name": "Lakeside Community Hospital",
    "active": True,
}


def test_the_directory_is_created_read_versioned_and_searched_without_access_events(
    clients: dict[str, httpx.Client],
) -> None:
    dr, patient, other = clients["dr-ana-silva"], clients["patient-0001"], clients["ph-chen-li"]
    before = access_count(patient, "patient-0001")
    created = post(dr, ORG)
    assert created.status_code == 201, created.text
    org = created.json()
    assert org["meta"]["versionId"] == "1" and created.headers["X-CareLedger-Anchor-Tx"]
    # any member of the network reads the directory: another organisation's, a patient
    for reader in (dr, patient, other):
        got = reader.get(f"/fhir/Organization/{org['id']}")
        assert got.status_code == 200, got.text
        assert got.json()["name"] == ORG["name"]
    changed = dr.put(
        f"/fhir/Organization/{org['id']}",
        content=json.dumps({**org, "name": "Lakeside Hospital"}),
        headers={**FHIR_JSON, "if-match": 'W/"1"'},
    )
    assert changed.status_code == 200, changed.text
    history = dr.get(f"/fhir/Organization/{org['id']}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert dr.get(f"/fhir/Organization/{org['id']}/_history/1").json()["name"] == ORG["name"]
    found = other.get("/fhir/Organization", params={"name": "lakeside"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [org["id"]]
    by_id = other.get("/fhir/Organization", params={"identifier": "hosp-77"}).json()
    assert [e["resource"]["id"] for e in by_id["entry"]] == [org["id"]]
    none = other.get("/fhir/Organization", params={"name": "nowhere"}).json()
    assert none["total"] == 0
    # no patient's data was read: no patient's access log grew
    assert access_count(patient, "patient-0001") == before


def test_a_type_about_a_patient_still_needs_one(clients: dict[str, httpx.Client]) -> None:
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]}}  # fmt: skip
    response = post(clients["dr-ana-silva"], obs)
    assert response.status_code == 400
    assert "NO_PATIENT" in response.text


def test_only_the_custodians_admin_erases_an_organisation_record(
    clients: dict[str, httpx.Client],
) -> None:
    dr, admin = clients["dr-ana-silva"], clients["st-mary-admin"]
    made = post(dr, {"resourceType": "Location", "name": "Ward 7", "status": "active"}).json()
    url = f"/fhir/Location/{made['id']}"
    assert dr.delete(url).status_code == 403
    assert clients["patient-0001"].delete(url).status_code in (403, 404)
    assert admin.delete(url).status_code == 200
    gone = dr.get(url)
    assert gone.status_code == 410, gone.text


def test_a_group_is_read_by_its_custodians_staff_alone(
    clients: dict[str, httpx.Client],
) -> None:
    dr = clients["dr-ana-silva"]
    group = {
        "resourceType": "Group",
        "type": "person",
        "actual": True,
        "name": "Cardiology follow-up",
        "member": [{"entity": {"reference": "Patient/patient-0001"}}],
    }
    made = post(dr, group)
    assert made.status_code == 201, made.text
    url = f"/fhir/Group/{made.json()['id']}"
    assert dr.get(url).status_code == 200
    assert clients["st-mary-admin"].get(url).status_code == 200
    for outsider in ("ph-chen-li", "dr-ben-okafor", "patient-0001"):
        refused = clients[outsider].get(url)
        assert refused.status_code == 403, outsider
        assert "NOT_CUSTODIAN" in refused.text or "SCOPE" in refused.text
        listed = clients[outsider].get("/fhir/Group", params={"member": "Patient/patient-0001"})
        assert listed.status_code == 403, outsider
    found = dr.get("/fhir/Group", params={"member": "Patient/patient-0001"}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == [made.json()["id"]]


def test_synthea_bundles_as_published_import_with_no_dangling_reference(
    clients: dict[str, httpx.Client],
) -> None:
    dr = clients["dr-ana-silva"]
    published = [
        CORPUS / "hospitalInformation1559319163815.json",
        CORPUS / "practitionerInformation1559319163815.json",
        next(SYNTHEA.glob("Buster*.json")),
    ]
    for path in published:
        bundle = json.loads(path.read_text())
        response = dr.post("/fhir", content=json.dumps(bundle), headers=FHIR_JSON)
        assert response.status_code == 200, (path.name, response.text[:500])
        entries = response.json()["entry"]
        assert len(entries) == len(bundle["entry"])
        assert all(e["response"]["status"] == "201 Created" for e in entries)
    # the patient's records point at the Organization and Practitioner created with them
    result = response.json()["entry"]
    encounter = next(e["resource"] for e in result if e["resource"]["resourceType"] == "Encounter")
    for ref in (
        encounter["serviceProvider"]["reference"],
        encounter["participant"][0]["individual"]["reference"],
    ):
        kind, ident = ref.split("/")
        assert kind in ("Organization", "Practitioner")
        assert dr.get(f"/fhir/{kind}/{ident}").status_code == 200, ref
    found = dr.get("/fhir/Practitioner", params={"family": "Murphy"}).json()
    assert "total" in found


def test_the_node_audit_checks_organisation_records(
    server: Server, clients: dict[str, httpx.Client], tmp_path: Path
) -> None:
    """Last in this module: it stops the server to copy its files. The copy verifies whole;
    a patient's key wrapped onto an organisation's record is named."""
    made = post(clients["dr-ana-silva"], {"resourceType": "Practitioner", "active": True})
    assert made.status_code == 201
    server.stop()
    copy = tmp_path / "node"
    shutil.copytree(server.data_dir, copy)
    server.start()
    done = run_cli("verify", str(copy), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    conn = store_mac.connect(copy / "vault.sqlite")
    conn.execute(
        "INSERT INTO wrapped_keys(record_id, version, recipient, wrapped)"
        " SELECT record_id, version, 'x' || recipient, wrapped FROM wrapped_keys"
        " WHERE record_id = ? AND version = 1",
        (made.json()["id"],),
    )
    conn.commit()
    conn.close()
    done = run_cli("verify", str(copy), "--json")
    assert done.returncode == 1
    named = {(d["table"], d["row"].split()[0]) for d in json.loads(done.stdout)["differences"]}
    assert ("wrapped_keys", made.json()["id"]) in named


def test_a_chain_before_r10_holds_no_organisation_record(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False, ruleset="r9")
    with serving(data) as old, login(old, data / "keys" / "dr-ana-silva.key") as dr:
        refused = post(dr, ORG)
        assert refused.status_code == 404, refused.text
        assert refused.json()["issue"][0]["details"]["coding"][0]["code"] == "UNSUPPORTED_TYPE"
