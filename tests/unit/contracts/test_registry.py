"""Rulesets are versions the chain schedules: activated by a vote at a height, never edited."""

from __future__ import annotations

import logging
from dataclasses import FrozenInstanceError, replace
from typing import Any

import pytest

from careledger.contracts.base import Args, Context, Contract, tx_method
from careledger.contracts.registry import Registry, default_registry, r1
from careledger.contracts.ruleset import Ruleset, schedule
from careledger.errors import BatchRefused, Rejected, UnknownRuleset
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


def notes_rulesets() -> tuple[Ruleset, Ruleset]:
    first = r1().derive("notes-1", contracts=[NotesV1()])
    return first, first.derive("notes-2", contracts=[NotesV2()])


def schedule_by_vote(chain: TestChain, name: str, height: int) -> None:
    before = schedule(chain.ledger.state)
    proposal = chain.run("hosp-admin", "propose_ruleset", {"ruleset": name, "height": height})
    assert proposal["result"] == "accepted", proposal
    # The proposer's organisation alone is 1 of 3: nothing is scheduled yet.
    assert schedule(chain.ledger.state) == before
    assert _proposal(chain, proposal["tx_id"])["status"] == "open"
    vote = chain.run("pharm-admin", "vote", {"proposal": proposal["tx_id"], "approve": True})
    assert vote["result"] == "accepted", vote
    assert _proposal(chain, proposal["tx_id"])["status"] == "accepted"  # 2 of 3


def _proposal(chain: TestChain, proposal: str) -> dict[str, Any]:
    found: dict[str, Any] = chain.ledger.state("identity", f"proposal/{proposal}")
    return found


def test_registry_refuses_duplicate_names_and_knows_its_rulesets() -> None:
    first, _ = notes_rulesets()
    with pytest.raises(ValueError, match="unique"):
        Registry([first, first])
    registry = default_registry()
    assert registry.names() == [f"r{n}" for n in range(12)]
    assert registry.latest.name == "r11"
    with pytest.raises(UnknownRuleset):
        registry.named("r99")


def test_derive_replaces_parts_and_leaves_the_old_ruleset_as_it_was() -> None:
    first, second = notes_rulesets()
    assert isinstance(first.contracts["notes"], NotesV1)
    assert type(first.contracts["notes"]) is NotesV1
    assert isinstance(second.contracts["notes"], NotesV2)
    assert second.contracts["identity"] is first.contracts["identity"]
    r0, _, r2 = (default_registry().named(n) for n in ("r0", "r1", "r2"))
    assert not r0.exact_ids and r2.exact_ids
    assert r0.kind_roles is None and r2.kind_roles is not None
    assert "propose_ruleset" not in r0.contracts["identity"].methods()


def test_rules_change_at_the_height_the_vote_chose_and_replay_is_identical() -> None:
    first, second = notes_rulesets()
    registry = Registry([first, second])
    chain = TestChain(MemoryStore(), ruleset="notes-1", registry=registry)
    assert schedule(chain.ledger.state) == [(0, "notes-1")]
    schedule_by_vote(chain, "notes-2", 5)  # proposal at 1, vote at 2
    assert schedule(chain.ledger.state) == [(0, "notes-1"), (5, "notes-2")]
    outcomes = []
    for height in (3, 4, 5, 6):
        receipt = chain.run("dr-a", "put", {"key": f"k{height}", "text": "n/a"}, contract="notes")
        outcomes.append((receipt["height"], receipt["result"]))
    assert outcomes == [(3, "accepted"), (4, "accepted"), (5, "rejected"), (6, "rejected")]
    assert chain.ledger.state("notes", "k4") == {"text": "n/a", "v": 1}
    chain.run("dr-a", "put", {"key": "k7", "text": "fine"}, contract="notes")
    assert chain.ledger.state("notes", "k7") == {"text": "fine", "v": 2}
    assert verify_store(chain.store, registry=registry, reexecute=True).ok
    # A node with only the old software cannot verify past the activation height.
    report = verify_store(chain.store, registry=Registry([first]), reexecute=True)
    assert not report.ok and report.height == 5


def test_a_ruleset_proposal_voted_down_is_never_scheduled() -> None:
    first, second = notes_rulesets()
    chain = TestChain(MemoryStore(), ruleset="notes-1", registry=Registry([first, second]))
    proposal = chain.run("hosp-admin", "propose_ruleset", {"ruleset": "notes-2", "height": 6})
    assert proposal["result"] == "accepted", proposal
    against = {"proposal": proposal["tx_id"], "approve": False}
    assert chain.run("pharm-admin", "vote", against)["result"] == "accepted"
    assert _proposal(chain, proposal["tx_id"])["status"] == "open"  # 1 yes, 1 no of 3
    assert chain.run("maker-admin", "vote", against)["result"] == "accepted"
    assert _proposal(chain, proposal["tx_id"])["status"] == "rejected"  # 2 no of 3
    assert schedule(chain.ledger.state) == [(0, "notes-1")]
    late = chain.run("maker-admin", "vote", {**against, "approve": True})
    assert late["code"] == "PROPOSAL_CLOSED"
    while chain.ledger.head.height < 7:  # past the height it asked for: still the old rules
        chain.run("dr-a", "put", {"key": "k", "text": "n/a"}, contract="notes")
    assert chain.ledger.state("notes", "k") == {"text": "n/a", "v": 1}
    assert schedule(chain.ledger.state) == [(0, "notes-1")]


