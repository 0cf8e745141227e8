"""Ledger consents and accesses rendered as FHIR, and FHIR Consents read as grants."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.auditevent import AuditEvent

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


BREAK_GLASS_READ = {
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


def test_access_as_a_balp_audit_event() -> None:
    event = access_to_audit_event(
        {**BREAK_GLASS_READ, "app": "acme-charting"}, {"r1": "Observation"}, "https://n"
    )
    AuditEvent.model_validate(event)  # valid R4(B), strictly
    assert event["meta"]["profile"] == [
        "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit.PatientRead"
    ]
    assert event["meta"]["security"][0]["code"] == "BTG"
    assert event["action"] == "R" and event["subtype"][0]["code"] == "read"
    client, server, user = event["agent"]
    assert client["type"]["coding"][0]["code"] == "110153"
    assert client["who"]["identifier"]["value"] == "acme-charting" and not client["requestor"]
    assert server["who"]["reference"] == "Organization/hosp"
    assert user["who"]["reference"] == "Practitioner/dr-x" and user["requestor"] is True
    assert user["policy"] == ["urn:careledger:break_glass:x"]
    patient, first, second = event["entity"]
    assert patient["what"]["reference"] == "Patient/pt-1" and patient["role"]["code"] == "1"
    assert first["what"]["reference"] == "Observation/r1"
    assert second["what"]["identifier"]["value"] == "r2"
    proof = {e["url"]: e for e in event["extension"][0]["extension"]}
    assert proof["proof"]["valueUri"] == f"https://n/v1/tx/{'cd' * 32}"


def test_a_backend_apps_export_is_a_query_by_the_app_itself() -> None:
    entry = {**BREAK_GLASS_READ, "accessor": "sync-app", "app": "sync-app", "action": "export",
             "purpose": "HOPERAT", "basis": {"kind": "custodian", "id": None},
             "break_glass": False}  # fmt: skip
    event = access_to_audit_event(entry)
    AuditEvent.model_validate(event)
    assert event["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientQuery")
    assert event["action"] == "E" and "security" not in event["meta"]
    assert len(event["agent"]) == 2 and event["agent"][0]["requestor"] is True
    assert event["agent"][0]["policy"] == ["urn:careledger:custodian"]


def test_a_write_that_created_its_records_is_a_balp_create() -> None:
    write = {**BREAK_GLASS_READ, "action": "write", "purpose": "TREAT", "break_glass": False,
             "basis": {"kind": "custodian", "id": None}}  # fmt: skip
    created = access_to_audit_event(write, created=True)
    AuditEvent.model_validate(created)
    assert created["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientCreate")
    assert created["action"] == "C" and created["subtype"][0]["code"] == "create"
    updated = access_to_audit_event(write)
    assert updated["meta"]["profile"][0].endswith("IHE.BasicAudit.PatientUpdate")
    assert updated["action"] == "U"


@pytest.mark.parametrize(
    ("interaction", "profile", "code", "action"),
    [
        ("search", "PatientQuery", "search-type", "E"),
        ("vread", "PatientRead", "vread", "R"),
        ("history", "PatientRead", "history-instance", "R"),
        ("patch", "PatientUpdate", "patch", "U"),
        ("delete", "PatientDelete", "delete", "D"),
    ],
)
def test_an_r7_event_says_its_interaction(
    interaction: str, profile: str, code: str, action: str
) -> None:
    event = access_to_audit_event({**BREAK_GLASS_READ, "interaction": interaction})
    AuditEvent.model_validate(event)
    assert event["meta"]["profile"][0].endswith(f"IHE.BasicAudit.{profile}")
    assert event["subtype"][0]["code"] == code and event["action"] == action
