"""Offline verification of a whole store: re-derive every block and compare, byte for byte.

For each block: the header hash and link to its predecessor; every envelope's id and signature;
re-execution of its transactions on the replayed state, which must give the stored receipts,
write-set, events, Merkle log nodes, log root and state digest. At the end the replayed state
must equal the store's current state (what contracts read). The first difference names its
height; nothing is repaired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import orjson

from careledger.contracts.registry import Registry, default_registry
from careledger.core.canonical import canonical_bytes
from careledger.core.tx import Transaction, decode_envelope
from careledger.errors import CareLedgerError, StorageError
from careledger.ledger.execute import Executed, execute_block, genesis_block
from careledger.ledger.ports import BlockWrite, LedgerStore
from careledger.ledger.sigcheck import verify_signatures

Progress = Callable[[int, int], None]  # (height, transactions in that block)


@dataclass
class VerifyReport:
    ok: bool
    height: int  # last height checked (the bad one when not ok)
    blocks: int = 0
    transactions: int = 0
    problem: str | None = None
    details: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "height": self.height,
            "blocks": self.blocks,
            "transactions": self.transactions,
            "problem": self.problem,
        }


class _Mismatch(Exception):
    def __init__(self, height: int, problem: str) -> None:
        super().__init__(problem)
        self.height = height
        self.problem = problem


class _ReplayState:
    def __init__(self) -> None:
        self.values: dict[tuple[str, str], Any] = {}
        self.written_at: dict[tuple[str, str], int] = {}

    def read(self, namespace: str, key: str) -> Any:
        return self.values.get((namespace, key))

    def apply(self, executed: Executed, height: int) -> None:
        for k, v in executed.state.items():
            if v is None:
                self.values.pop(k, None)
            else:
                self.values[k] = v
            self.written_at[k] = height


def _compare_block(stored: BlockWrite, derived: BlockWrite, store: LedgerStore) -> None:
    h = derived.header.height
    if len(stored.txs) != len(derived.txs):
        raise _Mismatch(h, "transaction count differs")
    for s, d in zip(stored.txs, derived.txs, strict=True):
        if s.receipt != d.receipt:
            raise _Mismatch(h, f"receipt of transaction {d.tx_id} differs")
        if s.leaf_index != d.leaf_index:
            raise _Mismatch(h, f"leaf index of transaction {d.tx_id} differs")
    if stored.writeset != derived.writeset:
        raise _Mismatch(h, "write-set differs from re-execution")
    stored_events = [(e.tx_index, e.seq, e.type, e.data) for e in stored.events]
    derived_events = [(e.tx_index, e.seq, e.type, e.data) for e in derived.events]
    if stored_events != derived_events:
        raise _Mismatch(h, "events differ from re-execution")
    ids = [node_id for node_id, _ in derived.nodes]
    try:
        found = store.get_nodes(ids) if ids else []
    except StorageError:
        raise _Mismatch(h, "Merkle log nodes are missing") from None
    for (node_id, digest), have in zip(derived.nodes, found, strict=True):
        if digest != have:
            raise _Mismatch(h, f"Merkle log node {node_id} differs")
    if stored.header != derived.header:
        raise _Mismatch(h, "header differs from re-derivation (log root, state digest or time)")


def _decode_block_txs(height: int, store: LedgerStore) -> list[Transaction]:
    txs = []
    for stored in store.block_txs(height):
        try:
            tx = decode_envelope(orjson.loads(stored.envelope))
        except (CareLedgerError, orjson.JSONDecodeError):
            raise _Mismatch(
                height, f"envelope of transaction {stored.tx_id} is malformed"
            ) from None
        if tx.tx_id != stored.tx_id:
            raise _Mismatch(height, f"envelope does not hash to its id {stored.tx_id}")
        if tx.envelope_bytes() != stored.envelope:
            raise _Mismatch(height, f"envelope bytes of {stored.tx_id} are not canonical")
        txs.append(tx)
    return txs


class _Verifier:
    """Walks the chain from genesis, carrying the replayed state and the log frontier."""

    def __init__(self, store: LedgerStore, registry: Registry, pool: Executor | None, workers: int):
        self.store = store
        self.registry = registry
        self.pool = pool
        self.workers = workers
        self.replay = _ReplayState()
        self.frontier: list[bytes] = []
        self.prev_hash = ""

    def block(self, height: int) -> BlockWrite:
        """Re-derive block ``height``, compare it with the store, and advance."""
        try:
            executed, header_hash = self._derive(height)
        except _Mismatch:
            raise
        except (
            CareLedgerError,
            orjson.JSONDecodeError,
            UnicodeDecodeError,
            KeyError,
            TypeError,
        ) as exc:
            raise _Mismatch(height, f"stored data is unreadable ({type(exc).__name__})") from None
        if height:
            self.frontier = executed.frontier
        self.replay.apply(executed, height)
        self.prev_hash = header_hash
        return executed.block

    def _derive(self, height: int) -> tuple[Executed, str]:
        store = self.store
        header = store.header(height)
        header_hash = store.header_hash(height)
        if header is None or header_hash is None:
            raise _Mismatch(height, "block is missing")
        if header.hash() != header_hash:
            raise _Mismatch(height, "header does not hash to its stored hash")
        writeset = store.block_writeset(height) or b""
        if height == 0:
            executed = _genesis(store)
            if executed.block.header != header or executed.block.writeset != writeset:
                raise _Mismatch(0, "genesis block does not match the genesis document")
            return executed, header_hash
        prev = store.header(height - 1)
        if prev is None or header.prev != self.prev_hash:
            raise _Mismatch(height, "prev does not link to the previous header")
        txs = _decode_block_txs(height, store)
        checks = verify_signatures(txs, self.pool, self.workers)
        for tx, ok in zip(txs, checks, strict=True):
            if not ok:
                raise _Mismatch(height, f"signature of transaction {tx.tx_id} is invalid")
        derived = execute_block(
            registry=self.registry,
            prev=prev,
            prev_hash=self.prev_hash,
            frontier=self.frontier,
            txs=txs,
            time=header.time,
            read=self.replay.read,
        )
        if derived is None or derived.skipped:
            raise _Mismatch(height, "the block holds transactions that cannot commit")
        stored = BlockWrite(
            header,
            header_hash,
            store.block_txs(height),
            (),
            writeset,
            (),
            store.block_events(height),
        )
        _compare_block(stored, derived.block, store)
        return derived, header_hash


def verify_store(
    store: LedgerStore,
    *,
    registry: Registry | None = None,
    pool: Executor | None = None,
    workers: int = 2,
    progress: Progress | None = None,
) -> VerifyReport:
    report = VerifyReport(ok=True, height=-1)
    head_height = store.head_height()
    if head_height < 0:
        return VerifyReport(False, 0, problem="the store holds no genesis block")
    walker = _Verifier(store, registry or default_registry(), pool, workers)
    try:
        for height in range(head_height + 1):
            report.height = height
            block = walker.block(height)
            report.blocks += 1
            report.transactions += block.header.tx_count
            if progress is not None:
                progress(height, block.header.tx_count)
        try:
            _compare_state(store, walker.replay)
        except CareLedgerError as exc:
            raise _Mismatch(head_height, f"current state is unreadable: {exc.message}") from None
    except _Mismatch as bad:
        return VerifyReport(
            False, bad.height, report.blocks, report.transactions, problem=bad.problem
        )
    return report


def _genesis(store: LedgerStore) -> Executed:
    raw = store.chain_meta("genesis")
    if raw is None:
        raise _Mismatch(0, "the genesis document is missing")
    try:
        return genesis_block(orjson.loads(raw))
    except (CareLedgerError, orjson.JSONDecodeError):
        raise _Mismatch(0, "the genesis document is malformed") from None


def _compare_state(store: LedgerStore, replay: _ReplayState) -> None:
    seen: set[tuple[str, str]] = set()
    for ns, key, value in store.state_items():
        seen.add((ns, key))
        expected = replay.values.get((ns, key))
        if expected is None or canonical_bytes(expected) != value:
            height = replay.written_at.get((ns, key), -1)
            at = f"last written at height {height}" if height >= 0 else "never written"
            raise _Mismatch(max(height, 0), f"current state {ns}/{key} differs ({at})")
    missing: Sequence[tuple[str, str]] = [k for k in replay.values if k not in seen]
    if missing:
        ns, key = missing[0]
        raise _Mismatch(replay.written_at[(ns, key)], f"current state {ns}/{key} is missing")