def test_a_genesis_naming_a_ruleset_this_node_does_not_know_is_refused() -> None:
    store = MemoryStore()
    with pytest.raises(UnknownRuleset, match="r99"):
        TestChain(store, ruleset="r99")
    assert store.head() is None  # no chain was made


@pytest.mark.parametrize(
    "parts",
    [{"nonce_policy": "any-unused-per-signer"}, {"receipt_version": 2}],
    ids=["nonce_policy", "receipt_version"],
)
def test_a_ruleset_needing_an_executor_this_node_lacks_executes_no_block(
    parts: dict[str, Any],
) -> None:
    first, _ = notes_rulesets()
    odd = first.derive("notes-odd", **parts)
    chain = TestChain(MemoryStore(), ruleset="notes-1", registry=Registry([first, odd]))
    schedule_by_vote(chain, "notes-odd", 4)  # proposal at 1, vote at 2
    chain.run("dr-a", "put", {"key": "k3", "text": "x"}, contract="notes")  # height 3: old rules
    head = chain.ledger.head
    envelope = chain.envelope("dr-a", "put", {"key": "k4", "text": "x"}, contract="notes")
    with pytest.raises(UnknownRuleset, match="notes-odd"):
        chain.ledger.commit([chain.ledger.decode(envelope)], chain.time + 1000)
    assert chain.ledger.head == head  # the node knows the name, not how to execute it


def test_a_ruleset_is_frozen_down_to_its_contracts() -> None:
    first, second = notes_rulesets()
    with pytest.raises(FrozenInstanceError):
        first.contracts = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.contracts["notes"] = NotesV2()  # type: ignore[index]
    with pytest.raises(TypeError):
        del first.contracts["notes"]  # type: ignore[attr-defined]
    assert type(first.contracts["notes"]) is NotesV1  # unchanged, and so its successor's base
    built_from = {"identity": first.contracts["identity"]}
    ruleset = replace(first, name="copy", contracts=built_from)
    built_from["notes"] = NotesV2()  # the dict it was built from is not the ruleset's
    assert set(ruleset.contracts) == {"identity"}
    assert replace(second, name="again") == replace(second, name="again")
    assert type(second.contracts["notes"]) is NotesV2


def test_a_node_that_lacks_a_scheduled_ruleset_warns_then_stops_at_its_height(
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, _ = notes_rulesets()
    chain = TestChain(MemoryStore(), ruleset="notes-1", registry=Registry([first]))
    with caplog.at_level(logging.WARNING, logger="careledger.ledger"):
        schedule_by_vote(chain, "notes-2", 4)
    assert "'notes-2' at height 4" in caplog.text and "upgrade" in caplog.text
    chain.run("dr-a", "put", {"key": "k3", "text": "x"}, contract="notes")  # height 3: old rules
    head = chain.ledger.head.height
    envelope = chain.envelope("dr-a", "put", {"key": "k4", "text": "x"}, contract="notes")
    with pytest.raises(BatchRefused) as refused:  # admission refuses at once
        chain.commit(envelope)
    assert refused.value.code == "UNKNOWN_RULESET"
    with pytest.raises(UnknownRuleset, match="notes-2"):  # and so does the committer
        chain.ledger.commit([chain.ledger.decode(envelope)], chain.time + 1000)
    assert chain.ledger.head.height == head  # nothing executed under rules it does not have


def test_a_ruleset_proposal_must_be_well_formed_and_in_the_future() -> None:
    chain = TestChain(MemoryStore(), ruleset="r1")
    ask = {"ruleset": "r2", "height": 1}
    assert chain.run("hosp-admin", "propose_ruleset", ask)["code"] == "BAD_ARGS"  # not ahead
    assert chain.run("dr-a", "propose_ruleset", {**ask, "height": 50})["code"] == "NOT_AUTHORISED"
    assert (
        chain.run("hosp-admin", "propose_ruleset", {**ask, "ruleset": "R 2", "height": 50})["code"]
        == "BAD_ARGS"
    )
    assert (
        chain.run("hosp-admin", "propose_ruleset", {**ask, "ruleset": "r1", "height": 50})["code"]
        == "BAD_ARGS"  # already in force
    )


def test_a_proposal_whose_height_passed_before_the_vote_closed_lapses() -> None:
    chain = TestChain(MemoryStore(), ruleset="r1")
    proposal = chain.run("hosp-admin", "propose_ruleset", {"ruleset": "r2", "height": 3})
    for name in ("rn-2", "rn-3"):  # heights 2 and 3 pass
        args = {"id": name, "name": name, "roles": ["nurse"], "public_key": _key(name)}
        assert chain.run("hosp-admin", "add_member", args)["result"] == "accepted"
    vote = chain.run("pharm-admin", "vote", {"proposal": proposal["tx_id"], "approve": True})
    assert vote["result"] == "accepted"
    assert chain.ledger.state("identity", f"proposal/{proposal['tx_id']}")["status"] == "lapsed"
    assert schedule(chain.ledger.state) == [(0, "r1")]


def _key(name: str) -> str:
    from tests.support.chain import key

    return key(name).public_b64
