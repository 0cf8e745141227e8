"""The storage port and the guarantees every implementation MUST give.

The engine is written against :class:`LedgerStore` only. A memory store serves unit tests and
the SQLite store is the default; one contract-test class (tests/unit/ledger/test_store_contract)
runs against both, so a new adapter (PostgreSQL, ...) proves itself by passing the same tests.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from careledger.core.block import BlockHeader

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
