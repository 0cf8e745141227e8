"""The patient summary document: IPS shape, deterministic urn:uuid fullUrls, references
rewritten, sections filled from HL7's own R4 example resources."""

from __future__ import annotations

import copy
import json
import re
import uuid
from typing import Any

import pytest
from fhir.resources.R4B.bundle import Bundle

from careledger.errors import ValidationError
from careledger.health_links.ips import SECTIONS, patient_summary
from tests.support.vectors import load_json

NOW = "2024-05-01T12:30:00+02:00"
BUNDLE_ID = "0f8fad5b-d9cb-469f-a165-70867728950e"
LOINC = "http://loinc.org"

PATIENT = load_json("fhir-r4", "patient-example.json")
ORGANIZATION = {"resourceType": "Organization", "id": "1", "name": "Gastroenterology @ Acme"}
LAB = {
    "resourceType": "Observation",
    "id": "hb",
    "status": "final",
    "category": [
        {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                    "code": "laboratory",
                }
            ]
        }
    ],
    "code": {"coding": [{"system": LOINC, "code": "718-7", "display": "Hemoglobin"}]},
    "subject": {"reference": "Patient/example/_history/1"},
    "valueQuantity": {"value": 7.2, "unit": "g/dL"},
}
MEDICATION = {
    "resourceType": "Medication",
    "id": "anastrozole",
    "code": {"text": "Anastrozole 1 mg <tablet> & co"},
}
MEDICATION_STATEMENT = {
    "resourceType": "MedicationStatement",
    "id": "ms1",
    "status": "active",
    "medicationReference": {"reference": "Medication/anastrozole"},
    "subject": {"reference": "Patient/example"},
}


def resources() -> list[dict[str, Any]]:
    return [
        load_json("fhir-r4", "observation-example.json"),  # body weight, a vital sign
        load_json("fhir-r4", "condition-example.json"),
        load_json("fhir-r4", "immunization-example.json"),
        load_json("fhir-r4", "allergyintolerance-example.json"),
        load_json("fhir-r4", "encounter-example.json"),  # in the document, in no section
        copy.deepcopy(LAB),
        copy.deepcopy(MEDICATION),
        copy.deepcopy(MEDICATION_STATEMENT),
    ]


def summary(**changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "patient": PATIENT,
        "resources": resources(),
        "now_iso": NOW,
        "bundle_id": BUNDLE_ID,
    }
    arguments.update(changes)
    return patient_summary(**arguments)


def full_url(key: str) -> str:
    return f"urn:uuid:{uuid.uuid5(uuid.UUID(BUNDLE_ID), key)}"


def sections_by_code(document: dict[str, Any]) -> dict[str, dict[str, Any]]:
    composition = document["entry"][0]["resource"]
    return {section["code"]["coding"][0]["code"]: section for section in composition["section"]}


def test_document_bundle_header() -> None:
    document = summary()
    assert document["resourceType"] == "Bundle" and document["type"] == "document"
    assert document["id"] == BUNDLE_ID
    assert document["identifier"] == {
        "system": "urn:ietf:rfc:3986",
        "value": f"urn:uuid:{BUNDLE_ID}",
    }
    assert document["timestamp"] == NOW


def test_composition_comes_first_and_is_a_patient_summary() -> None:
    document = summary()
    composition = document["entry"][0]["resource"]
    assert composition["resourceType"] == "Composition"
    assert composition["status"] == "final"
    assert composition["type"] == {
        "coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]
    }
    assert composition["subject"] == {"reference": full_url("Patient/example")}
    assert composition["author"] == [{"reference": full_url("Patient/example")}]
    assert composition["date"] == NOW
    assert composition["title"] == "International Patient Summary"


def test_full_urls_are_uuid5_of_type_and_id_under_the_bundle_id() -> None:
    document = summary()
    urls = [entry["fullUrl"] for entry in document["entry"]]
    assert len(set(urls)) == len(urls)
    assert all(re.fullmatch(r"urn:uuid:[0-9a-f-]{36}", url) for url in urls)
    assert urls[1] == full_url("Patient/example")
    assert urls[2] == full_url("Observation/example")
    assert all("id" not in entry["resource"] for entry in document["entry"][1:])


def test_same_inputs_same_document_other_bundle_id_other_urls() -> None:
    assert json.dumps(summary()) == json.dumps(summary())
    other = summary(bundle_id="6ba7b810-9dad-11d1-80b4-00c04fd430c8")
    assert not {e["fullUrl"] for e in other["entry"]} & {e["fullUrl"] for e in summary()["entry"]}


def test_inputs_are_not_modified() -> None:
    given = resources()
    before = copy.deepcopy(given)
    patient = copy.deepcopy(PATIENT)
    patient_summary(patient, given, now_iso=NOW, bundle_id=BUNDLE_ID)
    assert given == before and patient == PATIENT


