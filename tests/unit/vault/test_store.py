"""VaultStore: versions, patient index, shredding that really removes the key bytes."""

from __future__ import annotations

import itertools
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from careledger.errors import Conflict, NotFound, StorageError, ValidationError
from careledger.vault.store import SealedRecord, VaultStore

_ids = itertools.count()


def record(
    record_id: str = "rec-1",
    version: int = 1,
    *,
    patient: str = "pat-1",
    resource_type: str = "Observation",
    size: int = 64,
) -> SealedRecord:
    """A record with random bytes where the crypto would go (the store never looks inside)."""
    return SealedRecord(
        record_id=record_id,
        version=version,
        resource_type=resource_type,
        patient=patient,
        custodian="hosp",
        content_hash=os.urandom(32).hex(),
        created=f"2025-01-01T00:00:{next(_ids) % 60:02d}Z",
        nonce=os.urandom(12),
        ciphertext=os.urandom(size),
        salt=os.urandom(32),
        wrapped_keys={"patient-key": os.urandom(80), "custodian-key": os.urandom(80)},
    )


def secrets_of(rec: SealedRecord) -> list[bytes]:
    return [
        rec.nonce,
        rec.salt,
        rec.ciphertext[:24],
        rec.ciphertext[-24:],
        *rec.wrapped_keys.values(),
    ]


def file_bytes(path: Path) -> bytes:
    """Every byte SQLite keeps for the vault: the database, its WAL and shared-memory index."""
    return b"".join(p.read_bytes() for p in sorted(path.parent.glob(path.name + "*")))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "vault.db"


@pytest.fixture
def store(path: Path) -> Iterator[VaultStore]:
    s = VaultStore(path)
    yield s
    s.close()


def test_put_get_round_trip(store: VaultStore) -> None:
    rec = record()
    store.put(rec)
    assert store.get("rec-1", 1) == rec
    assert store.get("rec-1") == rec
    assert store.versions("rec-1") == [1]


def test_get_without_version_is_the_latest(store: VaultStore) -> None:
    for version in (1, 3, 2):
        store.put(record(version=version))
    assert store.get("rec-1").version == 3
    assert store.get("rec-1", 2).version == 2
    assert store.versions("rec-1") == [1, 2, 3]


@pytest.mark.parametrize(("record_id", "version"), [("nope", None), ("nope", 1), ("rec-1", 2)])
def test_unknown_record_or_version(store: VaultStore, record_id: str, version: int | None) -> None:
    store.put(record())
    with pytest.raises(NotFound) as caught:
        store.get(record_id, version)
    assert caught.value.code == "UNKNOWN_RECORD"


def test_versions_of_unknown_record(store: VaultStore) -> None:
    with pytest.raises(NotFound) as caught:
        store.versions("nope")
    assert caught.value.code == "UNKNOWN_RECORD"


def test_existing_version_conflicts_and_is_left_alone(store: VaultStore) -> None:
    first = record()
    store.put(first)
    with pytest.raises(Conflict) as caught:
        store.put(record())
    assert caught.value.code == "RECORD_VERSION_EXISTS"
    assert store.get("rec-1") == first


def test_resource_type_is_fixed_across_versions(store: VaultStore) -> None:
    store.put(record())
    with pytest.raises(Conflict) as caught:
        store.put(record(version=2, resource_type="Patient"))
    assert caught.value.code == "RECORD_TYPE_MISMATCH"
    assert store.versions("rec-1") == [1]


def test_put_is_atomic(store: VaultStore, path: Path) -> None:
    """A failure after the record row leaves neither the row nor any wrapped key behind."""
    db = sqlite3.connect(path)
    db.execute(
        "CREATE TRIGGER refuse AFTER INSERT ON wrapped_keys WHEN NEW.recipient = 'patient-key'"
        " BEGIN SELECT RAISE(ABORT, 'boom'); END"
    )
    db.commit()
    db.close()
    with pytest.raises(StorageError):
        store.put(record())
    with pytest.raises(NotFound):
        store.get("rec-1")
    check = sqlite3.connect(path)
    assert check.execute("SELECT COUNT(*) FROM wrapped_keys").fetchone() == (0,)
    check.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"version": 0},
        {"version": True},
        {"record_id": ""},
        {"patient": None},  # "" is an organisation's own record (about no patient)
        {"custodian": ""},
        {"resource_type": ""},
        {"wrapped_keys": {}},
        {"salt": None},
    ],
    ids=repr,
)
def test_put_refuses_malformed_records(store: VaultStore, bad: dict[str, object]) -> None:
    fields = {name: getattr(record(), name) for name in SealedRecord.__dataclass_fields__}
    with pytest.raises(ValidationError):
        store.put(SealedRecord(**{**fields, **bad}))


