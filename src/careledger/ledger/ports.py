"""The ports of the ledger and the guarantees every implementation MUST give.

- :class:`LedgerStore`: the engine is written against it only. A memory store serves unit
  tests and the SQLite store is the default; one contract-test class
  (tests/unit/ledger/test_store_contract) runs against both, so a new adapter (PostgreSQL, ...)
  proves itself by passing the same tests.
- :class:`Orderer`: puts admitted transactions in one order and commits them block by block
  (ordering/local, ordering/jetstream, and ordering/memory for tests); one contract suite
  (tests/unit/ordering/test_orderer_contract) checks each MUST against every orderer.
- :class:`CommitListener`: what the node does because a block committed (cosigning, metrics,
  caches, vault and export clean-up, alerts, commit workers).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from careledger.core.block import BlockHeader

if TYPE_CHECKING:
    from careledger.core.tx import Transaction

NodeId = tuple[int, int]


@dataclass(frozen=True, slots=True)
class StoredTx:
    tx_id: str
    envelope: bytes  # RFC 8785 bytes of the envelope
    receipt: bytes  # RFC 8785 bytes of the receipt: the Merkle leaf data
    leaf_index: int


@dataclass(frozen=True, slots=True)
class StoredEvent:
    height: int
    tx_index: int
    seq: int  # position among the block's events
    type: str
    data: bytes  # RFC 8785 bytes


@dataclass(frozen=True)
class BlockWrite:
    """Everything one block changes. It is written whole or not at all."""

    header: BlockHeader
    header_hash: str
    txs: Sequence[StoredTx]
    nodes: Sequence[tuple[NodeId, bytes]]
    writeset: bytes  # canonical write-set, kept so verify can replay state
    state: Sequence[tuple[str, str, bytes | None]]  # (namespace, key, canonical value or None)
    events: Sequence[StoredEvent] = field(default_factory=tuple)
    # Node-local bookkeeping (e.g. the last applied ordering sequence), written in the same
    # transaction as the block so the two cannot disagree; not part of the chain, not verified.
    local: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Explanation:
    code: str
    message: str
    detail: Mapping[str, Any]


@dataclass(frozen=True)
class Executed:
    """A block ready to store, plus what the committer tells clients and caches (made by
    ``ledger.execute``, handed to each :class:`CommitListener`)."""

    block: BlockWrite
    frontier: list[bytes]
    receipts: Mapping[str, dict[str, Any]]  # tx_id -> receipt object
    skipped: Mapping[str, str]  # tx_id -> code, for transactions left out (stale nonce)
    state: Mapping[tuple[str, str], Any]  # decoded state writes (None = deleted)
    # Why each rejected transaction was refused, as judged on the state it ran on. Node-local:
    # not stored, not hashed (a receipt keeps only the code), handed to commit listeners.
    rejections: Mapping[str, Explanation] = field(default_factory=dict)


class LedgerStore(Protocol):
    """A chain's blocks, receipts, Merkle log nodes and current state.

    An implementation MUST:
    - apply :meth:`append_block` atomically: after a crash either all of the block is there or
      none of it is (block, its transactions and receipts, log nodes, state writes, events);
    - make a block durable before :meth:`append_block` returns: the caller tells clients
      "committed" right after;
    - refuse (``StorageError``) a block whose height is not head + 1, or whose ``prev`` is not
      the head's hash, so two writers can never fork the chain;
    - return from reads only data that was committed (no torn or partial blocks);
    - serve :meth:`get_nodes` with a bounded number of round trips (one per call), since inclusion
      and consistency proofs depend on it being O(log n) reads.
    It MUST NOT reorder, rewrite or delete committed blocks.
    """

    def chain_meta(self, name: str) -> str | None: ...

    def set_chain_meta(self, name: str, value: str) -> None:
        """Only before the genesis block; meta is immutable afterwards."""

    def local_meta(self, name: str) -> str | None:
        """A node-local value (see BlockWrite.local)."""
        ...

    def set_local_meta(self, name: str, value: str) -> None: ...

    def head(self) -> BlockHeader | None: ...

    def head_height(self) -> int:
        """Height of the last block (-1 when empty), without decoding its header."""

    def header(self, height: int) -> BlockHeader | None: ...

    def header_hash(self, height: int) -> str | None: ...

    def block_txs(self, height: int) -> list[StoredTx]: ...

    def block_writeset(self, height: int) -> bytes | None: ...

    def block_events(self, height: int) -> list[StoredEvent]: ...

    def events_of_types(self, types: Sequence[str], limit: int) -> list[StoredEvent]:
        """The newest ``limit`` committed events of these types, oldest first."""
        ...

    def find_tx(self, tx_id: str) -> tuple[int, StoredTx] | None:
        """(height, tx) of a committed transaction."""

    def leaf(self, leaf_index: int) -> StoredTx | None: ...

    def get_state(self, namespace: str, key: str) -> bytes | None: ...

    def state_items(self) -> Iterator[tuple[str, str, bytes]]:
        """Every live (namespace, key, value), sorted by (namespace, key)."""

    def state_keys(
        self, namespace: str, prefix: str, limit: int, *, last: bool = False
    ) -> list[str]:
        """Keys under ``prefix`` in order: the first ``limit``, or with ``last`` the last."""
        ...

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]: ...

    def append_block(self, block: BlockWrite) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class Orderer(Protocol):
    """Puts admitted transactions in one total order and commits them through the ledger, one
    block per batch, on one committing thread.

    An implementation MUST:
    - resolve a submission's future only once its block is durable: appended to the store, whose
      ``append_block`` returns after the fsync (see LedgerStore). The value is the transaction's
      receipt (accepted, or rejected by its contract); ``Conflict`` if it was a replay (a
      JetStream node answers one with the committed copy's receipt instead: ADR 0008);
      ``StorageError`` if its block could not be written;
    - resolve every future it handed out, and keep ordering when a waiter cancelled its future
      (asyncio does when a request's ``wait`` times out);
    - on pushback (``Pushback``: ``OVERLOADED`` when the queue is full, ``NODE_STOPPING`` when
      not started or stopping) queue nothing of the submission and release every nonce that
      admission reserved for it (``Ledger.release``), so the same transactions can be admitted
      and submitted again;
    - commit with ``Ledger.commit(..., notify=False)`` and hand each block to the ledger's commit
      listeners (``Ledger.notify``) off the committing thread, in height order, after the block
      is durable: a slow listener never delays the commit of later blocks. The block's futures
      resolve after its listeners returned, so a client told "committed" sees their effects;
    - refuse a submission made from a commit listener (``LISTENER_REENTRY``), releasing its
      nonces as on pushback.
    It MUST NOT commit a transaction twice: a resubmitted one is a replay.
    """

    @property
    def queued(self) -> int:
        """Transactions submitted whose futures are not resolved yet."""
        ...

    def start(self) -> None: ...

    def stop(self, timeout: float = 10.0) -> None:
        """Take no more submissions; what was submitted before is committed or failed."""

    def submit(self, txs: Sequence[Transaction]) -> list[Future[dict[str, Any]]]:
        """One future per admitted transaction, in order (``Pushback``: nothing was queued)."""
        ...


@runtime_checkable
class CommitListener(Protocol):
    """Told about each committed block: ``listener(executed)``, registered on
    ``Ledger.commit_listeners``.

    The orderer calls it once per block it commits, in height order, after the block is
    durable, on a thread of its own (never the committing one), and resolves the block's
    futures after it returns (see Orderer). A listener MUST:
    - return soon and hand long or blocking work to a thread of its own (``CommitWorker``): while
      it runs, later blocks still commit but their receipts wait;
    - read what it needs from ``executed`` (its header, events, receipts): the ledger's head may
      already be past its block;
    - not count on the call to report failure: an exception is logged and the next listener
      runs; the block stays committed whatever a listener does.
    It MUST NOT commit or submit transactions (it would wait on itself): ``Ledger.commit`` and
    ``Orderer.submit`` refuse on a listener's thread with ``LISTENER_REENTRY``. A write that
    follows from a block goes through a worker thread.
    """

    def __call__(self, executed: Executed, /) -> None: ...
