"""The views the node reads a patient's consents and records through (issue 14): pure functions
over the ledger's reader and key lister, in the contract's index order, bounded by ``limit``."""

from __future__ import annotations

from typing import Any

import pytest

from careledger.contracts.consent import consent_of, consents_of
from careledger.contracts.records import (
    IndexedRecord,
    holding_ops,
    holding_state,
    org_records_of,
    patients_with_records,
    records_of,
    replay_holding,
)
from careledger.core.block import ZERO_HASH
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key


def digest(n: int) -> str:
    return f"{n:064x}"


def add_patient(chain: TestChain, patient: str) -> None:
    args = {"id": patient, "name": patient, "roles": ["patient"],
            "public_key": key(patient).public_b64}  # fmt: skip
    assert chain.run("hosp-node", "add_member", args)["result"] == "accepted"


def grant(chain: TestChain, patient: str, grantee: dict[str, str]) -> str:
    args = {"grantee": grantee, "actions": ["read"], "resource_types": ["Observation"],
            "purposes": ["TREAT"]}  # fmt: skip
    receipt = chain.run(patient, "grant", args, contract="consent")
    assert receipt["result"] == "accepted"
    return str(receipt["tx_id"])


def anchor(
    chain: TestChain,
    record: str,
    *,
    kind: str = "Observation",
    patient: str | None = "patient-1",
    signer: str = "dr-a",
    version: int = 1,
) -> None:
    args: dict[str, Any] = {"record": record, "type": kind, "hash": digest(version),
                            "version": version}  # fmt: skip
    if patient is not None:
        args["patient"] = patient
    if version > 1:
        args["prev_version"] = version - 1
    assert chain.run(signer, "anchor", args, contract="records")["result"] == "accepted"


def shred(chain: TestChain, record: str, signer: str = "hosp-admin") -> None:
    args = {"record": record, "reason": "erasure"}
    assert chain.run(signer, "shred", args, contract="records")["result"] == "accepted"


class CountingReader:
    """The ledger's reader, counting reads of the consent entries."""

    def __init__(self, chain: TestChain) -> None:
        self.chain = chain
        self.reads = 0

    def __call__(self, namespace: str, k: str) -> Any:
        self.reads += namespace == "consent"
        return self.chain.ledger.state(namespace, k)


@pytest.fixture
def consents() -> tuple[TestChain, list[str]]:
    """patient-1 grants three consents (the second revoked); patient-2 grants one."""
    chain = TestChain(MemoryStore())
    add_patient(chain, "patient-2")
    ids = [
        grant(chain, "patient-1", {"org": "pharm"}),
        grant(chain, "patient-1", {"member": "dr-a"}),
        grant(chain, "patient-1", {"org": "maker"}),
    ]
    revoked = chain.run("patient-1", "revoke", {"consent": ids[1]}, contract="consent")
    assert revoked["result"] == "accepted"
    grant(chain, "patient-2", {"org": "pharm"})
    return chain, ids


def test_consents_of_a_patient_are_theirs_in_index_order_revoked_too(
    consents: tuple[TestChain, list[str]],
) -> None:
    chain, ids = consents
    found = list(consents_of(chain.ledger.state, chain.store.state_keys, "patient-1", 100))
    assert [c["id"] for c in found] == sorted(ids)  # the index is keyed by consent id
    assert {c["patient"] for c in found} == {"patient-1"}
    assert {c["id"]: c["status"] for c in found}[ids[1]] == "revoked"
    assert [dict(c) for c in found] == [consent_of(chain.ledger.state, i) for i in sorted(ids)]
    assert list(consents_of(chain.ledger.state, chain.store.state_keys, "patient-3", 100)) == []


def test_consents_of_stops_at_the_limit_and_reads_lazily(
    consents: tuple[TestChain, list[str]],
) -> None:
    chain, ids = consents
    two = consents_of(chain.ledger.state, chain.store.state_keys, "patient-1", 2)
    assert [c["id"] for c in two] == sorted(ids)[:2]
    read = CountingReader(chain)
    lazily = consents_of(read, chain.store.state_keys, "patient-1", 100)
    assert next(lazily)["id"] == min(ids)
    assert read.reads == 1  # the node stops at the first consent that covers an access


