"""r10: an organisation's own records, about no patient (its directory, definitions and Group
lists). Only the types the ruleset names may go without a patient; they are the custodian's,
indexed by it, chained in holdings of their own, and shredded by its admin or node only."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.contracts.records import (
    ORG_RECORD_TYPES,
    holding_of,
    org_holding_key,
    org_holding_op_key,
    org_index_key,
    record_key,
    replay_holding,
)
from careledger.core.block import ZERO_HASH
from careledger.fhir.types import PATIENT_ELEMENT, RECORD_TYPES
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain


def digest(n: int) -> str:
    return f"{n:064x}"


def anchor(
    chain: TestChain,
    record: str,
    version: int = 1,
    *,
    kind: str = "Organization",
    signer: str = "dr-a",
    **extra: Any,
) -> dict[str, Any]:
    args: dict[str, Any] = {"record": record, "type": kind, "hash": digest(version),
                            "version": version, **extra}  # fmt: skip
    if version > 1:
        args["prev_version"] = version - 1
    return chain.run(signer, "anchor", args, contract="records")


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("records", k)
    return None if raw is None else orjson.loads(raw)


def chain_ops(chain: TestChain, kind: str) -> list[list[Any]]:
    n, _ = holding_of(state(chain, org_holding_key("hosp", kind)))
    return [state(chain, org_holding_op_key("hosp", kind, i)) for i in range(1, n + 1)]


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore(), ruleset="r10")


def test_no_type_about_a_patient_goes_without_one() -> None:
    # the ruleset's list and the FHIR layer's table of patient types never overlap
    assert not ORG_RECORD_TYPES & RECORD_TYPES
    assert "Group" in ORG_RECORD_TYPES and "Appointment" not in ORG_RECORD_TYPES


def test_an_organisation_record_is_anchored_versioned_and_indexed(chain: TestChain) -> None:
    assert anchor(chain, "org-1")["result"] == "accepted"
    assert anchor(chain, "org-1", 2)["result"] == "accepted"
    entry = state(chain, record_key("org-1"))
    assert (entry["patient"], entry["custodian"], entry["version"]) == (None, "hosp", 2)
    assert state(chain, org_index_key("hosp", "org-1")) == {"type": "Organization"}
    head, held = replay_holding(chain_ops(chain, "Organization"))
    assert held == {"org-1": (2, digest(2), held["org-1"][2])}
    assert (2, head) == holding_of(state(chain, org_holding_key("hosp", "Organization")))


@pytest.mark.parametrize("kind", ["Observation", "Appointment", "Patient", "Consent"])
def test_a_patient_type_without_a_patient_is_refused(chain: TestChain, kind: str) -> None:
    receipt = anchor(chain, "x-1", kind=kind)
    assert receipt["code"] == "NO_PATIENT"
    assert state(chain, record_key("x-1")) is None


def test_a_record_keeps_being_about_no_patient(chain: TestChain) -> None:
    assert anchor(chain, "grp-1", kind="Group")["result"] == "accepted"
    args = {"record": "grp-1", "type": "Group", "patient": "patient-1", "hash": digest(2),
            "version": 2, "prev_version": 1}  # fmt: skip
    assert chain.run("dr-a", "anchor", args, contract="records")["code"] == "BAD_ARGS"
    # and a patient's record cannot lose its patient
    args = {"record": "obs-1", "type": "Observation", "patient": "patient-1",
            "hash": digest(1), "version": 1}  # fmt: skip
    assert chain.run("dr-a", "anchor", args, contract="records")["result"] == "accepted"
    assert anchor(chain, "obs-1", 2, kind="Observation")["code"] == "NO_PATIENT"
    assert anchor(chain, "grp-1", 2, kind="Organization")["code"] == "BAD_ARGS"


def test_only_staff_of_the_custodian_anchor_and_update(chain: TestChain) -> None:
    assert anchor(chain, "org-1")["result"] == "accepted"
    assert anchor(chain, "org-1", 2, signer="pharm-admin")["code"] == "NOT_CUSTODIAN"
    assert anchor(chain, "org-2", signer="patient-1")["code"] == "NOT_AUTHORISED"
    assert anchor(chain, "org-1", 3)["code"] == "VERSION_CONFLICT"
    assert anchor(chain, "org-1", 2, unknown=1)["code"] == "BAD_ARGS"


def test_the_custodians_admin_or_node_shreds_it_not_a_patient_nor_a_clinician(
    chain: TestChain,
) -> None:
    assert anchor(chain, "prac-1", kind="Practitioner")["result"] == "accepted"
    shred = {"record": "prac-1", "reason": "left"}
    assert chain.run("patient-1", "shred", shred, contract="records")["code"] == "NOT_AUTHORISED"
    assert chain.run("dr-a", "shred", shred, contract="records")["code"] == "NOT_AUTHORISED"
    assert chain.run("pharm-admin", "shred", shred, contract="records")["code"] == "NOT_AUTHORISED"
    assert chain.run("hosp-admin", "shred", shred, contract="records")["result"] == "accepted"
    assert state(chain, org_index_key("hosp", "prac-1")) is None
    assert state(chain, record_key("prac-1"))["shredded"] is True
    _, held = replay_holding(chain_ops(chain, "Practitioner"))
    assert held == {}
    assert chain.run("hosp-admin", "shred", shred, contract="records")["code"] == (
        "ALREADY_SHREDDED"
    )
    assert anchor(chain, "prac-1", 2, kind="Practitioner")["code"] == "RECORD_SHREDDED"


def test_an_attestation_names_the_organisations_heads(chain: TestChain) -> None:
    assert anchor(chain, "org-1")["result"] == "accepted"
    args = {"record": "obs-1", "type": "Observation", "patient": "patient-1",
            "hash": digest(1), "version": 1}  # fmt: skip
    assert chain.run("dr-a", "anchor", args, contract="records")["result"] == "accepted"
    n, head = holding_of(state(chain, org_holding_key("hosp", "Organization")))
    own = {"type": "Organization", "n": n, "head": head}
    attest = {"holdings": [own]}
    assert chain.run("hosp-node", "attest_holdings", attest, contract="records")["result"] == (
        "accepted"
    )
    empty = {"type": "Group", "n": 0, "head": ZERO_HASH}
    assert chain.run("hosp-node", "attest_holdings", {"holdings": [empty]},
                     contract="records")["result"] == "accepted"  # fmt: skip
    stale = {"holdings": [{**own, "n": n + 1}]}
    assert chain.run("hosp-node", "attest_holdings", stale, contract="records")["code"] == (
        "HOLDINGS_CHANGED"
    )
    assert chain.run("dr-a", "attest_holdings", attest, contract="records")["code"] == (
        "NOT_AUTHORISED"
    )
    # with a patient's holding in the same attestation, both are checked
    theirs = {"patient": "patient-1", "type": "Observation", "n": 1, "head": "0" * 64}
    mixed = {"holdings": [own, theirs]}
    assert chain.run("hosp-node", "attest_holdings", mixed, contract="records")["code"] == (
        "HOLDINGS_CHANGED"
    )
    twice = {"holdings": [own, own]}
    assert chain.run("hosp-node", "attest_holdings", twice, contract="records")["code"] == (
        "BAD_ARGS"
    )
    extra = {"holdings": [{**own, "custodian": "pharm"}]}
    assert chain.run("hosp-node", "attest_holdings", extra, contract="records")["code"] == (
        "BAD_ARGS"
    )


def test_r9_refuses_a_record_without_a_patient() -> None:
    chain = TestChain(MemoryStore(), ruleset="r9")
    assert anchor(chain, "org-1")["code"] == "BAD_ARGS"


def test_patient_element_table_is_not_touched_by_org_types() -> None:
    assert not set(PATIENT_ELEMENT) & ORG_RECORD_TYPES
