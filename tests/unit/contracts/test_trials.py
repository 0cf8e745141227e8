"""Trials: registration first, consent per protocol version, refusals, lock root, switching."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from careledger.core import merkle
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key

DAY = 86_400_000


def h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("trials", k)
    return None if raw is None else orjson.loads(raw)


def run(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> dict[str, Any]:
    return chain.run(signer, method, args, contract="trials")


def code(receipt: dict[str, Any]) -> str | None:
    return receipt.get("code")


REGISTRATION = {
    "study": "CARDIO-1",
    "registry_id": "NCT00000001",
    "title": "A trial",
    "protocol_hash": h("protocol v1"),
    "sap_hash": h("sap"),
    "primary": ["LDL change at week 12"],
    "secondary": ["Adverse events"],
    "eligibility": {
        "age": [18, 75],
        "conditions": [{"system": "http://snomed.info/sct", "code": "13644009"}],
    },
    "visits": [
        {"id": "baseline", "day": 0, "window": 2},
        {"id": "week-12", "day": 84, "window": 7},
    ],
    "sites": ["hosp"],
}


@pytest.fixture
def chain() -> TestChain:
    chain = TestChain(MemoryStore())
    for member, roles, signer in (
        ("sponsor-1", ["sponsor"], "hosp-admin"),
        ("inv-1", ["investigator"], "hosp-admin"),
        ("p-1", ["patient"], "hosp-node"),
        ("p-2", ["patient"], "hosp-node"),
    ):
        args = {"id": member, "name": member, "roles": roles, "public_key": key(member).public_b64}
        assert chain.run(signer, "add_member", args)["result"] == "accepted"
    assert code(run(chain, "sponsor-1", "register", REGISTRATION)) is None
    return chain


def capture(chain: TestChain, participant: str, visit: str, text: str) -> dict[str, Any]:
    args = {"study": "CARDIO-1", "participant": participant, "visit": visit, "hash": h(text)}
    return run(chain, "inv-1", "capture", args)


def enrol_and_consent(chain: TestChain, participant: str) -> None:
    assert (
        code(run(chain, "inv-1", "enrol", {"study": "CARDIO-1", "participant": participant}))
        is None
    )
    assert code(run(chain, participant, "consent", {"study": "CARDIO-1", "version": 1})) is None


def test_registration_comes_first_and_only_sponsors_register(chain: TestChain) -> None:
    study = state(chain, "study/CARDIO-1")
    assert study["registered"]["height"] > 0 and study["version"] == 1
    assert code(run(chain, "sponsor-1", "register", REGISTRATION)) == "STUDY_EXISTS"
    other = {**REGISTRATION, "study": "X-2"}
    assert code(run(chain, "inv-1", "register", other)) == "NOT_AUTHORISED"
    assert (
        code(run(chain, "sponsor-1", "register", {**other, "sites": ["nowhere"]})) == "UNKNOWN_ORG"
    )


def test_consent_is_the_participants_own_and_data_needs_it(chain: TestChain) -> None:
    assert code(run(chain, "inv-1", "enrol", {"study": "CARDIO-1", "participant": "p-1"})) is None
    assert code(capture(chain, "p-1", "baseline", "a")) == "NO_CONSENT"
    assert (
        code(run(chain, "inv-1", "consent", {"study": "CARDIO-1", "version": 1})) == "NOT_ENROLLED"
    )
    assert code(run(chain, "p-1", "consent", {"study": "CARDIO-1", "version": 1})) is None
    assert code(capture(chain, "p-1", "baseline", "a")) is None
    assert code(capture(chain, "p-1", "week-12", "b")) == "OUTSIDE_WINDOW"
    assert code(capture(chain, "p-1", "week-99", "b")) == "UNKNOWN_VISIT"
    assert code(capture(chain, "p-9", "baseline", "b")) == "NOT_ENROLLED"


def test_data_from_a_withdrawn_participant_is_refused(chain: TestChain) -> None:
    enrol_and_consent(chain, "p-1")
    assert code(capture(chain, "p-1", "baseline", "before")) is None
    assert code(run(chain, "p-1", "withdraw", {"study": "CARDIO-1"})) is None
    assert code(capture(chain, "p-1", "baseline", "after")) == "WITHDRAWN"
    assert state(chain, "data/CARDIO-1")["count"] == 1


def test_after_an_amendment_nothing_is_captured_until_re_consent(chain: TestChain) -> None:
    enrol_and_consent(chain, "p-1")
    amend = {"study": "CARDIO-1", "protocol_hash": h("protocol v2"), "reason": "extra lab"}
    assert code(run(chain, "sponsor-1", "amend", amend)) is None
    assert code(capture(chain, "p-1", "baseline", "x")) == "RECONSENT_REQUIRED"
    assert (
        code(run(chain, "p-1", "consent", {"study": "CARDIO-1", "version": 1})) == "STALE_VERSION"
    )
    assert code(run(chain, "p-1", "consent", {"study": "CARDIO-1", "version": 2})) is None
    assert code(capture(chain, "p-1", "baseline", "x")) is None
    versions = [c["version"] for c in state(chain, "participant/CARDIO-1/p-1")["consents"]]
    assert versions == [1, 2]


def test_lock_anchors_the_root_of_every_entry_and_refuses_more(chain: TestChain) -> None:
    enrol_and_consent(chain, "p-1")
    enrol_and_consent(chain, "p-2")
    texts = ["e1", "e2", "e3"]
    for i, text in enumerate(texts):
        assert code(capture(chain, "p-1" if i % 2 == 0 else "p-2", "baseline", text)) is None
    assert code(run(chain, "inv-1", "lock", {"study": "CARDIO-1"})) == "NOT_AUTHORISED"
    assert code(run(chain, "sponsor-1", "lock", {"study": "CARDIO-1"})) is None
    locked = state(chain, "study/CARDIO-1")["locked"]
    leaves = [merkle.leaf_hash(bytes.fromhex(h(t))) for t in texts]
    assert locked["root"] == merkle.root_from_leaf_hashes(leaves).hex() and locked["count"] == 3
    assert code(capture(chain, "p-1", "baseline", "late")) == "LOCKED"


def test_outcome_switching_is_flagged(chain: TestChain) -> None:
    report = {"study": "CARDIO-1", "primary": ["HDL change at week 12"], "secondary": []}
    assert code(run(chain, "sponsor-1", "report", report)) == "NOT_LOCKED"
    assert code(run(chain, "sponsor-1", "lock", {"study": "CARDIO-1"})) is None
    executed = chain.commit(chain.envelope("sponsor-1", "report", report, contract="trials"))
    kinds = [e.type for e in executed.block.events]
    assert "trials.outcome_switching" in kinds
    flagged = state(chain, "study/CARDIO-1")["report"]
    assert flagged["missing_primary"] == ["LDL change at week 12"]
    assert flagged["new_primary"] == ["HDL change at week 12"] and flagged["outcome_switching"]
    honest = {**report, "primary": ["LDL change at week 12"]}
    executed = chain.commit(chain.envelope("sponsor-1", "report", honest, contract="trials"))
    assert [e.type for e in executed.block.events] == ["trials.reported"]


def anchor_record(chain: TestChain, record: str, patient: str, kind: str, text: str) -> None:
    args = {"record": record, "type": kind, "patient": patient, "hash": h(text), "version": 1}
    assert chain.run("dr-a", "anchor", args, contract="records")["result"] == "accepted"


def test_vault_entries_are_bound_to_their_anchored_records(chain: TestChain) -> None:
    enrol_and_consent(chain, "p-1")
    anchor_record(chain, "crf-1", "p-1", "QuestionnaireResponse", "answers")
    anchor_record(chain, "obs-9", "p-2", "Observation", "other patient")
    anchor_record(chain, "cond-1", "p-1", "Condition", "not a CRF")
    visit = {"study": "CARDIO-1", "participant": "p-1", "visit": "baseline"}

    def entries(*items: tuple[str, str]) -> dict[str, Any]:
        return run(
            chain,
            "inv-1",
            "capture",
            {**visit, "entries": [{"record": r, "version": 1, "hash": h(t)} for r, t in items]},
        )

    assert code(entries(("crf-1", "tampered"))) == "UNKNOWN_RECORD"
    assert code(entries(("obs-9", "other patient"))) == "BAD_ARGS"
    assert code(entries(("cond-1", "not a CRF"))) == "BAD_ARGS"
    assert code(entries(("crf-1", "answers"))) is None
    stored = state(chain, "entry/CARDIO-1/p-1/baseline/0")
    assert stored["record"] == "crf-1" and stored["hash"] == h("answers")
    assert state(chain, "visit/CARDIO-1/p-1/baseline")["entries"] == 1


def test_a_visit_is_attested_by_the_participants_site_once_its_data_is_in(
    chain: TestChain,
) -> None:
    enrol_and_consent(chain, "p-1")
    visit = {"study": "CARDIO-1", "participant": "p-1", "visit": "baseline"}
    assert code(run(chain, "inv-1", "attest", visit)) == "NO_DATA"
    assert code(capture(chain, "p-1", "baseline", "a")) is None
    assert code(run(chain, "dr-a", "attest", visit)) == "NOT_AUTHORISED"
    assert code(run(chain, "inv-1", "attest", visit)) is None
    assert code(run(chain, "inv-1", "attest", visit)) == "ALREADY_ATTESTED"
    assert state(chain, "visit/CARDIO-1/p-1/baseline")["attested"]["by"] == "inv-1"
    assert code(run(chain, "p-1", "withdraw", {"study": "CARDIO-1"})) is None
    week = {**visit, "visit": "week-12"}
    assert code(run(chain, "inv-1", "attest", week)) == "WITHDRAWN"


def test_a_node_acts_for_its_investigators_only(chain: TestChain) -> None:
    assert code(run(chain, "inv-1", "enrol", {"study": "CARDIO-1", "participant": "p-1"})) is None
    assert code(run(chain, "p-1", "consent", {"study": "CARDIO-1", "version": 1})) is None
    inner = {"study": "CARDIO-1", "participant": "p-1", "visit": "baseline", "hash": h("x")}
    call = {"actor": "inv-1", "method": "capture", "args": inner}
    assert code(run(chain, "dr-a", "on_behalf", call)) == "NOT_AUTHORISED"
    assert code(run(chain, "hosp-node", "on_behalf", {**call, "method": "lock"})) == "BAD_ARGS"
    assert code(run(chain, "hosp-node", "on_behalf", {**call, "actor": "dr-a"})) == (
        "NOT_AUTHORISED"  # dr-a is no investigator
    )
    assert code(run(chain, "hosp-node", "on_behalf", call)) is None
    assert state(chain, "entry/CARDIO-1/p-1/baseline/0")["by"] == "inv-1"


def test_feasibility_answers_are_counts_never_small_cells(chain: TestChain) -> None:
    criteria = {"age": [40, 60], "conditions": [{"system": "icd10", "code": "E11"}]}
    assert code(run(chain, "inv-1", "feasibility", {"criteria": criteria, "sites": ["hosp"]})) == (
        "NOT_AUTHORISED"
    )
    bad = {"criteria": {"conditions": [{"text": "diabetes"}]}, "sites": ["hosp"]}
    assert code(run(chain, "sponsor-1", "feasibility", bad)) == "NOT_COMPUTABLE"
    assert code(run(chain, "sponsor-1", "feasibility", {**bad, "criteria": {"x": 1}})) == (
        "BAD_CRITERIA"
    )
    assert code(run(chain, "sponsor-1", "feasibility", {"criteria": criteria})) == "BAD_ARGS"
    assert (
        code(
            run(
                chain,
                "sponsor-1",
                "feasibility",
                {"criteria": criteria, "invite": True, "sites": ["hosp"]},
            )
        )
        == "BAD_ARGS"
    )  # invitations are for a registered study
    receipt = run(chain, "sponsor-1", "feasibility", {"criteria": criteria, "sites": ["hosp"]})
    assert code(receipt) is None
    query = receipt["tx_id"]
    answer = {"query": query, "count": 3}
    assert code(run(chain, "dr-a", "answer", answer)) == "NOT_AUTHORISED"
    assert code(run(chain, "hosp-node", "answer", answer)) == "SMALL_CELL"
    assert code(run(chain, "hosp-node", "answer", {**answer, "count": None})) == "BAD_ARGS"
    withheld = {**answer, "count": None, "reason": "overlap"}
    assert code(run(chain, "hosp-node", "answer", withheld)) is None
    assert code(run(chain, "hosp-node", "answer", {**answer, "count": 7})) == "ALREADY_ANSWERED"
    assert state(chain, f"answer/{query}/hosp")["reason"] == "overlap"
    # a registered study's own eligibility is the default, and its sites
    receipt = run(chain, "sponsor-1", "feasibility", {"study": "CARDIO-1", "invite": True})
    assert code(receipt) is None
    stored = state(chain, f"query/{receipt['tx_id']}")
    assert stored["sites"] == ["hosp"] and stored["criteria"]["age"] == [18, 75]
    assert (
        code(run(chain, "hosp-node", "answer", {**answer, "query": receipt["tx_id"], "count": 0}))
        is None
    )


def test_invitations_use_the_registered_eligibility_only(chain: TestChain) -> None:
    narrowed = {"study": "CARDIO-1", "invite": True, "criteria": {"age": [18, 40]}}
    assert code(run(chain, "sponsor-1", "feasibility", narrowed)) == "BAD_ARGS"
    same = {**narrowed, "criteria": REGISTRATION["eligibility"]}
    assert code(run(chain, "sponsor-1", "feasibility", same)) is None


def test_only_the_participants_own_site_captures(chain: TestChain) -> None:
    two_sites = {**REGISTRATION, "study": "TWO-1", "sites": ["hosp", "pharm"]}
    assert code(run(chain, "sponsor-1", "register", two_sites)) is None
    args = {
        "id": "inv-p",
        "name": "inv-p",
        "roles": ["investigator"],
        "public_key": key("inv-p").public_b64,
    }
    assert chain.run("pharm-admin", "add_member", args)["result"] == "accepted"
    assert code(run(chain, "inv-1", "enrol", {"study": "TWO-1", "participant": "p-1"})) is None
    assert code(run(chain, "p-1", "consent", {"study": "TWO-1", "version": 1})) is None
    entry = {"study": "TWO-1", "participant": "p-1", "visit": "baseline", "hash": h("x")}
    assert code(run(chain, "inv-p", "capture", entry)) == "NOT_AUTHORISED"
    assert code(run(chain, "inv-1", "capture", entry)) is None
