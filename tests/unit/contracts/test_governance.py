"""Governance: the node registry, admitting an organisation with its node, removing one by vote."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.errors import Rejected
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("identity", k)
    return None if raw is None else orjson.loads(raw)


def ok(receipt: dict[str, Any]) -> dict[str, Any]:
    assert receipt["result"] == "accepted", receipt
    return receipt


def code(receipt: dict[str, Any]) -> str:
    assert receipt["result"] == "rejected", receipt
    return str(receipt["code"])


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore())


def test_register_node_records_where_an_org_node_answers(chain: TestChain) -> None:
    args = {"member": "hosp-node", "endpoint": "http://127.0.0.1:9001"}
    assert code(chain.run("pharm-admin", "register_node", args)) == "NOT_AUTHORISED"
    assert code(chain.run("hosp-admin", "register_node", {**args, "member": "dr-a"})) == (
        "NOT_A_NODE"
    )
    assert code(chain.run("hosp-admin", "register_node", {**args, "endpoint": "ftp://x"})) == (
        "BAD_ARGS"
    )
    ok(chain.run("hosp-admin", "register_node", args))
    entry = state(chain, "node/hosp")
    assert entry["endpoint"] == "http://127.0.0.1:9001"
    assert entry["public_key"] == key("hosp-node").public_b64 and entry["status"] == "active"


def admit_with_node(chain: TestChain) -> None:
    args = {
        "org": {"id": "lab", "name": "Lab", "kind": "other"},
        "admin": {"id": "lab-admin", "name": "L", "public_key": key("lab-admin").public_b64},
        "node": {
            "id": "lab-node",
            "name": "Lab node",
            "public_key": key("lab-node").public_b64,
            "endpoint": "https://lab.example:8443",
        },
    }
    proposal = ok(chain.run("hosp-admin", "propose_org", args))["tx_id"]
    assert state(chain, "org/lab") is None  # one vote of three is not a majority
    ok(chain.run("pharm-admin", "vote", {"proposal": proposal, "approve": True}))


def test_an_org_is_admitted_with_its_node_by_majority(chain: TestChain) -> None:
    admit_with_node(chain)
    assert state(chain, "org/lab")["status"] == "active"
    assert state(chain, "member/lab-node")["roles"] == ["node"]
    assert state(chain, "node/lab")["endpoint"] == "https://lab.example:8443"
    assert "lab" in state(chain, "orgs")


def test_a_removed_org_and_its_node_can_no_longer_submit(chain: TestChain) -> None:
    admit_with_node(chain)
    ok(chain.run("lab-admin", "register_node", {"member": "lab-node", "endpoint": "http://x:1"}))
    assert code(
        chain.run("lab-admin", "register_node", {"member": "lab-node", "endpoint": "x"})
    ) == ("BAD_ARGS")
    proposal = ok(chain.run("hosp-admin", "propose_org_removal", {"org": "lab", "reason": "x"}))
    assert state(chain, "org/lab")["status"] == "active"  # 1 of 4
    ok(chain.run("pharm-admin", "vote", {"proposal": proposal["tx_id"], "approve": True}))
    assert state(chain, "org/lab")["status"] == "active"  # 2 of 4 is not a majority
    ok(chain.run("maker-admin", "vote", {"proposal": proposal["tx_id"], "approve": True}))
    assert state(chain, "org/lab")["status"] == "removed"
    assert state(chain, "node/lab")["status"] == "removed"
    assert "lab" not in state(chain, "orgs")
    for signer in ("lab-node", "lab-admin"):
        envelope = chain.envelope(
            signer, "register_node", {"member": "lab-node", "endpoint": "http://y:2"}
        )
        with pytest.raises(Rejected) as refused:
            chain.ledger.admit(envelope)
        assert refused.value.code == "ORG_REMOVED"
    # committed anyway (a peer published it): rejected by the contract run, state unchanged
    envelope = chain.envelope(
        "lab-node", "register_node", {"member": "lab-node", "endpoint": "http://z:3"}
    )
    tx = chain.ledger.decode(envelope)
    chain.time += 1000
    executed = chain.ledger.commit([tx], chain.time)
    assert executed is not None
    assert next(iter(executed.receipts.values()))["code"] == "ORG_REMOVED"
    assert state(chain, "node/lab")["endpoint"] == "http://x:1"


def test_removal_rules(chain: TestChain) -> None:
    assert code(chain.run("dr-a", "propose_org_removal", {"org": "pharm", "reason": "x"})) == (
        "NOT_AUTHORISED"
    )
    assert code(chain.run("hosp-admin", "propose_org_removal", {"org": "nope", "reason": "x"})) == (
        "UNKNOWN_ORG"
    )
    proposal = ok(chain.run("hosp-admin", "propose_org_removal", {"org": "pharm", "reason": "x"}))
    ok(chain.run("pharm-admin", "vote", {"proposal": proposal["tx_id"], "approve": False}))
    ok(chain.run("maker-admin", "vote", {"proposal": proposal["tx_id"], "approve": False}))
    assert state(chain, f"proposal/{proposal['tx_id']}")["status"] == "rejected"
    assert state(chain, "org/pharm")["status"] == "active"


def test_a_removed_organisations_open_votes_lapse(chain: TestChain) -> None:
    admit_with_node(chain)  # hosp, pharm, maker, lab
    evil = {
        "org": {"id": "evil", "name": "E", "kind": "other"},
        "admin": {"id": "evil-admin", "name": "E", "public_key": key("evil-admin").public_b64},
    }
    proposal = ok(chain.run("lab-admin", "propose_org", evil))["tx_id"]  # lab votes yes
    removal = ok(chain.run("hosp-admin", "propose_org_removal", {"org": "lab", "reason": "x"}))
    for admin in ("pharm-admin", "maker-admin"):
        ok(chain.run(admin, "vote", {"proposal": removal["tx_id"], "approve": True}))
    assert state(chain, "org/lab")["status"] == "removed"
    # hosp's yes and lab's lapsed yes are 1 of 3 current organisations: not a majority
    ok(chain.run("hosp-admin", "vote", {"proposal": proposal, "approve": True}))
    assert state(chain, "org/evil") is None
    ok(chain.run("pharm-admin", "vote", {"proposal": proposal, "approve": True}))
    assert state(chain, "org/evil")["status"] == "active"
