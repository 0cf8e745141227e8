"""US Core's search parameters, each one by behaviour over real HTTP (issue 16).

docs/health.md promises US Core's parameters, each tested; tests/unit/fhir/test_search.py only
checks that they exist. Here every (type, parameter) pair gets its own patient and resources
that differ only in that parameter's element, one or more that R4 says match and one or more
that it says do not, and the search must answer exactly the matches. Patients of a pair share
an identifier system no other pair uses, so a Patient search is restricted to them. About half
of the searches go through fhirpy, a third-party FHIR client, the rest through plain httpx.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fhirpy import SyncFHIRClient

from tests.support.nodes import Server, demo_node, login, serving

pytestmark = pytest.mark.integration
FHIR = {"content-type": "application/fhir+json"}
RUN = uuid.uuid4().hex[:12]  # identifier systems unique to this module's run

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
CVX = "http://hl7.org/fhir/sid/cvx"
UCUM = "http://unitsofmeasure.org"
THO = "http://terminology.hl7.org/CodeSystem/"
OBS_CATEGORY = THO + "observation-category"
CONDITION_CATEGORY = THO + "condition-category"
CONDITION_CLINICAL = THO + "condition-clinical"
CONDITION_VERIFICATION = THO + "condition-ver-status"
ALLERGY_CLINICAL = THO + "allergyintolerance-clinical"
ALLERGY_VERIFICATION = THO + "allergyintolerance-verification"
ACT_CODE = THO + "v3-ActCode"
V2_0074 = THO + "v2-0074"
DOC_CATEGORY = "http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category"

FHIRPY_TYPES = frozenset(
    {"Observation", "Condition", "MedicationRequest", "Encounter", "Immunization"}
)


def concept(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}], "text": display}


def mrn_system(case_id: str) -> str:
    return f"https://careledger.example/fhir/sid/mrn/{RUN}/{case_id}"


def base(kind: str, pid: str) -> dict[str, Any]:
    """A valid R4 (and US Core shaped) resource of ``kind`` about patient ``pid``."""
    subject = {"reference": f"Patient/{pid}"}
    if kind == "Observation":
        return {
            "resourceType": "Observation",
            "status": "final",
            "category": [concept(OBS_CATEGORY, "vital-signs", "Vital Signs")],
            "code": concept(LOINC, "8867-4", "Heart rate"),
            "subject": subject,
            "effectiveDateTime": "2024-03-05T10:15:00Z",
            "valueQuantity": {"value": 72, "unit": "beats/minute", "system": UCUM, "code": "/min"},
        }
    if kind == "Condition":
        return {
            "resourceType": "Condition",
            "clinicalStatus": concept(CONDITION_CLINICAL, "active", "Active"),
            "verificationStatus": concept(CONDITION_VERIFICATION, "confirmed", "Confirmed"),
            "category": [concept(CONDITION_CATEGORY, "problem-list-item", "Problem List Item")],
            "code": concept(SNOMED, "44054006", "Diabetes mellitus type 2"),
            "subject": subject,
            "onsetDateTime": "2015-06-01",
        }
    if kind == "MedicationRequest":
        return {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "medicationCodeableConcept": concept(
                RXNORM,
                "860975",
                "24 HR metformin hydrochloride 500 MG Extended Release Oral Tablet",
            ),
            "subject": subject,
            "authoredOn": "2024-03-14T09:30:00Z",
            "dosageInstruction": [{"text": "One tablet by mouth daily with the evening meal"}],
        }
    if kind == "Encounter":
        return {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "type": [concept(SNOMED, "185349003", "Encounter for check up")],
            "subject": subject,
            "period": {"start": "2024-02-01T09:00:00Z", "end": "2024-02-01T09:30:00Z"},
        }
    if kind == "AllergyIntolerance":
        return {
            "resourceType": "AllergyIntolerance",
            "clinicalStatus": concept(ALLERGY_CLINICAL, "active", "Active"),
            "verificationStatus": concept(ALLERGY_VERIFICATION, "confirmed", "Confirmed"),
            "category": ["medication"],
            "code": concept(SNOMED, "91936005", "Allergy to penicillin"),
            "patient": subject,
        }
    if kind == "Procedure":
        return {
            "resourceType": "Procedure",
            "status": "completed",
            "code": concept(SNOMED, "80146002", "Appendectomy"),
            "subject": subject,
            "performedDateTime": "2023-06-15T14:00:00Z",
        }
    if kind == "DiagnosticReport":
        return {
            "resourceType": "DiagnosticReport",
            "status": "final",
            "category": [concept(V2_0074, "LAB", "Laboratory")],
            "code": concept(LOINC, "58410-2", "CBC panel - Blood by Automated count"),
            "subject": subject,
            "effectiveDateTime": "2024-02-10T10:30:00Z",
            "issued": "2024-02-10T12:00:00Z",
        }
    if kind == "DocumentReference":
        note = base64.b64encode(b"Seen for follow-up. Doing well.").decode()
        return {
            "resourceType": "DocumentReference",
            "status": "current",
            "type": concept(LOINC, "11506-3", "Progress note"),
            "category": [concept(DOC_CATEGORY, "clinical-note", "Clinical Note")],
            "subject": subject,
            "date": "2024-05-02T14:00:00Z",
            "content": [{"attachment": {"contentType": "text/plain", "data": note}}],
        }
    if kind == "Immunization":
        return {
            "resourceType": "Immunization",
            "status": "completed",
            "vaccineCode": concept(
                CVX, "140", "Influenza, seasonal, injectable, preservative free"
            ),
            "patient": subject,
            "occurrenceDateTime": "2023-10-15",
            "primarySource": True,
        }
    raise AssertionError(kind)


def patient_base(case_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": mrn_system(case_id), "value": f"MRN-{uuid.uuid4().hex[:8]}"}],
        "name": [{"family": "Whitaker", "given": ["Morgan"]}],
        "gender": "female",
        "birthDate": "1984-04-12",
    }


def variant(start: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``start`` with ``changes`` applied; a change to None removes the element."""
    out = {**start, **changes}
    return {k: v for k, v in out.items() if v is not None}


