"""Rulesets activate by height; older rules keep applying to older blocks."""

from __future__ import annotations

import pytest

from careledger.contracts.base import Args, Context, Contract, tx_method
from careledger.contracts.identity import IdentityV1
from careledger.contracts.registry import Registry, Ruleset
from careledger.errors import Rejected
from careledger.ledger.verify import verify_store
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain


class NotesV1(Contract):
    name = "notes"

    @tx_method
    def put(self, ctx: Context, args: Args) -> None:
        ctx.state.put(args.string("key"), {"text": args.string("text"), "v": 1})


class NotesV2(NotesV1):
    """Version 2 refuses empty-looking notes and records the version."""

    version = 2

    @tx_method
    def put(self, ctx: Context, args: Args) -> None:
        if args.string("text").strip() in {"-", "n/a"}:
            raise Rejected("EMPTY_NOTE", "say something")
        ctx.state.put(args.string("key"), {"text": args.string("text"), "v": 2})


def registry() -> Registry:
    identity = IdentityV1()
    return Registry(
        [
            Ruleset(0, {"identity": identity, "notes": NotesV1()}),
            Ruleset(3, {"identity": identity, "notes": NotesV2()}),
        ]
    )


def test_registry_rejects_bad_orders() -> None:
    with pytest.raises(ValueError, match="height 0"):
        Registry([Ruleset(1, {})])
    with pytest.raises(ValueError, match="increasing"):
        Registry([Ruleset(0, {}), Ruleset(5, {}), Ruleset(5, {})])


def test_rules_change_at_the_activation_height_and_replay_is_identical() -> None:
    chain = TestChain(MemoryStore())
    chain.ledger.registry = registry()
    outcomes = []
    for height in (1, 2, 3, 4):
        receipt = chain.run("dr-a", "put", {"key": f"k{height}", "text": "n/a"}, contract="notes")
        outcomes.append((receipt["height"], receipt["result"]))
    assert outcomes == [(1, "accepted"), (2, "accepted"), (3, "rejected"), (4, "rejected")]
    assert chain.ledger.state("notes", "k2") == {"text": "n/a", "v": 1}
    chain.run("dr-a", "put", {"key": "k5", "text": "fine"}, contract="notes")
    assert chain.ledger.state("notes", "k5") == {"text": "fine", "v": 2}
    assert verify_store(chain.store, registry=registry(), reexecute=True).ok
    # Replaying with only the new rules would give different receipts: verify notices.
    only_v2 = Registry([Ruleset(0, {"identity": IdentityV1(), "notes": NotesV2()})])
    report = verify_store(chain.store, registry=only_v2, reexecute=True)
    assert not report.ok
    assert report.height == 1