def test_repr_shows_no_secret_bytes() -> None:
    rec = record()
    text = repr(rec)
    assert "rec-1" in text and rec.content_hash in text
    for name in ("nonce", "ciphertext", "salt", "wrapped_keys", "patient-key"):
        assert name not in text
    for secret in secrets_of(rec):
        assert repr(secret)[2:-1] not in text


def test_wrapped_keys_are_read_only_and_copied() -> None:
    keys = {"k": b"x" * 80}
    rec = SealedRecord("r", 1, "Patient", "p", "c", "h", "t", b"n", b"c", b"s", keys)
    keys["other"] = b"y"
    assert dict(rec.wrapped_keys) == {"k": b"x" * 80}
    with pytest.raises(TypeError):
        rec.wrapped_keys["k"] = b"z"  # type: ignore[index]
    assert rec.recipients == ("k",)


def test_pragmas(store: VaultStore) -> None:
    conn = store._connect()
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert conn.execute("PRAGMA synchronous").fetchone() == (2,)  # FULL
    assert conn.execute("PRAGMA secure_delete").fetchone() == (1,)


def test_data_survives_reopening(path: Path) -> None:
    rec = record()
    first = VaultStore(path)
    first.put(rec)
    first.close()
    second = VaultStore(path)
    assert second.get("rec-1") == rec
    second.close()


def test_closed_store_refuses_use(path: Path) -> None:
    store = VaultStore(path)
    store.close()
    with pytest.raises(StorageError):
        store.get("rec-1")


def test_unknown_schema_version_is_refused(path: Path) -> None:
    VaultStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '99' WHERE name = 'schema_version'")
    db.commit()
    db.close()
    with pytest.raises(StorageError):
        VaultStore(path)


# -- patient index --------------------------------------------------------------------------


def test_for_patient_lists_latest_versions_by_type(store: VaultStore) -> None:
    store.put(record("obs-b", 1))
    store.put(record("obs-b", 2))
    store.put(record("obs-a", 1))
    store.put(record("cond-1", 1, resource_type="Condition"))
    store.put(record("other", 1, patient="pat-2"))
    store.put(record("moved", 1, patient="pat-2"))
    store.put(record("moved", 2, patient="pat-1"))  # the latest version names the patient
    store.put(record("left", 1, patient="pat-1"))
    store.put(record("left", 2, patient="pat-2"))
    assert store.for_patient("pat-1") == [
        ("cond-1", 1, "Condition"),
        ("moved", 2, "Observation"),
        ("obs-a", 1, "Observation"),
        ("obs-b", 2, "Observation"),
    ]
    assert store.for_patient("pat-1", ["Condition"]) == [("cond-1", 1, "Condition")]
    assert store.for_patient("pat-1", {"Condition", "Observation"}) == store.for_patient("pat-1")
    assert store.for_patient("pat-1", []) == []
    assert store.for_patient("pat-1", ["Patient"]) == []
    assert store.for_patient("nobody") == []
    assert store.for_patient("pat-2") == [("left", 2, "Observation"), ("other", 1, "Observation")]


def test_patient_lookup_uses_the_index(store: VaultStore) -> None:
    plan = (
        store._connect()
        .execute("EXPLAIN QUERY PLAN SELECT record_id FROM records WHERE patient = ?", ("p",))
        .fetchall()
    )
    assert "records_by_patient" in " ".join(str(row) for row in plan)


# -- shredding ------------------------------------------------------------------------------


def test_shred_every_version(store: VaultStore) -> None:
    for version in (1, 2, 3):
        store.put(record(version=version))
    store.put(record("keep"))
    assert store.shred("rec-1") == [1, 2, 3]
    for wanted in (None, 1, 2, 3):
        with pytest.raises(NotFound) as caught:
            store.get("rec-1", wanted)
        assert caught.value.code == "RECORD_SHREDDED"
    with pytest.raises(NotFound) as unknown:
        store.get("rec-1", 4)
    assert unknown.value.code == "UNKNOWN_RECORD"  # shredded is not "never existed"
    assert store.versions("rec-1") == [1, 2, 3]
    assert store.is_shredded("rec-1") and not store.is_shredded("keep")
    assert store.for_patient("pat-1") == [("keep", 1, "Observation")]
    assert store.get("keep").record_id == "keep"


