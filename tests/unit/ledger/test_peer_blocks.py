"""Blocks from peers and batches from the stream: nothing is stored on a peer's word."""

from __future__ import annotations

import pytest

from careledger.errors import ValidationError, VerificationError
from careledger.ordering.jetstream import decode_batch, encode_batch
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain


def test_a_served_block_is_stored_only_if_it_re_executes_to_its_hash() -> None:
    chain = TestChain(MemoryStore())
    env = chain.envelope("hosp-admin", "set_roles", {"member": "dr-a", "roles": ["nurse"]})
    tx = chain.ledger.decode(env)
    head = chain.ledger.head_hash
    with pytest.raises(VerificationError) as forked:
        chain.ledger.commit([tx], chain.time + 1000, expect_hash="00" * 32)
    assert forked.value.code == "PEER_FORK"
    assert chain.ledger.head_hash == head  # nothing written
    executed = chain.ledger.commit([tx], chain.time + 1000)
    assert executed is not None


def test_batches_round_trip_and_bad_ones_are_refused() -> None:
    payload = encode_batch("hosp-node", 1_700_000_000_000, [b'{"a":1}', b'{"b":2}'])
    batch = decode_batch(payload)
    assert (batch.node, batch.time, batch.envelopes) == (
        "hosp-node",
        1_700_000_000_000,
        [{"a": 1}, {"b": 2}],
    )
    for bad in (
        b"not json",
        b'{"v": 2, "node": "n", "time": 1, "txs": []}',
        b'{"v": 1, "node": "n", "time": 9007199254740992, "txs": []}',  # past 2**53 - 1
        b'{"v": 1, "node": "n", "time": -1, "txs": []}',
        b'{"v": 1, "node": "n", "time": 1.5, "txs": []}',
    ):
        with pytest.raises(ValidationError):
            decode_batch(bad)
