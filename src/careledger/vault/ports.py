"""The vault's storage port: what any blob store for sealed records MUST do.

SQLite (``VaultStore``, its own file beside the ledger) is the default; another store (an
object store, PostgreSQL) proves itself by passing the same tests.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol

from careledger.vault.store import SealedRecord


class SealedRecordStore(Protocol):
    """Sealed record versions.

    An implementation MUST:
    - write a version atomically (the record row and every wrapped key, or nothing) and durably
      before ``put`` returns, and refuse a version that exists (``RECORD_VERSION_EXISTS``);
    - on ``shred``, destroy every wrapped key and salt of every version so that no copy stays
      readable on its own media (SQLite: ``secure_delete`` and a truncated WAL), keep a tombstone
      so a shredded record is told apart from an unknown one, and never reuse the id;
    - never hold plaintext: it stores only what ``careledger.vault.crypto`` produced.
    """

    def put(self, record: SealedRecord) -> None: ...

    def put_many(self, records: Sequence[SealedRecord]) -> None:
        """Several versions in one atomic write (all or none)."""
        ...

    def get(self, record_id: str, version: int | None = None) -> SealedRecord: ...

    def versions(self, record_id: str) -> list[int]: ...

    def for_patient(
        self, patient: str, resource_types: Collection[str] | None = None
    ) -> list[tuple[str, int, str]]: ...

    def live_records(self, resource_types: Collection[str]) -> list[tuple[str, str, int, str]]:
        """``(patient, record_id, latest version, type)`` of every live record, by patient."""
        ...

    def is_shredded(self, record_id: str) -> bool: ...

    def shred(self, record_id: str) -> list[int]: ...

    def discard(self, record_id: str, version: int) -> None:
        """Remove a version whose ledger anchor was refused (it was never visible)."""

    def close(self) -> None: ...
