"""Ledger consents and accesses rendered as FHIR, and FHIR Consents read as grants."""

from __future__ import annotations

import pytest

from careledger.fhir.mapping import access_to_audit_event, consent_to_grant, grant_to_consent
from careledger.fhir.outcome import FhirError
from careledger.fhir.validate import validate_resource

ENTRY = {
    "id": "ab" * 32,
    "patient": "pt-1",
    "grantee": {"org": "northside-clinic"},
    "actions": ["read", "write"],
    "resource_types": ["Observation", "Condition"],
    "purposes": ["HRESCH", "TREAT"],
    "start": 1_790_000_000_000,
    "end": 1_800_000_000_000,
    "status": "active",
}


def test_ledger_consent_is_valid_fhir_and_round_trips() -> None:
    consent = grant_to_consent(ENTRY)
    validate_resource(consent, expected_type="Consent")
    args = consent_to_grant(consent)
    assert args == {
        "grantee": {"org": "northside-clinic"},
        "actions": ["read", "write"],
        "resource_types": ["Condition", "Observation"],
        "purposes": ["HRESCH", "TREAT"],
        "start": ENTRY["start"],
        "end": ENTRY["end"],
    }


def test_defaults_and_member_grantee() -> None:
    consent = grant_to_consent(
        {**ENTRY, "grantee": {"member": "dr-x"}, "resource_types": ["*"], "status": "revoked"}
    )
    assert consent["status"] == "inactive"
    assert "class" not in consent["provision"]
    consent["status"] = "active"
    del (
        consent["provision"]["action"],
        consent["provision"]["purpose"],
        consent["provision"]["period"],
    )
    args = consent_to_grant(consent)
    assert (args["grantee"], args["actions"], args["resource_types"], args["purposes"]) == (
        {"member": "dr-x"},
        ["read"],
        ["*"],
        ["TREAT"],
    )


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(status="draft"),
        lambda c: c["provision"].update(type="deny"),
        lambda c: c["provision"].update(actor=[]),
        lambda c: c["provision"]["period"].update(start="yesterday"),
        lambda c: c["provision"]["actor"][0]["reference"].update(reference="Device/d1"),
    ],
)
def test_unsupported_consents_are_refused(mutate) -> None:
    consent = grant_to_consent(ENTRY)
    mutate(consent)
    with pytest.raises(FhirError) as info:
        consent_to_grant(consent)
    assert info.value.http_status == 422


def test_access_as_audit_event() -> None:
    event = access_to_audit_event(
        {
            "tx": "cd" * 32,
            "patient": "pt-1",
            "accessor": "dr-x",
            "accessor_org": "clinic",
            "custodian": "hosp",
            "records": ["r1", "r2"],
            "action": "read",
            "purpose": "ETREAT",
            "basis": {"kind": "break_glass", "id": "x"},
            "break_glass": True,
            "height": 3,
            "time": 1_790_000_000_000,
        }
    )
    assert event["action"] == "R"
    assert event["agent"][0]["who"]["reference"] == "Practitioner/dr-x"
    assert event["subtype"][0]["code"] == "break-glass"
    assert len(event["entity"]) == 3
