"""Every R4 resource type over real HTTP on one demo node (issue 16): each held type is created,
read, updated, versioned and searched by ``_id``; a patient's record by the rule of its type (one
element, a path of references, the records it refers to, a Bundle's entries), an organisation's
own record (ruleset r11) when it names no patient; a record of several patients is refused
(MULTIPLE_PATIENTS), a reference to a record the writer may not see tells nothing, and the
types R4 never persists (Parameters, OperationOutcome) or that this server cannot honour
(Subscription) are refused with their reasons."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir.resources.R4B import get_fhir_model_class

from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.errors import CareLedgerError
from careledger.fhir.extract import patient_id
from careledger.fhir.types import (
    EITHER_TYPES,
    HELD_TYPES,
    NOT_HELD,
    ORG_ONLY_TYPES,
    PATIENT_ELEMENT,
    PATIENT_PATHS,
    RECORD_PATHS,
)
from careledger.fhir.validate import _fields, _r4_only, find_issues
from careledger.health.service import HealthRecords
from careledger.node import Node
from tests.support.nodes import Server, demo_node, login, serving

pytestmark = pytest.mark.integration
FHIR = {"content-type": "application/fhir+json"}
DR = Caller("dr-ana-silva", "st-mary", frozenset({"clinician"}),
            parse_scopes(default_scopes({"clinician"})))  # fmt: skip

# ---------------------------------------------------------------- minimal valid instances

_SAMPLES = [  # (marker in the model's annotation, a valid value), first match wins
    ("DateTime()", "2024-05-01T10:00:00Z"), ("Instant()", "2024-05-01T10:00:00Z"),
    ("Date()", "2024-05-01"), ("Time()", "10:00:00"), ("Canonical()", "http://example.org/c"),
    ("Url()", "http://example.org/u"), ("Uri()", "http://example.org/u"), ("Oid()", "urn:oid:1.2.3"),
    ("Uuid()", "urn:uuid:2c1f6f0e-3f7a-4b9e-9d55-8a1f3c1a9e10"), ("Id()", "x1"),
    ("Base64Binary()", "aGVsbG8="), ("PositiveInt(", 1), ("UnsignedInt(", 1),
]  # fmt: skip


def _value(cls: Any, name: str) -> Any:
    field = _fields(cls)[name]
    if field.kind == "model" and field.model is not None:
        model = field.model.__name__
        value: Any = {"Reference": {"display": "x"}, "CodeableConcept": {"text": "x"},
                      "Coding": {"code": "x"}, "Quantity": {"value": 1}}.get(model, {"id": "x"})
    elif field.kind == "resource":
        value = {"resourceType": "Basic", "code": {"text": "x"}}
    elif field.codes:
        value = field.codes[0]
    elif field.kind in ("boolean", "integer", "decimal"):
        value = {"boolean": True, "integer": 1, "decimal": 1}[field.kind]
    else:
        annotation = str(cls.model_fields[_alias(cls, name)].annotation)
        value = next((v for k, v in _SAMPLES if k in annotation), "x")
    return [value] if field.is_list else value


def _alias(cls: Any, name: str) -> str:
    return next(n for n, i in cls.model_fields.items() if (i.alias or n) == name)


def _r4_value(row: list[Any]) -> Any:
    kind = row[1]
    if kind == "string":
        value: Any = "x"
    elif kind in ("boolean", "integer", "decimal"):
        value = {"boolean": True, "integer": 1, "decimal": 1}[kind]
    elif kind.startswith("dt:"):
        value = {"dt:Reference": {"display": "x"}, "dt:Quantity": {"value": 1}}.get(
            kind, {"text": "x"} if kind == "dt:CodeableConcept" else {"id": "x"})
    else:
        value = {"id": "x"}
    return [value] if row[2] else value


def _steps(expression: str) -> list[str | int]:
    out: list[str | int] = []
    for part in expression.split(".")[1:]:
        name, *indices = re.split(r"\[(\d+|x)\]", part)
        out.append(name)
        out.extend(int(i) for i in indices if i and i != "x")
    return out


def minimal(kind: str) -> dict[str, Any]:
    """A valid instance of ``kind`` with only what R4 requires, filled in from the models."""
    return complete({"resourceType": kind})


def complete(doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` with what R4 requires and it lacks filled in from the models."""
    kind = doc["resourceType"]
    r4_only = kind in _r4_only()["resources"]
    for _ in range(40):
        issues = find_issues(doc)
        if not issues:
            return doc
        for issue in [i for i in issues if i.code == "code-invalid"]:  # a bound code element
            allowed = issue.diagnostics.split("allowed: ")[1].rstrip(")").split(", ")
            node: Any = doc
            steps = _steps(issue.expression[0])
            for step in steps[:-1]:
                node = node[step]
            node[steps[-1]] = allowed[0]
        wanted = [i for i in issues if i.code == "required"]
        assert wanted or any(i.code == "code-invalid" for i in issues), (kind, issues)
        for issue in wanted:
            steps = _steps(issue.expression[0])
            node: Any = doc
            cls: Any = kind if r4_only else get_fhir_model_class(kind)
            for step in steps[:-1]:
                node = node[step]
                if isinstance(step, str):
                    cls = _next(cls, step, r4_only)
            last = steps[-1]
            assert isinstance(last, str)
            if issue.expression[0].endswith("[x]"):
                last = issue.diagnostics.removeprefix("one of ").split(",")[0].split(" ")[0]
            if r4_only:
                row = next(r for r in _r4_only()["classes"][cls] if r[0] == last)
                node[last] = _r4_value(row)
            else:
                node[last] = _value(cls, last)
    raise AssertionError(f"{kind}: {find_issues(doc)}")


