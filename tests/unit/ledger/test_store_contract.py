"""One contract test for every LedgerStore: memory and SQLite must behave the same."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from careledger.core import merkle
from careledger.errors import StorageError
from careledger.ledger.ports import BlockWrite, LedgerStore
from careledger.storage.memory import MemoryStore
from careledger.storage.sqlite import SQLiteStore
from tests.support.chain import TestChain, key


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LedgerStore]:
    s: LedgerStore = (
        MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "l.sqlite")
    )
    yield s
    s.close()


def add_members(chain: TestChain, n: int, prefix: str = "x") -> None:
    chain.commit(
        *[
            chain.envelope(
                "hosp-admin",
                "add_member",
                {
                    "id": f"{prefix}{i}",
                    "name": "M",
                    "roles": ["nurse"],
                    "public_key": key(f"{prefix}{i}").public_b64,
                },
            )
            for i in range(n)
        ]
    )


class TestLedgerStoreContract:
    def test_genesis_then_blocks(self, store: LedgerStore) -> None:
        chain = TestChain(store)
        assert store.head().height == 0
        add_members(chain, 3)
        add_members(chain, 2, "n")
        head = store.head()
        assert (head.height, head.log_size, head.tx_count) == (2, 5, 2)
        assert store.header_hash(2) == head.hash()
        assert store.header(1).hash() == head.prev
        assert [t.leaf_index for t in store.block_txs(1)] == [0, 1, 2]
        height, tx = store.find_tx(store.block_txs(2)[1].tx_id)
        assert (height, tx.leaf_index) == (2, 4)
        assert store.leaf(4) == tx
        assert store.leaf(5) is None and store.find_tx("0" * 64) is None
        assert store.block_writeset(2) is not None
        assert len(store.block_events(1)) == 3

    def test_state_reads(self, store: LedgerStore) -> None:
        chain = TestChain(store)
        add_members(chain, 3)
        keys = store.state_keys("identity", "member/x", 10)
        assert keys == ["member/x0", "member/x1", "member/x2"]
        assert store.state_keys("identity", "member/x", 2) == keys[:2]
        items = list(store.state_items())
        assert items == sorted(items)
        assert store.get_state("identity", "member/x1") is not None
        assert store.get_state("identity", "member/zz") is None

    def test_nodes_serve_proofs(self, store: LedgerStore) -> None:
        chain = TestChain(store)
        for i in range(5):
            add_members(chain, 3, f"b{i}-")
        size = store.head().log_size
        leaves = [merkle.leaf_hash(store.leaf(i).receipt) for i in range(size)]
        assert merkle.root_at(size, store.get_nodes) == merkle.root_from_leaf_hashes(leaves)
        assert store.head().log_root == merkle.root_from_leaf_hashes(leaves).hex()
        with pytest.raises(StorageError):
            store.get_nodes([(0, 10_000)])

    def test_refuses_blocks_that_do_not_extend_the_head(self, store: LedgerStore) -> None:
        chain = TestChain(store)
        add_members(chain, 1)
        block1 = store.header(1)
        replay = BlockWrite(block1, block1.hash(), (), (), b"[]", (), ())
        with pytest.raises(StorageError, match="head"):
            store.append_block(replay)
        from dataclasses import replace

        forked = replace(block1, height=2, prev="ab" * 32)
        with pytest.raises(StorageError, match="extend"):
            store.append_block(BlockWrite(forked, forked.hash(), (), (), b"[]", (), ()))
        assert store.head().height == 1

    def test_meta_is_immutable_after_genesis(self, store: LedgerStore) -> None:
        TestChain(store)
        assert store.chain_meta("chain") == "test.chain"
        with pytest.raises(StorageError):
            store.set_chain_meta("chain", "other")


def test_sqlite_block_write_is_atomic(tmp_path: Path) -> None:
    """A failure in the middle of a block (a duplicate tx id) leaves no part of it behind."""
    store = SQLiteStore(tmp_path / "l.sqlite")
    chain = TestChain(store)
    add_members(chain, 2)
    head = store.head()
    bad_tx = store.block_txs(1)[0]
    from dataclasses import replace

    header = replace(head, height=2, prev=store.header_hash(1), tx_count=1, log_size=3)
    block = BlockWrite(
        header,
        header.hash(),
        [bad_tx],
        [((0, 99), b"x" * 32)],
        b"[]",
        [("identity", "poison", b"1")],
        (),
    )
    with pytest.raises(StorageError):
        store.append_block(block)
    assert store.head().height == 1
    assert store.get_state("identity", "poison") is None
    with pytest.raises(StorageError):
        store.get_nodes([(0, 99)])


def test_sqlite_reopens_with_same_data(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "l.sqlite")
    chain = TestChain(store)
    add_members(chain, 2)
    head = store.head()
    store.close()
    again = SQLiteStore(tmp_path / "l.sqlite", readonly=True)
    assert again.head() == head
    with pytest.raises(StorageError):
        again.append_block(BlockWrite(head, head.hash(), (), (), b"[]", (), ()))


def test_sqlite_readonly_missing_file(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="no ledger store"):
        SQLiteStore(tmp_path / "missing.sqlite", readonly=True)
