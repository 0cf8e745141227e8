"""careledger.fhir.validate: HL7 R4 examples and Synthea resources pass; every enforced required
binding, JSON type, cardinality and envelope rule rejects with the exact FHIRPath expression; and
no diagnostic ever repeats a resource value."""

from __future__ import annotations

import collections
import copy
import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

import careledger
from careledger.errors import ValidationError
from careledger.fhir import (
    REQUIRED_BINDINGS,
    SUPPORTED_TYPES,
    FhirError,
    Issue,
    find_issues,
    operation_outcome,
    validate_resource,
)
from tests.support.vectors import load_json

EXAMPLES = {
    "Patient": "patient-example.json",
    "Observation": "observation-example.json",
    "Condition": "condition-example.json",
    "MedicationRequest": "medicationrequest0301.json",
    "MedicationStatement": "medicationstatementexample1.json",
    "AllergyIntolerance": "allergyintolerance-example.json",
    "Immunization": "immunization-example.json",
    "Encounter": "encounter-example.json",
    "DocumentReference": "documentreference-example.json",
    "Consent": "consent-example.json",
}
MORE_EXAMPLES = (
    "observation-decimal.json",
    # one example of each further type held as a patient's record that HL7 publishes
    "appointmentresponse-example.json",
    "basic-example.json",
    "bodystructure-example-fetus.json",
    "careteam-example.json",
    "clinicalimpression-example.json",
    "communication-example.json",
    "composition-example.json",
    "detectedissue-example.json",
    "device-example.json",
    "deviceusestatement-example.json",
    "episodeofcare-example.json",
    "familymemberhistory-example.json",
    "flag-example.json",
    "goal-example.json",
    "list-example.json",
    "medicationadministration0301.json",
    "medicationdispense0301.json",
    "molecularsequence-example.json",
    "questionnaireresponse-example-bluebook.json",
    "riskassessment-example.json",
    "specimen-example.json",
    "supplydelivery-example.json",
)
SYNTHEA = Path(careledger.__file__).parent / "demo_data" / "synthea"
SYNTHEA_BUNDLES = sorted(SYNTHEA.glob("*.json"))
SYNTHEA_COUNTS = {
    "Observation": 132,
    "Encounter": 17,
    "Immunization": 12,
    "DiagnosticReport": 10,
    "Condition": 7,
    "MedicationRequest": 6,
    "Patient": 3,
    "Procedure": 2,
    "CarePlan": 2,
    "Claim": 23,
    "ExplanationOfBenefit": 17,
    "Organization": 3,
    "Practitioner": 3,
}
BOGUS = "bogus-zq7"  # a value that must never appear in a diagnostic


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = load_json("fhir-r4", name)
    return doc


def synthea_resources() -> Iterator[dict[str, Any]]:
    for path in SYNTHEA_BUNDLES:
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            yield entry["resource"]


def synthea_first(rtype: str) -> dict[str, Any]:
    return copy.deepcopy(next(r for r in synthea_resources() if r["resourceType"] == rtype))


def expressions(issues: list[Issue]) -> list[str]:
    return [e for issue in issues for e in issue.expression]


def outcome_text(exc: FhirError) -> str:
    return json.dumps(exc.operation_outcome(), ensure_ascii=False)


def rejects(doc: object, **kwargs: Any) -> FhirError:
    with pytest.raises(FhirError) as info:
        validate_resource(doc, **kwargs)
    return info.value


# ---------------------------------------------------------------- what must pass


@pytest.mark.parametrize("name", [*EXAMPLES.values(), *MORE_EXAMPLES])
def test_hl7_example_validates(name: str) -> None:
    doc = example(name)
    assert doc["resourceType"] in SUPPORTED_TYPES
    validate_resource(doc)
    validate_resource(doc, expected_type=doc["resourceType"], require_id=True)


def test_examples_and_synthea_cover_these_types() -> None:
    """Which held types a published resource exercises; the rest are checked by their models
    only (the R4 examples of those types are not in the corpus)."""
    covered = {example(n)["resourceType"] for n in [*EXAMPLES.values(), *MORE_EXAMPLES]}
    covered |= {"DiagnosticReport"} | set(SYNTHEA_COUNTS)  # inside diagnosticreport-example.json
    assert len(covered) == 39  # Organization and Practitioner from Synthea
    assert covered <= SUPPORTED_TYPES


