"""Who may use the drug-traceability API: a supply-chain role, and a token scoped for it."""

from __future__ import annotations

from careledger.callers.caller import Caller
from careledger.callers.scopes import allows
from careledger.contracts.supply import CAPTURE_ROLES
from careledger.errors import Forbidden

SUPPLY_SCOPE = "SupplyChain"  # the SMART resource type of the supply API (user/SupplyChain.*)
SUPPLY_READERS = CAPTURE_ROLES  # the supply contract's roles, and the node


def require_supply(caller: Caller, action: str) -> None:
    """A supply-chain role, and a token whose scopes cover SupplyChain reads or writes."""
    if not caller.roles & SUPPLY_READERS:
        raise Forbidden("this needs a supply-chain role", code="NOT_AUTHORISED")
    if not allows(caller.scopes, SUPPLY_SCOPE, action):
        raise Forbidden(f"the token's scopes do not allow {action} of {SUPPLY_SCOPE}", code="SCOPE")
