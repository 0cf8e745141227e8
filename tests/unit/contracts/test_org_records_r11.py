"""r11 (RecordsV4): the organisation's own records of every R4 type about no patient. The types
r10 left out, and those about a patient only when they name one (a Schedule, a Provenance), go
without a patient; a type always about a patient never does; r10 keeps refusing them all."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.contracts.records import (
    NOT_HELD_TYPES,
    ORG_RECORD_TYPES,
    ORG_RECORD_TYPES_V4,
    holding_of,
    org_holding_key,
    org_index_key,
)
from careledger.fhir.types import (
    EITHER_TYPES,
    NOT_HELD,
    ORG_ONLY_TYPES,
    PATIENT_ELEMENT,
    RECORD_TYPES,
)
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain


def anchor(chain: TestChain, record: str, kind: str, version: int = 1,
           signer: str = "dr-a", **extra: Any) -> dict[str, Any]:  # fmt: skip
    args: dict[str, Any] = {"record": record, "type": kind, "hash": f"{version:064x}",
                            "version": version, **extra}  # fmt: skip
    if version > 1:
        args["prev_version"] = version - 1
    return chain.run(signer, "anchor", args, contract="records")


def state(chain: TestChain, key: str) -> Any:
    raw = chain.store.get_state("records", key)
    return None if raw is None else orjson.loads(raw)


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore(), ruleset="r11")


def test_the_lists_of_the_ruleset_and_of_the_fhir_layer_agree() -> None:
    assert ORG_RECORD_TYPES < ORG_RECORD_TYPES_V4
    assert ORG_RECORD_TYPES_V4 == ORG_ONLY_TYPES | EITHER_TYPES
    assert not ORG_RECORD_TYPES_V4 & (set(PATIENT_ELEMENT) | {"Patient", "Appointment",
                                                             "Person", "Binary", "Bundle"})
    assert EITHER_TYPES < RECORD_TYPES


@pytest.mark.parametrize("kind", sorted(ORG_RECORD_TYPES_V4 - ORG_RECORD_TYPES))
def test_each_type_r11_adds_is_the_organisations_own(chain: TestChain, kind: str) -> None:
    assert anchor(chain, "r-1", kind)["result"] == "accepted"
    assert anchor(chain, "r-1", kind, 2)["result"] == "accepted"
    assert state(chain, org_index_key("hosp", "r-1")) == {"type": kind}
    assert holding_of(state(chain, org_holding_key("hosp", kind)))[0] == 2


@pytest.mark.parametrize("kind", ["Observation", "Appointment", "Person", "Binary", "Bundle"])
def test_a_type_always_about_a_patient_names_one(chain: TestChain, kind: str) -> None:
    assert anchor(chain, "r-1", kind)["code"] == "NO_PATIENT"
    assert anchor(chain, "r-1", kind, patient="patient-1")["result"] == "accepted"


def test_a_type_held_either_way_keeps_what_it_was(chain: TestChain) -> None:
    assert anchor(chain, "sch-1", "Schedule")["result"] == "accepted"
    assert anchor(chain, "sch-1", "Schedule", 2, patient="patient-1")["code"] == "BAD_ARGS"
    assert anchor(chain, "sch-2", "Schedule", patient="patient-1")["result"] == "accepted"
    assert anchor(chain, "sch-2", "Schedule", 2)["code"] == "BAD_ARGS"
    assert anchor(chain, "sch-1", "Schedule", 2, signer="pharm-admin")["code"] == "NOT_CUSTODIAN"
    shred = {"record": "sch-1", "reason": "closed"}
    assert chain.run("dr-a", "shred", shred, contract="records")["code"] == "NOT_AUTHORISED"
    assert chain.run("hosp-admin", "shred", shred, contract="records")["result"] == "accepted"


def test_r10_refuses_them_all() -> None:
    old = TestChain(MemoryStore(), ruleset="r10")
    for kind in sorted(ORG_RECORD_TYPES_V4 - ORG_RECORD_TYPES)[:5]:
        assert anchor(old, f"r-{kind}", kind)["code"] == "NO_PATIENT"
    assert anchor(old, "org-1", "Organization")["result"] == "accepted"


@pytest.mark.parametrize("kind", sorted(NOT_HELD_TYPES))
def test_a_type_never_held_is_never_anchored_with_a_patient_or_without(
    chain: TestChain, kind: str
) -> None:
    """Review r11 F5: an AuditEvent (or a Subscription, Parameters, OperationOutcome) anchored
    under a patient would read as theirs beside the ledger's own audit trail."""
    assert set(NOT_HELD) == NOT_HELD_TYPES  # one list: the API's refusals are the contract's
    assert anchor(chain, "r-1", kind, patient="patient-1")["code"] == "UNSUPPORTED_TYPE"
    assert anchor(chain, "r-2", kind)["code"] == "UNSUPPORTED_TYPE"
    batch = {"anchors": [{"record": "r-3", "type": "Observation", "hash": "0" * 64,
                          "version": 1, "patient": "patient-1"},
                         {"record": "r-4", "type": kind, "hash": "0" * 64, "version": 1,
                          "patient": "patient-1"}]}  # fmt: skip
    assert chain.run("dr-a", "anchor_batch", batch, contract="records")["code"] == (
        "UNSUPPORTED_TYPE"
    )
    # r10 is frozen: it keeps what it did
    r10 = TestChain(MemoryStore(), ruleset="r10")
    assert anchor(r10, "r-5", kind, patient="patient-1")["result"] == "accepted"
