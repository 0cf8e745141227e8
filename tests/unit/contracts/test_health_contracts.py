"""records, consent and audit together: the ledger decides who may see a patient's data."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.contracts.consent import BREAK_GLASS_MS, consent_covers
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key

HASH = "ab" * 32


@pytest.fixture
def chain() -> TestChain:
    c = TestChain(MemoryStore())
    for member, roles in [("ph-b", ["pharmacist"]), ("dr-p", ["clinician"])]:
        args = {"id": member, "name": member, "roles": roles, "public_key": key(member).public_b64}
        assert c.run("pharm-admin", "add_member", args)["result"] == "accepted"
    return c


def anchor(
    chain: TestChain, record: str = "obs-1", version: int = 1, prev: int | None = None, **kw: Any
) -> dict:
    args = {
        "record": record,
        "type": "Observation",
        "patient": "patient-1",
        "hash": HASH,
        "version": version,
        **kw,
    }
    if prev is not None:
        args["prev_version"] = prev
    return chain.run("dr-a", "anchor", args, contract="records")


def access(
    chain: TestChain,
    accessor: str,
    org: str,
    basis: dict,
    *,
    action: str = "read",
    purpose: str = "TREAT",
    records: list[str] | None = None,
) -> dict:
    args = {
        "patient": "patient-1",
        "accessor": accessor,
        "accessor_org": org,
        "records": records or ["obs-1"],
        "action": action,
        "purpose": purpose,
        "basis": basis,
    }
    return chain.run("hosp-node", "access", args, contract="audit")


def grant(chain: TestChain, signer: str = "patient-1", **overrides: Any) -> dict:
    args = {
        "grantee": {"org": "pharm"},
        "actions": ["read"],
        "resource_types": ["Observation"],
        "purposes": ["TREAT"],
    }
    args.update(overrides)
    return chain.run(signer, "grant", args, contract="consent")


def accesses(chain: TestChain) -> list[Any]:
    return [
        orjson.loads(v)
        for ns, k, v in chain.store.state_items()
        if ns == "audit" and k.startswith("access/patient-1/")
    ]


def test_anchor_versions_and_custody(chain: TestChain) -> None:
    assert anchor(chain)["result"] == "accepted"
    record = chain.ledger.state("records", "record/obs-1")
    assert (record["custodian"], record["version"], record["patient"]) == ("hosp", 1, "patient-1")
    assert (
        anchor(chain, version=2)["code"] == "VERSION_CONFLICT"
    )  # must name the version it replaces
    assert anchor(chain, version=2, prev=1)["result"] == "accepted"
    assert anchor(chain, version=3, prev=1)["code"] == "VERSION_CONFLICT"
    other = {
        "record": "obs-1",
        "type": "Observation",
        "patient": "patient-1",
        "hash": HASH,
        "version": 3,
        "prev_version": 2,
    }
    assert chain.run("dr-p", "anchor", other, contract="records")["code"] == "NOT_CUSTODIAN"
    assert anchor(chain, record="obs-2", patient="dr-a")["code"] == "UNKNOWN_PATIENT"
    assert anchor(chain, record="obs-3", hash="not-a-hash")["code"] == "BAD_ARGS"
    assert chain.ledger.state("records", "patient/patient-1/obs-1") == {
        "type": "Observation",
        "custodian": "hosp",
    }


def test_without_consent_then_with_then_revoked(chain: TestChain) -> None:
    anchor(chain)
    denied = access(chain, "ph-b", "pharm", {"kind": "consent", "id": "0" * 64})
    assert (denied["result"], denied["code"]) == ("rejected", "NO_CONSENT")
    assert accesses(chain) == []
    consent = grant(chain)
    assert consent["result"] == "accepted"
    allowed = access(chain, "ph-b", "pharm", {"kind": "consent", "id": consent["tx_id"]})
    assert allowed["result"] == "accepted"
    (entry,) = accesses(chain)
    assert (entry["accessor"], entry["basis"]["id"], entry["break_glass"]) == (
        "ph-b",
        consent["tx_id"],
        False,
    )
    assert (
        chain.run("patient-1", "revoke", {"consent": consent["tx_id"]}, contract="consent")[
            "result"
        ]
        == "accepted"
    )
    after = access(chain, "ph-b", "pharm", {"kind": "consent", "id": consent["tx_id"]})
    assert after["code"] == "CONSENT_REVOKED"
    assert len(accesses(chain)) == 1


@pytest.mark.parametrize(
    ("overrides", "request_kw"),
    [
        ({"resource_types": ["Condition"]}, {}),
        ({"purposes": ["HRESCH"]}, {}),
        ({"actions": ["write"]}, {}),
        ({"grantee": {"member": "dr-p"}}, {}),
        ({}, {"purpose": "HRESCH"}),
        ({}, {"action": "write"}),
    ],
)
def test_consent_scope_is_enforced(chain: TestChain, overrides: dict, request_kw: dict) -> None:
    anchor(chain)
    consent = grant(chain, **overrides)
    assert consent["result"] == "accepted"
    outcome = access(
        chain, "ph-b", "pharm", {"kind": "consent", "id": consent["tx_id"]}, **request_kw
    )
    assert outcome["code"] == "NO_CONSENT"


def test_consent_period(chain: TestChain) -> None:
    anchor(chain)
    now = chain.time
    future = grant(chain, start=now + 10_000_000)
    assert (
        access(chain, "ph-b", "pharm", {"kind": "consent", "id": future["tx_id"]})["code"]
        == "NO_CONSENT"
    )
    expired = grant(chain, start=now - 10_000, end=now)
    assert (
        access(chain, "ph-b", "pharm", {"kind": "consent", "id": expired["tx_id"]})["code"]
        == "NO_CONSENT"
    )
    assert grant(chain, start=now, end=now - 1)["code"] == "BAD_ARGS"


def test_all_types_and_member_grantee(chain: TestChain) -> None:
    anchor(chain)
    consent = grant(chain, grantee={"member": "ph-b"}, resource_types=["*"])
    assert (
        access(chain, "ph-b", "pharm", {"kind": "consent", "id": consent["tx_id"]})["result"]
        == "accepted"
    )
    assert (
        access(chain, "dr-p", "pharm", {"kind": "consent", "id": consent["tx_id"]})["code"]
        == "NO_CONSENT"
    )


def test_only_patient_or_delegate_grants_and_revokes(chain: TestChain) -> None:
    assert grant(chain, signer="dr-a", patient="patient-1")["code"] == "NOT_AUTHORISED"
    assert (
        chain.run("patient-1", "add_delegate", {"delegate": "dr-a"}, contract="consent")["result"]
        == "accepted"
    )
    consent = grant(chain, signer="dr-a", patient="patient-1")
    assert consent["result"] == "accepted"
    assert (
        chain.run("ph-b", "revoke", {"consent": consent["tx_id"]}, contract="consent")["code"]
        == "NOT_AUTHORISED"
    )
    assert (
        chain.run("patient-1", "remove_delegate", {"delegate": "dr-a"}, contract="consent")[
            "result"
        ]
        == "accepted"
    )
    assert grant(chain, signer="dr-a", patient="patient-1")["code"] == "NOT_AUTHORISED"
    assert grant(chain, grantee={"org": "nowhere"})["code"] == "UNKNOWN_ORG"
    assert grant(chain, grantee={"org": "pharm", "member": "ph-b"})["code"] == "BAD_ARGS"


def test_self_and_custodian_bases(chain: TestChain) -> None:
    anchor(chain)
    assert (
        access(chain, "patient-1", "hosp", {"kind": "self"}, action="export")["result"]
        == "accepted"
    )
    assert access(chain, "dr-a", "hosp", {"kind": "custodian"})["result"] == "accepted"
    assert access(chain, "dr-a", "hosp", {"kind": "self"})["code"] == "NO_CONSENT"
    assert access(chain, "ph-b", "pharm", {"kind": "custodian"})["code"] == "NO_CONSENT"
    assert (
        access(chain, "dr-a", "hosp", {"kind": "custodian"}, purpose="HRESCH")["code"]
        == "NO_CONSENT"
    )
    assert access(chain, "ph-b", "hosp", {"kind": "custodian"})["code"] == "UNKNOWN_MEMBER"


def test_only_the_custodians_node_records_access(chain: TestChain) -> None:
    anchor(chain)
    args = {
        "patient": "patient-1",
        "accessor": "dr-a",
        "accessor_org": "hosp",
        "records": ["obs-1"],
        "action": "read",
        "purpose": "TREAT",
        "basis": {"kind": "custodian"},
    }
    assert chain.run("dr-a", "access", args, contract="audit")["code"] == "NOT_AUTHORISED"
    assert (
        access(chain, "dr-a", "hosp", {"kind": "custodian"}, records=["nope"])["code"]
        == "UNKNOWN_RECORD"
    )


def test_break_glass_is_flagged_announced_and_expires(chain: TestChain) -> None:
    anchor(chain)
    glass = chain.run(
        "dr-p",
        "break_glass",
        {"patient": "patient-1", "reason": "unconscious", "purpose": "ETREAT"},
        contract="consent",
    )
    assert glass["result"] == "accepted"
    events = [e.type for e in chain.store.block_events(glass["height"])]
    assert "consent.break_glass" in events
    outcome = access(
        chain, "dr-p", "pharm", {"kind": "break_glass", "id": glass["tx_id"]}, purpose="ETREAT"
    )
    assert outcome["result"] == "accepted"
    assert accesses(chain)[-1]["break_glass"] is True
    assert "audit.break_glass_access" in [
        e.type for e in chain.store.block_events(outcome["height"])
    ]
    assert (
        access(
            chain, "ph-b", "pharm", {"kind": "break_glass", "id": glass["tx_id"]}, purpose="ETREAT"
        )["code"]
        == "NO_CONSENT"
    )
    chain.time += BREAK_GLASS_MS
    late = access(
        chain, "dr-p", "pharm", {"kind": "break_glass", "id": glass["tx_id"]}, purpose="ETREAT"
    )
    assert late["code"] == "BREAK_GLASS_EXPIRED"
    bad = {"patient": "patient-1", "reason": "curious", "purpose": "ETREAT"}
    assert chain.run("dr-p", "break_glass", bad, contract="consent")["code"] == "BAD_ARGS"
    assert (
        chain.run("ph-b", "break_glass", {**bad, "reason": "unconscious"}, contract="consent")[
            "code"
        ]
        == "NOT_AUTHORISED"
    )


def test_shred(chain: TestChain) -> None:
    anchor(chain)
    assert (
        chain.run(
            "ph-b", "shred", {"record": "obs-1", "reason": "patient_request"}, contract="records"
        )["code"]
        == "NOT_AUTHORISED"
    )
    shredded = chain.run(
        "patient-1", "shred", {"record": "obs-1", "reason": "patient_request"}, contract="records"
    )
    assert shredded["result"] == "accepted"
    assert chain.ledger.state("records", "patient/patient-1/obs-1") is None
    assert access(chain, "patient-1", "hosp", {"kind": "self"})["code"] == "RECORD_SHREDDED"
    assert anchor(chain, version=2, prev=1)["code"] == "RECORD_SHREDDED"
    assert (
        chain.run(
            "hosp-admin", "shred", {"record": "obs-1", "reason": "retention"}, contract="records"
        )["code"]
        == "ALREADY_SHREDDED"
    )


def test_consent_covers_is_pure() -> None:
    consent = {
        "status": "active",
        "grantee": {"org": "o"},
        "actions": ["read"],
        "resource_types": ["*"],
        "purposes": ["TREAT"],
        "start": 10,
        "end": 20,
    }
    kw = {
        "member": "m",
        "org": "o",
        "action": "read",
        "resource_type": "Observation",
        "purpose": "TREAT",
    }
    assert consent_covers(consent, time=10, **kw)
    assert not consent_covers(consent, time=20, **kw)
    assert not consent_covers({**consent, "status": "revoked"}, time=15, **kw)


def test_custodian_basis_is_for_the_care_team_not_its_patients(chain: TestChain) -> None:
    """A patient registered by the hospital is a member of its org, but no member of its team."""
    anchor(chain)
    args = {
        "id": "patient-2",
        "name": "P2",
        "roles": ["patient"],
        "public_key": key("patient-2").public_b64,
    }
    assert chain.run("hosp-node", "add_member", args)["result"] == "accepted"
    assert access(chain, "patient-2", "hosp", {"kind": "custodian"})["code"] == "NO_CONSENT"
    consent = grant(chain, grantee={"org": "hosp"}, resource_types=["*"])
    outcome = access(chain, "patient-2", "hosp", {"kind": "consent", "id": consent["tx_id"]})
    assert outcome["code"] == "NO_CONSENT"  # an org's consent reaches its people only
    assert (
        access(chain, "dr-a", "hosp", {"kind": "consent", "id": consent["tx_id"]})["result"]
        == "accepted"
    )


def test_break_glass_only_for_emergency_treatment(chain: TestChain) -> None:
    anchor(chain)
    glass = chain.run(
        "dr-p",
        "break_glass",
        {"patient": "patient-1", "reason": "unconscious", "purpose": "ETREAT"},
        contract="consent",
    )
    basis = {"kind": "break_glass", "id": glass["tx_id"]}
    assert access(chain, "dr-p", "pharm", basis, purpose="TREAT")["code"] == "NO_CONSENT"
    assert access(chain, "dr-p", "pharm", basis, purpose="ETREAT")["result"] == "accepted"
