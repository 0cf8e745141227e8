"""FHIR Consent and AuditEvent as views of the ledger's consent and audit state.

A FHIR Consent (R4, scope patient-privacy, a ``permit`` provision) maps to the arguments of
``consent.grant``; a ledger consent maps back to a FHIR Consent whose id is the granting
transaction's id. AuditEvents are read-only renderings of ``audit.access`` entries.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from careledger.fhir.outcome import FhirError, Issue

ACTION_CODES = {"access": "read", "correct": "write", "use": "read", "collect": "write"}
READ_BACK = {"read": "access", "write": "correct"}
ACTREASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"


def _bad(message: str, path: str) -> FhirError:
    return FhirError([Issue("error", "invalid", message, (path,))], http_status=422)


def _millis(value: object, path: str) -> int:
    if not isinstance(value, str):
        raise _bad("a dateTime is required", path)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad("not a dateTime", path) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


def _iso(millis: int | None) -> str | None:
    if millis is None:
        return None
    return datetime.fromtimestamp(millis / 1000, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def consent_to_grant(consent: Mapping[str, Any]) -> dict[str, Any]:
    """``consent.grant`` args for a FHIR Consent (already validated as FHIR R4)."""
    if consent.get("status") != "active":
        raise _bad("only an active Consent can be granted", "Consent.status")
    provision = consent.get("provision")
    if not isinstance(provision, dict) or provision.get("type", "permit") != "permit":
        raise _bad("a permit provision is required", "Consent.provision.type")
    actors = provision.get("actor") or []
    reference = actors[0].get("reference", {}).get("reference") if actors else None
    if not isinstance(reference, str) or "/" not in reference:
        raise _bad(
            "name one grantee: Organization/{id} or Practitioner/{id}", "Consent.provision.actor[0]"
        )
    kind, ident = reference.split("/", 1)
    if kind not in ("Organization", "Practitioner", "PractitionerRole", "Patient", "RelatedPerson"):
        raise _bad("the grantee must be an Organization or a person", "Consent.provision.actor[0]")
    grantee = {"org": ident} if kind == "Organization" else {"member": ident}
    actions = sorted(
        {
            ACTION_CODES[c["code"]]
            for a in provision.get("action") or []
            for c in a.get("coding") or []
            if c.get("code") in ACTION_CODES
        }
        or {"read"}
    )
    types = sorted(
        {
            c["code"]
            for c in provision.get("class") or []
            if c.get("system") in (None, RESOURCE_TYPES) and "code" in c
        }
        or {"*"}
    )
    purposes = sorted(
        {p["code"] for p in provision.get("purpose") or [] if "code" in p} or {"TREAT"}
    )
    args: dict[str, Any] = {
        "grantee": grantee,
        "actions": actions,
        "resource_types": types,
        "purposes": purposes,
    }
    period = provision.get("period") or {}
    if "start" in period:
        args["start"] = _millis(period["start"], "Consent.provision.period.start")
    if "end" in period:
        args["end"] = _millis(period["end"], "Consent.provision.period.end")
    return args


def grant_to_consent(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A ledger consent as a FHIR R4 Consent."""
    grantee = entry["grantee"]
    actor = (
        f"Organization/{grantee['org']}"
        if "org" in grantee
        else f"Practitioner/{grantee['member']}"
    )
    period = {k: v for k, v in (("start", _iso(entry["start"])), ("end", _iso(entry["end"]))) if v}
    provision: dict[str, Any] = {
        "type": "permit",
        "period": period,
        "actor": [
            {
                "role": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                        }
                    ]
                },
                "reference": {"reference": actor},
            }
        ],
        "action": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/consentaction",
                        "code": READ_BACK[a],
                    }
                ]
            }
            for a in entry["actions"]
        ],
        "purpose": [{"system": ACTREASON, "code": p} for p in entry["purposes"]],
    }
    if "*" not in entry["resource_types"]:
        provision["class"] = [
            {"system": RESOURCE_TYPES, "code": t} for t in entry["resource_types"]
        ]
    return {
        "resourceType": "Consent",
        "id": entry["id"],
        "status": "active" if entry["status"] == "active" else "inactive",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{entry['patient']}"},
        "policyRule": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "OPTIN"}
            ]
        },
        "provision": provision,
    }


def access_to_audit_event(entry: Mapping[str, Any]) -> dict[str, Any]:
    """An ``audit.access`` entry as a FHIR R4 AuditEvent (read-only)."""
    action = {"read": "R", "write": "U", "export": "R"}[entry["action"]]
    who = "Patient" if entry["accessor"] == entry["patient"] else "Practitioner"
    return {
        "resourceType": "AuditEvent",
        "id": entry["tx"],
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "action": action,
        "recorded": _iso(entry["time"]),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": ACTREASON, "code": entry["purpose"]}]}],
        "agent": [
            {"who": {"reference": f"{who}/{entry['accessor']}"}, "requestor": True},
            {"who": {"reference": f"Organization/{entry['custodian']}"}, "requestor": False},
        ],
        "source": {"observer": {"reference": f"Organization/{entry['custodian']}"}},
        "entity": [
            {"what": {"reference": f"Patient/{entry['patient']}"}},
            *({"what": {"identifier": {"value": r}}} for r in entry["records"]),
        ],
        **(
            {"subtype": [{"system": "https://careledger.dev/codes", "code": "break-glass"}]}
            if entry["break_glass"]
            else {}
        ),
    }