def test_diagnosticreport_example_bundle_entries_validate() -> None:
    bundle = example("diagnosticreport-example.json")
    assert bundle["resourceType"] == "Bundle"  # the spec's "example" is a collection
    types: collections.Counter[str] = collections.Counter()
    for entry in bundle["entry"]:
        validate_resource(entry["resource"])
        types[entry["resource"]["resourceType"]] += 1
    assert types == {"DiagnosticReport": 1, "Observation": 17}


def test_every_supported_synthea_resource_validates() -> None:
    assert [p.name.split("_")[0] for p in SYNTHEA_BUNDLES] == ["Buster", "Clemente", "Stephen"]
    counts: collections.Counter[str] = collections.Counter()
    failures = []
    for resource in synthea_resources():
        assert resource["resourceType"] in SUPPORTED_TYPES
        counts[resource["resourceType"]] += 1
        issues = find_issues(resource, require_id=True)
        if issues:
            failures.append((resource["resourceType"], resource["id"], issues))
    assert failures == []
    assert counts == SYNTHEA_COUNTS
    assert sum(counts.values()) == 237


# ---------------------------------------------------------------- must-reject


def test_bundle_with_no_type_is_rejected() -> None:
    exc = rejects(example("bundle-with-no-type.json"))
    codes = {(i.code, i.expression) for i in exc.issues}
    assert ("required", ("Bundle.type",)) in codes
    assert exc.code == "FHIR_INVALID" and exc.http_status == 400


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """A mutation setting ``path`` (``a.b[0].c``) in a document, creating what is missing."""
    steps: list[str | int] = []
    for part in path.split("."):
        name, *indices = re.split(r"\[(\d+)\]", part)
        steps.append(name)
        steps.extend(int(i) for i in indices if i)

    def mutate(doc: dict[str, Any]) -> None:
        node: Any = doc
        for step, nxt in zip(steps, [*steps[1:], None], strict=True):
            if nxt is None:
                if isinstance(step, int):
                    while len(node) <= step:
                        node.append({})
                node[step] = value
            elif isinstance(step, int):
                while len(node) <= step:
                    node.append({})
                node = node[step]
            else:
                node = node.setdefault(step, [] if isinstance(nxt, int) else {})

    return mutate


CC_BOGUS = {"coding": [{"system": "http://example.org/other", "code": BOGUS}], "text": BOGUS}


MINIMAL = {
    "Questionnaire": {"resourceType": "Questionnaire", "status": "active",
                      "item": [{"linkId": "1", "text": "How are you?", "type": "string"}]},
    "Task": {"resourceType": "Task", "status": "requested", "intent": "order",
             "for": {"reference": "Patient/p-1"}},
    "StructureMap": {"resourceType": "StructureMap", "url": "http://example.org/map",
                     "name": "M", "status": "draft", "group": [{
                         "name": "g", "typeMode": "none", "input": [{"name": "s", "mode": "source"}],
                         "rule": [{"name": "r", "source": [{"context": "s"}],
                                   "target": [{"transform": "copy"}]}]}]},
    "SupplyRequest": {"resourceType": "SupplyRequest", "status": "active",
                      "itemCodeableConcept": {"text": "gloves"}, "quantity": {"value": 2}},
}  # fmt: skip


def _source(rtype: str) -> dict[str, Any]:
    if rtype in EXAMPLES:
        return example(EXAMPLES[rtype])
    if rtype in MINIMAL:
        return copy.deepcopy(MINIMAL[rtype])
    published = f"{rtype.lower()}-example.json"
    if published in MORE_EXAMPLES:
        return example(published)
    return synthea_first(rtype)