def _next(cls: Any, step: str, r4_only: bool) -> Any:
    if r4_only:
        row = next(r for r in _r4_only()["classes"][cls] if r[0] == step)
        return row[1]
    return _fields(cls)[step].model


def put_reference(doc: dict[str, Any], path: str, ref: dict[str, Any]) -> None:
    """``ref`` at the dotted ``path`` of ``doc`` (lists where R4B has them)."""
    cls: Any = get_fhir_model_class(doc["resourceType"])
    node = doc
    steps = path.split(".")
    for index, step in enumerate(steps):
        field = _fields(cls)[step]
        if index == len(steps) - 1:
            node[step] = [ref] if field.is_list else ref
            return
        child = node.get(step)
        if child is None:
            child = [{}] if field.is_list else {}
            node[step] = child
        node = child[0] if isinstance(child, list) else child
        cls = field.model


# ---------------------------------------------------------------- the node


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data: Path = tmp_path_factory.mktemp("every-r4") / "node"
    demo_node(data, with_records=False, with_supply=False)
    return data


@pytest.fixture(scope="module")
def in_process(node_dir: Path) -> dict[str, Any]:
    """What is checked in-process (a caller the HTTP API cannot make up: a SMART launch about
    one patient), on the node before it is served."""
    node = Node(Settings.load(node_dir))
    node.start()
    records = HealthRecords.for_node(node)
    try:
        yield_ = _unseen(records)
    finally:
        records.close()
        node.stop()
    return yield_


def _unseen(records: HealthRecords) -> dict[str, Any]:
    made = {}
    for who in ("p1", "p2"):
        made[who] = records.create(DR, {"resourceType": "Patient", "gender": "other"},
                                   patient_of=patient_id).record_id  # fmt: skip
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
               "subject": {"reference": f"Patient/{made[who]}"}}  # fmt: skip
        made[f"obs-{who}"] = records.create(DR, obs, patient_of=patient_id).record_id
    # an app launched for p1 writes for p1 only, and sees p1's records only
    app = Caller("dr-ana-silva", "st-mary", frozenset({"clinician"}),
                 parse_scopes("patient/*.cruds"), patient=made["p1"])  # fmt: skip
    answers = {}
    for name, target in (("unseen", f"Observation/{made['obs-p2']}"),
                         ("absent", "Observation/no-such-record")):
        provenance = {"resourceType": "Provenance", "recorded": "2024-05-01T10:00:00Z",
                      "agent": [{"who": {"display": "x"}}],
                      "target": [{"reference": target}]}  # fmt: skip
        try:
            records.create(app, provenance, patient_of=patient_id)
            answers[name] = "stored"
        except CareLedgerError as exc:
            answers[name] = (type(exc).__name__, exc.code, exc.message.replace(target, "T"))
    seen = {"resourceType": "Provenance", "recorded": "2024-05-01T10:00:00Z",
            "agent": [{"who": {"display": "x"}}],
            "target": [{"reference": f"Observation/{made['obs-p1']}"}]}  # fmt: skip
    stored = records.create(app, seen, patient_of=patient_id)
    answers["seen"] = stored.patient == made["p1"]
    return answers


