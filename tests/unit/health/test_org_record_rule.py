"""The organisation-record rule (an organisation's own record carries no patient's data), on
the references review r11 found it blind to: a ``urn:uuid:`` left unresolved, and a reference
by identifier alone."""

from __future__ import annotations

from typing import Any

import pytest

from careledger.errors import ValidationError
from careledger.health.service import _about_no_patient

MRN = {"system": "http://hospital.example/mrn", "value": "MRN-0003"}


def schedule(actor: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Schedule", "actor": [actor]}


@pytest.mark.parametrize(
    "resource",
    [
        # F1: an entry of a Bundle no record was made for (an importer's skipped entry, a
        # direct POST naming one): what it names is unknown
        {"resourceType": "Provenance", "target": [{"reference": "urn:uuid:6f1c2e0a-0000"}]},
        {"resourceType": "PractitionerRole", "organization": {"reference": "urn:uuid:x-1"}},
        # F2: a patient by identifier, typed or not, with a telling display
        schedule({"identifier": MRN, "display": "Stephen McLaughlin (HIV clinic follow-up)"}),
        schedule({"type": "Patient", "identifier": MRN}),
        {"resourceType": "Account", "subject": [{"identifier": MRN}]},
        # a type that may be a patient's record, by identifier: whose it is cannot be checked
        {"resourceType": "Slot", "schedule": {"type": "Schedule", "identifier": MRN}},
        {"resourceType": "Organization", "extension": [
            {"url": "http://x", "valueReference": {"identifier": MRN}}]},
    ],
)
def test_an_unresolvable_reference_is_refused(resource: dict[str, Any]) -> None:
    with pytest.raises(ValidationError) as refused:
        _about_no_patient(resource)
    assert refused.value.code == "NO_PATIENT_DATA"


@pytest.mark.parametrize(
    "resource",
    [
        schedule({"reference": "Practitioner/dr-1", "display": "Dr One (any free text)"}),
        schedule({"type": "Practitioner", "identifier": {"value": "NPI-1"}}),
        schedule({"reference": "Location/room-2", "identifier": {"value": "R2"}}),
        # an Identifier element that is no Reference (a CodeableConcept type beside it)
        {"resourceType": "PaymentReconciliation", "detail": [
            {"identifier": {"value": "D-1"}, "type": {"text": "payment"}}]},
    ],
)
def test_the_organisations_references_pass(resource: dict[str, Any]) -> None:
    _about_no_patient(resource)
