"""careledger.fhir.extract on the HL7 R4 examples and the Synthea demo bundles."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import careledger
from careledger.fhir import (
    SUPPORTED_TYPES,
    codes,
    patient_id,
    patient_reference,
    phi_strings,
    search_dates,
)
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
    for element in ("subject", "patient", "beneficiary"):
        doc = {"resourceType": "Observation", element: ref}
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
            if resource["resourceType"] not in SUPPORTED_TYPES:
                continue
            assert patient_id(resource) is None
            assert patient_reference(resource) == patient_entry["fullUrl"]
            linked += 1
    assert linked == 191 - 3


# ---------------------------------------------------------------- search_dates


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("patient-example.json", ["1974-12-25"]),
        ("observation-example.json", ["2016-03-28"]),
        ("condition-example.json", ["2012-05-24"]),
        ("allergyintolerance-example.json", ["2004", "2014-10-09T14:58:00+11:00", "2012-06"]),
        ("immunization-example.json", ["2013-01-10"]),
        ("medicationrequest0301.json", ["2015-01-15"]),
        ("medicationstatementexample1.json", ["2015-01-23", "2015-02-22"]),
        (
            "documentreference-example.json",
            ["2005-12-24T09:43:41+11:00", "2004-12-23T08:00:00+11:00", "2004-12-23T08:01:00+11:00"],
        ),
        ("consent-example.json", ["2016-05-11", "1964-01-01", "2016-01-01"]),
        ("encounter-example.json", []),
    ],
)
def test_search_dates_of_examples(name: str, expected: list[str]) -> None:
    assert search_dates(example(name)) == expected


def test_search_dates_choice_forms_and_defaults() -> None:
    assert search_dates(
        {
            "resourceType": "Procedure",
            "performedPeriod": {"start": "2020-01-01", "end": "2020-01-02"},
        }
    ) == ["2020-01-01", "2020-01-02"]
    assert search_dates({"resourceType": "Procedure", "performedString": "last spring"}) == []
    assert search_dates(
        {"resourceType": "Condition", "onsetAge": {"value": 3}, "recordedDate": "2021-02-03"}
    ) == ["2021-02-03"]
    assert search_dates({"resourceType": "Observation", "effectiveDateTime": 5}) == []
    # a type without an entry in the table falls back to the common date elements
    assert search_dates({"resourceType": "ServiceRequest", "occurrenceDateTime": "2022"}) == [
        "2022"
    ]


def test_every_synthea_resource_has_search_dates() -> None:
    by_type: dict[str, set[int]] = {}
    for bundle in bundles():
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] in SUPPORTED_TYPES:
                dates = search_dates(resource)
                assert dates, resource["resourceType"]
                assert all(d[:4].isdigit() for d in dates)
                by_type.setdefault(resource["resourceType"], set()).add(len(dates))
    assert by_type["Encounter"] == {2}  # period start and end
    assert by_type["Patient"] == {1}  # birthDate (all three alive)


# ---------------------------------------------------------------- codes


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "observation-example.json",
            [
                ("http://loinc.org", "29463-7"),
                ("http://loinc.org", "3141-9"),
                ("http://snomed.info/sct", "27113001"),
                ("http://acme.org/devices/clinical-codes", "body-weight"),
            ],
        ),
        ("condition-example.json", [("http://snomed.info/sct", "39065001")]),
        ("allergyintolerance-example.json", [("http://snomed.info/sct", "227493005")]),
        ("immunization-example.json", [("urn:oid:1.2.36.1.2001.1005.17", "FLUVAX")]),
        # medicationReference "#med0310": the contained Medication's code
        ("medicationrequest0301.json", [("http://snomed.info/sct", "430127000")]),
        ("medicationstatementexample1.json", [("http://hl7.org/fhir/sid/ndc", "50580-506-02")]),
        ("documentreference-example.json", [("http://loinc.org", "34108-1")]),
        (
            "consent-example.json",
            [
                ("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
                ("http://loinc.org", "59284-0"),
            ],
        ),
        ("patient-example.json", []),
        ("encounter-example.json", []),
    ],
)
def test_codes_of_examples(name: str, expected: list[tuple[str | None, str]]) -> None:
    assert codes(example(name)) == expected


def test_codes_edge_cases() -> None:
    assert codes(
        {
            "resourceType": "Observation",
            "code": {"coding": [{"code": "x"}, {"system": "s"}, {"system": "s", "code": "y"}, 5]},
        }
    ) == [(None, "x"), ("s", "y")]
    assert codes({"resourceType": "Observation", "code": "x"}) == []
    assert (
        codes({"resourceType": "MedicationRequest", "medicationReference": {"reference": "#m"}})
        == []
    )


def test_every_clinical_synthea_resource_has_a_code() -> None:
    systems: set[str | None] = set()
    for bundle in bundles():
        for entry in bundle["entry"]:
            resource = entry["resource"]
            if resource["resourceType"] in SUPPORTED_TYPES - {"Patient"}:
                found = codes(resource)
                assert found, resource["resourceType"]
                systems.update(system for system, _ in found)
    assert {"http://loinc.org", "http://snomed.info/sct", "http://hl7.org/fhir/sid/cvx"} <= systems


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
