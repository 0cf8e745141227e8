"""A vault whose record versions a worker process writes (a node's: ``writer_pool``) keeps the
store's semantics: what is written reads back here, a refused write is refused with its own
error and code, a batch is all or none, and a vault opened again on a replaced file is written
there, not through the worker's earlier open of the old file."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import pytest

from careledger.errors import Conflict, NotFound, StorageError
from careledger.vault.store import VaultStore
from tests.unit.vault.test_store import record


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    workers = ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn"))
    try:
        yield workers
    finally:
        workers.shutdown(wait=True)


def test_a_version_written_by_the_worker_reads_back_here(
    tmp_path: Path, pool: ProcessPoolExecutor
) -> None:
    store = VaultStore(tmp_path / "vault.sqlite", writer_pool=pool)
    try:
        first, second = record("rec-1"), record("rec-2")
        store.put_many([first, second], {("rec-1", 1): [b"t" * 32]})
        assert store.get("rec-1", 1) == first and store.get("rec-2", 1) == second
        assert store.blind_lookup([[b"t" * 32]]) == {("rec-1", 1)}
    finally:
        store.close()


def test_a_refused_write_is_refused_with_its_code_and_writes_nothing(
    tmp_path: Path, pool: ProcessPoolExecutor
) -> None:
    store = VaultStore(tmp_path / "vault.sqlite", writer_pool=pool)
    try:
        store.put(record("rec-1"))
        with pytest.raises(Conflict) as refused:
            store.put_many([record("rec-2"), record("rec-1")])  # the second exists
        assert refused.value.code == "RECORD_VERSION_EXISTS"
        with pytest.raises(NotFound):
            store.get("rec-2", 1)  # all or none
        store.shred("rec-1")  # here, in this process
        with pytest.raises(Conflict) as shredded:
            store.put(record("rec-1", 2))
        assert shredded.value.code == "RECORD_SHREDDED"
    finally:
        store.close()
    with pytest.raises(StorageError):
        store.put(record("rec-3"))  # closed


def test_a_vault_opened_again_on_a_replaced_file_is_written_there(
    tmp_path: Path, pool: ProcessPoolExecutor
) -> None:
    path = tmp_path / "vault.sqlite"
    old = VaultStore(path, writer_pool=pool)
    old.put(record("rec-old"))
    old.close()
    for leftover in tmp_path.glob("vault.sqlite*"):
        leftover.unlink()  # the file is replaced (a restore, a test's fresh node)
    new = VaultStore(path, writer_pool=pool)
    try:
        new.put(record("rec-new"))
        assert new.get("rec-new", 1).record_id == "rec-new"
        with pytest.raises(NotFound):
            new.get("rec-old", 1)
    finally:
        new.close()
