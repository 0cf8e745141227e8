"""A ruleset: every rule a block is executed under, as one frozen value.

py-evm's forks are the model. A ruleset holds the contracts and every rule they and the executor
use (who signs, acting for others, roles, organisation kinds, id matching, nonce policy, receipt
version). The next ruleset is built from the previous one by :meth:`Ruleset.derive`, replacing
parts; an old ruleset is never edited, so blocks executed under it replay byte for byte (the golden
vectors in ``tests/vectors/chains`` hold each ruleset to that).

Which ruleset applies at a height is chain state, not node configuration: the genesis document
names the first one and a vote of the organisations schedules the next (see the identity
contract's ``propose_ruleset``). :func:`schedule` reads it; the registry maps names to rulesets.

The class is defined in :mod:`careledger.contracts.base`, beside the ``Context`` that carries the
ruleset a contract runs under (each names the other), and imported from here.
"""

from __future__ import annotations

from careledger.contracts.base import ActFor, Ruleset, SignerResolver, StateReader

__all__ = [
    "FIRST_RULESET",
    "SCHEDULE_KEY",
    "SCHEDULE_NAMESPACE",
    "ActFor",
    "Ruleset",
    "SignerResolver",
    "name_at",
    "schedule",
]

SCHEDULE_NAMESPACE = "identity"
SCHEDULE_KEY = "rulesets"
FIRST_RULESET = "r0"
"""The ruleset of a chain whose genesis names none (every chain made before rulesets had names)."""


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
