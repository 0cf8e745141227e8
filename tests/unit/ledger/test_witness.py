"""The witness believes only what peers' node keys signed: lines, statements and alarms."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.cluster.witness import Witness, header_body
from careledger.core.checkpoint import add_signature, sign_note
from careledger.errors import Conflict
from careledger.ledger.engine import Ledger
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key


@pytest.fixture
def two() -> tuple[TestChain, Witness, Ledger]:
    """One chain; the witness runs as hosp-node; lab-node (admitted by vote) is its peer."""
    chain = TestChain(MemoryStore())
    args = {
        "org": {"id": "lab", "name": "Lab", "kind": "other"},
        "admin": {"id": "lab-admin", "name": "L", "public_key": key("lab-admin").public_b64},
        "node": {
            "id": "lab-node",
            "name": "N",
            "public_key": key("lab-node").public_b64,
            "endpoint": "http://lab:1",
        },
    }
    proposal = chain.run("hosp-admin", "propose_org", args)["tx_id"]
    chain.run("pharm-admin", "vote", {"proposal": proposal, "approve": True})
    sent: list[Any] = []
    witness = Witness(chain.ledger, lambda subject, data: sent.append(data), "t")
    peer = Ledger(chain.store, node_name="lab-node", node_key=key("lab-node"))
    return chain, witness, peer


def statement(peer: Ledger, chain: TestChain, **over: Any) -> bytes:
    head = chain.ledger.head
    body = {
        "v": 1,
        "node": "lab-node",
        "height": head.height,
        "size": head.log_size,
        "checkpoint": peer.checkpoint(head.log_size),
        "header": sign_note(
            header_body(chain.ledger.chain, head.height, chain.ledger.head_hash),
            "lab-node",
            key("lab-node"),
        ),
    }
    return orjson.dumps({**body, **over})


def test_only_the_senders_verified_line_is_counted(two: tuple[TestChain, Witness, Ledger]) -> None:
    chain, witness, peer = two
    witness.announce_head()
    padded = peer.checkpoint(chain.ledger.head.log_size)
    for fake in ("fake-1", "fake-2"):  # lines by keys nobody knows, riding along
        padded = add_signature(padded, fake, key(fake))
    witness.on_statement(statement(peer, chain, checkpoint=padded))
    note = witness.cosigned(2)
    assert {line.split()[1] for line in note.splitlines() if line.startswith("—")} == {
        "hosp-node",
        "lab-node",
    }
    with pytest.raises(Conflict) as short:
        witness.cosigned(3)
    assert short.value.extra == {"signatures": 2}  # type: ignore[attr-defined]


def test_statements_by_non_nodes_are_ignored(two: tuple[TestChain, Witness, Ledger]) -> None:
    chain, witness, _ = two
    witness.announce_head()
    imposter = Ledger(chain.store, node_name="dr-a", node_key=key("dr-a"))
    forged = statement(imposter, chain, node="dr-a")
    witness.on_statement(forged)
    with pytest.raises(Conflict):
        witness.cosigned(2)
    assert witness.alarms == []


def test_a_different_header_raises_an_alarm_with_evidence(
    two: tuple[TestChain, Witness, Ledger],
) -> None:
    chain, witness, peer = two
    height = chain.ledger.head.height
    wrong = sign_note(
        header_body(chain.ledger.chain, height, "ab" * 32), "lab-node", key("lab-node")
    )
    witness.on_statement(statement(peer, chain, header=wrong))
    (alarm,) = witness.alarms
    assert alarm["peer"] == "lab-node" and alarm["height"] == height
    assert alarm["ours"]["header"] == chain.ledger.head_hash


def test_alarms_need_two_signed_conflicting_headers(
    two: tuple[TestChain, Witness, Ledger],
) -> None:
    chain, witness, _ = two
    height = chain.ledger.head.height

    def note(name: str, digest: str) -> str:
        return sign_note(header_body(chain.ledger.chain, height, digest), name, key(name))

    def alarm(ours: str, theirs: str) -> bytes:
        return orjson.dumps(
            {
                "height": height,
                "peer": "lab-node",
                "ours": {"node": "hosp-node", "note": ours},
                "theirs": {"node": "lab-node", "note": theirs},
            }
        )

    witness.on_alarm(b'{"height": 1, "peer": "x", "ours": {"node": "x"}}')  # no evidence
    witness.on_alarm(alarm(note("hosp-node", "aa" * 32), note("lab-node", "aa" * 32)))  # no fork
    witness.on_alarm(alarm(note("dr-a", "aa" * 32), note("lab-node", "bb" * 32)))  # not a node
    assert witness.alarms == []
    witness.on_alarm(alarm(note("hosp-node", "aa" * 32), note("lab-node", "bb" * 32)))
    assert len(witness.alarms) == 1