def test_shred_leaves_only_metadata(store: VaultStore, path: Path) -> None:
    rec = record()
    store.put(rec)
    store.shred("rec-1")
    db = sqlite3.connect(path)
    row = db.execute(
        "SELECT nonce, ciphertext, salt, content_hash, shredded_at FROM records"
    ).fetchone()
    assert row[:3] == (None, None, None)
    assert row[3] == rec.content_hash and row[4] is not None
    assert db.execute("SELECT COUNT(*) FROM wrapped_keys").fetchone() == (0,)
    db.close()


def test_shred_twice_and_unknown(store: VaultStore) -> None:
    store.put(record())
    store.shred("rec-1")
    with pytest.raises(Conflict) as again:
        store.shred("rec-1")
    assert again.value.code == "ALREADY_SHREDDED"
    with pytest.raises(NotFound) as unknown:
        store.shred("nope")
    assert unknown.value.code == "UNKNOWN_RECORD"
    with pytest.raises(NotFound):
        store.is_shredded("nope")


def test_a_shredded_record_id_is_not_reused(store: VaultStore) -> None:
    store.put(record())
    store.shred("rec-1")
    with pytest.raises(Conflict) as caught:
        store.put(record(version=2))
    assert caught.value.code == "RECORD_SHREDDED"


def test_shred_records_the_time(path: Path) -> None:
    store = VaultStore(path, clock=lambda: "2030-05-06T07:08:09Z")
    store.put(record())
    store.shred("rec-1")
    store.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT shredded_at FROM records").fetchone() == ("2030-05-06T07:08:09Z",)
    db.close()


@pytest.mark.parametrize("checkpointed", [False, True], ids=["in-wal", "in-main-file"])
@pytest.mark.parametrize("size", [64, 20_000], ids=["inline", "overflow-pages"])
def test_shredded_bytes_are_gone_from_every_file(path: Path, checkpointed: bool, size: int) -> None:
    """secure_delete zeroes the freed cells and pages; the WAL's old frames are truncated away."""
    store = VaultStore(path)
    doomed = [record("doomed", v, size=size) for v in (1, 2)]
    kept = record("kept", size=size)
    for rec in [*doomed, kept]:
        store.put(rec)
    if checkpointed:
        assert store.checkpoint()
        store.close()
        store = VaultStore(path)
    data = file_bytes(path)
    assert all(s in data for rec in doomed for s in secrets_of(rec))  # the scan can see them
    store.shred("doomed")
    data = file_bytes(path)  # still open
    assert not [s for rec in doomed for s in secrets_of(rec) if s in data]
    store.close()
    data = file_bytes(path)
    assert not [s for rec in doomed for s in secrets_of(rec) if s in data]
    assert all(s in data for s in secrets_of(kept))


def test_concurrent_writers_and_readers(store: VaultStore) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(10):
                rec = record(f"w{worker}-{i}", patient=f"pat-{worker}")
                store.put(rec)
                assert store.get(rec.record_id) == rec
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for worker in range(6):
        assert len(store.for_patient(f"pat-{worker}")) == 10


def test_put_many_stores_all_or_none(store: VaultStore) -> None:
    store.put(record("taken"))
    batch = [record("fresh-1"), record("taken"), record("fresh-2")]
    with pytest.raises(Conflict):
        store.put_many(batch)
    for rid in ("fresh-1", "fresh-2"):
        with pytest.raises(NotFound):
            store.get(rid)
    store.put_many([record("fresh-1"), record("fresh-2")])
    assert store.get("fresh-2").record_id == "fresh-2"
    rows = store.live_records(["Observation"])
    assert [r[1] for r in rows] == sorted(["taken", "fresh-1", "fresh-2"])


def test_created_is_read_from_the_same_clock_as_last_updated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """time.gmtime() alone reads the kernel's coarse clock, a few ms behind time.time(): a
    version sealed just after a second began was "created" before its lastUpdated."""
    from careledger.vault import store as vault_store

    monkeypatch.setattr(vault_store.time, "time", lambda: 1_700_000_000.999)
    assert vault_store._utc_now() == "2023-11-14T22:13:20Z"
