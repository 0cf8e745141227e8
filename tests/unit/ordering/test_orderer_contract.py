"""One contract suite for every Orderer: each MUST of ledger/ports.py, checked by behaviour.

Run against the local orderer on a real SQLite file, the in-memory orderer on the memory store,
and the JetStream orderer on one real nats-server (skipped without the binary). Every wait is
bounded; nothing asserts on timing. A listener blocked on an Event stands for a slow one.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from careledger.errors import CareLedgerError, Conflict, Pushback, StorageError
from careledger.ledger.admission import admit_all
from careledger.ledger.execute import Executed
from careledger.ledger.ports import BlockWrite, CommitListener, Orderer
from careledger.ordering.local import LocalOrderer
from careledger.ordering.memory import MemoryOrderer
from careledger.storage.memory import MemoryStore
from careledger.storage.sqlite import SQLiteStore
from tests.support.chain import TestChain, key

WAIT = 5.0  # seconds: the bound on every wait; a passing run waits milliseconds


def _nats_available() -> bool:
    from careledger.cluster.natsd import nats_server_binary

    try:
        nats_server_binary()
    except CareLedgerError:
        return False
    return True


KINDS = [
    "local",
    "memory",
    pytest.param(
        "jetstream",
        marks=[
            pytest.mark.integration,
            pytest.mark.skipif(not _nats_available(), reason="no nats-server binary"),
        ],
    ),
]


class FailsOnce:
    """A store whose next ``append_block``, once armed, raises as a full disk would (the block
    is not written); every other append is the store's own."""

    armed = False

    def append_block(self, block: BlockWrite) -> None:
        if self.armed:
            self.armed = False
            raise StorageError("block not written: the disk is full (a test's)")
        super().append_block(block)  # type: ignore[misc]


class FlakyMemoryStore(FailsOnce, MemoryStore):
    pass


class FlakySQLiteStore(FailsOnce, SQLiteStore):
    pass


@dataclass
class Kit:
    kind: str
    chain: TestChain
    orderer: Orderer
    durable: Callable[[str], bool]  # is the transaction committed, as another reader sees it
    store: FailsOnce  # arm it to fail the next block's write


def committed_in_file(path: Path, tx_id: str) -> bool:
    """Read from a connection of its own: what the file holds, not what a cache says."""
    reader = SQLiteStore(path, readonly=True)
    try:
        return reader.find_tx(tx_id) is not None
    finally:
        reader.close()


@pytest.fixture(params=KINDS)
def build(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[..., Kit]]:
    """``build(max_queue=..., start=...)``: a fresh chain and one orderer of the kind."""
    kind = request.param
    teardown: list[Callable[[], object]] = []

    def make(*, max_queue: int = 1000, start: bool = True) -> Kit:
        orderer: Orderer
        store: FlakyMemoryStore | FlakySQLiteStore
        if kind == "memory":
            store = FlakyMemoryStore()
            chain = TestChain(store)
            orderer = MemoryOrderer(chain.ledger, max_queue=max_queue)

            def durable(tx_id: str) -> bool:
                return chain.store.find_tx(tx_id) is not None

        else:
            path = tmp_path / "ledger.sqlite"
            store = FlakySQLiteStore(path)
            teardown.append(store.close)
            chain = TestChain(store)

            def durable(tx_id: str) -> bool:
                return committed_in_file(path, tx_id)

            if kind == "local":
                orderer = LocalOrderer(
                    chain.ledger, max_batch=50, max_wait=0.001, max_queue=max_queue
                )
            else:
                orderer = jetstream_orderer(chain, tmp_path, max_queue, teardown)
        teardown.append(orderer.stop)
        if start:
            orderer.start()
        return Kit(kind, chain, orderer, durable, store)

    yield make
    for step in reversed(teardown):
        step()


