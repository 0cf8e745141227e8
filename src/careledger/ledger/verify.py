"""Offline verification of a whole store, block by block from the genesis document.

Always, for each block: the header hash and its link to the previous header; every envelope's
id, canonical form and signature; every receipt (it must name its transaction, envelope, height
and position); the Merkle log nodes, log size and root; the state digest over the stored
write-set; the events digest. The write-sets are replayed from genesis and, at the end, the
replayed state must equal the store's current state (what contracts read).

With ``reexecute=True`` every transaction is also run again through the contracts on the
replayed state, and the receipts, write-set and events must come out byte for byte the same:
this proves the outcomes, not only their integrity, at the cost of execution time.

The first difference names its height; nothing is repaired.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import orjson

from careledger.contracts.registry import Registry, default_registry
from careledger.core import merkle
from careledger.core.block import BlockHeader, events_digest, next_state_digest, receipt
from careledger.core.canonical import is_canonical_json, sha256_hex
from careledger.core.tx import Transaction, decode_stored_envelope
from careledger.errors import CareLedgerError, StorageError
from careledger.ledger.execute import Executed, execute_block, genesis_block
from careledger.ledger.ports import BlockWrite, LedgerStore, StoredTx
from careledger.ledger.sigcheck import submit_signatures

SORTED = orjson.OPT_SORT_KEYS
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
    _compare_nodes(h, derived.nodes, store)
    if stored.header != derived.header:
        raise _Mismatch(h, "header differs from re-derivation (log root, state digest or time)")


def _check_signatures(height: int, txs: Sequence[Transaction], checks: Sequence[bool]) -> None:
    for tx, ok in zip(txs, checks, strict=True):
        if not ok:
            raise _Mismatch(height, f"signature of transaction {tx.tx_id} is invalid")


def _decode_block_txs(height: int, stored_txs: Sequence[StoredTx]) -> list[Transaction]:
    txs = []
    for stored in stored_txs:
        try:
            tx = decode_stored_envelope(stored.envelope)
        except CareLedgerError:
            raise _Mismatch(height, f"envelope of {stored.tx_id} is malformed") from None
        if tx.tx_id != stored.tx_id:
            raise _Mismatch(height, f"envelope does not hash to its id {stored.tx_id}")
        txs.append(tx)
    return txs


@dataclass
class _Ahead:
    height: int
    stored: Sequence[StoredTx]
    txs: Sequence[Transaction]
    signatures: Callable[[], list[bool]]
    error: _Mismatch | None = None


class _Verifier:
    """Walks the chain from genesis, carrying the replayed state and the log frontier."""

    def __init__(
        self,
        store: LedgerStore,
        registry: Registry,
        pool: Executor | None,
        workers: int,
        reexecute: bool,
    ) -> None:
        self.store = store
        self.registry = registry
        self.reexecute = reexecute
        self.pool = pool
        self.workers = workers
        self.replay = _ReplayState()
        self.frontier: list[bytes] = []
        self.prev_hash = ""
        self._ahead: _Ahead | None = None

    def _read_ahead(self, height: int) -> _Ahead | None:
        """Read and decode block ``height`` and start its signature checks (None past the head)."""
        stored_txs = self.store.block_txs(height)
        if not stored_txs:
            return None
        try:
            txs = _decode_block_txs(height, stored_txs)
        except _Mismatch as bad:
            return _Ahead(height, stored_txs, [], lambda: [], bad)
        return _Ahead(height, stored_txs, txs, submit_signatures(txs, self.pool, self.workers))

    def _take(
        self, height: int
    ) -> tuple[Sequence[StoredTx], Sequence[Transaction], Callable[[], list[bool]]]:
        ahead = self._ahead if self._ahead and self._ahead.height == height else None
        if ahead is None:
            ahead = self._read_ahead(height) or _Ahead(height, [], [], lambda: [])
        if ahead.error is not None:
            raise ahead.error
        return ahead.stored, ahead.txs, ahead.signatures

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
            executed = _genesis(store, self.registry)
            if executed.block.header != header or executed.block.writeset != writeset:
                raise _Mismatch(0, "genesis block does not match the genesis document")
            return executed, header_hash
        prev = store.header(height - 1)
        if prev is None or header.prev != self.prev_hash:
            raise _Mismatch(height, "prev does not link to the previous header")
        stored_txs, txs, signatures = self._take(height)
        self._ahead = self._read_ahead(height + 1)  # next block's signatures check meanwhile
        stored = BlockWrite(
            header, header_hash, stored_txs, (), writeset, (), store.block_events(height)
        )
        if not self.reexecute:
            executed = self._replay_recorded(stored, prev, txs)
            _check_signatures(height, txs, signatures())
            return executed, header_hash
        _check_signatures(height, txs, signatures())
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
        _compare_block(stored, derived.block, store)
        return derived, header_hash

    def _replay_recorded(
        self, stored: BlockWrite, prev: BlockHeader, txs: Sequence[Transaction]
    ) -> Executed:
        """Check a block against what it records (no re-execution) and return its write-set."""
        header = stored.header
        h = header.height
        if header.chain != prev.chain or header.time < prev.time:
            raise _Mismatch(h, "chain id or block time does not follow the previous block")
        if header.tx_count != len(stored.txs) or header.log_size != prev.log_size + len(txs):
            raise _Mismatch(h, "transaction count or log size differs")
        leaves = []
        last_nonce: dict[str, int] = {}
        for index, (kept, tx) in enumerate(zip(stored.txs, txs, strict=True)):
            leaf_index = prev.log_size + index
            try:
                code = orjson.loads(kept.receipt).get("code")
            except (orjson.JSONDecodeError, AttributeError):
                raise _Mismatch(h, f"receipt of transaction {tx.tx_id} is malformed") from None
            expected = receipt(
                chain=header.chain,
                tx_id=tx.tx_id,
                envelope_hash=sha256_hex(kept.envelope),
                height=h,
                index=index,
                leaf_index=leaf_index,
                code=code if isinstance(code, str) else None,
            )
            # Receipts hold ASCII strings and small ints only: orjson's sorted output is JCS.
            if (
                kept.leaf_index != leaf_index
                or orjson.dumps(expected, option=SORTED) != kept.receipt
            ):
                raise _Mismatch(h, f"receipt of transaction {tx.tx_id} differs")
            previous = last_nonce.get(tx.signer, self.replay.read("nonce", tx.signer) or 0)
            if tx.nonce <= previous:
                raise _Mismatch(h, f"transaction {tx.tx_id} replays a nonce")
            last_nonce[tx.signer] = tx.nonce
            leaves.append(merkle.leaf_hash(kept.receipt))
        frontier, nodes = merkle.append_leaf_hashes(self.frontier, prev.log_size, leaves)
        _compare_nodes(h, nodes, self.store)
        if merkle.root_from_frontier(frontier).hex() != header.log_root:
            raise _Mismatch(h, "log root differs from the receipts")
        if next_state_digest(prev.state_digest, stored.writeset) != header.state_digest:
            raise _Mismatch(h, "state digest differs from the write-set")
        events = [(e.tx_index, e.type, e.data) for e in stored.events]
        well_formed = [e.seq for e in stored.events] == list(range(len(events))) and all(
            0 <= i < len(txs) for i, _, _ in events
        )
        if not well_formed or events_digest(events) != header.events_digest:
            raise _Mismatch(h, "events differ from the events digest")
        writes = _parse_writeset(h, stored.writeset)
        for signer, nonce in last_nonce.items():
            if writes.get(("nonce", signer)) != nonce:
                raise _Mismatch(h, "the write-set does not record the signers' nonces")
        return Executed(stored, frontier, {}, {}, writes)


def _parse_writeset(height: int, raw: bytes) -> dict[tuple[str, str], Any]:
    try:
        rows = orjson.loads(raw)
        writes = {(ns, key): value for ns, key, value in rows}
    except (orjson.JSONDecodeError, TypeError, ValueError):
        raise _Mismatch(height, "the write-set is malformed") from None
    if len(writes) != len(rows) or not is_canonical_json(raw, rows):
        raise _Mismatch(height, "the write-set is not canonical")
    return writes


def _compare_nodes(
    height: int, nodes: Sequence[tuple[tuple[int, int], bytes]], store: LedgerStore
) -> None:
    ids = [node_id for node_id, _ in nodes]
    try:
        found = store.get_nodes(ids) if ids else []
    except StorageError:
        raise _Mismatch(height, "Merkle log nodes are missing") from None
    for (node_id, digest), have in zip(nodes, found, strict=True):
        if digest != have:
            raise _Mismatch(height, f"Merkle log node {node_id} differs")


def verify_store(
    store: LedgerStore,
    *,
    registry: Registry | None = None,
    pool: Executor | None = None,
    workers: int = 2,
    progress: Progress | None = None,
    reexecute: bool = False,
) -> VerifyReport:
    report = VerifyReport(ok=True, height=-1)
    head_height = store.head_height()
    if head_height < 0:
        return VerifyReport(False, 0, problem="the store holds no genesis block")
    walker = _Verifier(store, registry or default_registry(), pool, workers, reexecute)
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


def _genesis(store: LedgerStore, registry: Registry) -> Executed:
    raw = store.chain_meta("genesis")
    if raw is None:
        raise _Mismatch(0, "the genesis document is missing")
    try:
        executed = genesis_block(orjson.loads(raw), registry)
    except (CareLedgerError, orjson.JSONDecodeError):
        raise _Mismatch(0, "the genesis document is malformed") from None
    if store.chain_meta("chain") != executed.block.header.chain:
        raise _Mismatch(0, "the store's chain id differs from the genesis document")
    return executed


def _compare_state(store: LedgerStore, replay: _ReplayState) -> None:
    seen: set[tuple[str, str]] = set()
    for ns, key, value in store.state_items():
        seen.add((ns, key))
        expected = replay.values.get((ns, key))
        if expected is None or not is_canonical_json(value, expected):
            height = replay.written_at.get((ns, key), -1)
            at = f"last written at height {height}" if height >= 0 else "never written"
            raise _Mismatch(max(height, 0), f"current state {ns}/{key} differs ({at})")
    missing: Sequence[tuple[str, str]] = [k for k in replay.values if k not in seen]
    if missing:
        ns, key = missing[0]
        raise _Mismatch(replay.written_at[(ns, key)], f"current state {ns}/{key} is missing")
