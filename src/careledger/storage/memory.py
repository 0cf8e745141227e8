"""In-memory LedgerStore for unit tests: same guarantees as SQLite except durability."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import orjson

from careledger.core.block import BlockHeader, header_from_json
from careledger.errors import StorageError
from careledger.ledger.ports import BlockWrite, NodeId, StoredEvent, StoredTx


class MemoryStore:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[str, str] = {}
        self._local: dict[str, str] = {}
        self._headers: list[bytes] = []
        self._hashes: list[str] = []
        self._writesets: list[bytes] = []
        self._block_txs: list[list[StoredTx]] = []
        self._events: list[list[StoredEvent]] = []
        self._leaves: list[StoredTx] = []
        self._tx_height: dict[str, tuple[int, int]] = {}
        self._nodes: dict[NodeId, bytes] = {}
        self._state: dict[tuple[str, str], bytes] = {}

    def chain_meta(self, name: str) -> str | None:
        return self._meta.get(name)

    def local_meta(self, name: str) -> str | None:
        return self._local.get(name)

    def set_local_meta(self, name: str, value: str) -> None:
        self._local[name] = value

    def set_chain_meta(self, name: str, value: str) -> None:
        if self._headers:
            raise StorageError("chain meta is immutable after genesis")
        self._meta[name] = value

    def head(self) -> BlockHeader | None:
        return self.header(len(self._headers) - 1) if self._headers else None

    def head_height(self) -> int:
        return len(self._headers) - 1

    def header(self, height: int) -> BlockHeader | None:
        if 0 <= height < len(self._headers):
            return header_from_json(orjson.loads(self._headers[height]))
        return None

    def header_hash(self, height: int) -> str | None:
        return self._hashes[height] if 0 <= height < len(self._hashes) else None

    def block_txs(self, height: int) -> list[StoredTx]:
        return list(self._block_txs[height]) if 0 <= height < len(self._block_txs) else []

    def block_writeset(self, height: int) -> bytes | None:
        return self._writesets[height] if 0 <= height < len(self._writesets) else None

    def block_events(self, height: int) -> list[StoredEvent]:
        return list(self._events[height]) if 0 <= height < len(self._events) else []

    def events_of_types(self, types: Sequence[str], limit: int) -> list[StoredEvent]:
        wanted = set(types)
        found = [e for block in self._events for e in block if e.type in wanted]
        return found[-limit:] if limit > 0 else []

    def find_tx(self, tx_id: str) -> tuple[int, StoredTx] | None:
        found = self._tx_height.get(tx_id)
        if found is None:
            return None
        return found[0], self._leaves[found[1]]

    def leaf(self, leaf_index: int) -> StoredTx | None:
        return self._leaves[leaf_index] if 0 <= leaf_index < len(self._leaves) else None

    def get_state(self, namespace: str, key: str) -> bytes | None:
        return self._state.get((namespace, key))

    def state_items(self) -> Iterator[tuple[str, str, bytes]]:
        for (ns, key), value in sorted(self._state.items()):
            yield ns, key, value

    def state_keys(
        self, namespace: str, prefix: str, limit: int, *, last: bool = False
    ) -> list[str]:
        keys = sorted(k for ns, k in self._state if ns == namespace and k.startswith(prefix))
        return keys[-limit:] if last and limit else keys[:limit]

    def get_nodes(self, ids: Sequence[NodeId]) -> list[bytes]:
        try:
            return [self._nodes[i] for i in ids]
        except KeyError as exc:
            raise StorageError(f"Merkle node {exc.args[0]} is missing") from None

    def append_block(self, block: BlockWrite) -> None:
        with self._lock:
            height = block.header.height
            if height != len(self._headers):
                raise StorageError(f"block {height} is not head + 1 ({len(self._headers)})")
            if height and block.header.prev != self._hashes[-1]:
                raise StorageError(f"block {height} does not extend the head")
            self._headers.append(block.header.canonical())
            self._hashes.append(block.header_hash)
            self._writesets.append(block.writeset)
            self._block_txs.append(list(block.txs))
            self._events.append(list(block.events))
            for tx in block.txs:
                self._tx_height[tx.tx_id] = (height, len(self._leaves))
                self._leaves.append(tx)
            self._nodes.update(block.nodes)
            self._local.update(block.local)
            for ns, key, value in block.state:
                if value is None:
                    self._state.pop((ns, key), None)
                else:
                    self._state[(ns, key)] = value

    def close(self) -> None:
        pass
