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

With a pool, each transaction's own checks (its envelope decodes, is canonical and hashes to
its id; its receipt; its signature) run in the workers, a block ahead of the walk, which then
raises the first difference in the same order as it does without them: the report is the same
either way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson

from careledger.contracts.registry import Registry, default_registry
from careledger.core import merkle
from careledger.core.block import BlockHeader, events_digest, next_state_digest, receipt
from careledger.core.canonical import canonical_bytes, canonical_items, sha256_hex
from careledger.core.keys import verify_signature
from careledger.core.tx import Transaction, decode_stored_envelope
from careledger.errors import CareLedgerError, StorageError
from careledger.ledger.execute import Executed, execute_block, genesis_block
from careledger.ledger.ports import BlockWrite, LedgerStore, StoredTx
from careledger.ledger.sigcheck import submit_chunks, submit_signatures

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


Rows = dict[tuple[str, str], bytes | None]
"""Each key a block wrote, with its canonical write-set row ``[ns,key,value]`` (None: deleted)."""


class _ReplayState:
    """The state replayed from genesis: each live key's canonical write-set row (the store's
    current value must be the value in it, compared as bytes at the end) and, when
    re-executing, the decoded values the contracts read. Replaying write-sets alone decodes only
    the nonces it checks: keeping every value decoded would hold millions of objects that each
    garbage collection walks."""

    def __init__(self, decoded: bool) -> None:
        self.rows: dict[tuple[str, str], bytes] = {}
        self.values: dict[tuple[str, str], Any] | None = {} if decoded else None
        self.written_at: dict[tuple[str, str], int] = {}

    def read(self, namespace: str, key: str) -> Any:
        if self.values is not None:
            return self.values.get((namespace, key))
        row = self.rows.get((namespace, key))
        return None if row is None else orjson.loads(row)[2]

    def apply(self, writes: Mapping[tuple[str, str], Any], rows: Rows, height: int) -> None:
        for k, v in writes.items():  # in the order the block wrote them
            row = rows[k]
            if row is None:
                self.rows.pop(k, None)
            else:
                self.rows[k] = row
            self.written_at[k] = height
            if self.values is not None:
                if v is None:
                    self.values.pop(k, None)
                else:
                    self.values[k] = v


def _row(ns: object, key: object, value: bytes) -> bytes:
    """A write-set row from its names and its value's canonical bytes (RFC 8785 composes)."""
    if type(ns) is str and type(key) is str:
        try:  # orjson writes a string exactly as RFC 8785 does (see core.canonical)
            return b"[" + orjson.dumps(ns) + b"," + orjson.dumps(key) + b"," + value + b"]"
        except orjson.JSONEncodeError:
            pass  # a lone surrogate: the reference encoder refuses it
    return b"[" + canonical_bytes(ns) + b"," + canonical_bytes(key) + b"," + value + b"]"


def _rows_of(encoded: Sequence[tuple[str, str, bytes | None]]) -> Rows:
    return {(ns, key): None if raw is None else _row(ns, key, raw) for ns, key, raw in encoded}


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


def _check_signatures(height: int, tx_ids: Sequence[str], checks: Sequence[bool]) -> None:
    for tx_id, ok in zip(tx_ids, checks, strict=True):
        if not ok:
            raise _Mismatch(height, f"signature of transaction {tx_id} is invalid")


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


# -- what a worker checks of each stored transaction --------------------------------------

TxRow = tuple[str, bytes, bytes, int]
"""A stored transaction as a worker receives it: (tx_id, envelope, receipt, leaf index)."""
TxCheck = tuple[int, str, int, bytes, bool]
"""(outcome, signer, nonce, leaf hash, signature valid); signer and nonce only if it decoded."""

_OK, _MALFORMED, _WRONG_ID, _RECEIPT_MALFORMED, _RECEIPT_DIFFERS = range(5)


def check_stored_txs(
    chain: object, height: int, first_leaf: int, offset: int, rows: Sequence[TxRow]
) -> list[TxCheck]:
    """Everything verify checks of each stored transaction on its own, for the transactions at
    ``offset``... of block ``height``: the envelope is canonical, well formed and hashes to its
    id; the receipt is the one the block must hold at that position; the leaf hash; the
    signature. The walker then checks what needs the chain so far (nonces, log, state) and
    raises the first difference in the order it always has.

    Runs in the signature workers, so decoding happens next to the signature check instead of
    on the walker's critical path; a pure function of its arguments.
    """
    out: list[TxCheck] = []
    for index, (tx_id, envelope, kept_receipt, kept_leaf) in enumerate(rows, start=offset):
        try:
            tx = decode_stored_envelope(envelope)
        except CareLedgerError:
            out.append((_MALFORMED, "", 0, b"", False))
            continue
        if tx.tx_id != tx_id:
            out.append((_WRONG_ID, "", 0, b"", False))
            continue
        outcome = _receipt_outcome(
            chain, height, first_leaf + index, index, tx, envelope, kept_receipt, kept_leaf
        )
        valid = verify_signature(tx.signer_key, tx.signed_bytes, tx.sig)
        out.append((outcome, tx.signer, tx.nonce, merkle.leaf_hash(kept_receipt), valid))
    return out


