"""The access log in plain words for patients: when (date and time, not a block height), who
(their name, their organisation's name, and the app they used), what (the kinds of record),
why (purpose in words) and on what basis. Names come from the ledger's identity and apps
state, as every node has them."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from careledger.contracts.apps import app_of
from careledger.contracts.base import StateReader
from careledger.contracts.identity import member_of, org_of
from careledger.contracts.records import record_of

# Each purpose of use the consent contract knows (contracts.consent.PURPOSES), in a patient's
# words; tests/unit/test_architecture.py holds the two to the same codes.
PURPOSES = {
    "TREAT": "treatment",
    "ETREAT": "emergency treatment",
    "CAREMGT": "care coordination",
    "HPAYMT": "payment",
    "HOPERAT": "the provider's operations",
    "HRESCH": "research",
    "CLINTRCH": "clinical research",
    "PUBHLTH": "public health",
    "PATRQT": "your own request",
}
BASES = {
    "self": "you",
    "custodian": "your care team at the organisation holding the record",
    "consent": "a consent you gave",
    "break_glass": "Emergency access (break-glass)",
    "link": "a SMART Health Link you made",
}
ACTIONS = {"read": "read", "write": "wrote", "export": "exported"}
# record kinds as a patient would say them (singular, plural)
KINDS = {
    "Observation": ("test result or measurement", "test results and measurements"),
    "Condition": ("diagnosis", "diagnoses"),
    "MedicationRequest": ("prescription", "prescriptions"),
    "MedicationStatement": ("medicine taken", "medicines taken"),
    "Encounter": ("visit", "visits"),
    "Immunization": ("vaccination", "vaccinations"),
    "AllergyIntolerance": ("allergy", "allergies"),
    "Procedure": ("procedure", "procedures"),
    "DiagnosticReport": ("report", "reports"),
    "DocumentReference": ("document", "documents"),
    "CarePlan": ("care plan", "care plans"),
    "Patient": ("your details", "your details"),
    "Claim": ("claim", "claims"),
    "ExplanationOfBenefit": ("insurance statement", "insurance statements"),
}


def when(ms: int) -> str:
    return time.strftime("%d %b %Y, %H:%M UTC", time.gmtime(ms / 1000))


def what_words(types: list[str], windows: int) -> str:
    """'2 test results and measurements, 1 diagnosis' (most first)."""
    counts: dict[str, int] = {}
    for kind in types:
        counts[kind] = counts.get(kind, 0) + 1
    parts = []
    for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        one, many = KINDS.get(kind, (f"{kind} record", f"{kind} records"))
        parts.append(f"{n} {one if n == 1 else many}")
    if windows:
        parts.append(f"{windows} set{'s' if windows != 1 else ''} of device readings")
    return ", ".join(parts) or "nothing"


def plain_entries(entries: list[Mapping[str, Any]], read: StateReader) -> list[dict[str, Any]]:
    """Each access with its words beside it; the same person doing the same thing on the same
    day for the same reason is one row (a node's housekeeping writes are not fifty rows), a
    break-glass always its own."""
    names: dict[tuple[str, str], str] = {}

    def name(view: Callable[[StateReader, str], Mapping[str, Any] | None], ident: str) -> str:
        """A member's or an organisation's name (its id when it has none), read once."""
        if (view.__name__, ident) not in names:
            found = view(read, ident) or {}
            names[(view.__name__, ident)] = str(found.get("name") or ident)
        return names[(view.__name__, ident)]

    out = []
    for entry in entries:
        accessor = str(entry.get("accessor", ""))
        org = str(entry.get("accessor_org", ""))
        app_id = entry.get("app")
        app = app_of(read, str(app_id)) if app_id else None
        basis = entry.get("basis") or {}
        who = name(member_of, accessor)
        if accessor == entry.get("patient"):
            who = "You"
        if app is not None and app.get("kind") == "backend":
            who = str(app["name"])
        by_link = basis.get("kind") == "link"
        if by_link:  # the name the recipient gave when opening the link (not checked by anyone)
            who = f"{entry.get('recipient_name') or 'Someone'} (in their own words)"
        kinds = []
        for record_id in entry.get("records", []):
            found = record_of(read, record_id) or {}
            kinds.append(str(found.get("type", "record")))
        row = {
            **entry,
            "kinds": kinds,
            "day": time.strftime("%Y-%m-%d", time.gmtime(int(entry.get("time", 0)) / 1000)),
            "when": when(int(entry.get("time", 0))),
            "who": who,
            "org_name": "through your link" if by_link else name(org_of, org),
            "via": None if app is None or app.get("kind") == "backend" else app["name"],
            "did": ACTIONS.get(str(entry.get("action")), str(entry.get("action"))),
            "why": PURPOSES.get(str(entry.get("purpose")), str(entry.get("purpose"))),
            "basis_words": BASES.get(str(basis.get("kind")), str(basis.get("kind", ""))),
            "count": len(entry.get("records", [])) + len(entry.get("windows", [])),
            "accesses": 1,
            "seen": set(entry.get("records", [])),
        }
        last = out[-1] if out else None
        same = ("day", "accessor", "action", "purpose", "app", "accessor_org")
        if (
            last is not None
            and not row.get("break_glass")
            and not last.get("break_glass")
            and all(last.get(k) == row.get(k) for k in same)
            and (last.get("basis") or {}).get("kind") == basis.get("kind")
        ):
            fresh = [r for r in entry.get("records", []) if r not in last["seen"]]
            last["seen"].update(fresh)
            pairs = zip(entry.get("records", []), kinds, strict=True)
            last["kinds"] = [*last["kinds"], *(k for r, k in pairs if r in fresh)]
            last["count"] += row["count"]
            last["accesses"] += 1
            last["windows"] = [*last.get("windows", []), *entry.get("windows", [])]
            last["first"] = row["when"]
        else:
            out.append(row)
    for row in out:
        row["what"] = what_words(row["kinds"], len(row.get("windows", [])))
    return out
