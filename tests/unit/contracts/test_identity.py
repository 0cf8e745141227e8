"""The identity contract: members, roles, keys and admission of organisations by vote."""

from __future__ import annotations

import pytest

from careledger.contracts.identity import genesis_writes, resolve_signer
from careledger.contracts.registry import default_registry
from careledger.errors import Rejected, ValidationError
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, genesis, key


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore())


def member(chain: TestChain, member_id: str) -> dict:
    return chain.ledger.state("identity", f"member/{member_id}")


def test_genesis_creates_orgs_members_and_keys(chain: TestChain) -> None:
    assert chain.ledger.state("identity", "orgs") == ["hosp", "maker", "pharm"]
    assert member(chain, "dr-a")["roles"] == ["clinician"]
    signer = resolve_signer(chain.ledger.state, key("dr-a").public_b64)
    assert (signer.member, signer.org) == ("dr-a", "hosp")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda g: g["orgs"].append(dict(g["orgs"][0])), "twice"),
        (lambda g: g["members"].append(dict(g["members"][0])), "already exists"),
        (lambda g: g["members"][0].update(org="nowhere"), "no organisation"),
        (lambda g: g["members"][0].update(roles=["wizard"]), "roles"),
        (lambda g: g["members"][0].update(public_key="not-a-key"), "public_key"),
        (
            lambda g: g.update(members=[m for m in g["members"] if "admin" not in m["roles"]]),
            "admin",
        ),
        (lambda g: g["orgs"][0].update(kind="castle"), "kind"),
    ],
)
def test_bad_genesis_is_refused(mutate, message: str) -> None:
    doc = genesis()
    mutate(doc)
    with pytest.raises(ValidationError, match=message) as info:
        genesis_writes(doc, default_registry().named("r0"))
    assert info.value.code == "BAD_GENESIS"


def test_admin_adds_member_to_own_org(chain: TestChain) -> None:
    receipt = chain.run(
        "hosp-admin",
        "add_member",
        {
            "id": "nurse-b",
            "name": "Nurse B",
            "roles": ["nurse"],
            "public_key": key("nurse-b").public_b64,
        },
    )
    assert receipt["result"] == "accepted"
    assert member(chain, "nurse-b")["org"] == "hosp"


@pytest.mark.parametrize(
    ("signer", "args", "code"),
    [
        ("dr-a", {"id": "x", "name": "X", "roles": ["nurse"]}, "NOT_AUTHORISED"),
        ("hosp-admin", {"id": "dr-a", "name": "X", "roles": ["nurse"]}, "MEMBER_EXISTS"),
        ("hosp-admin", {"id": "x", "name": "X", "roles": ["emperor"]}, "BAD_ARGS"),
        ("hosp-admin", {"id": "Bad Id", "name": "X", "roles": ["nurse"]}, "BAD_ARGS"),
        ("hosp-admin", {"id": "x", "name": "X", "roles": ["nurse"], "extra": 1}, "BAD_ARGS"),
    ],
)
def test_add_member_refusals_change_nothing(
    chain: TestChain, signer: str, args: dict, code: str
) -> None:
    args = {"public_key": key("new").public_b64, **args}
    before = list(chain.store.state_items())
    receipt = chain.run(signer, "add_member", args)
    assert (receipt["result"], receipt["code"]) == ("rejected", code)
    after = [row for row in chain.store.state_items() if row[0] != "nonce"]
    assert after == [row for row in before if row[0] != "nonce"]


def test_key_in_use_is_refused(chain: TestChain) -> None:
    receipt = chain.run(
        "hosp-admin",
        "add_member",
        {"id": "x", "name": "X", "roles": ["nurse"], "public_key": key("dr-a").public_b64},
    )
    assert receipt["code"] == "KEY_IN_USE"


def test_rotated_key_signs_and_old_key_is_refused(chain: TestChain) -> None:
    new = key("dr-a-2")
    assert (
        chain.run("dr-a", "rotate_key", {"member": "dr-a", "public_key": new.public_b64})["result"]
        == "accepted"
    )
    assert member(chain, "dr-a")["key"] == new.public_b64
    with pytest.raises(Rejected) as info:
        resolve_signer(chain.ledger.state, key("dr-a").public_b64)
    assert info.value.code == "KEY_REVOKED"
    # A later transaction signed with the old key is refused at admission.
    from careledger.errors import BatchRefused

    with pytest.raises(BatchRefused) as refused:
        chain.commit(chain.envelope("dr-a", "revoke_key", {"public_key": new.public_b64}))
    assert refused.value.code == "KEY_REVOKED"
    assert chain.run(new, "revoke_key", {"public_key": new.public_b64})["result"] == "accepted"


def test_only_own_admin_may_rotate_or_revoke(chain: TestChain) -> None:
    receipt = chain.run(
        "pharm-admin", "rotate_key", {"member": "dr-a", "public_key": key("z").public_b64}
    )
    assert receipt["code"] == "NOT_AUTHORISED"
    receipt = chain.run("pharm-admin", "revoke_key", {"public_key": key("dr-a").public_b64})
    assert receipt["code"] == "NOT_AUTHORISED"
    assert (
        chain.run("hosp-admin", "revoke_key", {"public_key": key("dr-a").public_b64})["result"]
        == "accepted"
    )


