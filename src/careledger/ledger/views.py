"""Read-only views over ledger state, shared by the API and the CLI."""

from __future__ import annotations

from typing import Any

from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import key_key
from careledger.ledger.engine import Ledger


def members_view(ledger: Ledger) -> dict[str, Any]:
    members = []
    for key in ledger.store.state_keys(IDENTITY, "member/", 1_000_000):
        member = ledger.state(IDENTITY, key)
        key_state = ledger.state(IDENTITY, key_key(member["key"])) or {}
        members.append(
            {
                "id": member["id"],
                "name": member["name"],
                "org": member["org"],
                "roles": member["roles"],
                "public_key": member["key"],
                "key_status": key_state.get("status"),
            }
        )
    orgs = [ledger.state(IDENTITY, f"org/{o}") for o in ledger.state(IDENTITY, "orgs") or []]
    return {"orgs": orgs, "members": members}