def _receipt_outcome(
    chain: object,
    height: int,
    leaf_index: int,
    index: int,
    tx: Transaction,
    envelope: bytes,
    kept_receipt: bytes,
    kept_leaf: int,
) -> int:
    """The receipt parses, and is exactly this transaction's at this place, with the rejection
    code it records (if any)."""
    envelope_hash = sha256_hex(envelope)

    def expected(code: str | None) -> bytes:
        rec = receipt(
            chain=chain,  # type: ignore[arg-type]  # the stored header's, as the walker reads it
            tx_id=tx.tx_id,
            envelope_hash=envelope_hash,
            height=height,
            index=index,
            leaf_index=leaf_index,
            code=code,
        )
        # Receipts hold ASCII strings and small ints only: orjson's sorted output is JCS.
        return orjson.dumps(rec, option=SORTED)

    # Most transactions were accepted: their receipt is compared before the stored one is
    # parsed (a stored receipt equal to it parses, and records no code).
    if kept_leaf == leaf_index and expected(None) == kept_receipt:
        return _OK
    try:
        code = orjson.loads(kept_receipt).get("code")
    except (orjson.JSONDecodeError, AttributeError):
        return _RECEIPT_MALFORMED
    if kept_leaf != leaf_index or expected(code if isinstance(code, str) else None) != kept_receipt:
        return _RECEIPT_DIFFERS
    return _OK


