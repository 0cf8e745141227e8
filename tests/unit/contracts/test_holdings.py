"""r8 holdings: each custodian's records of a patient, per type, as a count and a hash chain that
an attestation must match at its block (the bulk export's proof that nothing was left out)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.contracts.records import (
    holding_key,
    holding_of,
    holding_op_key,
    next_holding_head,
)
from careledger.core.block import ZERO_HASH
from careledger.errors import BatchRefused
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain


def digest(n: int) -> str:
    return f"{n:064x}"


def anchor(chain: TestChain, record: str, version: int, *, kind: str = "Observation") -> dict:
    args: dict[str, Any] = {"record": record, "type": kind, "patient": "patient-1",
                            "hash": digest(version), "version": version}  # fmt: skip
    if version > 1:
        args["prev_version"] = version - 1
    return chain.run("dr-a", "anchor", args, contract="records")


def attest(chain: TestChain, *items: dict[str, Any], signer: str = "hosp-node") -> dict:
    return chain.run(signer, "attest_holdings", {"holdings": list(items)}, contract="records")


def held(chain: TestChain, kind: str = "Observation") -> tuple[int, str]:
    raw = chain.store.get_state("records", holding_key("patient-1", "hosp", kind))
    return holding_of(None if raw is None else orjson.loads(raw))


def ops(chain: TestChain, kind: str = "Observation") -> list[list[Any]]:
    n, _ = held(chain, kind)
    out = []
    for i in range(1, n + 1):
        raw = chain.store.get_state("records", holding_op_key("patient-1", "hosp", kind, i))
        assert raw is not None
        out.append(orjson.loads(raw))
    return out


def replay(operations: list[list[Any]]) -> tuple[str, dict[str, tuple[int, str]]]:
    """What a verifier does: the head, and the versions held after every operation."""
    head, current = ZERO_HASH, {}
    for op in operations:
        head = next_holding_head(head, op)
        if op[0] == "put":
            current[op[1]] = (op[2], op[3])
        else:
            current.pop(op[1])
    return head, current


def test_every_anchor_and_shred_extends_the_chain_and_an_attestation_must_match_it() -> None:
    chain = TestChain(MemoryStore(), ruleset="r8")
    assert anchor(chain, "obs-1", 1)["result"] == "accepted"
    assert anchor(chain, "obs-1", 2)["result"] == "accepted"
    assert anchor(chain, "obs-2", 1)["result"] == "accepted"
    assert anchor(chain, "cond-1", 1, kind="Condition")["result"] == "accepted"
    shred = {"record": "obs-2", "reason": "patient-request"}
    assert chain.run("patient-1", "shred", shred, contract="records")["result"] == "accepted"
    operations = ops(chain)
    assert [op[:3] for op in operations] == [
        ["put", "obs-1", 1], ["put", "obs-1", 2], ["put", "obs-2", 1], ["shred", "obs-2", 1]
    ]
    head, current = replay(operations)
    assert held(chain) == (4, head)
    assert current == {"obs-1": (2, digest(2))}
    assert held(chain, "Condition")[0] == 1
    good = {"patient": "patient-1", "type": "Observation", "n": 4, "head": head}
    assert attest(chain, good)["result"] == "accepted"
    # a head one step old, a count that differs, or a type said to be empty that is not
    stale = next_holding_head(ZERO_HASH, operations[0])
    assert attest(chain, {**good, "head": stale})["code"] == "HOLDINGS_CHANGED"
    assert attest(chain, {**good, "n": 3})["code"] == "HOLDINGS_CHANGED"
    empty = {"patient": "patient-1", "type": "Condition", "n": 0, "head": ZERO_HASH}
    assert attest(chain, empty)["code"] == "HOLDINGS_CHANGED"
    # a type the patient has none of is attested empty
    none = {"patient": "patient-1", "type": "AllergyIntolerance", "n": 0, "head": ZERO_HASH}
    assert attest(chain, good, none)["result"] == "accepted"
    # only a node attests, for its own organisation, each holding once per transaction
    assert attest(chain, good, signer="dr-a")["code"] == "NOT_AUTHORISED"
    assert attest(chain, good, good)["code"] == "BAD_ARGS"
    assert attest(chain)["code"] == "BAD_ARGS"
    assert attest(chain, {**good, "extra": 1})["code"] == "BAD_ARGS"
    assert attest(chain, {**good, "head": "zz"})["code"] == "BAD_ARGS"
    named = {"holdings": [good], "export": "ab" * 12}
    assert chain.run("hosp-node", "attest_holdings", named, contract="records")["result"] == (
        "accepted"
    )
    bad_name = {"holdings": [good], "export": "not hex"}
    assert chain.run("hosp-node", "attest_holdings", bad_name, contract="records")["code"] == (
        "BAD_ARGS"
    )


def test_before_r8_there_are_no_holdings_and_no_attestation() -> None:
    chain = TestChain(MemoryStore(), ruleset="r7")
    assert anchor(chain, "obs-1", 1)["result"] == "accepted"
    assert held(chain) == (0, ZERO_HASH)
    item = {"patient": "patient-1", "type": "Observation", "n": 0, "head": ZERO_HASH}
    with pytest.raises(BatchRefused, match="attest_holdings"):
        attest(chain, item)


steps = st.lists(
    st.tuples(st.sampled_from(["put", "shred"]), st.integers(min_value=0, max_value=3)),
    max_size=12,
)


@settings(max_examples=25, deadline=None)
@given(steps)
def test_replaying_the_operations_gives_the_head_and_the_records_held(plan: list) -> None:
    """Whatever happens to a patient's records, the chain's operations replay to the head the
    ledger attests, and to exactly the live versions the records contract holds."""
    chain = TestChain(MemoryStore(), ruleset="r8")
    versions: dict[str, int] = {}
    shredded: set[str] = set()
    for kind, n in plan:
        record = f"obs-{n}"
        if record in shredded:
            continue
        if kind == "put":
            version = versions.get(record, 0) + 1
            assert anchor(chain, record, version)["result"] == "accepted"
            versions[record] = version
        elif record in versions:
            shred = {"record": record, "reason": "patient-request"}
            assert chain.run("patient-1", "shred", shred, contract="records")["result"] == (
                "accepted"
            )
            shredded.add(record)
    head, current = replay(ops(chain))
    assert held(chain)[1] == head
    live = {r: (v, digest(v)) for r, v in versions.items() if r not in shredded}
    assert current == live