def test_consent_of_reads_one_consent(consents: tuple[TestChain, list[str]]) -> None:
    chain, ids = consents
    consent = consent_of(chain.ledger.state, ids[0])
    assert consent is not None and consent["grantee"] == {"org": "pharm"}
    assert consent_of(chain.ledger.state, "0" * 64) is None


@pytest.fixture
def records() -> TestChain:
    """patient-1's records at the hospital (one shredded) and the pharmacy; one of patient-2."""
    chain = TestChain(MemoryStore(), ruleset="r10")
    add_patient(chain, "patient-2")
    anchor(chain, "obs-c")
    anchor(chain, "cond-1", kind="Condition")
    anchor(chain, "obs-a")
    anchor(chain, "obs-a", version=2)
    anchor(chain, "med-1", kind="MedicationRequest", signer="pharm-admin")
    anchor(chain, "obs-x")
    shred(chain, "obs-x")
    anchor(chain, "obs-z", patient="patient-2")
    return chain


def test_records_of_a_patient_are_the_live_ones_in_index_order(records: TestChain) -> None:
    found = records_of(records.ledger.state, records.store.state_keys, "patient-1", 100)
    assert found == [
        IndexedRecord("cond-1", "Condition", "hosp"),
        IndexedRecord("med-1", "MedicationRequest", "pharm"),
        IndexedRecord("obs-a", "Observation", "hosp"),  # once, whatever its versions
        IndexedRecord("obs-c", "Observation", "hosp"),
    ]
    assert records_of(records.ledger.state, records.store.state_keys, "patient-2", 100) == [
        IndexedRecord("obs-z", "Observation", "hosp")
    ]
    assert records_of(records.ledger.state, records.store.state_keys, "patient-3", 100) == []


def test_records_of_stops_at_the_limit(records: TestChain) -> None:
    found = records_of(records.ledger.state, records.store.state_keys, "patient-1", 2)
    assert [r.record_id for r in found] == ["cond-1", "med-1"]


def test_patients_with_records_are_sorted_and_bounded_by_index_entries(
    records: TestChain,
) -> None:
    assert patients_with_records(records.store.state_keys, 100) == ["patient-1", "patient-2"]
    assert patients_with_records(records.store.state_keys, 4) == ["patient-1"]
    shred(records, "obs-z")
    assert patients_with_records(records.store.state_keys, 100) == ["patient-1"]


def test_org_records_of_are_its_live_own_records_in_index_order() -> None:
    chain = TestChain(MemoryStore(), ruleset="r10")
    anchor(chain, "loc-1", kind="Location", patient=None)
    anchor(chain, "grp-1", kind="Group", patient=None)
    anchor(chain, "grp-1", kind="Group", patient=None, version=2)
    anchor(chain, "dir-9", kind="Organization", patient=None, signer="pharm-admin")
    anchor(chain, "loc-0", kind="Location", patient=None)
    shred(chain, "loc-0")
    anchor(chain, "obs-1")  # a patient's record is no organisation's own
    found = org_records_of(chain.ledger.state, chain.store.state_keys, "hosp", 100)
    assert found == [("grp-1", "Group"), ("loc-1", "Location")]
    assert org_records_of(chain.ledger.state, chain.store.state_keys, "hosp", 1) == [
        ("grp-1", "Group")
    ]
    assert org_records_of(chain.ledger.state, chain.store.state_keys, "pharm", 100) == [
        ("dir-9", "Organization")
    ]


def test_holdings_are_read_as_the_contract_chains_them(records: TestChain) -> None:
    read = records.ledger.state
    anchor(records, "grp-1", kind="Group", patient=None)
    for patient, custodian, kind, count in [
        ("patient-1", "hosp", "Observation", 5),  # obs-c, obs-a v1 and v2, obs-x, its shred
        ("patient-1", "pharm", "MedicationRequest", 1),
        (None, "hosp", "Group", 1),
    ]:
        n, head = holding_state(read, patient, custodian, kind)
        ops = holding_ops(read, patient, custodian, kind, n)
        assert n == count == len(ops)
        assert replay_holding(ops)[0] == head
    assert holding_state(read, "patient-1", "maker", "Observation") == (0, ZERO_HASH)
    assert (
        holding_ops(read, "patient-1", "hosp", "Observation", 2)
        == holding_ops(read, "patient-1", "hosp", "Observation", 5)[:2]
    )
