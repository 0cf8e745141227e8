"""A ruleset: every rule a block is executed under, as one frozen value.

py-evm's forks are the model. A ruleset holds the contracts and every rule they and the executor
use (who signs, acting for others, roles, organisation kinds, id matching, nonce policy, receipt
version). The next ruleset is built from the previous one by :meth:`Ruleset.derive`, replacing
parts; an old ruleset is never edited, so blocks executed under it replay byte for byte (the golden
vectors in ``tests/vectors/chains`` hold each ruleset to that).

Which ruleset applies at a height is chain state, not node configuration: the genesis document
names the first one and a vote of the organisations schedules the next (see the identity
contract's ``propose_ruleset``). :func:`schedule` reads it; the registry maps names to rulesets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any

from careledger.contracts.base import Args, Context, Contract, Signer, StateReader
from careledger.errors import Rejected

SignerResolver = Callable[["Ruleset", StateReader, str], Signer]
"""(ruleset, state reader, public key) -> the signer, or ``Rejected``."""
ActFor = Callable[[Context, str], Context]
"""(node's context, member id) -> the member's context, or ``Rejected``."""

SCHEDULE_NAMESPACE = "identity"
SCHEDULE_KEY = "rulesets"
FIRST_RULESET = "r0"
"""The ruleset of a chain whose genesis names none (every chain made before rulesets had names)."""


@dataclass(frozen=True)
class Ruleset:
    name: str
    contracts: Mapping[str, Contract]
    roles: frozenset[str]
    org_kinds: frozenset[str]
    # Which roles members of an organisation of each kind may hold; None: any role anywhere.
    kind_roles: Mapping[str, frozenset[str]] | None
    # Id and name patterns must match the whole argument (r0 let "dr-a\n" pass as "dr-a").
    exact_ids: bool
    resolve_signer: SignerResolver
    act_for: ActFor
    nonce_policy: str = "strictly-increasing-per-signer"
    receipt_version: int = 1
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # A read-only copy: a frozen ruleset's contracts cannot be swapped through the dict it
        # was built from, nor by item assignment (old rules are never edited).
        object.__setattr__(self, "contracts", MappingProxyType(dict(self.contracts)))

    def derive(self, name: str, **parts: Any) -> Ruleset:
        """The next ruleset: this one with ``parts`` replaced (contracts merged by name)."""
        contracts = parts.pop("contracts", None)
        if contracts is not None:
            parts["contracts"] = {**self.contracts, **{c.name: c for c in contracts}}
        return replace(self, name=name, **parts)

    def signer(self, read: StateReader, public_key: str) -> Signer:
        return self.resolve_signer(self, read, public_key)

    def contract(self, contract: str, method: str) -> Contract:
        found = self.contracts.get(contract)
        if found is None:
            raise Rejected("UNKNOWN_CONTRACT", f"no contract named {contract!r}")
        if method not in found.methods():
            raise Rejected("UNKNOWN_METHOD", f"{contract} has no method {method!r}")
        return found

    def args(self, raw: Mapping[str, Any]) -> Args:
        return Args(raw, exact=self.exact_ids)

    def allowed_roles(self, kinds: list[str]) -> frozenset[str]:
        """The roles members of an organisation of these kinds may hold."""
        if self.kind_roles is None:
            return self.roles
        allowed: frozenset[str] = frozenset()
        for kind in kinds:
            allowed |= self.kind_roles.get(kind, frozenset())
        return allowed

    def run_on_behalf(
        self, contract: Contract, ctx: Context, args: Args, allowed: frozenset[str]
    ) -> None:
        """``{actor, method, args}``: a node runs one of ``allowed`` as a member it authenticated
        (see ``act_for``); roles and ownership are judged as the member's."""
        args.only("actor", "method", "args")
        actor = self.act_for(ctx, args.string("actor", max_len=64))
        method = args.string("method", max_len=32)
        if method not in allowed:
            raise Rejected("BAD_ARGS", f"method must be one of {sorted(allowed)}")
        inner = args.raw.get("args")
        if not isinstance(inner, dict):
            raise Rejected("BAD_ARGS", "args must be an object")
        contract.call(actor, method, inner)


def schedule(read: StateReader) -> list[tuple[int, str]]:
    """The chain's rulesets by activation height, oldest first."""
    raw = read(SCHEDULE_NAMESPACE, SCHEDULE_KEY)
    if not raw:
        return [(0, FIRST_RULESET)]
    return [(int(entry["height"]), str(entry["name"])) for entry in raw]


def name_at(read: StateReader, height: int) -> str:
    """The name of the ruleset in force at ``height``."""
    current = FIRST_RULESET
    for activation, name in schedule(read):
        if activation > height:
            break
        current = name
    return current