def test_set_roles(chain: TestChain) -> None:
    assert (
        chain.run("hosp-admin", "set_roles", {"member": "dr-a", "roles": ["clinician", "auditor"]})[
            "result"
        ]
        == "accepted"
    )
    assert member(chain, "dr-a")["roles"] == ["auditor", "clinician"]
    assert (
        chain.run("pharm-admin", "set_roles", {"member": "dr-a", "roles": ["admin"]})["code"]
        == "NOT_AUTHORISED"
    )


def propose(chain: TestChain, proposer: str = "hosp-admin") -> str:
    receipt = chain.run(
        proposer,
        "propose_org",
        {
            "org": {"id": "lab", "name": "Lab", "kind": "other"},
            "admin": {
                "id": "lab-admin",
                "name": "Lab admin",
                "public_key": key("lab-admin").public_b64,
            },
        },
    )
    assert receipt["result"] == "accepted"
    return receipt["tx_id"]


def test_org_admitted_by_majority_of_orgs(chain: TestChain) -> None:
    proposal = propose(chain)
    assert chain.ledger.state("identity", "org/lab") is None  # 1 of 3 is not a majority
    assert (
        chain.run("pharm-admin", "vote", {"proposal": proposal, "approve": True})["result"]
        == "accepted"
    )
    assert chain.ledger.state("identity", "org/lab")["status"] == "active"
    assert chain.ledger.state("identity", "orgs") == ["hosp", "lab", "maker", "pharm"]
    signer = resolve_signer(chain.ledger.state, key("lab-admin").public_b64)
    assert signer.roles == frozenset({"admin"})
    assert (
        chain.run("maker-admin", "vote", {"proposal": proposal, "approve": True})["code"]
        == "PROPOSAL_CLOSED"
    )


def test_org_rejected_by_majority_against(chain: TestChain) -> None:
    proposal = propose(chain)
    chain.run("pharm-admin", "vote", {"proposal": proposal, "approve": False})
    assert chain.ledger.state("identity", f"proposal/{proposal}")["status"] == "open"
    chain.run("maker-admin", "vote", {"proposal": proposal, "approve": False})
    assert chain.ledger.state("identity", f"proposal/{proposal}")["status"] == "rejected"
    assert chain.ledger.state("identity", "org/lab") is None


def test_vote_rules(chain: TestChain) -> None:
    proposal = propose(chain)
    assert (
        chain.run("hosp-admin", "vote", {"proposal": proposal, "approve": True})["code"]
        == "ALREADY_VOTED"
    )
    assert (
        chain.run("dr-a", "vote", {"proposal": proposal, "approve": True})["code"]
        == "NOT_AUTHORISED"
    )
    assert (
        chain.run("pharm-admin", "vote", {"proposal": "f" * 64, "approve": True})["code"]
        == "UNKNOWN_PROPOSAL"
    )
    assert chain.run("dr-a", "propose_org", {"org": {}, "admin": {}})["code"] == "NOT_AUTHORISED"


def test_node_registers_patients_only(chain: TestChain) -> None:
    args = {
        "id": "pt-new",
        "name": "Patient",
        "roles": ["patient"],
        "public_key": key("pt-new").public_b64,
    }
    assert chain.run("hosp-node", "add_member", args)["result"] == "accepted"
    assert member(chain, "pt-new")["org"] == "hosp"
    staff = {
        "id": "x-staff",
        "name": "X",
        "roles": ["clinician"],
        "public_key": key("x-staff").public_b64,
    }
    assert chain.run("hosp-node", "add_member", staff)["code"] == "NOT_AUTHORISED"
    both = {
        **args,
        "id": "pt-2",
        "roles": ["patient", "admin"],
        "public_key": key("pt-2").public_b64,
    }
    assert chain.run("hosp-node", "add_member", both)["code"] == "NOT_AUTHORISED"


def test_a_node_acts_only_for_organisations_that_chose_it() -> None:
    from careledger.storage.memory import MemoryStore
    from tests.support.chain import TestChain, key

    chain = TestChain(MemoryStore())
    device = {"id": "dev-p", "model": "x", "public_key": key("dev-p").public_b64}
    call = {"actor": "pharm-admin", "method": "register_device", "args": device}

    def on_behalf() -> str | None:
        return chain.run("hosp-node", "on_behalf", call, contract="monitoring").get("code")

    assert chain.run("pharm-admin", "set_serving_node", {}).get("code") is None
    assert on_behalf() == "NOT_AUTHORISED"  # pharm no longer lets hosp's node act for it
    assert chain.run("dr-a", "set_serving_node", {"org": "hosp"}).get("code") == "NOT_AUTHORISED"
    assert chain.run("pharm-admin", "set_serving_node", {"org": "nowhere"}).get("code") == (
        "UNKNOWN_ORG"
    )
    assert chain.run("pharm-admin", "set_serving_node", {"org": "hosp"}).get("code") is None
    assert on_behalf() is None
    patient = {"actor": "patient-1", "method": "unbind", "args": {"device": "dev-p", "reason": "x"}}
    assert chain.run("hosp-node", "on_behalf", patient, contract="monitoring")["code"] == (
        "NOT_AUTHORISED"  # patients sign for themselves
    )