@dataclass
class _Ahead:
    height: int
    tx_ids: Sequence[str]
    # Re-execution keeps the stored transactions (it compares them) and decodes them here;
    # replaying write-sets keeps only their ids: a block's worth of objects held while the
    # workers run would be promoted by the garbage collector and walked by its full passes.
    stored: Sequence[StoredTx]
    txs: Sequence[Transaction]
    results: Callable[[], list[Any]]  # signatures (re-execution) or TxChecks, in order
    error: _Mismatch | None = None  # a transaction that does not decode (re-execution)


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
        self.replay = _ReplayState(decoded=reexecute)
        self.frontier: list[bytes] = []
        self.prev_hash = ""
        self._ahead: _Ahead | None = None

    def _read_ahead(self, height: int, prev: BlockHeader) -> _Ahead | None:
        """Read block ``height`` (``prev`` is the header before it) and start its checks in the
        workers; None past the head."""
        stored_txs = self.store.block_txs(height)
        if not stored_txs:
            return None
        tx_ids = [t.tx_id for t in stored_txs]
        if not self.reexecute:
            rows = [(t.tx_id, t.envelope, t.receipt, t.leaf_index) for t in stored_txs]
            check = partial(check_stored_txs, prev.chain, height, prev.log_size)
            checks = submit_chunks(check, rows, self.pool, self.workers)
            return _Ahead(height, tx_ids, [], [], checks)
        try:
            txs = _decode_block_txs(height, stored_txs)
        except _Mismatch as bad:
            return _Ahead(height, tx_ids, stored_txs, [], lambda: [], bad)
        signatures = submit_signatures(txs, self.pool, self.workers)
        return _Ahead(height, tx_ids, stored_txs, txs, signatures)

    def _read_next(self, height: int, prev: BlockHeader) -> tuple[_Ahead | None, Exception | None]:
        """``_read_ahead``, and what it raised, for the caller to raise where it always has."""
        try:
            return self._read_ahead(height, prev), None
        except Exception as exc:  # re-raised as it is by _derive
            return None, exc

    def _take(self, height: int, prev: BlockHeader) -> tuple[_Ahead, list[Any]]:
        """Block ``height`` read ahead (or now), and its checks' results once they are in;
        raises the first transaction that does not decode or hash to its id."""
        ahead = self._ahead if self._ahead and self._ahead.height == height else None
        if ahead is None:
            ahead = self._read_ahead(height, prev) or _Ahead(height, [], [], [], lambda: [])
        if ahead.error is not None:
            raise ahead.error
        results = ahead.results()
        if not self.reexecute:
            for tx_id, (outcome, *_) in zip(ahead.tx_ids, results, strict=True):
                if outcome == _MALFORMED:
                    raise _Mismatch(height, f"envelope of {tx_id} is malformed")
                if outcome == _WRONG_ID:
                    raise _Mismatch(height, f"envelope does not hash to its id {tx_id}")
        return ahead, results

    def block(self, height: int) -> BlockWrite:
        """Re-derive block ``height``, compare it with the store, and advance."""
        try:
            executed, header_hash, rows = self._derive(height)
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
        if rows is None:
            rows = _rows_of(executed.block.state)
        self.replay.apply(executed.state, rows, height)
        self.prev_hash = header_hash
        return executed.block

    def _derive(self, height: int) -> tuple[Executed, str, Rows | None]:
        """The block re-derived, its hash, and its write-set rows when it read them."""
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
            return executed, header_hash, None
        prev = store.header(height - 1)
        if prev is None or header.prev != self.prev_hash:
            raise _Mismatch(height, "prev does not link to the previous header")
        # The workers start on the next block now; this one's results are (mostly) in.
        ahead, failure = self._read_next(height + 1, header)
        taken, results = self._take(height, prev)
        if failure is not None:
            raise failure  # reading the next block failed: reported here, as it always was
        self._ahead = ahead
        stored = BlockWrite(
            header, header_hash, taken.stored, (), writeset, (), store.block_events(height)
        )
        if not self.reexecute:
            executed, rows = self._replay_recorded(stored, prev, taken.tx_ids, results)
            _check_signatures(height, taken.tx_ids, [valid for *_, valid in results])
            return executed, header_hash, rows
        txs = taken.txs
        _check_signatures(height, [tx.tx_id for tx in txs], results)
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
        return derived, header_hash, None

    def _replay_recorded(
        self,
        stored: BlockWrite,
        prev: BlockHeader,
        tx_ids: Sequence[str],
        checks: Sequence[TxCheck],
    ) -> tuple[Executed, Rows]:
        """Check a block against what it records (no re-execution) and return its write-set.

        ``checks`` are the workers' results for its transactions (see check_stored_txs).
        """
        header = stored.header
        h = header.height
        if header.chain != prev.chain or header.time < prev.time:
            raise _Mismatch(h, "chain id or block time does not follow the previous block")
        if header.tx_count != len(tx_ids) or header.log_size != prev.log_size + len(checks):
            raise _Mismatch(h, "transaction count or log size differs")
        leaves = []
        last_nonce: dict[str, int] = {}
        read = self.replay.read
        for tx_id, (outcome, signer, nonce, leaf, _) in zip(tx_ids, checks, strict=True):
            # the workers checked each receipt against the previous header's chain (this
            # header's, or the walk stopped just above) and log size
            if outcome == _RECEIPT_MALFORMED:
                raise _Mismatch(h, f"receipt of transaction {tx_id} is malformed")
            if outcome == _RECEIPT_DIFFERS:
                raise _Mismatch(h, f"receipt of transaction {tx_id} differs")
            previous = last_nonce.get(signer, read("nonce", signer) or 0)
            if nonce <= previous:
                raise _Mismatch(h, f"transaction {tx_id} replays a nonce")
            last_nonce[signer] = nonce
            leaves.append(leaf)
        frontier, nodes = merkle.append_leaf_hashes(self.frontier, prev.log_size, leaves)
        _compare_nodes(h, nodes, self.store)
        if merkle.root_from_frontier(frontier).hex() != header.log_root:
            raise _Mismatch(h, "log root differs from the receipts")
        if next_state_digest(prev.state_digest, stored.writeset) != header.state_digest:
            raise _Mismatch(h, "state digest differs from the write-set")
        events = [(e.tx_index, e.type, e.data) for e in stored.events]
        well_formed = [e.seq for e in stored.events] == list(range(len(events))) and all(
            0 <= i < len(checks) for i, _, _ in events
        )
        if not well_formed or events_digest(events) != header.events_digest:
            raise _Mismatch(h, "events differ from the events digest")
        writes, rows = _parse_writeset(h, stored.writeset)
        for signer, nonce in last_nonce.items():
            if writes.get(("nonce", signer)) != nonce:
                raise _Mismatch(h, "the write-set does not record the signers' nonces")
        return Executed(stored, frontier, {}, {}, writes), rows


def _parse_writeset(height: int, raw: bytes) -> tuple[dict[tuple[str, str], Any], Rows]:
    """The write-set's values by (namespace, key), and its rows' canonical bytes."""
    try:
        rows = orjson.loads(raw)
        writes = {(ns, key): value for ns, key, value in rows}
    except (orjson.JSONDecodeError, TypeError, ValueError):
        raise _Mismatch(height, "the write-set is malformed") from None
    parts = canonical_items(raw, rows) if len(writes) == len(rows) else None
    if parts is None:
        raise _Mismatch(height, "the write-set is not canonical")
    kept = {
        k: None if v is None else part for (k, v), part in zip(writes.items(), parts, strict=True)
    }
    return writes, kept


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
        # The replayed rows are canonical (each write-set was checked), so the stored value is
        # the canonical encoding of the replayed one exactly when the two rows are equal.
        expected = replay.rows.get((ns, key))
        if expected is None or expected != _row(ns, key, value):
            height = replay.written_at.get((ns, key), -1)
            at = f"last written at height {height}" if height >= 0 else "never written"
            raise _Mismatch(max(height, 0), f"current state {ns}/{key} differs ({at})")
    missing: Sequence[tuple[str, str]] = [k for k in replay.rows if k not in seen]
    if missing:
        ns, key = missing[0]
        raise _Mismatch(replay.written_at[(ns, key)], f"current state {ns}/{key} is missing")