def test_sections_and_their_entries() -> None:
    sections = sections_by_code(summary())
    assert list(sections) == ["10160-0", "48765-2", "11450-4", "30954-2", "11369-6", "8716-3"]
    entries = {code: [e["reference"] for e in s.get("entry", [])] for code, s in sections.items()}
    assert entries == {
        "10160-0": [full_url("MedicationStatement/ms1")],
        "48765-2": [full_url("AllergyIntolerance/example")],
        "11450-4": [full_url("Condition/example")],
        "30954-2": [full_url("Observation/hb")],
        "11369-6": [full_url("Immunization/example")],
        "8716-3": [full_url("Observation/example")],
    }
    displays = {s["code"]["coding"][0]["display"] for s in sections.values()}
    assert displays == {section.display for section in SECTIONS}
    every_entry = {e["fullUrl"] for e in summary()["entry"]}
    assert all(url in every_entry for refs in entries.values() for url in refs)


def test_every_section_has_xhtml_narrative_with_escaped_labels() -> None:
    sections = sections_by_code(summary())
    for section in sections.values():
        assert section["text"]["status"] == "generated"
        assert section["text"]["div"].startswith('<div xmlns="http://www.w3.org/1999/xhtml">')
    medications = sections["10160-0"]["text"]["div"]
    assert "Anastrozole 1 mg &lt;tablet&gt; &amp; co" in medications  # via medicationReference
    assert "Hemoglobin: 7.2 g/dL" in sections["30954-2"]["text"]["div"]
    assert "185 lbs" in sections["8716-3"]["text"]["div"]


def test_required_sections_say_no_information_when_empty() -> None:
    document = summary(resources=[])
    sections = sections_by_code(document)
    assert list(sections) == ["10160-0", "48765-2", "11450-4"]
    for section in sections.values():
        assert "entry" not in section
        assert section["emptyReason"]["coding"][0]["code"] == "unavailable"
        assert "No information available." in section["text"]["div"]
    assert len(document["entry"]) == 2  # Composition and Patient


def test_references_between_entries_become_full_urls() -> None:
    document = summary()
    by_url = {entry["fullUrl"]: entry["resource"] for entry in document["entry"]}
    lab = by_url[full_url("Observation/hb")]
    assert lab["subject"] == {"reference": full_url("Patient/example")}  # _history dropped
    weight = by_url[full_url("Observation/example")]
    assert weight["subject"]["reference"] == full_url("Patient/example")
    assert weight["encounter"]["reference"] == full_url("Encounter/example")
    statement = by_url[full_url("MedicationStatement/ms1")]
    assert statement["medicationReference"] == {"reference": full_url("Medication/anastrozole")}
    # Not in the document: left as it was.
    patient = by_url[full_url("Patient/example")]
    assert patient["managingOrganization"] == {"reference": "Organization/1"}


def test_author_organization_is_added_and_referenced() -> None:
    document = summary(author=ORGANIZATION)
    composition = document["entry"][0]["resource"]
    assert composition["author"] == [{"reference": full_url("Organization/1")}]
    by_url = {entry["fullUrl"]: entry["resource"] for entry in document["entry"]}
    assert by_url[full_url("Organization/1")]["name"] == ORGANIZATION["name"]
    assert by_url[full_url("Patient/example")]["managingOrganization"] == {
        "reference": full_url("Organization/1")
    }


def test_patient_repeated_in_resources_is_not_duplicated() -> None:
    document = summary(resources=[PATIENT, *resources()])
    urls = [entry["fullUrl"] for entry in document["entry"]]
    assert urls.count(full_url("Patient/example")) == 1


def test_document_is_structurally_valid_fhir() -> None:
    # R4B models (the nearest fhir.resources has to R4) check cardinality and datatypes.
    Bundle.model_validate(summary(author=ORGANIZATION))
    Bundle.model_validate(summary(resources=[]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"now_iso": "2024-05-01"}, "instant"),
        ({"now_iso": "2024-05-01T12:30:00"}, "instant"),  # no zone
        ({"bundle_id": "not-a-uuid"}, "UUID"),
        ({"bundle_id": BUNDLE_ID.upper()}, "canonical"),
        ({"patient": {"resourceType": "Patient"}}, "valid id"),
        ({"patient": ORGANIZATION}, "Patient"),
        ({"resources": [{"id": "x"}]}, "resourceType"),
        ({"resources": [LAB, LAB]}, "repeats"),
        ({"author": {"resourceType": "Observation", "id": "x"}}, "cannot author"),
    ],
)
def test_refusals(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message) as err:
        summary(**changes)
    assert err.value.code == "BAD_PATIENT_SUMMARY"