@pytest.fixture(scope="module")
def server(node_dir: Path, in_process: dict[str, Any]) -> Iterator[Server]:
    with serving(node_dir) as running:
        yield running


@pytest.fixture(scope="module")
def clinician(server: Server) -> Iterator[httpx.Client]:
    with login(server, server.data_dir / "keys" / "dr-ana-silva.key") as http:
        yield http


def post(http: httpx.Client, resource: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    answer = http.post(f"/fhir/{resource['resourceType']}", content=json.dumps(resource),
                       headers=FHIR)  # fmt: skip
    assert answer.status_code == expect, (resource["resourceType"], answer.text)
    return dict(answer.json())


def code_of(answer: httpx.Response) -> str:
    return str(answer.json()["issue"][0]["details"]["coding"][0]["code"])


@pytest.fixture(scope="module")
def world(clinician: httpx.Client) -> dict[str, str]:
    """Two patients, and records of the first that the types found through records name."""
    out = {"p1": post(clinician, {"resourceType": "Patient", "gender": "female"})["id"],
           "p2": post(clinician, {"resourceType": "Patient", "gender": "male"})["id"]}
    for who in ("p1", "p2"):
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "hr"},
               "subject": {"reference": f"Patient/{out[who]}"}}  # fmt: skip
        out[f"obs-{who}"] = post(clinician, obs)["id"]
    p1 = {"reference": f"Patient/{out['p1']}"}
    out["Device"] = post(clinician, {"resourceType": "Device", "patient": p1})["id"]
    out["Schedule"] = post(clinician, {"resourceType": "Schedule", "actor": [p1]})["id"]
    out["EnrollmentRequest"] = post(clinician, {"resourceType": "EnrollmentRequest",
                                                "candidate": p1})["id"]  # fmt: skip
    return out


# the record a type found through records names, by path (any type: an Observation)
TARGETS = {("DeviceMetric", "source"): "Device", ("DeviceMetric", "parent"): "Device",
           ("Slot", "schedule"): "Schedule", ("EnrollmentResponse", "request"): "EnrollmentRequest"}


