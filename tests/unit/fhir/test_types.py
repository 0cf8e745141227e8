"""The table of types held as a patient's records is exactly what HL7's definitions say."""

from __future__ import annotations

from fhir.resources.R4B import get_fhir_model_class

from careledger.fhir.extract import patient_id
from careledger.fhir.search import _definitions, parameters
from careledger.fhir.types import ORG_TYPES, PATIENT_ELEMENT, RECORD_TYPES
from careledger.fhir.validate import SUPPORTED_TYPES


def derived() -> dict[str, str]:
    """Types whose ``patient`` search parameter is one path to one, single Reference element."""
    kinds = {b for d in _definitions() for b in d["base"]} - {"Resource", "DomainResource"}
    out = {}
    for kind in sorted(kinds - {"Consent"}):
        param = parameters(kind).get("patient")
        if param is None or "Patient" not in param.targets or len(param.paths) != 1:
            continue
        steps = param.paths[0].steps
        try:
            model = get_fhir_model_class(kind)
        except KeyError:
            continue
        fields = {(info.alias or name): info for name, info in model.model_fields.items()}
        field = fields.get(steps[0].arg) if steps else None  # by JSON name ("for": for_fhir)
        if field is None or "List" in str(field.annotation):
            continue
        out[kind] = steps[0].arg
    return out


# Types of R4's Patient compartment whose one Reference to the patient is not their "patient"
# search parameter: AdverseEvent names it "subject" (compartment param: subject).
BY_SUBJECT = {"AdverseEvent": "subject"}


def test_the_table_is_derived_from_the_definitions() -> None:
    assert dict(PATIENT_ELEMENT) == derived() | BY_SUBJECT
    assert len(RECORD_TYPES) > 50 and {"Claim", "ExplanationOfBenefit"} <= RECORD_TYPES
    assert RECORD_TYPES | ORG_TYPES | {"Consent"} == SUPPORTED_TYPES


def test_every_organisation_type_is_r4_about_no_patient_and_searchable() -> None:
    for kind in ORG_TYPES:
        assert get_fhir_model_class(kind) is not None, kind
        have = parameters(kind)
        assert {"_id", "_lastUpdated"} <= set(have), kind
        assert "patient" not in have or kind == "Group", kind


def test_every_record_type_can_be_searched_by_patient() -> None:
    for kind in RECORD_TYPES - {"Patient"}:
        have = parameters(kind)
        about = "subject" if kind in BY_SUBJECT else "patient"
        assert {"_id", "_lastUpdated", about} <= set(have), kind


def test_the_patient_of_each_type_is_found_in_its_own_element() -> None:
    for kind, element in PATIENT_ELEMENT.items():
        resource = {"resourceType": kind, element: {"reference": "Patient/p-1"}}
        assert patient_id(resource) == "p-1", kind
        other = {"resourceType": kind, element: {"reference": "Group/g-1"}}
        assert patient_id(other) is None, kind
