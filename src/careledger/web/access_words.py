"""The access log in plain words for patients: when (date and time, not a block height), who
(their name, their organisation's name, and the app they used), what (the kinds of record),
why (purpose in words) and on what basis. Names come from the ledger's identity and apps
state, as every node has them."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from careledger.contracts.apps import app_of

PURPOSES = {
    "TREAT": "treatment",
    "ETREAT": "emergency treatment",
    "CAREMGT": "care coordination",
    "HPAYMT": "payment",
    "HOPERAT": "the provider's operations",
    "HRESCH": "research",
    "PATRQT": "your own request",
}
BASES = {
    "self": "you",
    "custodian": "your care team at the organisation holding the record",
    "consent": "a consent you gave",
    "break_glass": "Emergency access (break-glass)",
}
ACTIONS = {"read": "read", "write": "wrote", "export": "exported"}


def when(ms: int) -> str:
    return time.strftime("%d %b %Y, %H:%M UTC", time.gmtime(ms / 1000))


def plain_entries(
    entries: list[Mapping[str, Any]], read: Callable[[str, str], Any]
) -> list[dict[str, Any]]:
    """Each access with its words beside it (the raw entry kept for the proof links)."""
    names: dict[tuple[str, str], str] = {}

    def name(namespace: str, key: str, field: str, fallback: str) -> str:
        if (namespace, key) not in names:
            found = read(namespace, key) or {}
            names[(namespace, key)] = str(found.get(field) or fallback)
        return names[(namespace, key)]

    out = []
    for entry in entries:
        accessor = str(entry.get("accessor", ""))
        org = str(entry.get("accessor_org", ""))
        app_id = entry.get("app")
        app = app_of(read, str(app_id)) if app_id else None
        basis = entry.get("basis") or {}
        who = name("identity", f"member/{accessor}", "name", accessor)
        if app is not None and app.get("kind") == "backend":
            who = str(app["name"])
        out.append(
            {
                **entry,
                "when": when(int(entry.get("time", 0))),
                "who": who,
                "org_name": name("identity", f"org/{org}", "name", org),
                "via": None if app is None or app.get("kind") == "backend" else app["name"],
                "did": ACTIONS.get(str(entry.get("action")), str(entry.get("action"))),
                "why": PURPOSES.get(str(entry.get("purpose")), str(entry.get("purpose"))),
                "basis_words": BASES.get(str(basis.get("kind")), str(basis.get("kind", ""))),
                "count": len(entry.get("records", [])) + len(entry.get("windows", [])),
            }
        )
    return out