def instance(kind: str, world: dict[str, str]) -> dict[str, Any]:
    """A minimal instance of ``kind``, a patient's (p1's) when the type can be one."""
    p1 = {"reference": f"Patient/{world['p1']}"}
    if kind == "Bundle":
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
               "subject": p1}  # fmt: skip
        return {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": obs}]}
    doc = minimal(kind)
    if kind in PATIENT_ELEMENT:
        doc[PATIENT_ELEMENT[kind]] = p1
    elif kind in RECORD_PATHS:
        path = RECORD_PATHS[kind][0]
        target = TARGETS.get((kind, path), "Observation")
        key = target if target != "Observation" else "obs-p1"
        put_reference(doc, path, {"reference": f"{target}/{world[key]}"})
    elif kind in PATIENT_PATHS:
        put_reference(doc, PATIENT_PATHS[kind][0], p1)
    return complete(doc)


def test_every_held_type_is_created_read_updated_versioned_and_found(
    clinician: httpx.Client, world: dict[str, str]
) -> None:
    started = time.monotonic()
    failures = []
    theirs: dict[str, str] = {}
    for kind in sorted(HELD_TYPES - {"Patient"}):
        body = instance(kind, world)
        made = clinician.post(f"/fhir/{kind}", content=json.dumps(body), headers=FHIR)
        if made.status_code != 201:
            failures.append((kind, "create", made.text[:300]))
            continue
        rid = made.json()["id"]
        checks = {"read": clinician.get(f"/fhir/{kind}/{rid}")}
        changed = {**made.json(), "language": "en"}
        checks["update"] = clinician.put(f"/fhir/{kind}/{rid}", content=json.dumps(changed),
                                         headers=FHIR)  # fmt: skip
        history = clinician.get(f"/fhir/{kind}/{rid}/_history")
        found = clinician.get(f"/fhir/{kind}", params={"_id": rid})
        for name, answer in checks.items():
            if answer.status_code != 200:
                failures.append((kind, name, answer.text[:300]))
        if history.status_code != 200 or history.json()["total"] != 2:
            failures.append((kind, "history", history.text[:300]))
        if found.status_code != 200 or [e["resource"]["id"] for e in found.json().get(
                "entry", []) if e["search"]["mode"] == "match"] != [rid]:
            failures.append((kind, "search _id", found.text[:300]))
        if kind not in ORG_ONLY_TYPES:
            theirs[rid] = kind
    assert failures == []
    assert len(theirs) == len(HELD_TYPES - ORG_ONLY_TYPES) - 1
    # each one held as p1's record: in p1's $everything, by the ledger's index of p1's records
    everything = clinician.get(f"/fhir/Patient/{world['p1']}/$everything").json()
    held = {e["resource"]["id"]: e["resource"]["resourceType"] for e in everything["entry"]
            if e.get("search", {}).get("mode") == "match"}  # fmt: skip
    assert {r: k for r, k in held.items() if r in theirs} == theirs
    assert time.monotonic() - started < 120


def test_a_type_held_either_way_is_the_organisations_when_it_names_no_patient(
    clinician: httpx.Client, world: dict[str, str]
) -> None:
    for kind in sorted(EITHER_TYPES):
        made = post(clinician, minimal(kind))
        found = clinician.get(f"/fhir/{kind}", params={"_id": made["id"]}).json()
        assert [e["resource"]["id"] for e in found["entry"]] == [made["id"]], kind
        # never in a patient's compartment, nor their $everything
        own = clinician.get(f"/fhir/{kind}", params={"_lastUpdated": "ge2000"}).json()
        assert made["id"] in {e["resource"]["id"] for e in own.get("entry", [])}, kind
    everything = clinician.get(f"/fhir/Patient/{world['p1']}/$everything").json()
    kinds = {e["resource"]["resourceType"] for e in everything["entry"] if "resource" in e}
    assert {"Schedule", "Device", "EnrollmentRequest", "Observation"} <= kinds
    slots = clinician.get(f"/fhir/Patient/{world['p1']}/Slot").json()  # no parameter: by index
    assert slots["resourceType"] == "Bundle"
    schedules = clinician.get("/fhir/Schedule", params={"actor": f"Patient/{world['p1']}"})
    assert world["Schedule"] in {e["resource"]["id"] for e in schedules.json()["entry"]}


def test_a_record_of_several_patients_is_refused(
    clinician: httpx.Client, world: dict[str, str]
) -> None:
    both = [{"actor": {"reference": f"Patient/{world[p]}"}, "status": "accepted"}
            for p in ("p1", "p2")]  # fmt: skip
    appointment = {"resourceType": "Appointment", "status": "booked", "participant": both}
    refused = clinician.post("/fhir/Appointment", content=json.dumps(appointment), headers=FHIR)
    assert refused.status_code == 400 and code_of(refused) == "MULTIPLE_PATIENTS"
    provenance = {"resourceType": "Provenance", "recorded": "2024-05-01T10:00:00Z",
                  "agent": [{"who": {"display": "x"}}],
                  "target": [{"reference": f"Observation/{world['obs-p1']}"},
                             {"reference": f"Observation/{world['obs-p2']}"}]}  # fmt: skip
    refused = clinician.post("/fhir/Provenance", content=json.dumps(provenance), headers=FHIR)
    assert refused.status_code == 400 and code_of(refused) == "MULTIPLE_PATIENTS"
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": {**minimal("Observation"), "subject": {"reference": f"Patient/{world[p]}"}}}
        for p in ("p1", "p2")]}  # fmt: skip
    refused = clinician.post("/fhir/Bundle", content=json.dumps(bundle), headers=FHIR)
    assert refused.status_code == 400 and code_of(refused) == "MULTIPLE_PATIENTS"
    transaction = {**bundle, "type": "transaction"}
    refused = clinician.post("/fhir/Bundle", content=json.dumps(transaction), headers=FHIR)
    assert refused.status_code == 400 and code_of(refused) == "BUNDLE_TYPE"
    binary = {"resourceType": "Binary", "contentType": "text/plain", "data": "aGVsbG8="}
    refused = clinician.post("/fhir/Binary", content=json.dumps(binary), headers=FHIR)
    assert refused.status_code == 400 and code_of(refused) == "NO_PATIENT"