# (type, element to set, value, expected expression): one per enforced required binding
BINDING_CASES = [
    ("Patient", "gender", BOGUS, "Patient.gender"),
    ("Patient", "contact[0].gender", BOGUS, "Patient.contact[0].gender"),
    (
        "Patient",
        "link[0]",
        {"other": {"reference": "Patient/b"}, "type": BOGUS},
        "Patient.link[0].type",
    ),
    ("Patient", "name[0].use", BOGUS, "Patient.name[0].use"),
    ("Patient", "telecom[1].system", BOGUS, "Patient.telecom[1].system"),
    ("Patient", "telecom[1].use", BOGUS, "Patient.telecom[1].use"),
    ("Patient", "address[0].use", BOGUS, "Patient.address[0].use"),
    ("Patient", "address[0].type", BOGUS, "Patient.address[0].type"),
    ("Patient", "identifier[0].use", BOGUS, "Patient.identifier[0].use"),
    ("Patient", "text.status", BOGUS, "Patient.text.status"),
    ("Patient", "contact[0].name.use", BOGUS, "Patient.contact[0].name.use"),
    ("Observation", "status", BOGUS, "Observation.status"),
    ("Observation", "valueQuantity.comparator", BOGUS, "Observation.valueQuantity.comparator"),
    (
        "Condition",
        "clinicalStatus.coding[0].code",
        BOGUS,
        "Condition.clinicalStatus.coding[0].code",
    ),
    ("Condition", "verificationStatus", CC_BOGUS, "Condition.verificationStatus"),
    (
        "Condition",
        "abatementAge",
        {"value": 5, "comparator": BOGUS},
        "Condition.abatementAge.comparator",  # Age is a Quantity
    ),
    ("MedicationRequest", "status", BOGUS, "MedicationRequest.status"),
    ("MedicationRequest", "intent", BOGUS, "MedicationRequest.intent"),
    ("MedicationRequest", "priority", BOGUS, "MedicationRequest.priority"),
    (
        "MedicationRequest",
        "dosageInstruction[0].timing.repeat.periodUnit",
        BOGUS,
        "MedicationRequest.dosageInstruction[0].timing.repeat.periodUnit",
    ),
    (
        "MedicationRequest",
        "dosageInstruction[0].timing.repeat.durationUnit",
        BOGUS,
        "MedicationRequest.dosageInstruction[0].timing.repeat.durationUnit",
    ),
    (
        "MedicationRequest",
        "dosageInstruction[0].timing.repeat.when",
        ["MORN", BOGUS],
        "MedicationRequest.dosageInstruction[0].timing.repeat.when[1]",
    ),
    (
        "MedicationRequest",
        "dosageInstruction[0].timing.repeat.dayOfWeek",
        [BOGUS],
        "MedicationRequest.dosageInstruction[0].timing.repeat.dayOfWeek[0]",
    ),
    ("MedicationStatement", "status", BOGUS, "MedicationStatement.status"),
    (
        "AllergyIntolerance",
        "clinicalStatus.coding[0].code",
        BOGUS,
        "AllergyIntolerance.clinicalStatus.coding[0].code",
    ),
    ("AllergyIntolerance", "verificationStatus", CC_BOGUS, "AllergyIntolerance.verificationStatus"),
    ("AllergyIntolerance", "type", BOGUS, "AllergyIntolerance.type"),
    ("AllergyIntolerance", "category", ["food", BOGUS], "AllergyIntolerance.category[1]"),
    ("AllergyIntolerance", "criticality", BOGUS, "AllergyIntolerance.criticality"),
    (
        "AllergyIntolerance",
        "reaction[0].severity",
        BOGUS,
        "AllergyIntolerance.reaction[0].severity",
    ),
    ("Immunization", "status", BOGUS, "Immunization.status"),
    ("Procedure", "status", BOGUS, "Procedure.status"),
    ("Encounter", "status", BOGUS, "Encounter.status"),
    (
        "Encounter",
        "statusHistory[0]",
        {"status": BOGUS, "period": {"start": "2020"}},
        "Encounter.statusHistory[0].status",
    ),
    (
        "Encounter",
        "location[0]",
        {"location": {"reference": "Location/1"}, "status": BOGUS},
        "Encounter.location[0].status",
    ),
    ("DiagnosticReport", "status", BOGUS, "DiagnosticReport.status"),
    ("DetectedIssue", "status", BOGUS, "DetectedIssue.status"),
    ("RiskAssessment", "status", BOGUS, "RiskAssessment.status"),
    ("DeviceUseStatement", "status", BOGUS, "DeviceUseStatement.status"),
    ("Device", "udiCarrier[0]", {"entryType": BOGUS}, "Device.udiCarrier[0].entryType"),
    ("Questionnaire", "item[0].type", BOGUS, "Questionnaire.item[0].type"),
    ("Task", "status", BOGUS, "Task.status"),
    ("StructureMap", "group[0].rule[0].target[0].transform", BOGUS,
     "StructureMap.group[0].rule[0].target[0].transform"),
    ("SupplyRequest", "status", BOGUS, "SupplyRequest.status"),
    ("DocumentReference", "status", BOGUS, "DocumentReference.status"),
    ("DocumentReference", "docStatus", BOGUS, "DocumentReference.docStatus"),
    ("DocumentReference", "relatesTo[0].code", BOGUS, "DocumentReference.relatesTo[0].code"),
    ("CarePlan", "status", BOGUS, "CarePlan.status"),
    ("CarePlan", "intent", BOGUS, "CarePlan.intent"),
    ("CarePlan", "activity[0].detail.status", BOGUS, "CarePlan.activity[0].detail.status"),
    ("CarePlan", "activity[0].detail.kind", BOGUS, "CarePlan.activity[0].detail.kind"),
    ("Consent", "status", BOGUS, "Consent.status"),
    ("Consent", "provision.type", BOGUS, "Consent.provision.type"),
    (
        "Consent",
        "provision.provision[0].type",
        BOGUS,
        "Consent.provision.provision[0].type",  # recursive element (contentReference)
    ),
    (
        "Consent",
        "provision.data[0]",
        {"meaning": BOGUS, "reference": {"reference": "Observation/1"}},
        "Consent.provision.data[0].meaning",
    ),
]


