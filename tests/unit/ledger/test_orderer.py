"""The local orderer: batching, pushback and shutdown, against the real engine on the memory store."""

from __future__ import annotations

import asyncio
from concurrent.futures import wait

import pytest

from careledger.errors import Pushback
from careledger.ledger.admission import admit_all
from careledger.ordering.local import LocalOrderer
from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key


def member_envelopes(chain: TestChain, n: int, prefix: str) -> list[dict]:
    return [
        chain.envelope(
            "hosp-admin",
            "add_member",
            {
                "id": f"{prefix}{i}",
                "name": "N",
                "roles": ["nurse"],
                "public_key": key(f"{prefix}{i}").public_b64,
            },
        )
        for i in range(n)
    ]


def test_batches_commit_in_order_and_resolve_futures() -> None:
    chain = TestChain(MemoryStore())
    orderer = LocalOrderer(
        chain.ledger, max_batch=10, max_wait=0.05, clock=lambda: 1_800_000_000_000
    )
    orderer.start()
    try:
        txs = admit_all(chain.ledger, member_envelopes(chain, 35, "o"), [None] * 35)
        receipts = [f.result(timeout=10) for f in orderer.submit(txs)]
    finally:
        orderer.stop()
    assert [r["leaf_index"] for r in receipts] == list(range(35))
    assert all(r["result"] == "accepted" for r in receipts)
    assert orderer.blocks_committed >= 4  # at most 10 per block
    assert chain.store.head().time == 1_800_000_000_000


def test_pushback_when_full_releases_nonces() -> None:
    chain = TestChain(MemoryStore())
    orderer = LocalOrderer(chain.ledger, max_queue=5)
    orderer.start()
    try:
        envelopes = member_envelopes(chain, 6, "p")
        txs = admit_all(chain.ledger, envelopes, [None] * 6)
        with pytest.raises(Pushback) as info:
            orderer.submit(txs)
        assert (info.value.code, info.value.http_status) == ("OVERLOADED", 503)
        # Nothing was queued and the nonces are free again: the same envelopes go through.
        again = admit_all(chain.ledger, envelopes[:5], [None] * 5)
        assert [f.result(timeout=10)["result"] for f in orderer.submit(again)] == ["accepted"] * 5
    finally:
        orderer.stop()


def test_stopped_orderer_refuses() -> None:
    chain = TestChain(MemoryStore())
    orderer = LocalOrderer(chain.ledger)
    txs = admit_all(chain.ledger, member_envelopes(chain, 1, "s"), [None])
    with pytest.raises(Pushback) as info:
        orderer.submit(txs)
    assert info.value.code == "NODE_STOPPING"


def test_duplicate_in_queue_commits_once() -> None:
    chain = TestChain(MemoryStore())
    orderer = LocalOrderer(chain.ledger, max_batch=10, max_wait=0.05)
    orderer.start()
    try:
        (tx,) = admit_all(chain.ledger, member_envelopes(chain, 1, "d"), [None])
        first, second = orderer.submit([tx, tx])
        assert first.result(timeout=10)["result"] == "accepted"
        assert second.result(timeout=10) == first.result()  # the one receipt of that transaction
    finally:
        orderer.stop()
    assert chain.store.head().log_size == 1


def test_one_submit_split_across_blocks_resolves_every_future() -> None:
    chain = TestChain(MemoryStore())
    orderer = LocalOrderer(chain.ledger, max_batch=7, max_wait=0.01)
    orderer.start()
    try:
        txs = admit_all(chain.ledger, member_envelopes(chain, 30, "g"), [None] * 30)
        futures = orderer.submit(txs)
        _done, pending = wait(futures, timeout=10)  # the stdlib's waiters work on them
        assert not pending
        receipts = [f.result(timeout=0) for f in futures]
    finally:
        orderer.stop()
    assert [r["leaf_index"] for r in receipts] == list(range(30))
    assert orderer.blocks_committed == 5  # 7 + 7 + 7 + 7 + 2
    assert orderer.queued == 0


def test_a_cancelled_future_does_not_stop_the_committer() -> None:
    chain = TestChain(MemoryStore())
    orderer = LocalOrderer(chain.ledger, max_batch=10, max_wait=0.05)
    orderer.start()
    try:
        envelopes = member_envelopes(chain, 3, "c")
        cancelled, kept = orderer.submit(admit_all(chain.ledger, envelopes[:2], [None] * 2))
        assert cancelled.cancel()  # as asyncio does when a waiting request times out
        assert kept.result(timeout=10)["result"] == "accepted"
        (later,) = orderer.submit(admit_all(chain.ledger, envelopes[2:], [None]))
        assert later.result(timeout=10)["result"] == "accepted"
    finally:
        orderer.stop()
    assert chain.store.head().log_size == 3


def test_futures_work_with_asyncio() -> None:
    chain = TestChain(MemoryStore())
    orderer = LocalOrderer(chain.ledger, max_batch=10, max_wait=0.01)
    orderer.start()
    try:
        futures = orderer.submit(
            admit_all(chain.ledger, member_envelopes(chain, 3, "a"), [None] * 3)
        )

        async def gather() -> list[dict]:
            return await asyncio.gather(*(asyncio.wrap_future(f) for f in futures))

        receipts = asyncio.run(gather())
    finally:
        orderer.stop()
    assert [r["result"] for r in receipts] == ["accepted"] * 3