def test_a_reference_the_writer_may_not_see_tells_nothing(in_process: dict[str, Any]) -> None:
    assert in_process["unseen"] == in_process["absent"], in_process
    assert in_process["unseen"][1] == "NO_PATIENT_DATA"
    assert in_process["seen"] is True


def test_a_transaction_resolves_a_provenance_to_its_entries_patient(
    clinician: httpx.Client,
) -> None:
    pt, obs = "urn:uuid:0b7c1b6e-1f59-4b8e-9d4a-4a1c1d2e3f40", "urn:uuid:0b7c1b6e-1f59-4b8e-9d4a-4a1c1d2e3f41"
    entries = [
        {"fullUrl": "urn:uuid:0b7c1b6e-1f59-4b8e-9d4a-4a1c1d2e3f42",
         "resource": {"resourceType": "Provenance", "recorded": "2024-05-01T10:00:00Z",
                      "agent": [{"who": {"display": "lab"}}], "target": [{"reference": obs}]},
         "request": {"method": "POST", "url": "Provenance"}},
        {"fullUrl": obs, "resource": {**minimal("Observation"), "subject": {"reference": pt}},
         "request": {"method": "POST", "url": "Observation"}},
        {"fullUrl": pt, "resource": {"resourceType": "Patient", "gender": "other"},
         "request": {"method": "POST", "url": "Patient"}},
    ]  # fmt: skip
    done = clinician.post("/fhir", content=json.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": entries}), headers=FHIR)
    assert done.status_code == 200, done.text
    made = [e["response"]["location"].split("/")[1] for e in done.json()["entry"]]
    compartment = clinician.get(f"/fhir/Patient/{made[2]}/Provenance").json()
    assert [e["resource"]["id"] for e in compartment["entry"]] == [made[0]]


def test_the_types_not_held_are_refused_with_their_reasons(clinician: httpx.Client) -> None:
    for kind, (code, _) in NOT_HELD.items():
        body = {"resourceType": kind}
        answer = clinician.post(f"/fhir/{kind}", content=json.dumps(body), headers=FHIR)
        assert answer.status_code in (404, 405) and code_of(answer) == code, kind
    statement = clinician.get("/fhir/metadata").json()["rest"][0]["resource"]
    declared = {r["type"] for r in statement}
    assert declared == (HELD_TYPES | {"AuditEvent"})  # the ledger's audit trail: read-only
    audit = next(r for r in statement if r["type"] == "AuditEvent")
    assert {i["code"] for i in audit["interaction"]} == {"read", "search-type"}


def test_a_chain_on_r10_holds_none_of_the_types_r11_added(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False, ruleset="r10")
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    try:
        codes = {}
        for kind in ("CapabilityStatement", "Schedule", "Slot", "MedicinalProduct"):
            try:
                records.create(DR, minimal(kind), patient_of=patient_id)
                codes[kind] = "stored"
            except CareLedgerError as exc:
                codes[kind] = exc.code
        assert codes == {"CapabilityStatement": "UNSUPPORTED_TYPE", "Schedule": "NO_PATIENT",
                         "Slot": "NO_PATIENT", "MedicinalProduct": "UNSUPPORTED_TYPE"}
        organisation = {"resourceType": "Organization", "name": "still held on r10"}
        assert records.create(DR, organisation, patient_of=patient_id).patient == ""
    finally:
        records.close()
        node.stop()


# ---------------------------------------------------------------- review r11 (findings F1-F6)


def _transaction(http: httpx.Client, entries: list[dict[str, Any]]) -> httpx.Response:
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return http.post("/fhir", content=json.dumps(bundle), headers=FHIR)


def _provenance(*targets: str) -> dict[str, Any]:
    return {"resourceType": "Provenance", "recorded": "2024-05-01T10:00:00Z",
            "agent": [{"who": {"display": "lab"}}], "reason": [{"text": "diagnosis: HIV"}],
            "target": [{"reference": t} for t in targets]}  # fmt: skip


def test_a_urn_uuid_never_makes_a_patients_record_the_organisations(
    clinician: httpx.Client, world: dict[str, str]
) -> None:
    """F1: a Provenance whose target is an entry of the same rank (a Binary of p2) is p2's,
    never the organisation's; a urn:uuid: no entry resolves is refused on the organisation's
    records; same-rank references between the organisation's records are resolved; a cycle
    is refused."""
    prov, binary = "urn:uuid:5f0c0000-0000-4000-8000-000000000001", "urn:uuid:5f0c0000-0000-4000-8000-000000000002"
    done = _transaction(clinician, [
        {"fullUrl": prov, "resource": _provenance(binary),
         "request": {"method": "POST", "url": "Provenance"}},
        {"fullUrl": binary, "resource": {"resourceType": "Binary", "contentType": "text/plain",
                                         "securityContext": {"reference": f"Patient/{world['p2']}"},
                                         "data": "SElW"},
         "request": {"method": "POST", "url": "Binary"}}])  # fmt: skip
    assert done.status_code == 200, done.text
    made = [e["response"]["location"].split("/")[1] for e in done.json()["entry"]]
    assert done.json()["entry"][0]["resource"]["target"] == [{"reference": f"Binary/{made[1]}"}]
    theirs = clinician.get(f"/fhir/Patient/{world['p2']}/Provenance").json()
    assert made[0] in {e["resource"]["id"] for e in theirs.get("entry", [])}
    # same-rank: a PractitionerRole naming an Organization written after it
    role, org = "urn:uuid:5f0c0000-0000-4000-8000-000000000003", "urn:uuid:5f0c0000-0000-4000-8000-000000000004"
    done = _transaction(clinician, [
        {"fullUrl": role, "resource": {"resourceType": "PractitionerRole",
                                       "organization": {"reference": org}},
         "request": {"method": "POST", "url": "PractitionerRole"}},
        {"fullUrl": org, "resource": {"resourceType": "Organization", "name": "Later Org"},
         "request": {"method": "POST", "url": "Organization"}}])  # fmt: skip
    assert done.status_code == 200, done.text
    org_id = done.json()["entry"][1]["response"]["location"].split("/")[1]
    assert done.json()["entry"][0]["resource"]["organization"] == {
        "reference": f"Organization/{org_id}"}
    # a cycle among entries found through each other
    a, b = "urn:uuid:5f0c0000-0000-4000-8000-00000000000a", "urn:uuid:5f0c0000-0000-4000-8000-00000000000b"
    cycle = _transaction(clinician, [
        {"fullUrl": a, "resource": _provenance(b), "request": {"method": "POST", "url": "Provenance"}},
        {"fullUrl": b, "resource": _provenance(a), "request": {"method": "POST", "url": "Provenance"}},
    ])  # fmt: skip
    assert cycle.status_code == 400 and code_of(cycle) == "REFERENCE_CYCLE", cycle.text
    # a urn:uuid: no entry resolves: unknown, never the organisation's own
    direct = clinician.post("/fhir/Provenance", headers=FHIR,
                            content=json.dumps(_provenance("urn:uuid:6f1c2e0a-0000-4000-8000-000000000001")))  # fmt: skip
    assert direct.status_code == 400 and code_of(direct) == "NO_PATIENT_DATA", direct.text


def test_a_reference_by_identifier_is_no_way_around_the_patient_finder(
    clinician: httpx.Client, world: dict[str, str]
) -> None:
    """F2: a Schedule, an Account or a Slot naming its patient (or a Schedule) by identifier is
    refused, never stored as the organisation's own record."""
    mrn = {"system": "http://hospital.example/mrn", "value": "MRN-0003-McLaughlin"}
    for body in (
        {"resourceType": "Schedule", "actor": [
            {"identifier": mrn, "display": "Stephen McLaughlin (HIV clinic follow-up)"}]},
        {"resourceType": "Account", "status": "active", "subject": [{"identifier": mrn}]},
        {"resourceType": "Slot", "status": "free", "start": "2024-01-01T10:00:00Z",
         "end": "2024-01-01T10:30:00Z", "schedule": {"type": "Schedule", "identifier": mrn}},
    ):  # fmt: skip
        refused = clinician.post(f"/fhir/{body['resourceType']}", content=json.dumps(body),
                                 headers=FHIR)  # fmt: skip
        assert refused.status_code == 400, refused.text
        assert code_of(refused) == "PATIENT_REFERENCE", body["resourceType"]
    own = post(clinician, {"resourceType": "Schedule", "actor": [{"reference": "Location/r1"}]})
    update = {**own, "actor": [{"type": "Practitioner", "identifier": mrn}]}
    refused = clinician.put(f"/fhir/Schedule/{own['id']}", content=json.dumps(update),
                            headers=FHIR)  # fmt: skip
    assert refused.status_code == 400 and code_of(refused) == "PATIENT_REFERENCE"
    org = {"resourceType": "Organization", "name": "x", "extension": [
        {"url": "http://x.example/e", "valueReference": {"identifier": mrn}}]}  # fmt: skip
    refused = clinician.post("/fhir/Organization", content=json.dumps(org), headers=FHIR)
    assert refused.status_code == 400 and code_of(refused) == "NO_PATIENT_DATA"


def test_a_second_patient_cannot_hide_in_an_appointment(
    clinician: httpx.Client, world: dict[str, str], server: Server
) -> None:
    """F3: P2 typed as a Practitioner, by this server's absolute URL, or by identifier."""
    p2 = world["p2"]
    for hidden, code in (
        ({"reference": f"Patient/{p2}", "type": "Practitioner"}, "PATIENT_REFERENCE"),
        ({"reference": f"{server.url}/fhir/Patient/{p2}"}, "MULTIPLE_PATIENTS"),
        ({"type": "Patient", "identifier": {"value": "MRN-3"}}, "PATIENT_REFERENCE"),
    ):
        body = {"resourceType": "Appointment", "status": "booked", "participant": [
            {"actor": {"reference": f"Patient/{world['p1']}"}, "status": "accepted"},
            {"actor": hidden, "status": "accepted"}]}  # fmt: skip
        refused = clinician.post("/fhir/Appointment", content=json.dumps(body), headers=FHIR)
        assert refused.status_code == 400 and code_of(refused) == code, (hidden, refused.text)


def test_a_stored_bundle_carries_no_other_patients_data(
    clinician: httpx.Client, world: dict[str, str]
) -> None:
    """F4: a Group (its members), an organisation's record naming another patient, or an
    entry's response outcome in a collection of p1's are refused."""
    obs = {**minimal("Observation"), "subject": {"reference": f"Patient/{world['p1']}"}}
    p2 = {"reference": f"Patient/{world['p2']}"}
    group = {"resourceType": "Group", "type": "person", "actual": True, "name": "HIV cohort",
             "member": [{"entity": p2}]}  # fmt: skip
    named = {"resourceType": "Practitioner", "extension": [
        {"url": "http://x.example/e", "valueReference": p2}]}  # fmt: skip
    outcome = {**obs, "subject": p2}
    for entries, code in (
        ([{"resource": obs}, {"resource": group}], "NO_PATIENT_DATA"),
        ([{"resource": obs}, {"resource": named}], "NO_PATIENT_DATA"),
        ([{"resource": obs}, {"response": {"status": "200", "outcome": outcome}}], "BUNDLE_TYPE"),
        ([{"resource": obs, "request": {"method": "POST", "url": "Observation"}}], "BUNDLE_TYPE"),
    ):
        body = {"resourceType": "Bundle", "type": "collection", "entry": entries}
        refused = clinician.post("/fhir/Bundle", content=json.dumps(body), headers=FHIR)
        assert refused.status_code == 400 and code_of(refused) == code, refused.text
    author = {"resourceType": "Practitioner", "name": [{"family": "Silva"}]}
    fine = {"resourceType": "Bundle", "type": "collection",
            "entry": [{"resource": obs}, {"resource": author}]}  # fmt: skip
    post(clinician, fine)


def test_a_patients_audit_compartment_is_their_access_log(
    server: Server, world: dict[str, str]
) -> None:
    """F6: GET /fhir/Patient/{id}/AuditEvent answers what /fhir/AuditEvent?patient={id} does."""
    with login(server, server.data_dir / "keys" / "st-mary-admin.key") as admin:
        by_search = admin.get("/fhir/AuditEvent", params={"patient": world["p1"]})
        by_compartment = admin.get(f"/fhir/Patient/{world['p1']}/AuditEvent")
    assert by_search.status_code == by_compartment.status_code == 200, by_compartment.text
    assert by_compartment.json()["total"] == by_search.json()["total"] > 0
    ids = [[e["resource"]["id"] for e in a.json()["entry"]] for a in (by_search, by_compartment)]
    assert ids[0] == ids[1]
