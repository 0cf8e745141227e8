"""Ruleset r2: roles follow the organisation, a patient's key is the patient's, ids match whole,
break-glass needs a care relationship. Each test replays an attack that r0 let through (the
golden vector tests/vectors/chains/r0-edges.json keeps r0's outcomes)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from careledger.contracts.ruleset import schedule
from careledger.errors import BatchRefused, ValidationError
from careledger.ledger.verify import verify_store
from careledger.storage.memory import MemoryStore
from tests.support.chain import ORGS, TestChain, genesis, key
from tests.unit.contracts.test_governance import code, ok


def pk(name: str) -> str:
    return key(name).public_b64


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore(), ruleset="r2")


def member(chain: TestChain, member_id: str) -> dict[str, Any]:
    found: dict[str, Any] = chain.ledger.state("identity", f"member/{member_id}")
    return found


def test_a_manufacturer_or_pharmacy_cannot_give_itself_clinical_roles(chain: TestChain) -> None:
    grab = {"member": "maker-admin", "roles": ["admin", "clinician", "manufacturer"]}
    assert code(chain.run("maker-admin", "set_roles", grab)) == "ROLE_NOT_ALLOWED"
    mint = {"id": "dr-p", "name": "P", "roles": ["clinician"], "public_key": pk("dr-p")}
    assert code(chain.run("pharm-admin", "add_member", mint)) == "ROLE_NOT_ALLOWED"
    pharmacist = {**mint, "id": "ph-q", "roles": ["pharmacist"], "public_key": pk("ph-q")}
    ok(chain.run("pharm-admin", "add_member", pharmacist))
    ok(chain.run("hosp-admin", "add_member", mint))  # a hospital gives clinicians
    assert code(
        chain.run("maker-admin", "break_glass", _glass("patient-1"), contract="consent")
    ) == ("NOT_AUTHORISED")


def test_roles_granted_before_r2_stop_counting_when_r2_activates() -> None:
    chain = TestChain(MemoryStore(), ruleset="r1")
    grab = {"member": "maker-admin", "roles": ["admin", "clinician", "manufacturer"]}
    ok(chain.run("maker-admin", "set_roles", grab))  # r1 still allows it
    proposal = ok(chain.run("hosp-admin", "propose_ruleset", {"ruleset": "r2", "height": 5}))
    ok(chain.run("pharm-admin", "vote", {"proposal": proposal["tx_id"], "approve": True}))
    assert chain.ledger.signer(pk("maker-admin")).has_role("clinician")  # height 4 is r1
    ok(
        chain.run(
            "hosp-admin",
            "add_member",
            {"id": "x1", "name": "X", "roles": ["nurse"], "public_key": pk("x1")},
        )
    )
    assert schedule(chain.ledger.state)[-1] == (5, "r2")
    signer = chain.ledger.signer(pk("maker-admin"))
    assert signer.roles == frozenset({"admin", "manufacturer"})
    assert code(
        chain.run("maker-admin", "break_glass", _glass("patient-1"), contract="consent")
    ) == ("NOT_AUTHORISED")
    assert verify_store(chain.store, reexecute=True).ok


def test_organisations_have_kinds_set_at_admission_and_in_genesis() -> None:
    doc = genesis("r2")
    doc["orgs"][1] = {**ORGS[1], "kinds": ["pharmacy", "hospital"]}
    del doc["orgs"][1]["kind"]
    chain = TestChain(MemoryStore(), genesis_doc=doc)
    mint = {"id": "dr-p", "name": "P", "roles": ["clinician"], "public_key": pk("dr-p")}
    ok(chain.run("pharm-admin", "add_member", mint))  # a hospital pharmacy may
    proposal = {
        "org": {"id": "lab", "name": "Lab", "kinds": ["other"]},
        "admin": {"id": "lab-admin", "name": "L", "public_key": pk("lab-admin")},
    }
    opened = ok(chain.run("hosp-admin", "propose_org", proposal))
    ok(chain.run("pharm-admin", "vote", {"proposal": opened["tx_id"], "approve": True}))
    assert chain.ledger.state("identity", "org/lab")["kinds"] == ["other"]
    mint_lab = {**mint, "id": "dr-l", "public_key": pk("dr-l")}
    assert code(chain.run("lab-admin", "add_member", mint_lab)) == "ROLE_NOT_ALLOWED"
    bad = copy.deepcopy(doc)
    bad["members"][2]["org"] = "maker"  # dr-a, a clinician, at a manufacturer
    with pytest.raises(ValidationError, match="cannot give the roles"):
        TestChain(MemoryStore(), genesis_doc=bad)


def test_ids_must_match_whole(chain: TestChain) -> None:
    args = {"id": "dr-b\n", "name": "B", "roles": ["clinician"], "public_key": pk("dr-b")}
    assert code(chain.run("hosp-admin", "add_member", args)) == "BAD_ARGS"
    ok(chain.run("hosp-admin", "add_member", {**args, "id": "dr-b"}))


def test_no_admin_can_take_over_a_patients_key(chain: TestChain) -> None:
    steal = {"member": "patient-1", "public_key": pk("stolen")}
    assert code(chain.run("hosp-admin", "rotate_key", steal)) == "PATIENT_KEY"
    assert code(chain.run("hosp-admin", "revoke_key", {"public_key": pk("patient-1")})) == (
        "PATIENT_KEY"
    )
    assert code(chain.run("hosp-node", "rotate_key", steal)) == "PATIENT_KEY"
    relabel = {"member": "patient-1", "roles": ["clinician"]}
    assert code(chain.run("hosp-admin", "set_roles", relabel)) == "NOT_AUTHORISED"
    assert member(chain, "patient-1")["key"] == pk("patient-1")
    # The patient moves to a key of their own in one signed step.
    ok(chain.run("patient-1", "rotate_key", {"member": "patient-1", "public_key": pk("own")}))
    assert member(chain, "patient-1")["key"] == pk("own")
    assert member(chain, "patient-1")["custodial"] is False


def test_patients_registered_by_a_node_are_marked_custodial(chain: TestChain) -> None:
    args = {"id": "patient-2", "name": "P2", "roles": ["patient"], "public_key": pk("p2")}
    ok(chain.run("hosp-node", "add_member", args))
    assert member(chain, "patient-2")["custodial"] is True
    args3 = {**args, "id": "patient-3", "public_key": pk("p3"), "custodial": False}
    ok(chain.run("hosp-admin", "add_member", args3))
    assert member(chain, "patient-3")["custodial"] is False
    mixed = {**args, "id": "p4", "public_key": pk("p4"), "roles": ["patient", "nurse"]}
    assert code(chain.run("hosp-admin", "add_member", mixed)) == "ROLE_NOT_ALLOWED"


def test_guardians_the_patient_chose_recover_the_key(chain: TestChain) -> None:
    path = {"guardians": ["dr-a", "pharm-admin"], "threshold": 2}
    assert code(chain.run("hosp-admin", "set_recovery", path)) == "NOT_AUTHORISED"
    ok(chain.run("patient-1", "set_recovery", path))
    new = {"member": "patient-1", "public_key": pk("p1-new")}
    assert code(chain.run("hosp-admin", "approve_recovery", new)) == "NOT_AUTHORISED"
    ok(chain.run("dr-a", "approve_recovery", new))
    assert member(chain, "patient-1")["key"] == pk("patient-1")  # one of two is not enough
    ok(chain.run("pharm-admin", "approve_recovery", new))
    assert member(chain, "patient-1")["key"] == pk("p1-new")
    events = [e.type for e in chain.store.block_events(chain.ledger.head.height)]
    assert "identity.key_recovered" in events
    # The lost key signs nothing more; the recovered one does.
    with pytest.raises(BatchRefused, match="revoked"):
        chain.run("patient-1", "set_recovery", path)
    ok(chain.run(key("p1-new"), "set_recovery", path))


def test_a_recovery_key_recovers_and_does_nothing_else(chain: TestChain) -> None:
    ok(chain.run("patient-1", "set_recovery", {"recovery_key": pk("p1-recovery")}))
    grant = {
        "patient": "patient-1",
        "grantee": {"org": "pharm"},
        "actions": ["read"],
        "resource_types": ["*"],
        "purposes": ["TREAT"],
    }
    assert code(chain.run("p1-recovery", "grant", grant, contract="consent")) == "NOT_AUTHORISED"
    steal = {"member": "patient-1", "public_key": pk("x")}
    assert code(chain.run("p1-recovery", "rotate_key", steal)) == "PATIENT_KEY"
    ok(chain.run("p1-recovery", "recover", {"public_key": pk("p1-back")}))
    assert member(chain, "patient-1")["key"] == pk("p1-back")
    assert member(chain, "patient-1")["custodial"] is False
    assert code(chain.run("dr-a", "recover", {"public_key": pk("y")})) == "NOT_AUTHORISED"


def _glass(patient: str, **extra: str) -> dict[str, str]:
    return {"patient": patient, "reason": "unconscious", "purpose": "ETREAT", **extra}


def test_break_glass_needs_a_relationship_or_a_colleague_and_is_not_renewed() -> None:
    doc = genesis("r2")
    doc["orgs"].append({"id": "clinic", "name": "Clinic", "kind": "clinic"})
    for name in ("clinic-dr-1", "clinic-dr-2"):
        doc["members"].append(
            {
                "id": name,
                "name": name,
                "org": "clinic",
                "roles": ["clinician"],
                "public_key": pk(name),
            }
        )
    chain = TestChain(MemoryStore(), genesis_doc=doc)
    ok(chain.run("dr-a", "break_glass", _glass("patient-1"), contract="consent"))  # own patient
    assert code(chain.run("dr-a", "break_glass", _glass("patient-1"), contract="consent")) == (
        "BREAK_GLASS_ACTIVE"
    )
    # Another organisation with no care relationship: pending until a colleague co-signs.
    pending = ok(chain.run("clinic-dr-1", "break_glass", _glass("patient-1"), contract="consent"))
    assert chain.ledger.state("consent", "break-glass-by/patient-1/clinic-dr-1") is None
    confirm = {"id": pending["tx_id"]}
    assert code(chain.run("clinic-dr-1", "confirm_break_glass", confirm, contract="consent")) == (
        "NOT_AUTHORISED"
    )
    assert code(chain.run("dr-a", "confirm_break_glass", confirm, contract="consent")) == (
        "NOT_AUTHORISED"
    )
    ok(chain.run("clinic-dr-2", "confirm_break_glass", confirm, contract="consent"))
    entry = chain.ledger.state("consent", f"break-glass/{pending['tx_id']}")
    assert entry["status"] == "active" and entry["cosigner"] == "clinic-dr-2"
    assert entry["custodian"] == "hosp" and entry["basis"] == "cosignature"
    events = chain.store.block_events(chain.ledger.head.height)
    assert [e.type for e in events] == ["consent.break_glass"]
    # An encounter held elsewhere is not a relationship.
    assert (
        code(
            chain.run(
                "clinic-dr-2",
                "break_glass",
                _glass("patient-1", encounter="enc-1"),
                contract="consent",
            )
        )
        == "NO_CARE_RELATIONSHIP"
    )


def test_break_glass_is_limited_per_clinician_and_patient_per_day(chain: TestChain) -> None:
    ok(chain.run("dr-a", "break_glass", _glass("patient-1"), contract="consent"))
    chain.time += 5 * 60 * 60 * 1000  # the first has ended
    ok(chain.run("dr-a", "break_glass", _glass("patient-1"), contract="consent"))
    chain.time += 5 * 60 * 60 * 1000
    assert code(chain.run("dr-a", "break_glass", _glass("patient-1"), contract="consent")) == (
        "BREAK_GLASS_LIMIT"
    )
    chain.time += 24 * 60 * 60 * 1000
    ok(chain.run("dr-a", "break_glass", _glass("patient-1"), contract="consent"))
