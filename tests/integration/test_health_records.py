"""Health records over real HTTP: consent gates reads, every access is logged, no PHI leaks."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger import store_mac
from careledger.core.checkpoint import format_vkey
from careledger.errors import VerificationError
from careledger.keyfile import generate_keypair, read_key_file
from careledger.sdk import Client
from tests.support.nodes import Server, demo_node, login, run_cli, serving
from tests.support.phi import distinctive_phi, files_containing

pytestmark = pytest.mark.integration
SYNTHEA = Path(__file__).resolve().parents[2] / "src" / "careledger" / "demo_data" / "synthea"


def synthea_patient() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    bundle = json.loads(next(SYNTHEA.glob("Buster*.json")).read_text())
    resources = [e["resource"] for e in bundle["entry"]]
    patient = next(r for r in resources if r["resourceType"] == "Patient")
    observations = [r for r in resources if r["resourceType"] == "Observation"][:3]
    return patient, observations


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("health") / "node"
    demo_node(data)
    return data


@pytest.fixture(scope="module")
def server(node_dir: Path) -> Iterator[Server]:
    with serving(node_dir) as running:
        yield running


def fhir_post(http: httpx.Client, resource: dict[str, Any]) -> httpx.Response:
    return http.post(
        f"/fhir/{resource['resourceType']}",
        content=json.dumps(resource),
        headers={"content-type": "application/fhir+json"},
    )


@pytest.fixture(scope="module")
def world(server: Server, node_dir: Path) -> Iterator[dict[str, Any]]:
    clinician = login(server, node_dir / "keys" / "dr-ana-silva.key")
    patient, observations = synthea_patient()
    created = fhir_post(clinician, patient)
    assert created.status_code == 201, created.text
    pid = created.json()["id"]
    obs_ids = []
    for obs in observations:
        body = {**obs, "subject": {"reference": f"Patient/{pid}"}}
        body.pop("encounter", None)
        made = fhir_post(clinician, body)
        assert made.status_code == 201, made.text
        obs_ids.append(made.json()["id"])
    try:
        yield {"clinician": clinician, "patient": pid, "obs": obs_ids, "source": patient}
    finally:
        clinician.close()


def fhir_consent(patient: str, org: str, **provision: Any) -> dict[str, Any]:
    """A patient-privacy FHIR Consent permitting ``org``, with extra provision elements."""
    role = {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
        ]
    }
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": {
            "type": "permit",
            "actor": [{"role": role, "reference": {"reference": f"Organization/{org}"}}],
            **provision,
        },
    }


def grant(server: Server, node_dir: Path, patient: str, **args: Any) -> dict[str, Any]:
    key = read_key_file(node_dir / "keys" / "patients" / f"{patient}.key")[1]
    with Client(server.url, keypair=key) as c:
        return c.call("consent", "grant", args)


def revoke(server: Server, node_dir: Path, patient: str, consent: str) -> dict[str, Any]:
    key = read_key_file(node_dir / "keys" / "patients" / f"{patient}.key")[1]
    with Client(server.url, keypair=key) as c:
        return c.call("consent", "revoke", {"consent": consent})


def test_without_consent_403_with_consent_200_after_revocation_403(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    with login(server, node_dir / "keys" / "ph-chen-li.key") as pharmacist:
        check_consent_flow(server, node_dir, world, pharmacist)


def check_consent_flow(
    server: Server, node_dir: Path, world: dict[str, Any], pharmacist: httpx.Client
) -> None:
    url = f"/fhir/Observation/{world['obs'][0]}"
    denied = pharmacist.get(url)
    assert denied.status_code == 403
    assert denied.json()["resourceType"] == "OperationOutcome"
    assert denied.headers["X-CareLedger-Code"] == "NO_CONSENT"
    consent = grant(
        server,
        node_dir,
        world["patient"],
        grantee={"org": "city-pharmacy"},
        actions=["read"],
        resource_types=["Observation"],
        purposes=["TREAT"],
    )
    assert consent["result"] == "accepted"
    allowed = pharmacist.get(url)
    assert allowed.status_code == 200
    assert allowed.json()["subject"]["reference"] == f"Patient/{world['patient']}"
    assert revoke(server, node_dir, world["patient"], consent["tx_id"])["result"] == "accepted"
    assert pharmacist.get(url).status_code == 403
    # The consent covered Observation only: the Patient record stays closed.
    assert pharmacist.get(f"/fhir/Patient/{world['patient']}").status_code == 403


def test_patient_sees_who_accessed(server: Server, node_dir: Path, world: dict[str, Any]) -> None:
    with login(server, node_dir / "keys" / "patients" / f"{world['patient']}.key") as patient:
        log = patient.get(f"/v1/patients/{world['patient']}/access-log").json()["accesses"]
    who = {(a["accessor"], a["action"]) for a in log}
    assert ("dr-ana-silva", "write") in who
    assert ("ph-chen-li", "read") in who
    with login(server, node_dir / "keys" / "ph-chen-li.key") as other:
        assert other.get(f"/v1/patients/{world['patient']}/access-log").status_code == 403


def test_read_carries_a_verifiable_anchor(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    """The patient checks their own record against the ledger (ADR 0012: the anchoring
    envelope names them, so they may read it; an anonymous reader may not)."""
    patient_key = read_key_file(node_dir / "keys" / "patients" / f"{world['patient']}.key")[1]
    node_key = read_key_file(node_dir / "keys" / "st-mary-node.key")[1]
    trusted = [format_vkey("st-mary-node", node_key.public_key)]
    with (
        Client(server.url) as anonymous,
        login(server, node_dir / "keys" / "patients" / f"{world['patient']}.key") as http,
    ):
        response = http.get(f"/fhir/Observation/{world['obs'][1]}")
        assert response.status_code == 200
        resource = response.json()
        with pytest.raises(VerificationError):
            anonymous.verify_resource(resource, response.headers, trusted)
    with Client(server.url, keypair=patient_key) as c:
        c.login()
        verified = c.verify_resource(resource, response.headers, trusted)
        assert verified.leaf_index == int(response.headers["X-CareLedger-Leaf-Index"])
        altered = {**resource, "status": "cancelled"}
        with pytest.raises(VerificationError):
            c.verify_resource(altered, response.headers, trusted)
        other_salt = {**response.headers, "X-CareLedger-Salt": "A" * 43}
        with pytest.raises(VerificationError):
            c.verify_resource(resource, other_salt, trusted)


def test_update_history_and_everything(server: Server, world: dict[str, Any]) -> None:
    clinician = world["clinician"]
    url = f"/fhir/Observation/{world['obs'][2]}"
    current = clinician.get(url).json()
    current["status"] = "amended"
    stale = clinician.put(url, content=json.dumps(current), headers={"If-Match": 'W/"5"'})
    assert stale.status_code == 412  # FHIR: a stale If-Match is a failed precondition
    updated = clinician.put(url, content=json.dumps(current), headers={"If-Match": 'W/"1"'})
    assert updated.status_code == 200, updated.text
    assert updated.json()["meta"]["versionId"] == "2"
    history = clinician.get(f"{url}/_history").json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["2", "1"]
    assert clinician.get(f"{url}/_history/1").json()["status"] != "amended"
    everything = clinician.get(f"/fhir/Patient/{world['patient']}/$everything").json()
    assert {e["resource"]["resourceType"] for e in everything["entry"]} == {
        "Patient",
        "Observation",
    }
    assert everything["total"] == 1 + len(world["obs"])
    search = clinician.get(
        "/fhir/Observation", params={"patient": world["patient"], "_count": 1}
    ).json()
    assert search["total"] == len(world["obs"])
    assert len(search["entry"]) == 1
    assert any(link["relation"] == "next" for link in search["link"])
    bogus = {**current, "status": "bogus"}
    refused = clinician.put(url, content=json.dumps(bogus))
    assert refused.status_code == 400
    assert "bogus" not in refused.text


def test_shredded_record_is_unreadable_and_ledger_verifies(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    target = world["obs"][0]
    with login(server, node_dir / "keys" / "patients" / f"{world['patient']}.key") as patient:
        shredded = patient.post(f"/v1/records/{target}/shred")
        assert shredded.status_code == 200, shredded.text
        for reader in (world["clinician"], patient):
            gone = reader.get(f"/fhir/Observation/{target}")
            assert gone.status_code == 410  # FHIR: Gone
            assert gone.headers["X-CareLedger-Code"] == "RECORD_SHREDDED"
    assert run_cli("verify", str(node_dir)).returncode == 0


def test_no_phi_in_any_file(server: Server, node_dir: Path, world: dict[str, Any]) -> None:
    needles = distinctive_phi([world["source"]])
    assert len(needles) >= 5, needles  # name, birth date, identifiers, phone, address
    assert files_containing(node_dir, needles) == []


def test_fhir_consent_and_audit_event(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    consent = fhir_consent(
        world["patient"],
        "northside-clinic",
        action=[
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": "access",
                    }
                ]
            }
        ],
        purpose=[{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}],
        **{"class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Observation"}]},
    )
    with (
        login(server, node_dir / "keys" / "patients" / f"{world['patient']}.key") as patient,
        login(server, node_dir / "keys" / "dr-ben-okafor.key") as other_clinician,
    ):
        target = f"/fhir/Observation/{world['obs'][2]}"
        assert other_clinician.get(target).status_code == 403
        created = patient.post("/fhir/Consent", content=json.dumps(consent))
        assert created.status_code == 201, created.text
        consent_id = created.json()["id"]
        assert other_clinician.get(target).status_code == 200
        listed = patient.get("/fhir/Consent", params={"patient": world["patient"]}).json()
        assert consent_id in {e["resource"]["id"] for e in listed["entry"]}
        read_back = patient.get(f"/fhir/Consent/{consent_id}").json()
        assert (
            read_back["provision"]["actor"][0]["reference"]["reference"]
            == "Organization/northside-clinic"
        )
        revoked = patient.put(
            f"/fhir/Consent/{consent_id}", content=json.dumps({**consent, "status": "inactive"})
        )
        assert revoked.status_code == 200
        assert revoked.json()["status"] == "inactive"
        assert other_clinician.get(target).status_code == 403
        # Someone else cannot grant in the patient's name.
        assert (
            world["clinician"].post("/fhir/Consent", content=json.dumps(consent)).status_code == 403
        )
        events = patient.get("/fhir/AuditEvent", params={"patient": world["patient"]}).json()
        agents = {e["resource"]["agent"][0]["who"]["reference"] for e in events["entry"]}
        assert "Practitioner/dr-ben-okafor" in agents
        assert (
            other_clinician.get(
                "/fhir/AuditEvent", params={"patient": world["patient"]}
            ).status_code
            == 403
        )


def test_search_parameters_and_patient_export(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    clinician = world["clinician"]
    pid = world["patient"]
    everything = clinician.get(f"/fhir/Patient/{pid}/$everything").json()
    observations = [
        e["resource"] for e in everything["entry"] if e["resource"]["resourceType"] == "Observation"
    ]
    sample = observations[0]
    coding = sample["code"]["coding"][0]
    by_code = clinician.get(
        "/fhir/Observation", params={"patient": pid, "code": f"{coding['system']}|{coding['code']}"}
    ).json()
    assert sample["id"] in {e["resource"]["id"] for e in by_code["entry"]}
    assert all(
        any(c["code"] == coding["code"] for c in e["resource"]["code"]["coding"])
        for e in by_code["entry"]
    )
    none = clinician.get(
        "/fhir/Observation", params={"patient": pid, "code": "http://loinc.org|0000-0"}
    ).json()
    assert none["total"] == 0
    when = sample["effectiveDateTime"][:10]
    dated = clinician.get("/fhir/Observation", params={"patient": pid, "date": f"ge{when}"}).json()
    assert sample["id"] in {e["resource"]["id"] for e in dated["entry"]}
    later = clinician.get(
        "/fhir/Observation", params={"patient": pid, "date": "gt2999-01-01"}
    ).json()
    assert later["total"] == 0
    updated = clinician.get(
        "/fhir/Observation", params={"patient": pid, "_lastUpdated": "ge2000-01-01"}
    ).json()
    assert updated["total"] == len(observations)
    by_id = clinician.get("/fhir/Observation", params={"patient": pid, "_id": sample["id"]}).json()
    assert [e["resource"]["id"] for e in by_id["entry"]] == [sample["id"]]
    assert clinician.get("/fhir/Observation").status_code == 400  # searches are per patient
    # The patient exports everything held about them as one Bundle.
    with login(server, node_dir / "keys" / "patients" / f"{pid}.key") as patient:
        export = patient.get(f"/fhir/Patient/{pid}/$everything").json()
        assert export["total"] == everything["total"]
        other = next(iter((node_dir / "keys" / "patients").glob("*.key")))
        if other.stem != pid:
            assert patient.get(f"/fhir/Patient/{other.stem}/$everything").status_code == 403


def test_break_glass_read_is_flagged_for_the_patient(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    key = read_key_file(node_dir / "keys" / "dr-ben-okafor.key")[1]
    target = f"/fhir/Observation/{world['obs'][2]}"
    with login(server, node_dir / "keys" / "dr-ben-okafor.key") as emergency:
        assert emergency.get(target, headers={"X-Purpose-Of-Use": "ETREAT"}).status_code == 403
        with Client(server.url, keypair=key) as c:
            glass = c.call(
                "consent",
                "break_glass",
                {"patient": world["patient"], "reason": "unconscious", "purpose": "ETREAT"},
            )
        assert glass["result"] == "accepted"
        # Northside holds no care relationship with St Mary's patient: the request waits for a
        # colleague's co-signature (ruleset r2) and reads nothing meanwhile.
        assert emergency.get(target, headers={"X-Purpose-Of-Use": "ETREAT"}).status_code == 403
        colleague = generate_keypair()
        admin = read_key_file(node_dir / "keys" / "northside-admin.key")[1]
        with Client(server.url, keypair=admin) as c:
            args = {"id": "rn-north", "name": "RN North", "roles": ["nurse"]}
            c.call("identity", "add_member", {**args, "public_key": colleague.public_b64})
        with Client(server.url, keypair=colleague) as c:
            c.call("consent", "confirm_break_glass", {"id": glass["tx_id"]})
        assert emergency.get(target).status_code == 403  # only for emergency treatment
        assert emergency.get(target, headers={"X-Purpose-Of-Use": "ETREAT"}).status_code == 200
    with login(server, node_dir / "keys" / "patients" / f"{world['patient']}.key") as patient:
        log = patient.get(f"/v1/patients/{world['patient']}/access-log").json()["accesses"]
    flagged = [a for a in log if a["break_glass"]]
    assert [(a["accessor"], a["purpose"]) for a in flagged] == [("dr-ben-okafor", "ETREAT")]
    with (
        login(server, node_dir / "keys" / "st-mary-admin.key") as custodian,
        custodian.stream(
            "GET", "/v1/events", params={"from_height": glass["height"], "follow": "false"}
        ) as r,
    ):
        text = "".join(r.iter_text())
    assert "event: consent.break_glass" in text  # names the custodian, whose node tells staff
    assert "event: audit.break_glass_access" in text


def test_custodian_admin_shreds_with_own_key(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    admin = read_key_file(node_dir / "keys" / "st-mary-admin.key")[1]
    target = world["obs"][2]
    with Client(server.url, keypair=admin) as c:
        receipt = c.call("records", "shred", {"record": target, "reason": "retention"})
    assert receipt["result"] == "accepted"
    gone = world["clinician"].get(f"/fhir/Observation/{target}")
    assert gone.headers["X-CareLedger-Code"] == "RECORD_SHREDDED"
    conn = sqlite3.connect(node_dir / "vault.sqlite")
    rows = conn.execute(
        "SELECT COUNT(*) FROM wrapped_keys WHERE record_id = ?", (target,)
    ).fetchone()
    conn.close()
    assert rows == (0,)  # the ledger's shredding destroyed the vault keys


def test_narrowed_and_outdated_tokens_lose_their_powers(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    key = read_key_file(node_dir / "keys" / "patients" / f"{world['patient']}.key")[1]
    with Client(server.url, keypair=key) as c:
        token = c.login(scope="patient/Observation.read")
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=30) as app:
        assert app.get(f"/fhir/Observation/{world['obs'][1]}").status_code == 200
        refused = app.post(f"/v1/records/{world['obs'][1]}/shred")
        assert (refused.status_code, refused.json()["code"]) == (403, "SCOPE")
        consent = fhir_consent(world["patient"], "trialco")
        granted = app.post("/fhir/Consent", content=json.dumps(consent))
        assert (granted.status_code, granted.headers["X-CareLedger-Code"]) == (403, "SCOPE")
    # A member whose clinical role is removed loses it at once, whatever the token says.
    with login(server, node_dir / "keys" / "rn-dana-kim.key") as nurse:
        target = f"/fhir/Observation/{world['obs'][1]}"
        assert nurse.get(target).status_code == 200
        admin = read_key_file(node_dir / "keys" / "st-mary-admin.key")[1]
        with Client(server.url, keypair=admin) as c:
            assert (
                c.call("identity", "set_roles", {"member": "rn-dana-kim", "roles": ["auditor"]})[
                    "result"
                ]
                == "accepted"
            )
        assert nurse.get(target).status_code == 403


# Last: it corrupts a stored record on purpose.
def test_vault_tampering_is_detected(server: Server, node_dir: Path, world: dict[str, Any]) -> None:
    conn = store_mac.connect(node_dir / "vault.sqlite")
    (ciphertext,) = conn.execute(
        "SELECT ciphertext FROM records WHERE record_id = ? AND version = 1", (world["obs"][1],)
    ).fetchone()
    flipped = bytearray(ciphertext)
    flipped[5] ^= 0x01
    conn.execute(
        "UPDATE records SET ciphertext = ? WHERE record_id = ? AND version = 1",
        (bytes(flipped), world["obs"][1]),
    )
    conn.commit()
    conn.close()
    response = world["clinician"].get(f"/fhir/Observation/{world['obs'][1]}")
    assert response.status_code == 422
    assert response.headers["X-CareLedger-Code"] == "VAULT_TAMPERED"


def test_a_narrowed_token_reads_nothing_outside_its_scopes(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    """A token narrowed to the supply chain no longer reads access logs, AuditEvents or Consents
    (the attack: a narrowed admin token still read every patient's log)."""
    admin = read_key_file(node_dir / "keys" / "st-mary-admin.key")[1]
    patient = world["patient"]
    reads = (
        f"/v1/patients/{patient}/access-log",
        f"/fhir/AuditEvent?patient={patient}",
        f"/fhir/Consent?patient={patient}",
    )
    with Client(server.url, keypair=admin) as c:
        narrow = c.login(scope="user/SupplyChain.read")
        wide = c.login()
    for path in reads:
        refused = httpx.get(f"{server.url}{path}", headers={"authorization": f"Bearer {narrow}"})
        assert refused.status_code == 403, (path, refused.text)
        assert "SCOPE" in refused.text
        allowed = httpx.get(f"{server.url}{path}", headers={"authorization": f"Bearer {wide}"})
        assert allowed.status_code == 200, (path, allowed.text)


def test_a_write_records_the_purpose_given_or_is_refused(
    server: Server, node_dir: Path, world: dict[str, Any]
) -> None:
    """The access log rewrote purpose HPAYMT (payment) to TREAT; now it keeps the purpose the
    writer gave, and refuses one a custodian may not write for."""
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": f"Patient/{world['patient']}"},
        "valueQuantity": {"value": 71, "unit": "/min"},
    }
    clinician = world["clinician"]
    billed = clinician.post(
        "/fhir/Observation",
        content=json.dumps(obs),
        headers={"content-type": "application/fhir+json", "X-Purpose-Of-Use": "HPAYMT"},
    )
    assert billed.status_code == 201, billed.text
    research = clinician.post(
        "/fhir/Observation",
        content=json.dumps(obs),
        headers={"content-type": "application/fhir+json", "X-Purpose-Of-Use": "HRESCH"},
    )
    assert research.status_code == 400 and "BAD_PURPOSE" in research.text
    with login(server, node_dir / "keys" / "patients" / f"{world['patient']}.key") as patient:
        log = patient.get(f"/v1/patients/{world['patient']}/access-log").json()["accesses"]
    written = [a for a in log if billed.json()["id"] in a.get("records", [])]
    assert [a["purpose"] for a in written] == ["HPAYMT"]
