"""FHIR search over real HTTP with R4 semantics (issue 16): every case here answered 200 with
the wrong records before. Also through fhirpy, a third-party FHIR client."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

from careledger.fhir.types import ORG_TYPES
from tests.support.nodes import Server, demo_node, login, serving
from tests.support.recruitment import fhir_post as post

pytestmark = pytest.mark.integration
LOINC = "http://loinc.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("fhir-search") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


def observation(pid: str, code: str, category: str, when: str, value: float) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "issued": "2025-01-01T00:00:00Z",
        "valueQuantity": {"value": value, "unit": "/min", "system": "http://unitsofmeasure.org",
                          "code": "/min"},
    }  # fmt: skip


@pytest.fixture(scope="module")
def world(server: Server) -> Iterator[dict[str, Any]]:
    clinician = login(server, server.data_dir / "keys" / "dr-ana-silva.key")
    pid = post(
        clinician,
        {
            "resourceType": "Patient",
            "name": [{"family": "Müller", "given": ["José"]}],
            "birthDate": "1970-01-01",
            "gender": "male",
        },
    )
    ids = {
        "hr-2020": post(clinician, observation(pid, "8867-4", "vital-signs", "2020-05-01", 61)),
        "hr-2024": post(
            clinician, observation(pid, "8867-4", "vital-signs", "2024-03-05T10:15:00+01:00", 72)
        ),
        "hr-2022": post(clinician, observation(pid, "8867-4", "vital-signs", "2022-01-01", 65)),
        "lab": post(clinician, observation(pid, "4548-4", "laboratory", "2024-02-01", 7)),
    }
    for status in ("active", "stopped"):
        ids[f"med-{status}"] = post(
            clinician,
            {
                "resourceType": "MedicationRequest",
                "status": status,
                "intent": "order",
                "subject": {"reference": f"Patient/{pid}"},
                "medicationCodeableConcept": {"text": f"drug {status}"},
            },
        )
    try:
        yield {"clinician": clinician, "pid": pid, "ids": ids}
    finally:
        clinician.close()


def search(http: httpx.Client, path: str, **headers: str) -> dict[str, Any]:
    answer = http.get(f"/fhir/{path}", headers=headers)
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def matched(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def test_filters_are_applied_not_ignored(world: dict[str, Any]) -> None:
    http, pid, ids = world["clinician"], world["pid"], world["ids"]
    active = search(http, f"MedicationRequest?patient={pid}&status=active")
    assert matched(active) == [ids["med-active"]]
    vitals = search(http, f"Observation?patient={pid}&category=vital-signs")
    assert ids["lab"] not in matched(vitals) and len(matched(vitals)) == 3
    others = search(http, f"Observation?patient={pid}&code:not={LOINC}|8867-4")
    assert matched(others) == [ids["lab"]]


def test_latest_heart_rate_is_the_latest(world: dict[str, Any]) -> None:
    http, pid, ids = world["clinician"], world["pid"], world["ids"]
    latest = search(http, f"Observation?patient={pid}&code=8867-4&_sort=-date&_count=1")
    assert matched(latest) == [ids["hr-2024"]]
    assert latest["total"] == 3
    assert any(link["relation"] == "next" for link in latest["link"])


def test_dates_are_compared_as_instants(world: dict[str, Any]) -> None:
    http, pid, ids = world["clinician"], world["pid"], world["ids"]
    before = search(http, f"Observation?patient={pid}&code=8867-4&date=lt2024-03-05T09:30:00Z")
    assert ids["hr-2024"] in matched(before)  # 10:15+01:00 is 09:15Z
    issued = search(http, f"Observation?patient={pid}&date=2025-01-01")
    assert matched(issued) == []  # issued is not the Observation's date


def test_unknown_parameters_are_refused_unless_lenient(world: dict[str, Any]) -> None:
    http, pid = world["clinician"], world["pid"]
    refused = http.get(f"/fhir/Observation?patient={pid}&colour=red")
    assert refused.status_code == 400
    outcome = refused.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == ["colour"]
    lenient = search(
        http, f"Observation?patient={pid}&colour=red&code=8867-4", prefer="handling=lenient"
    )
    assert len(matched(lenient)) == 3
    notes = [e for e in lenient["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in notes[0]["resource"]["issue"][0]["diagnostics"]
    self_link = next(link["url"] for link in lenient["link"] if link["relation"] == "self")
    assert "colour" not in self_link and "code=8867-4" in self_link
    xml = http.get(f"/fhir/Observation?patient={pid}&_format=xml")
    assert xml.status_code == 406


def test_paging_continues_the_same_result_set_while_records_are_written(
    world: dict[str, Any],
) -> None:
    http, pid = world["clinician"], world["pid"]
    first = search(http, f"Observation?patient={pid}&_count=2")
    before = first["total"]
    post(http, observation(pid, "8867-4", "vital-signs", "2025-06-01", 80))  # between pages
    seen = matched(first)
    page = first
    for _ in range(10):
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if nxt is None:
            break
        page = http.get(nxt).json()
        assert page["total"] == before
        seen += matched(page)
    assert len(seen) == len(set(seen)) == before


def test_summary_elements_include_and_compartment(server: Server, world: dict[str, Any]) -> None:
    http, pid, ids = world["clinician"], world["pid"], world["ids"]
    count = search(http, f"Observation?patient={pid}&code=8867-4&_summary=count")
    assert count["total"] >= 3 and "entry" not in count
    slim = search(http, f"Observation?patient={pid}&_elements=code&_count=1")
    resource = slim["entry"][0]["resource"]
    assert "valueQuantity" not in resource and "code" in resource
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
            "code": "SUBSETTED"} in resource["meta"]["tag"]  # fmt: skip
    with_patient = search(
        http, f"Observation?patient={pid}&code=4548-4&_include=Observation:patient"
    )
    modes = [(e["search"]["mode"], e["resource"]["resourceType"]) for e in with_patient["entry"]]
    assert modes == [("match", "Observation"), ("include", "Patient")]
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        log = admin.get(f"/v1/patients/{pid}/access-log").json()["accesses"]
    assert log[-1]["records"] == [pid] and log[-2]["records"] == [ids["lab"]]  # each logged
    compartment = search(http, f"Patient/{pid}/MedicationRequest?status=stopped")
    assert matched(compartment) == [ids["med-stopped"]]
    posted = http.post(
        "/fhir/MedicationRequest/_search",
        content=f"patient={pid}&status=active",
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert posted.status_code == 200 and matched(posted.json()) == [ids["med-active"]]


def test_a_patient_found_by_name_ignoring_case_and_accents(world: dict[str, Any]) -> None:
    http, pid = world["clinician"], world["pid"]
    assert matched(search(http, f"Patient?_id={pid}&name=muller")) == [pid]
    assert matched(search(http, f"Patient?_id={pid}&given=JOSE&birthdate=1970")) == [pid]
    assert matched(search(http, f"Patient?_id={pid}&family:exact=muller")) == []


def search_instant(text: str) -> int:
    from careledger.fhir.search import parse_date

    parsed = parse_date(text)
    assert parsed is not None
    return parsed[0]


def test_fhirpy_searches_sorts_and_pages(server: Server, world: dict[str, Any]) -> None:
    token = world["clinician"].headers["authorization"]
    client = SyncFHIRClient(f"{server.url}/fhir", authorization=token)
    latest = (
        client.resources("Observation")
        .search(patient=world["pid"], code=f"{LOINC}|8867-4")
        .sort("-date")
        .limit(1)
        .fetch()
    )
    rates = client.resources("Observation").search(patient=world["pid"], code="8867-4")
    newest = max(rates.fetch_all(), key=lambda o: search_instant(o["effectiveDateTime"]))
    assert [o["id"] for o in latest] == [newest["id"]]
    everything = client.resources("Observation").search(patient=world["pid"]).limit(2).fetch_all()
    ids = [o["id"] for o in everything]
    assert len(ids) == len(set(ids)) >= 4  # followed every next link, no repeats
    active = client.resources("MedicationRequest").search(patient=world["pid"], status="active")
    assert [m["status"] for m in active.fetch()] == ["active"]


SAMPLES = {
    "date": "ge2024",
    "token": "x",
    "string": "x",
    "reference": "Patient/x",
    "quantity": "gt5",
    "number": "5",
    "uri": "http://example.org/x",
}


def test_every_declared_search_parameter_is_honoured(world: dict[str, Any]) -> None:
    """Derived from the CapabilityStatement itself: each declared parameter of each type is
    accepted (200, never 400 or 5xx), and a parameter it does not declare is refused."""
    from careledger.fhir.search import parameters

    http, pid = world["clinician"], world["pid"]
    statement = http.get("/fhir/metadata").json()
    declared = statement["rest"][0]["resource"]
    assert len(declared) >= 10
    checked = 0
    for resource in declared:
        kind = resource["type"]
        if kind == "AuditEvent":
            continue  # the patient's (or an admin's) to search: test_smart.py tests each one
        about = f"_id={pid}" if kind == "Patient" else f"patient={pid}"
        names = {p["name"] for p in resource["searchParam"]}
        if kind in ORG_TYPES:  # the organisation's own records: about no patient
            about = "_lastUpdated=ge2000"
        elif kind == "AdverseEvent":  # R4 names its patient "subject" (no patient parameter)
            about = f"subject=Patient/{pid}"
        else:
            assert "patient" in names or kind == "Patient", kind
        for param in resource["searchParam"]:
            name, ptype = param["name"], param["type"]
            if ptype == "composite":
                parts = parameters(kind)[name].components
                value = "$".join(SAMPLES[c.type] for c, _ in parts)
            else:
                value = SAMPLES[ptype]
            answer = http.get(f"/fhir/{kind}", params=[*[tuple(about.split("="))], (name, value)])
            assert answer.status_code == 200, (kind, name, answer.text)
            checked += 1
        refused = http.get(f"/fhir/{kind}?{about}&not-a-parameter=1")
        assert refused.status_code == 400, kind
    assert checked > 200


def test_staff_find_patients_and_records_across_their_patients(
    server: Server, world: dict[str, Any]
) -> None:
    http, pid, ids = world["clinician"], world["pid"], world["ids"]
    mrn = post(
        http,
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-4711"}],
            "name": [{"family": "Okonkwo", "given": ["Ada"]}],
            "birthDate": "1988-07-14",
        },
    )
    by_mrn = search(http, "Patient?identifier=urn:oid:2.16.840.1.113883.19.5|MRN-4711")
    assert matched(by_mrn) == [mrn]
    assert matched(search(http, "Patient?family=okonk&birthdate=1988-07-14")) == [mrn]
    assert pid in matched(search(http, "Patient?name=muller"))
    labs = search(http, f"Observation?code={LOINC}|4548-4")
    assert ids["lab"] in matched(labs)
    # the access event of that patient names exactly what was returned
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        log = admin.get(f"/v1/patients/{pid}/access-log").json()["accesses"]
    assert log[-1]["records"] == [ids["lab"]] and log[-1]["accessor"] == "dr-ana-silva"
    # nothing identifying: refused rather than decrypting every record held
    broad = http.get("/fhir/Observation?value-quantity=gt5")
    assert broad.status_code == 400 and broad.json()["issue"][0]["code"] == "too-costly"
    # another organisation's clinician, with no consent, finds no one (and is told nothing)
    with login(server, server.data_dir / "keys" / "dr-ben-okafor.key") as outsider:
        assert matched(search(outsider, "Patient?name=muller")) == []
        assert matched(search(outsider, "Patient?identifier=MRN-4711")) == []


def test_everything_pages_and_filters(server: Server, world: dict[str, Any]) -> None:
    http, pid, ids = world["clinician"], world["pid"], world["ids"]
    whole = search(http, f"Patient/{pid}/$everything")
    total = whole["total"]
    assert total == len(whole["entry"]) >= 7  # the Patient, 4+ Observations, 2 orders
    seen: list[str] = []
    page = search(http, f"Patient/{pid}/$everything?_count=3")
    for _ in range(10):
        seen += [e["resource"]["id"] for e in page["entry"] if "resource" in e]
        nxt = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if nxt is None:
            break
        page = http.get(nxt).json()
    assert len(seen) == len(set(seen)) == total
    meds = search(http, f"Patient/{pid}/$everything?_type=MedicationRequest")
    assert sorted(e["resource"]["id"] for e in meds["entry"]) == sorted(
        [ids["med-active"], ids["med-stopped"]]
    )
    assert search(http, f"Patient/{pid}/$everything?_since=2999-01-01")["total"] == 0
    in_2020 = search(http, f"Patient/{pid}/$everything?start=2020-01-01&end=2020-12-31")
    kept = {e["resource"]["id"] for e in in_2020["entry"]}
    assert ids["hr-2020"] in kept and ids["hr-2024"] not in kept and pid in kept  # no date: kept
    # the access event names the page, not the patient's whole record
    search(http, f"Patient/{pid}/$everything?_count=2")
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        log = admin.get(f"/v1/patients/{pid}/access-log").json()["accesses"]
    assert len(log[-1]["records"]) == 2
    bad = http.get(f"/fhir/Patient/{pid}/$everything?_since=yesterday")
    assert bad.status_code == 400
