"""Which contracts (and which version of their rules) apply at a height.

Rule changes are added as a new :class:`Ruleset` activated at a height; older rulesets are never
edited, so replaying old blocks gives byte-identical results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from careledger.contracts.base import Contract
from careledger.errors import Rejected


@dataclass(frozen=True)
class Ruleset:
    activation_height: int
    contracts: Mapping[str, Contract]


class Registry:
    def __init__(self, rulesets: Sequence[Ruleset]) -> None:
        if not rulesets or rulesets[0].activation_height != 0:
            raise ValueError("the first ruleset must activate at height 0")
        heights = [r.activation_height for r in rulesets]
        if heights != sorted(set(heights)):
            raise ValueError("rulesets must have strictly increasing activation heights")
        self._rulesets = tuple(rulesets)

    def at(self, height: int) -> Ruleset:
        current = self._rulesets[0]
        for ruleset in self._rulesets:
            if ruleset.activation_height > height:
                break
            current = ruleset
        return current

    def resolve(self, height: int, contract: str, method: str) -> Contract:
        found = self.at(height).contracts.get(contract)
        if found is None:
            raise Rejected("UNKNOWN_CONTRACT", f"no contract named {contract!r}")
        if method not in found.methods():
            raise Rejected("UNKNOWN_METHOD", f"{contract} has no method {method!r}")
        return found


def default_registry() -> Registry:
    from careledger.contracts.audit import AuditV1
    from careledger.contracts.consent import ConsentV1
    from careledger.contracts.identity import IdentityV1
    from careledger.contracts.monitoring import MonitoringV1
    from careledger.contracts.payments import PaymentsV1
    from careledger.contracts.records import RecordsV1
    from careledger.contracts.supply import SupplyV1
    from careledger.contracts.trials import TrialsV1
    from careledger.contracts.visits import VisitsV1

    contracts: list[Contract] = [
        IdentityV1(),
        RecordsV1(),
        ConsentV1(),
        AuditV1(),
        SupplyV1(),
        PaymentsV1(),
        MonitoringV1(),
        TrialsV1(),
        VisitsV1(),
    ]
    return Registry([Ruleset(0, {c.name: c for c in contracts})])