@pytest.mark.parametrize(
    ("rtype", "path", "value", "expression"),
    BINDING_CASES,
    ids=[case[3] for case in BINDING_CASES],
)
def test_required_binding_rejects_bogus_code(
    rtype: str, path: str, value: object, expression: str
) -> None:
    doc = _source(rtype)
    _set(path, value)(doc)
    exc = rejects(doc)
    assert [(i.severity, i.code, i.expression) for i in exc.issues] == [
        ("error", "code-invalid", (expression,))
    ]
    assert "http://hl7.org/fhir/ValueSet/" in exc.issues[0].diagnostics
    assert BOGUS not in outcome_text(exc) and BOGUS not in str(exc)


def test_binding_cases_cover_every_binding_of_the_table() -> None:
    def definition(expression: str) -> str:
        path = re.sub(r"\[\d+\]", "", expression).removesuffix(".coding.code")
        path = path.replace("provision.provision", "provision")
        for datatype, where in [
            ("HumanName", ".name."),
            ("ContactPoint", ".telecom."),
            ("Address", ".address."),
            ("Identifier", ".identifier."),
            ("Narrative", ".text."),
            ("Timing", ".timing."),
        ]:
            if where in path:
                return datatype + "." + path.split(where, 1)[1]
        return "Quantity.comparator" if path.endswith(".comparator") else path

    covered = {definition(case[3]) for case in BINDING_CASES}
    assert covered == set(REQUIRED_BINDINGS)


def test_the_library_alone_accepts_bogus_required_codes() -> None:
    """Why the bindings are ours: fhir.resources 8.3 (R4B) checks none of them."""
    for rtype, path, value, _ in BINDING_CASES:
        doc = _source(rtype)
        _set(path, value)(doc)
        get_fhir_model_class(rtype).model_validate(doc)


def test_codeable_concept_binding_accepts_extra_codings_and_rejects_text_only() -> None:
    doc = example(EXAMPLES["Condition"])
    doc["clinicalStatus"]["coding"].insert(0, {"system": "http://example.org", "code": "x"})
    validate_resource(doc)
    doc["clinicalStatus"] = {"text": "active"}
    exc = rejects(doc)
    assert expressions(list(exc.issues)) == ["Condition.clinicalStatus"]