def jetstream_orderer(
    chain: TestChain, tmp_path: Path, max_queue: int, teardown: list[Callable[[], object]]
) -> Orderer:
    """Against one real nats-server (JetStream, R1, fsync always), as the cluster tests run."""
    from careledger.cluster.natsd import start_cluster
    from careledger.ordering.jetstream import JetStreamConfig, JetStreamOrderer

    (server,) = start_cluster(tmp_path / "nats", 1)
    teardown.append(server.stop)
    pool = ThreadPoolExecutor(1)  # verifies other nodes' transactions: there are none here
    teardown.append(pool.shutdown)
    return JetStreamOrderer(
        chain.ledger,
        JetStreamConfig(servers=(server.spec.url,), replicas=1),
        node_name="hosp-node",  # a node member of the test chain: its batches count
        pool=pool,
        workers=1,
        max_wait=0.001,
        max_queue=max_queue,
    )


class Gate:
    """A commit listener that holds its first ``hold`` calls until opened (at most WAIT)."""

    def __init__(self, hold: int = 1) -> None:
        self.hold = hold
        self.heights: list[int] = []
        self.entered = threading.Event()
        self.opened = threading.Event()
        self.durable_seen: list[bool] = []
        self.probe: Callable[[Executed], bool] | None = None
        self.timed_out = False  # held for all of WAIT: the test never opened it

    def __call__(self, executed: Executed) -> None:
        self.heights.append(executed.block.header.height)
        if self.probe is not None:
            self.durable_seen.append(self.probe(executed))
        if len(self.heights) <= self.hold:
            self.entered.set()
            self.timed_out |= not self.opened.wait(WAIT)


@pytest.fixture
def gate() -> Iterator[Gate]:
    made = Gate()
    yield made
    made.opened.set()  # before the orderer stops: never leave a listener holding it
    assert not made.timed_out, "the listener was held until its timeout: something waited on it"


def envelopes(chain: TestChain, n: int, prefix: str) -> list[dict[str, Any]]:
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


def submit(kit: Kit, envs: list[dict[str, Any]]) -> list[Future[dict[str, Any]]]:
    return kit.orderer.submit(admit_all(kit.chain.ledger, envs, [None] * len(envs)))


