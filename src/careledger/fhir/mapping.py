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


BALP = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."
DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
SECURITY_ROLE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
APPS_SYSTEM = "https://careledger.dev/apps"
LEDGER_PROOF = "https://careledger.dev/fhir/StructureDefinition/ledger-proof"
# ledger action -> (BALP profile, restful interaction, AuditEvent.action)
BALP_KINDS = {
    "read": ("PatientRead", "read", "R"),
    "write": ("PatientUpdate", "update", "U"),
    "export": ("PatientQuery", "operation", "E"),
}
BALP_CREATE = ("PatientCreate", "create", "C")
# the interaction an r7 access event records -> (BALP profile, restful interaction, action)
BALP_INTERACTIONS = {
    "read": ("PatientRead", "read", "R"),
    "vread": ("PatientRead", "vread", "R"),
    "history": ("PatientRead", "history-instance", "R"),
    "search": ("PatientQuery", "search-type", "E"),
    "create": BALP_CREATE,
    "update": ("PatientUpdate", "update", "U"),
    "patch": ("PatientUpdate", "patch", "U"),
    "delete": ("PatientDelete", "delete", "D"),
    "export": ("PatientQuery", "operation", "E"),
}


def access_to_audit_event(
    entry: Mapping[str, Any],
    types: Mapping[str, str] | None = None,
    base: str = "",
    *,
    created: bool = False,
) -> dict[str, Any]:
    """An ``audit.access`` entry as an IHE BALP AuditEvent (read-only): the user and the app
    (client), the custodian's node (server), the patient and each record (entities), the basis
    that allowed it (a consent or a break-glass, as the agent's policy), and the ledger
    transaction that carries it (extension, with the URL of its inclusion proof)."""
    if entry.get("interaction") in BALP_INTERACTIONS:
        kind = BALP_INTERACTIONS[entry["interaction"]]
    elif created and entry["action"] == "write":
        kind = BALP_CREATE
    else:
        kind = BALP_KINDS[entry["action"]]
    profile, interaction, action = kind
    accessor, app = entry["accessor"], entry.get("app")
    backend = app is not None and accessor == app
    who = "Patient" if accessor == entry["patient"] else "Practitioner"
    basis = entry.get("basis") or {}
    policy = [
        f"urn:careledger:{basis.get('kind')}" + (f":{basis['id']}" if basis.get("id") else "")
    ]
    client = (
        {"identifier": {"system": APPS_SYSTEM, "value": app}}
        if app is not None
        else {"reference": f"{who}/{accessor}"}
    )
    agents: list[dict[str, Any]] = [
        {
            "type": {"coding": [{"system": DCM, "code": "110153", "display": "Source Role ID"}]},
            "who": client,
            "altId": app or accessor,
            "requestor": backend,
            **({"policy": policy} if backend else {}),
        },
        {
            "type": {
                "coding": [{"system": DCM, "code": "110152", "display": "Destination Role ID"}]
            },
            "who": {"reference": f"Organization/{entry['custodian']}"},
            "requestor": False,
        },
    ]
    if not backend:
        agents.append(
            {
                "type": {"coding": [{"system": SECURITY_ROLE, "code": "humanuser"}]},
                "who": {"reference": f"{who}/{accessor}"},
                "altId": accessor,
                "requestor": True,
                "policy": policy,
            }
        )
    known = types or {}
    records = [
        {
            "what": {"reference": f"{known[r]}/{r}"}
            if r in known
            else {"identifier": {"value": r}},
            "type": {"system": ENTITY_TYPE, "code": "2"},
            "role": {"system": OBJECT_ROLE, "code": "4"},
        }
        for r in entry.get("records", [])
    ]
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": entry["tx"],
        "meta": {"profile": [BALP + profile]},
        "extension": [
            {
                "url": LEDGER_PROOF,
                "extension": [
                    {"url": "transaction", "valueString": entry["tx"]},
                    {"url": "height", "valueInteger": entry["height"]},
                    {"url": "proof", "valueUri": f"{base}/v1/tx/{entry['tx']}"},
                ],
            }
        ],
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
        },
        "subtype": [{"system": RESTFUL, "code": interaction}],
        "action": action,
        "recorded": _iso(entry["time"]),
        "outcome": "0",
        "purposeOfEvent": [{"coding": [{"system": ACTREASON, "code": entry["purpose"]}]}],
        "agent": agents,
        "source": {
            "observer": {"reference": f"Organization/{entry['custodian']}"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                }
            ],
        },
        "entity": [
            {
                "what": {"reference": f"Patient/{entry['patient']}"},
                "type": {"system": ENTITY_TYPE, "code": "1"},
                "role": {"system": OBJECT_ROLE, "code": "1"},
            },
            *records,
        ],
    }
    if entry.get("break_glass"):
        event["meta"]["security"] = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                      "code": "BTG", "display": "break the glass"}]  # fmt: skip
    if interaction == "operation":
        event["subtype"].append({"system": "https://careledger.dev/codes", "code": "bulk-export"})
    if interaction == "search-type":  # BALP: the query's entity (its parameters are not kept)
        event["entity"].append(
            {
                "type": {"system": ENTITY_TYPE, "code": "2"},
                "role": {"system": OBJECT_ROLE, "code": "24"},
            }
        )
    return event
