"""Read-only views over ledger state, shared by the API and the CLI."""

from __future__ import annotations

from typing import Any

from careledger.contracts.identity import MEMBER_PREFIX, key_key, org_ids, org_of
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.ledger.engine import Ledger


def members_view(ledger: Ledger) -> dict[str, Any]:
    members = []
    for key in ledger.store.state_keys(IDENTITY, MEMBER_PREFIX, 1_000_000):
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
    orgs = [org_of(ledger.state, o) for o in org_ids(ledger.state)]
    return {"orgs": orgs, "members": members}