@dataclass(frozen=True)
class Case:
    kind: str
    param: str
    value: str | tuple[str, ...]  # "{pid}", "{match}", "{system}", "{base}" filled in; a tuple: AND
    matches: tuple[dict[str, Any], ...]  # changes to the base resource that R4 says match
    others: tuple[dict[str, Any], ...]  # changes that R4 says do not
    xfail: str | None = None

    @property
    def id(self) -> str:
        return f"{self.kind}-{self.param}"


def _changes(given: dict[str, Any] | list[dict[str, Any]]) -> tuple[dict[str, Any], ...]:
    return tuple(given) if isinstance(given, list) else (given,)


def _c(
    kind: str,
    param: str,
    value: str | tuple[str, ...],
    matches: dict[str, Any] | list[dict[str, Any]],
    others: dict[str, Any] | list[dict[str, Any]],
    xfail: str | None = None,
) -> Case:
    return Case(kind, param, value, _changes(matches), _changes(others), xfail)


CASES = [
    # Patient: restricted to the pair's own identifier system (``system|``)
    _c("Patient", "_id", "{match}", {}, [{}, {}]),
    _c("Patient", "identifier", "{system}|MRN-100234",
       {"identifier": "MRN-100234"}, [{"identifier": "MRN-1002345"}, {"identifier": "MRN-10023"}]),
    _c("Patient", "name", "RAMIR",  # starts-with, any case, accents ignored, any name part
       [{"name": [{"family": "Ramírez", "given": ["Lucía"]}]},
        {"name": [{"family": "Ortega", "given": ["Ramiro"]}]}],
       [{"name": [{"family": "Ortega", "given": ["Ramona"]}]},
        {"name": [{"family": "Delramirez", "given": ["Ana"]}]}]),
    _c("Patient", "family", "castel",
       {"name": [{"family": "Castellanos", "given": ["Inés"]}]},
       [{"name": [{"family": "Castillo", "given": ["Inés"]}]},
        {"name": [{"family": "Ortiz", "given": ["Castelar"]}]}]),
    _c("Patient", "given", "NATH",
       {"name": [{"family": "Brooks", "given": ["Nathan"]}]},
       [{"name": [{"family": "Brooks", "given": ["Jonathan"]}]},
        {"name": [{"family": "Nathanson", "given": ["Paul"]}]}]),
    _c("Patient", "birthdate", "lt1980-01-01",
       {"birthDate": "1975-11-02"}, [{"birthDate": "1980-01-01"}, {"birthDate": "1992-06-30"}]),
    _c("Patient", "gender", "female",
       {"gender": "female"}, [{"gender": "male"}, {"gender": "unknown"}]),
    # Observation
    _c("Observation", "patient", "Patient/{pid}", {}, {}),
    _c("Observation", "category", f"{OBS_CATEGORY}|laboratory",
       {"category": [concept(OBS_CATEGORY, "laboratory", "Laboratory")],
        "code": concept(LOINC, "2339-0", "Glucose [Mass/volume] in Blood"),
        "valueQuantity": {"value": 95, "unit": "mg/dL", "system": UCUM, "code": "mg/dL"}},
       {}),
    _c("Observation", "code", f"{LOINC}|8867-4",
       {}, {"code": concept(LOINC, "9279-1", "Respiratory rate"),
            "valueQuantity": {"value": 16, "unit": "breaths/minute", "system": UCUM,
                              "code": "/min"}}),
    _c("Observation", "date", "ge2024-01-01",
       [{"effectiveDateTime": "2024-03-05T10:15:00Z"}, {"effectiveDateTime": "2024-01-01"}],
       [{"effectiveDateTime": "2023-12-31T18:00:00Z"}]),
    _c("Observation", "status", "final,amended",  # a comma: OR
       [{}, {"status": "amended"}], [{"status": "preliminary"}, {"status": "entered-in-error"}]),
    # Condition
    _c("Condition", "patient", "Patient/{pid}", {}, {}),
    _c("Condition", "category", f"{CONDITION_CATEGORY}|encounter-diagnosis",
       {"category": [concept(CONDITION_CATEGORY, "encounter-diagnosis", "Encounter Diagnosis")]},
       {}),
    _c("Condition", "clinical-status", f"{CONDITION_CLINICAL}|active",
       {}, {"clinicalStatus": concept(CONDITION_CLINICAL, "resolved", "Resolved"),
            "abatementDateTime": "2020-01-10"}),
    _c("Condition", "code", f"{SNOMED}|38341003",
       {"code": concept(SNOMED, "38341003", "Hypertensive disorder, systemic arterial")}, {}),
    _c("Condition", "onset-date", "lt2020-01-01",
       [{"onsetDateTime": "2015-06-01"},
        {"onsetDateTime": None, "onsetPeriod": {"start": "2018-03-01", "end": "2018-09-30"}}],
       [{"onsetDateTime": "2021-02-14"}, {"onsetDateTime": "2020-01-01T08:00:00Z"}]),
    # MedicationRequest
    _c("MedicationRequest", "patient", "Patient/{pid}", {}, {}),
    _c("MedicationRequest", "status", "active", {}, [{"status": "completed"}, {"status": "stopped"}]),
    _c("MedicationRequest", "intent", "order", {}, {"intent": "plan"}),
    _c("MedicationRequest", "authoredon", "2024-03",
       [{"authoredOn": "2024-03-14T09:30:00Z"}, {"authoredOn": "2024-03-01"}],
       [{"authoredOn": "2024-04-02"}, {"authoredOn": "2024-02-29T23:00:00Z"}]),
    # Encounter
    _c("Encounter", "patient", "Patient/{pid}", {}, {}),
    _c("Encounter", "class", f"{ACT_CODE}|IMP",
       {"class": {"system": ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
        "period": {"start": "2024-02-01T09:00:00Z", "end": "2024-02-04T11:00:00Z"}},
       {}),
    _c("Encounter", "date", ("ge2024-01-01", "lt2024-03-01"),  # repeated: AND, a range
       [{},  # a stay across the new year overlaps the days after 2024-01-01
        {"class": {"system": ACT_CODE, "code": "IMP", "display": "inpatient encounter"},
         "period": {"start": "2023-12-30T20:00:00Z", "end": "2024-01-03T10:00:00Z"}}],
       [{"period": {"start": "2023-11-20T09:00:00Z", "end": "2023-11-20T09:20:00Z"}},
        {"period": {"start": "2024-03-01T09:00:00Z", "end": "2024-03-01T09:20:00Z"}}]),
    _c("Encounter", "type", f"{SNOMED}|185349003",
       {}, {"type": [concept(SNOMED, "185345009", "Encounter for symptom")]}),
    _c("Encounter", "status", "finished",
       {}, {"status": "in-progress", "period": {"start": "2024-02-01T09:00:00Z"}}),
    # AllergyIntolerance
    _c("AllergyIntolerance", "patient", "Patient/{pid}", {}, {}),
    _c("AllergyIntolerance", "clinical-status", f"{ALLERGY_CLINICAL}|active",
       {}, [{"clinicalStatus": concept(ALLERGY_CLINICAL, "resolved", "Resolved")},
            {"clinicalStatus": concept(ALLERGY_CLINICAL, "inactive", "Inactive")}]),
    # Procedure
    _c("Procedure", "patient", "{base}/Patient/{pid}", {}, {}),  # an absolute reference
    _c("Procedure", "date", "le2023-12-31",
       [{"performedDateTime": "2023-06-15T14:00:00Z"},
        {"performedDateTime": None,
         "performedPeriod": {"start": "2023-12-31T08:00:00Z", "end": "2023-12-31T09:10:00Z"}}],
       {"performedDateTime": "2024-01-02T08:00:00Z"}),
    _c("Procedure", "code", f"{SNOMED}|73761001",
       {"code": concept(SNOMED, "73761001", "Colonoscopy")}, {}),
    # DiagnosticReport
    _c("DiagnosticReport", "patient", "Patient/{pid}", {}, {}),
    _c("DiagnosticReport", "category", f"{V2_0074}|LAB",
       {}, {"category": [concept(V2_0074, "RAD", "Radiology")],
            "code": concept(LOINC, "36643-5", "XR Chest 2 Views")}),
    _c("DiagnosticReport", "code", f"{LOINC}|24323-8",
       {"code": concept(LOINC, "24323-8", "Comprehensive metabolic 2000 panel")}, {}),
    _c("DiagnosticReport", "date", "2024-02-10",  # eq: the day contains the whole effective[x]
       {},
       [{"effectiveDateTime": "2024-02-11T10:30:00Z"},
        {"effectiveDateTime": None,
         "effectivePeriod": {"start": "2024-02-09T22:00:00Z", "end": "2024-02-10T02:00:00Z"}}]),
    # DocumentReference
    _c("DocumentReference", "patient", "Patient/{pid}", {}, {}),
    _c("DocumentReference", "category", f"{DOC_CATEGORY}|clinical-note",
       {}, {"category": [concept(LOINC, "LP29684-5", "Radiology")],
            "type": concept(LOINC, "18748-4", "Diagnostic imaging study")}),
    _c("DocumentReference", "type", f"{LOINC}|18842-5",
       {"type": concept(LOINC, "18842-5", "Discharge summary")}, {}),
    _c("DocumentReference", "date", "ge2024-01-01T00:00:00Z",  # instants, whatever the offset
       [{"date": "2023-12-31T22:30:00-05:00"}, {"date": "2024-05-02T14:00:00Z"}],
       {"date": "2024-01-01T01:30:00+02:00"}),
    # Immunization
    _c("Immunization", "patient", "Patient/{pid}", {}, {}),
    _c("Immunization", "date", "gt2023-09-01",
       {"occurrenceDateTime": "2023-10-15"},
       [{"occurrenceDateTime": "2023-03-01"}, {"occurrenceDateTime": "2023-09-01T10:00:00Z"}]),
    _c("Immunization", "status", "completed",
       {}, {"status": "not-done",
            "statusReason": concept(THO + "v3-ActReason", "PATOBJ", "patient objection")}),
]  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("us-core-search") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


@pytest.fixture(scope="module")
def clinician(server: Server) -> Iterator[httpx.Client]:
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as http:
        yield http


def create(http: httpx.Client, resource: dict[str, Any]) -> str:
    made = http.post(
        f"/fhir/{resource['resourceType']}", content=json.dumps(resource), headers=FHIR
    )
    assert made.status_code == 201, (resource, made.text)
    return str(made.json()["id"])


@dataclass
class Made:
    pid: str  # the patient the search names (for Patient cases: the identifier system)
    matches: list[str]
    others: list[str]
    baseline: list[tuple[str, str]]  # a search that finds matches and others alike


def make_case(http: httpx.Client, case: Case) -> Made:
    if case.kind == "Patient":
        system = mrn_system(case.id)

        def patient(changes: dict[str, Any]) -> str:
            changes = dict(changes)
            if "identifier" in changes:
                changes["identifier"] = [{"system": system, "value": changes["identifier"]}]
            return create(http, variant(patient_base(case.id), changes))

        made = Made(system, [patient(c) for c in case.matches], [patient(c) for c in case.others],
                    [("identifier", f"{system}|")])  # fmt: skip
        return made
    pid = create(http, patient_base(case.id))
    matches = [create(http, variant(base(case.kind, pid), c)) for c in case.matches]
    if case.param == "patient":  # the non-match: the same record about someone else
        other = create(http, patient_base(case.id))
        others = [create(http, variant(base(case.kind, other), c)) for c in case.others]
        return Made(pid, matches, others, [("patient", other)])
    others = [create(http, variant(base(case.kind, pid), c)) for c in case.others]
    return Made(pid, matches, others, [("patient", pid)])


@pytest.fixture(scope="module")
def world(clinician: httpx.Client) -> dict[str, Made]:
    return {case.id: make_case(clinician, case) for case in CASES}


@pytest.fixture(scope="module")
def fhirpy_client(server: Server, clinician: httpx.Client) -> SyncFHIRClient:
    return SyncFHIRClient(f"{server.url}/fhir", authorization=clinician.headers["authorization"])


def query(case: Case, made: Made, base_url: str) -> list[tuple[str, str]]:
    values = (case.value,) if isinstance(case.value, str) else case.value
    fill = {"pid": made.pid, "match": made.matches[0], "system": made.pid, "base": base_url}
    asked = [(case.param, v.format(**fill)) for v in values]
    if case.kind == "Patient":
        if case.param in ("_id", "identifier"):
            return asked  # already only this pair's patients
        return [*made.baseline, *asked]
    if case.param == "patient":
        return asked
    return [("patient", made.pid), *asked]


def found_httpx(http: httpx.Client, kind: str, params: list[tuple[str, str]]) -> list[str]:
    answer = http.get(f"/fhir/{kind}", params=tuple(params))
    assert answer.status_code == 200, (params, answer.text)
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    ids = [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
    assert all(e["resource"]["resourceType"] == kind for e in bundle.get("entry", [])
               if e["search"]["mode"] == "match")  # fmt: skip
    assert bundle["total"] == len(ids)
    assert not [link for link in bundle.get("link", []) if link["relation"] == "next"]
    return ids


def found_fhirpy(client: SyncFHIRClient, kind: str, params: list[tuple[str, str]]) -> list[str]:
    grouped: dict[str, list[str]] = {}
    for name, value in params:
        grouped.setdefault(name, []).append(value)
    resources = client.resources(kind).search(**grouped).fetch_all()
    assert all(r.resource_type == kind for r in resources)
    return [str(r.id) for r in resources]


def _param(case: Case) -> Any:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


def test_the_cases_are_us_cores_parameters() -> None:
    """One case per parameter docs/health.md names, and no other."""
    promised = {
        "Patient": "_id identifier name family given birthdate gender",
        "Observation": "patient category code date status",
        "Condition": "patient category clinical-status code onset-date",
        "MedicationRequest": "patient status intent authoredon",
        "Encounter": "patient class date type status",
        "AllergyIntolerance": "patient clinical-status",
        "Procedure": "patient date code",
        "DiagnosticReport": "patient category code date",
        "DocumentReference": "patient category type date",
        "Immunization": "patient date status",
    }
    expected = sorted(f"{kind}-{p}" for kind, ps in promised.items() for p in ps.split())
    assert sorted(case.id for case in CASES) == expected


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_us_core_parameter_finds_exactly_its_matches(
    case: Case,
    server: Server,
    world: dict[str, Made],
    clinician: httpx.Client,
    fhirpy_client: SyncFHIRClient,
) -> None:
    made = world[case.id]
    # the non-matches are there to be found: only the parameter leaves them out
    assert sorted(found_httpx(clinician, case.kind, made.baseline)) == sorted(
        made.others if case.param == "patient" else made.matches + made.others
    )
    params = query(case, made, f"{server.url}/fhir")
    if case.kind in FHIRPY_TYPES:
        ids = found_fhirpy(fhirpy_client, case.kind, params)
    else:
        ids = found_httpx(clinician, case.kind, params)
    assert len(ids) == len(set(ids)), ids
    assert sorted(ids) == sorted(made.matches), (case.kind, params)
    assert not set(ids) & set(made.others)