def test_many_problems_are_reported_together() -> None:
    doc = example(EXAMPLES["Patient"])
    doc["id"] = "no spaces allowed"
    doc["gender"] = BOGUS
    doc["active"] = "true"  # a string, not a JSON boolean
    doc["birthDate"] = "1974-13-45"
    doc["name"][0]["given"][1] = 5
    doc["telecom"][1]["system"] = BOGUS
    doc["multipleBirthInteger"] = "2"
    doc["unknownElement"] = BOGUS
    doc["contained"] = [{"resourceType": "Observation", "status": BOGUS}]
    exc = rejects(doc)
    assert sorted(expressions(list(exc.issues))) == sorted(
        [
            "Patient.id",
            "Patient.gender",
            "Patient.active",
            "Patient.birthDate",
            "Patient.name[0].given[1]",
            "Patient.telecom[1].system",
            "Patient.multipleBirthInteger",
            "Patient.unknownElement",
            "Patient.contained[0].status",
            "Patient.contained[0].code",  # required, missing
        ]
    )
    assert len(exc.issues) == 10
    assert BOGUS not in outcome_text(exc)
    assert "no spaces" not in outcome_text(exc) and "1974-13" not in outcome_text(exc)


def test_required_and_choice_elements_are_reported_with_the_other_problems() -> None:
    """The models check required primitives and [x] choices only once all else is valid."""
    exc = rejects({"resourceType": "Observation", "valueString": "a", "valueBoolean": True})
    assert {(i.code, i.expression) for i in exc.issues} == {
        ("required", ("Observation.status",)),
        ("required", ("Observation.code",)),
        ("structure", ("Observation.value[x]",)),
    }
    med = example(EXAMPLES["MedicationRequest"])
    del med["medicationReference"]
    assert [(i.code, i.expression) for i in rejects(med).issues] == [
        ("required", ("MedicationRequest.medication[x]",))
    ]


def test_primitive_extension_stands_in_for_a_required_value() -> None:
    doc = example(EXAMPLES["Observation"])
    del doc["status"]
    doc["_status"] = {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                "valueCode": "unknown",
            }
        ]
    }
    validate_resource(doc)


@pytest.mark.parametrize(
    ("path", "value", "expression"),
    [
        ("active", "true", "Patient.active"),
        ("active", 1, "Patient.active"),
        ("multipleBirthInteger", "2", "Patient.multipleBirthInteger"),
        ("multipleBirthInteger", True, "Patient.multipleBirthInteger"),
        ("multipleBirthInteger", 2.5, "Patient.multipleBirthInteger"),
        ("gender", None, "Patient.gender"),
        ("name[0].given", [], "Patient.name[0].given"),
        ("maritalStatus", {}, "Patient.maritalStatus"),
        ("class_fhir", 1, "Patient.class_fhir"),
        ("birthDate__ext", {}, "Patient.birthDate__ext"),
        ("fhir_comments", "c", "Patient.fhir_comments"),
        ("name[0].period.start", 2001, "Patient.name[0].period.start"),
    ],
)
def test_json_shape_the_models_let_through(path: str, value: object, expression: str) -> None:
    doc = example(EXAMPLES["Patient"])
    _set(path, value)(doc)
    assert expressions(find_issues(doc)) == [expression]


def test_null_in_a_list_of_complex_elements() -> None:
    doc = example(EXAMPLES["Patient"])
    doc["photo"] = [None]
    issues = find_issues(doc)
    assert expressions(issues)[0] == "Patient.photo[0]"
    assert set(expressions(issues)) <= {"Patient.photo[0]", "Patient.photo"}  # walker, model


@pytest.mark.parametrize(
    ("data", "ok"),
    [
        ("dGhpcyBibG9iIGlzIHNuaXBwZWQ=", True),
        ("dGhp cyBi\nbG9i", True),
        ("", False),  # empty strings are not FHIR values
        ("dGhpcyBibG9iIGlzIHNuaXBwZWQ", False),
        ("bogus-zq7!", False),  # the library decodes it, dropping "-" and "!"
    ],
)
def test_base64_binary(data: str, ok: bool) -> None:
    doc = example(EXAMPLES["Patient"])
    doc["photo"] = [{"contentType": "image/gif", "data": data}]
    assert expressions(find_issues(doc)) == ([] if ok else ["Patient.photo[0].data"])