def eventually(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def test_implements_the_port(build: Callable[..., Kit]) -> None:
    kit = build(start=False)
    assert isinstance(kit.orderer, Orderer)
    assert isinstance(Gate(), CommitListener)


def test_a_future_resolves_only_once_its_block_is_durable(
    build: Callable[..., Kit], gate: Gate
) -> None:
    """MUST: resolve a submission's future only once its block is durable (and, after it,
    its listeners ran)."""
    kit = build()
    kit.chain.ledger.commit_listeners.append(gate)
    seen_at_resolution: dict[str, bool] = {}

    def on_resolved(tx_id: str) -> Callable[[Future[dict[str, Any]]], None]:
        return lambda _: seen_at_resolution.__setitem__(tx_id, kit.durable(tx_id))

    envs = envelopes(kit.chain, 4, "d")
    txs = admit_all(kit.chain.ledger, envs, [None] * 4)
    (first,) = kit.orderer.submit(txs[:1])
    assert gate.entered.wait(WAIT)  # its block is committed; the listener holds it
    assert kit.durable(txs[0].tx_id)
    rest = kit.orderer.submit(txs[1:])
    futures = [first, *rest]
    # Done-callbacks run on the thread that resolves the future, as it resolves it; none can
    # have resolved yet: the first block's listener still runs, and blocks resolve in order.
    assert not any(f.done() for f in futures)
    for tx, fut in zip(txs, futures, strict=True):
        fut.add_done_callback(on_resolved(tx.tx_id))
    gate.opened.set()
    receipts = [f.result(WAIT) for f in futures]
    assert [r["result"] for r in receipts] == ["accepted"] * 4
    # (a future wakes its waiters a moment before it runs its callbacks)
    assert eventually(lambda: len(seen_at_resolution) == 4)
    assert seen_at_resolution == {tx.tx_id: True for tx in txs}
    assert kit.orderer.queued == 0


def test_a_listener_is_called_after_the_block_is_durable(build: Callable[..., Kit]) -> None:
    """CommitListener: called once per block, in height order, after the block is durable."""
    kit = build()
    listener = Gate(hold=0)
    listener.probe = lambda executed: all(kit.durable(t.tx_id) for t in executed.block.txs)
    kit.chain.ledger.commit_listeners.append(listener)
    futures = [f for i in range(3) for f in submit(kit, envelopes(kit.chain, 2, f"l{i}-"))]
    assert all(f.result(WAIT)["result"] == "accepted" for f in futures)
    head = kit.chain.store.head().height
    assert listener.heights == list(range(listener.heights[0], head + 1))  # each block, once
    assert listener.heights[0] == 1 and listener.durable_seen == [True] * len(listener.heights)


def test_a_slow_listener_does_not_delay_the_next_commit(
    build: Callable[..., Kit], gate: Gate
) -> None:
    """MUST: listeners run off the committing thread; a slow one never delays later commits."""
    kit = build()
    kit.chain.ledger.commit_listeners.append(gate)
    (first,) = submit(kit, envelopes(kit.chain, 1, "s"))
    assert gate.entered.wait(WAIT)
    (tx,) = admit_all(kit.chain.ledger, envelopes(kit.chain, 1, "t"), [None])
    (second,) = kit.orderer.submit([tx])
    # The next block commits (another reader sees it) while the listener still holds the first.
    assert eventually(lambda: kit.durable(tx.tx_id))
    assert not gate.opened.is_set() and not second.done()
    gate.opened.set()
    assert first.result(WAIT)["result"] == "accepted"
    assert second.result(WAIT)["result"] == "accepted"
    assert gate.heights == [1, 2]


@pytest.mark.parametrize("cause", ["full", "stopped"])
def test_pushback_queues_nothing_and_releases_nonces(build: Callable[..., Kit], cause: str) -> None:
    """MUST: on pushback nothing is queued and every reserved nonce is released."""
    kit = build(max_queue=3, start=cause == "full")
    envs = envelopes(kit.chain, 4, "p")
    txs = admit_all(kit.chain.ledger, envs, [None] * 4)
    with pytest.raises(Pushback) as refused:
        kit.orderer.submit(txs)
    assert refused.value.code == ("OVERLOADED" if cause == "full" else "NODE_STOPPING")
    assert kit.orderer.queued == 0
    if cause == "stopped":
        kit.orderer.start()
    # The nonces are free: the very same envelopes are admitted again (NONCE_REPLAY otherwise).
    again = admit_all(kit.chain.ledger, envs[:3], [None] * 3)
    assert [f.result(WAIT)["result"] for f in kit.orderer.submit(again)] == ["accepted"] * 3
    (last,) = submit(kit, envs[3:])
    assert last.result(WAIT)["result"] == "accepted"
    # Nothing of the refused submission was ordered besides: each transaction is there once.
    assert kit.chain.store.head().log_size == 4


def test_a_listener_cannot_submit_or_commit(build: Callable[..., Kit]) -> None:
    """MUST NOT: a listener commits or submits; both are refused on its thread, and the nonces
    of what it tried to submit are released."""
    kit = build()
    envs = envelopes(kit.chain, 2, "r")
    txs = admit_all(kit.chain.ledger, envs, [None] * 2)  # nonces n and n + 1 reserved
    refusals: list[str] = []

    def reentrant(executed: Executed) -> None:
        if refusals:
            return
        for attempt in (
            lambda: kit.orderer.submit(txs[1:]),
            lambda: kit.chain.ledger.commit(txs[1:], 0),
        ):
            try:
                attempt()
                refusals.append("accepted")
            except CareLedgerError as exc:
                refusals.append(exc.code)

    kit.chain.ledger.commit_listeners.append(reentrant)
    (first,) = kit.orderer.submit(txs[:1])
    assert first.result(WAIT)["result"] == "accepted"
    assert refusals == ["LISTENER_REENTRY", "LISTENER_REENTRY"]
    assert kit.chain.store.head().log_size == 1 and kit.orderer.queued == 0
    # Released: the second envelope, refused inside the listener, is admitted again.
    (second,) = submit(kit, envs[1:])
    assert second.result(WAIT)["result"] == "accepted"


def test_a_cancelled_future_does_not_stop_ordering(build: Callable[..., Kit], gate: Gate) -> None:
    """MUST: resolve every future and keep ordering when a waiter cancelled its future."""
    kit = build()
    kit.chain.ledger.commit_listeners.append(gate)
    cancelled, kept = submit(kit, envelopes(kit.chain, 2, "c"))
    assert gate.entered.wait(WAIT)
    assert cancelled.cancel()  # as asyncio does when a request's wait times out
    gate.opened.set()
    assert kept.result(WAIT)["result"] == "accepted"
    (later,) = submit(kit, envelopes(kit.chain, 1, "k"))
    assert later.result(WAIT)["result"] == "accepted"
    assert kit.chain.store.head().log_size == 3


def test_a_block_that_cannot_be_written_fails_its_futures(build: Callable[..., Kit]) -> None:
    """MUST: a submission's future is ``StorageError`` if its block could not be written, and
    nothing of it is committed. The local and in-memory orderers release its nonces and go on
    ordering; a JetStream node stops ordering instead of skipping a batch of the stream (the
    next ones would fork it: ADR 0011), and says so to every waiter rather than leave them
    waiting."""
    kit = build()
    envs = envelopes(kit.chain, 1, "w")
    (tx,) = admit_all(kit.chain.ledger, envs, [None])
    kit.store.armed = True
    (failed,) = kit.orderer.submit([tx])
    with pytest.raises(StorageError) as exc_info:
        failed.result(WAIT)
    assert not kit.store.armed and not kit.durable(tx.tx_id)
    assert kit.chain.store.head().height == 0 and kit.orderer.queued == 0
    if kit.kind == "jetstream":
        assert exc_info.value.code == "ORDERING_STOPPED"  # in the stream: it may still commit
        with pytest.raises(Pushback) as refused:
            submit(kit, envelopes(kit.chain, 1, "x"))
        assert refused.value.code == "NODE_STOPPING"
        return
    # Released: the very same envelope is admitted again, and ordering goes on.
    (again,) = submit(kit, envs)
    assert again.result(WAIT)["result"] == "accepted"
    (later,) = submit(kit, envelopes(kit.chain, 1, "y"))
    assert later.result(WAIT)["result"] == "accepted"
    assert kit.chain.store.head().log_size == 2


def test_a_failing_listener_is_logged_and_the_next_one_still_runs(
    build: Callable[..., Kit], caplog: pytest.LogCaptureFixture
) -> None:
    """CommitListener: an exception is logged and the next listener runs; the block stays
    committed and its futures resolve with their receipts."""
    kit = build()
    ran: list[tuple[str, int]] = []

    def failing(executed: Executed) -> None:
        ran.append(("failing", executed.block.header.height))
        raise RuntimeError("a listener's bug")

    def after(executed: Executed) -> None:
        ran.append(("after", executed.block.header.height))

    kit.chain.ledger.commit_listeners.extend([failing, after])
    with caplog.at_level(logging.ERROR, logger="careledger.ledger"):
        (fut,) = submit(kit, envelopes(kit.chain, 1, "f"))
        assert fut.result(WAIT)["result"] == "accepted"
    assert ran == [("failing", 1), ("after", 1)]  # both ran before the future resolved
    logged = [r for r in caplog.records if r.name == "careledger.ledger" and r.exc_info]
    assert [r.getMessage() for r in logged] == ["a commit listener failed at height 1"]
    assert logged[0].exc_info is not None and logged[0].exc_info[0] is RuntimeError
    assert kit.durable(fut.result()["tx_id"])
    (later,) = submit(kit, envelopes(kit.chain, 1, "g"))
    assert later.result(WAIT)["result"] == "accepted"
    assert ran[2:] == [("failing", 2), ("after", 2)]


def test_a_resubmitted_transaction_is_a_replay_not_committed_twice(
    build: Callable[..., Kit],
) -> None:
    """MUST NOT commit a transaction twice: a resubmitted one is a replay, and its future is
    ``Conflict``. (A JetStream node answers a replay with the committed copy's receipt, so a
    client retrying through another node hears that it committed: ADR 0008.)"""
    kit = build()
    (tx,) = admit_all(kit.chain.ledger, envelopes(kit.chain, 1, "twice"), [None])
    (first,) = kit.orderer.submit([tx])
    receipt = first.result(WAIT)
    assert receipt["result"] == "accepted"
    # Past admission, which refuses it (DUPLICATE_TX), as a copy already in flight would be.
    (again,) = kit.orderer.submit([tx])
    if kit.kind == "jetstream":
        assert again.result(WAIT) == receipt
    else:
        with pytest.raises(Conflict) as replay:
            again.result(WAIT)
        assert replay.value.code == "NONCE_REPLAY"
    assert kit.chain.store.head().log_size == 1 and kit.orderer.queued == 0
    (later,) = submit(kit, envelopes(kit.chain, 1, "after"))
    assert later.result(WAIT)["result"] == "accepted"
    assert kit.chain.store.head().log_size == 2


def test_a_copy_submitted_while_the_first_waits_is_answered_once_and_committed_once(
    build: Callable[..., Kit], gate: Gate
) -> None:
    """MUST: resolve every future it handed out, and never commit a transaction twice. Copies in
    one submission get the transaction's one receipt; a copy submitted while the first still
    waits for it gets that receipt too, or is a replay (``Conflict``) when it reaches a later
    block (the local orderers: the first's batch had left the queue)."""
    kit = build()
    kit.chain.ledger.commit_listeners.append(gate)
    (tx,) = admit_all(kit.chain.ledger, envelopes(kit.chain, 1, "copy"), [None])
    first, same_call = kit.orderer.submit([tx, tx])
    assert gate.entered.wait(WAIT)  # committed; its receipt waits for the listener
    (in_flight,) = kit.orderer.submit([tx])
    gate.opened.set()
    receipt = first.result(WAIT)
    assert receipt["result"] == "accepted"
    assert same_call.result(WAIT) == receipt
    if kit.kind == "jetstream":
        assert in_flight.result(WAIT) == receipt
    else:
        with pytest.raises(Conflict) as replay:
            in_flight.result(WAIT)
        assert replay.value.code == "NONCE_REPLAY"
    assert kit.chain.store.head().log_size == 1 and kit.orderer.queued == 0


class HeldSQLiteStore(SQLiteStore):
    """A store whose appends, while ``hold`` is set, wait for ``go``: the commit loop stands
    still inside a block's write, so what the stream delivers meanwhile queues behind it."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.hold, self.entered, self.go = threading.Event(), threading.Event(), threading.Event()

    def append_block(self, block: BlockWrite) -> None:
        if self.hold.is_set():
            self.entered.set()
            self.go.wait(WAIT)
        super().append_block(block)


@pytest.mark.integration
@pytest.mark.skipif(not _nats_available(), reason="no nats-server binary")
def test_a_jetstream_node_that_meets_a_gap_in_the_stream_fails_its_waiters(
    tmp_path: Path,
) -> None:
    """MUST: resolve every future it handed out. When the stream no longer holds the sequence a
    node needs next (retention dropped it), the node stops ordering rather than fork (ADR 0011),
    and a waiter whose batch lies beyond the gap is told so (``STREAM_GAP``) instead of waiting
    until its own timeout; later submissions are refused."""
    teardown: list[Callable[[], object]] = []
    store = HeldSQLiteStore(tmp_path / "ledger.sqlite")
    teardown.append(store.close)
    chain = TestChain(store)
    orderer = jetstream_orderer(chain, tmp_path, 1000, teardown)
    teardown.append(orderer.stop)
    orderer.start()
    try:
        store.hold.set()
        (first,) = orderer.submit(admit_all(chain.ledger, envelopes(chain, 1, "a"), [None]))
        assert store.entered.wait(WAIT)  # the commit loop is writing stream sequence 1
        # what the consumer is handed next is sequence 10: 2 to 9 are gone from the stream
        orderer._deliveries.put((10, b"", {}))  # type: ignore[attr-defined]
        (beyond,) = orderer.submit(admit_all(chain.ledger, envelopes(chain, 1, "b"), [None]))
        store.hold.clear()
        store.go.set()
        assert first.result(WAIT)["result"] == "accepted"
        with pytest.raises(StorageError) as stopped:
            beyond.result(WAIT)
        assert stopped.value.code == "STREAM_GAP"
        assert orderer.gap == (2, 10)  # type: ignore[attr-defined]
        assert chain.store.head().log_size == 1 and orderer.queued == 0
        with pytest.raises(Pushback) as refused:
            orderer.submit(admit_all(chain.ledger, envelopes(chain, 1, "c"), [None]))
        assert refused.value.code == "NODE_STOPPING"
    finally:
        for step in reversed(teardown):
            step()
