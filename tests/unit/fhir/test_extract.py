"""careledger.fhir.extract on the HL7 R4 examples and the Synthea demo bundles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import careledger
from careledger.fhir import (
    patient_id,
    patient_reference,
    phi_strings,
)
from careledger.fhir.types import RECORD_TYPES
from tests.support.vectors import load_json

SYNTHEA = Path(careledger.__file__).parent / "demo_data" / "synthea"


def example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = load_json("fhir-r4", name)
    return doc


def bundles() -> Iterator[dict[str, Any]]:
    for path in sorted(SYNTHEA.glob("*.json")):
        yield json.loads(path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------- patient_id


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("patient-example.json", "example"),
        ("observation-example.json", "example"),  # subject
        ("condition-example.json", "example"),
        ("allergyintolerance-example.json", "example"),  # patient
        ("immunization-example.json", "example"),
        ("encounter-example.json", "example"),
        ("medicationrequest0301.json", "pat1"),
        ("medicationstatementexample1.json", "pat1"),
        ("documentreference-example.json", "xcda"),
        ("consent-example.json", "f001"),  # Consent.patient (R4)
        ("observation-decimal.json", None),  # no subject
    ],
)
def test_patient_id_of_examples(name: str, expected: str | None) -> None:
    assert patient_id(example(name)) == expected


@pytest.mark.parametrize(
    ("ref", "pid", "reference"),
    [
        ({"reference": "Patient/123"}, "123", "Patient/123"),
        ({"reference": "Patient/a.b-1/_history/2"}, "a.b-1", "Patient/a.b-1/_history/2"),
        ({"reference": "Patient/123", "type": "Patient"}, "123", "Patient/123"),
        ({"reference": "https://x.org/fhir/Patient/9"}, None, "https://x.org/fhir/Patient/9"),
        (
            {"reference": "urn:uuid:0d7f8c0e-1111-4d1b-9c1e-2c4a5b6d7e8f"},
            None,
            "urn:uuid:0d7f8c0e-1111-4d1b-9c1e-2c4a5b6d7e8f",
        ),
        ({"reference": "urn:uuid:0d7f8c0e", "type": "Group"}, None, None),
        ({"reference": "Group/1"}, None, None),
        ({"reference": "Patient/1", "type": "Group"}, None, None),
        ({"reference": "#p1"}, None, None),
        ({"identifier": {"system": "urn:x", "value": "123456"}}, None, None),
        ({"reference": "Patient/has space"}, None, None),
        ("Patient/1", None, None),
    ],
)
def test_patient_reference_forms(ref: object, pid: str | None, reference: str | None) -> None:
    # each type's own patient element (careledger.fhir.types), and Consent's (held by its
    # contract, found among subject / patient / beneficiary)
    for kind, element in (
        ("Observation", "subject"),
        ("Immunization", "patient"),
        ("Coverage", "beneficiary"),
        ("Consent", "patient"),
    ):
        doc = {"resourceType": kind, element: ref}
        assert patient_id(doc) == pid
        assert patient_reference(doc) == reference


def test_patient_of_a_patient_and_of_nothing() -> None:
    assert patient_reference(example("patient-example.json")) == "Patient/example"
    assert patient_id({"resourceType": "Patient"}) is None
    assert patient_id({"resourceType": "Patient", "id": "bad id"}) is None
    assert patient_id({"resourceType": "Observation"}) is None
    assert patient_id({}) is None


def test_synthea_patient_references_are_bundle_local() -> None:
    """Synthea links entries by urn:uuid: patient_id is None for them (documented), and
    patient_reference gives the urn that the Bundle's Patient entry has as fullUrl."""
    linked = 0
    for bundle in bundles():
        patient_entry = bundle["entry"][0]
        patient = patient_entry["resource"]
        assert patient["resourceType"] == "Patient"
        assert patient_id(patient) == patient["id"]
        for entry in bundle["entry"][1:]:
            resource = entry["resource"]
            if resource["resourceType"] not in RECORD_TYPES:  # about no patient
                continue
            assert patient_id(resource) is None
            assert patient_reference(resource) == patient_entry["fullUrl"]
            linked += 1
    assert linked == 237 - 9  # every entry but the 3 Patients, Organizations and Practitioners


# ---------------------------------------------------------------- phi_strings


def test_phi_strings_of_patient_example() -> None:
    phi = phi_strings(example("patient-example.json"))
    assert {"Chalmers", "Peter", "James", "Windsor", "Bénédicte", "du Marché"} <= phi
    assert {"1974-12-25", "12345", "(03) 5555 6473", "534 Erewhon St", "PleasantVille"} <= phi
    assert "3999" in phi  # postalCode
    assert "Jim" not in phi  # a given name, but shorter than 4 characters
    assert "example" not in phi  # the resource id is not PHI here


def test_phi_strings_of_references_and_contained() -> None:
    assert "P. van de Heuvel" in phi_strings(example("consent-example.json"))  # patient.display
    assert "Donald Duck" in phi_strings(example("medicationrequest0301.json"))
    doc = {
        "resourceType": "Observation",
        "contained": [{"resourceType": "Patient", "name": [{"family": "Contained"}]}],
        "performer": [{"reference": "Patient/1", "display": "Performing Patient"}],
        "extension": [{"url": "x", "valueHumanName": {"given": ["Extended"]}}],
    }
    assert phi_strings(doc) == {"Contained", "Performing Patient", "Extended"}


def test_phi_strings_of_synthea_patients() -> None:
    for bundle in bundles():
        patient = bundle["entry"][0]["resource"]
        text = json.dumps(patient, ensure_ascii=False)
        phi = phi_strings(patient)
        name = patient["name"][0]
        assert name["family"] in phi and name["given"][0] in phi
        assert patient["birthDate"] in phi
        assert patient["address"][0]["line"][0] in phi
        assert patient["address"][0]["city"] in phi
        assert patient["telecom"][0]["value"] in phi
        assert {i["value"] for i in patient["identifier"]} <= phi
        maiden = next(
            e["valueString"]
            for e in patient["extension"]
            if e["url"].endswith("patient-mothersMaidenName")
        )
        assert maiden in phi
        assert all(len(s) >= 4 and json.dumps(s, ensure_ascii=False)[1:-1] in text for s in phi)