def test_decimal_must_be_a_json_number() -> None:
    doc = example(EXAMPLES["Observation"])
    doc["valueQuantity"]["value"] = "185"
    assert [(i.code, i.expression) for i in find_issues(doc)] == [
        ("structure", ("Observation.valueQuantity.value",))
    ]


def test_null_keeps_its_place_in_primitive_arrays() -> None:
    doc = example(EXAMPLES["Patient"])
    doc["name"][0]["given"] = ["Peter", None]
    doc["name"][0]["_given"] = [
        None,
        {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
    ]
    validate_resource(doc)


@pytest.mark.parametrize(
    ("rid", "ok"),
    [
        ("a", True),
        ("A-1.b", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("a b", False),
        ("a_b", False),
        ("", False),
    ],
)
def test_resource_id_format(rid: str, ok: bool) -> None:
    doc = example(EXAMPLES["Patient"])
    doc["id"] = rid
    issues = find_issues(doc)
    assert (issues == []) is ok
    if not ok:
        assert [(i.code, i.expression) for i in issues] == [("value", ("Patient.id",))]


def test_require_id() -> None:
    doc = example(EXAMPLES["Patient"])
    del doc["id"]
    validate_resource(doc)
    exc = rejects(doc, require_id=True)
    assert [(i.code, i.expression) for i in exc.issues] == [("required", ("Patient.id",))]


def test_contained_resources_are_checked_with_their_own_rules() -> None:
    doc = example(EXAMPLES["MedicationRequest"])
    assert len(doc["contained"]) == 2
    doc["contained"][0]["id"] = "bad id"
    doc["contained"].append({"resourceType": "NoSuchType", "id": "x"})
    doc["contained"].append({"resourceType": "Patient", "gender": BOGUS})
    doc["status"] = BOGUS
    exc = rejects(doc)
    assert expressions(list(exc.issues)) == [
        "MedicationRequest.contained[0].id",
        "MedicationRequest.contained[2].resourceType",
        "MedicationRequest.contained[3].gender",
        "MedicationRequest.status",
    ]
    assert "NoSuchType" not in outcome_text(exc)


# ---------------------------------------------------------------- envelope


@pytest.mark.parametrize("body", [[], "Patient", 5, None, [{"resourceType": "Patient"}]])
def test_not_a_json_object(body: object) -> None:
    exc = rejects(body)
    assert [(i.code, i.expression) for i in exc.issues] == [("structure", ())]


def test_missing_resource_type_still_checks_the_body_against_the_expected_type() -> None:
    exc = rejects({"status": BOGUS}, expected_type="Observation")
    assert [(i.code, i.expression) for i in exc.issues] == [
        ("required", ("resourceType",)),
        ("code-invalid", ("Observation.status",)),
        ("required", ("Observation.code",)),
    ]
    assert [i.code for i in rejects({}).issues] == ["required"]


@pytest.mark.parametrize("rtype", ["NoSuchType", "patient", "Resource", "HumanName", 7, ""])
def test_unknown_resource_type(rtype: object) -> None:
    exc = rejects({"resourceType": rtype})
    assert [(i.code, i.expression) for i in exc.issues] == [("not-supported", ("resourceType",))]
    assert exc.issues[0].diagnostics == "unknown resource type"


@pytest.mark.parametrize("kind", ["Subscription", "Parameters", "OperationOutcome", "AuditEvent"])
def test_unsupported_resource_type(kind: str) -> None:
    # R4 types this server refuses to hold (careledger.fhir.types.NOT_HELD)
    minimal = {"resourceType": kind}
    exc = rejects(minimal)
    assert ("not-supported", ("resourceType",)) in [(i.code, i.expression) for i in exc.issues]
    refused = next(i for i in exc.issues if i.expression == ("resourceType",))
    assert "Organization" in refused.diagnostics and "Patient" in refused.diagnostics


def test_the_r4_types_r4b_dropped_are_checked_by_their_r4_elements() -> None:
    product = {"resourceType": "MedicinalProduct", "id": "mp-1",
               "name": [{"productName": "Aspirin 100 mg"}],
               "type": {"coding": [{"system": "http://example.org", "code": "x"}]}}  # fmt: skip
    validate_resource(product, expected_type="MedicinalProduct", require_id=True)
    wrong = {"resourceType": "MedicinalProduct", "name": [{"productNam": "x"}],
             "type": {"coding": [{"system": 3}]}, "identifier": {"value": "x"},
             "domain": [{"code": "x"}]}  # fmt: skip
    found = {(i.code, i.expression) for i in rejects(wrong).issues}
    assert found == {
        ("required", ("MedicinalProduct.name[0].productName",)),
        ("structure", ("MedicinalProduct.name[0].productNam",)),
        ("structure", ("MedicinalProduct.type.coding[0].system",)),
        ("structure", ("MedicinalProduct.identifier",)),
        ("structure", ("MedicinalProduct.domain",)),
    }
    amount = {"resourceType": "SubstanceProtein", "subunit": [{"subunit": "1"}]}
    assert ("structure", ("SubstanceProtein.subunit[0].subunit",)) in {
        (i.code, i.expression) for i in rejects(amount).issues}  # fmt: skip
    choice = {"resourceType": "MedicinalProductIndication", "duration": {"value": 1},
              "otherTherapy": [{"therapyRelationshipType": {"text": "x"},
                                "medicationCodeableConcept": {"text": "a"},
                                "medicationReference": {"reference": "Medication/m"}}]}
    assert ("structure", ("MedicinalProductIndication.otherTherapy[0].medication[x]",)) in {
        (i.code, i.expression) for i in rejects(choice).issues}  # fmt: skip


def test_type_mismatch_with_the_route() -> None:
    exc = rejects(example(EXAMPLES["Observation"]), expected_type="Patient")
    assert [(i.code, i.expression) for i in exc.issues] == [("invalid", ("resourceType",))]
    assert exc.issues[0].diagnostics == (
        "resource type Observation does not match the expected type Patient"
    )
    with pytest.raises(ValueError, match="not a FHIR resource type"):
        validate_resource({}, expected_type="Nope")


# ---------------------------------------------------------------- PHI never echoed


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("birthDate", "1974-02-30"),
        ("birthDate", BOGUS),
        ("id", f"{BOGUS} x"),
        ("gender", f"{BOGUS} "),
        ("name[0].family", 1234567),
        ("name[0].given", BOGUS),
        ("telecom[1].value", ""),
        ("deceasedDateTime", "2020-01-01T10:00:00"),
        ("deceasedBoolean", BOGUS),
        ("multipleBirthInteger", 99999999999),
        ("address[0].period", {"start": BOGUS}),
        ("photo[0].data", BOGUS + "!!"),
        ("photo[0].size", -1234567),
        ("managingOrganization", BOGUS),
        ("contact[0].name", [BOGUS]),
        ("link[0].other", {"reference": BOGUS, "type": 5}),
        (f"{BOGUS}Element", BOGUS),
        ("extension[0]", {"url": BOGUS, "valueString": BOGUS, "valueCode": BOGUS}),
    ],
)
def test_diagnostics_never_echo_the_value(path: str, value: object) -> None:
    doc = example(EXAMPLES["Patient"])
    _set(path, value)(doc)
    exc = rejects(doc)
    text = outcome_text(exc) + str(exc)
    for leaf in (str(value), BOGUS, "1234567", "99999999999", "1974-02-30", "10:00:00"):
        if leaf and leaf in json.dumps(value):
            assert leaf not in text, (path, text)


# ---------------------------------------------------------------- OperationOutcome and error


def test_operation_outcome_is_a_valid_r4_resource() -> None:
    doc = example(EXAMPLES["Patient"])
    doc["gender"] = BOGUS
    doc["active"] = "yes"
    outcome = rejects(doc).operation_outcome()
    get_fhir_model_class("OperationOutcome").model_validate(outcome)
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] == [
        {
            "severity": "error",
            "code": "structure",
            "diagnostics": "must be a JSON boolean (true or false)",
            "expression": ["Patient.active"],
        },
        {
            "severity": "error",
            "code": "code-invalid",
            "diagnostics": "code is not in the required value set "
            "http://hl7.org/fhir/ValueSet/administrative-gender "
            "(allowed: male, female, other, unknown)",
            "expression": ["Patient.gender"],
        },
    ]
    empty = operation_outcome([])
    get_fhir_model_class("OperationOutcome").model_validate(empty)
    assert empty["issue"] == [
        {"severity": "information", "code": "informational", "diagnostics": "All OK"}
    ]


def test_fhir_error() -> None:
    issue = Issue("error", "not-found", "no such resource", ("Patient.id",))
    exc = FhirError([issue], http_status=404)
    assert isinstance(exc, ValidationError)
    assert (exc.code, exc.http_status, exc.issues) == ("FHIR_INVALID", 404, (issue,))
    assert exc.message == "invalid FHIR resource: Patient.id: no such resource"
    assert FhirError([issue, issue], code="FHIR_GONE").code == "FHIR_GONE"
    assert FhirError([issue]).http_status == 400
    with pytest.raises(ValueError, match="at least one issue"):
        FhirError([])
    with pytest.raises(ValueError, match="severity"):
        Issue("bad", "invalid", "x")
    with pytest.raises(ValueError, match="type"):
        Issue("error", "bad", "x")
    with pytest.raises(TypeError):
        Issue("error", "invalid", "x", "Patient.id")  # type: ignore[arg-type]


@pytest.mark.parametrize("depth", [10, 60, 5000])
def test_nesting_is_bounded(depth: int) -> None:
    """Deep extension chains would exhaust the recursion of the walk and of the models."""
    ext: dict[str, Any] = {"url": "http://example.org/x", "valueString": "v"}
    for _ in range(depth):
        ext = {"url": "http://example.org/x", "extension": [ext]}
    issues = find_issues({"resourceType": "Patient", "extension": [ext]})
    if depth == 10:
        assert issues == []
    else:
        assert [(i.code, i.diagnostics) for i in issues] == [
            ("structure", "nested more than 100 levels deep")
        ]


def test_every_code_element_of_every_held_type_is_checked() -> None:
    """A code element's value set comes from the table, or whole from its model; none is
    left to a list the model cut short ("+")."""
    from fhir.resources.R4B import get_fhir_model_class

    from careledger.fhir.validate import REQUIRED_BINDINGS, _fields, _is_datatype

    unchecked: list[str] = []
    checked = 0

    def walk(cls: Any, path: str, seen: frozenset[Any]) -> None:
        nonlocal checked
        names = {(info.alias or name): info for name, info in cls.model_fields.items()}
        for alias, field in _fields(cls).items():
            if alias.startswith("_"):
                continue
            where = f"{path}.{field.name}"
            extra = names[alias].json_schema_extra
            listed = extra.get("enum_values") if isinstance(extra, dict) else None
            if isinstance(listed, list) and listed:
                if "+" in listed and where not in REQUIRED_BINDINGS:
                    unchecked.append(where)
                else:
                    checked += 1
            model = field.model
            nested = field.kind == "model" and model is not None and not _is_datatype(model)
            if nested and model not in seen:
                walk(model, where, seen | {model})

    from careledger.fhir.validate import _r4_only

    for kind in sorted(SUPPORTED_TYPES - _r4_only()["resources"]):  # the R4-only types: unbound
        walk(get_fhir_model_class(kind), kind, frozenset())
    assert unchecked == []
    assert checked > 150


@pytest.mark.parametrize(
    ("resource", "where"),
    [
        ({"resourceType": "Group", "type": "crowd", "actual": True}, "Group.type"),
        ({"resourceType": "Location", "status": "closed"}, "Location.status"),
        ({"resourceType": "Practitioner", "gender": "x"}, "Practitioner.gender"),
        ({"resourceType": "RiskAssessment", "status": "done",
          "subject": {"reference": "Patient/p"}}, "RiskAssessment.status"),
    ],
)  # fmt: skip
def test_a_code_outside_its_models_value_set_is_refused(resource: dict[str, Any], where: str) -> None:
    issues = find_issues(resource)
    assert [(i.code, i.expression) for i in issues] == [("code-invalid", (where,))]
    assert BOGUS not in str([i.diagnostics for i in issues])
