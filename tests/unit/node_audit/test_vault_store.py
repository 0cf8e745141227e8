"""The vault's audit (issue 14): a clean demo node has no difference; one changed value, one
deleted row or one added row in any table of vault.sqlite is named by store and table."""

from __future__ import annotations

import re
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from careledger import store_mac
from careledger.config import Settings
from careledger.keyfile import read_key_file
from careledger.node_audit import Difference, NodeContext
from careledger.node_audit.vault_store import VaultStoreCheck, _anchored_record_ids
from careledger.storage.sqlite import SQLiteStore
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration
VAULT = "vault.sqlite"


@dataclass(frozen=True)
class Ids:
    live: str  # a record at version 1
    updated: str  # a record at version 2
    shredded: str  # a record the ledger shredded
    other_patient: str  # a patient none of the above belong to
    node_key: str  # the node's public key (base64url)
    words: tuple[str, ...]  # strings of a decrypted resource, which no difference may carry


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Ids]:
    """A demo node with one record updated and one shredded, every store closed."""
    from careledger.health.service import HealthRecords
    from careledger.node import Node

    data = tmp_path_factory.mktemp("vault-audit") / "node"
    demo_node(data, with_supply=False)
    with store_mac.connect(data / VAULT) as conn:
        observations = [r for (r,) in conn.execute(
            "SELECT record_id FROM records WHERE resource_type = 'Observation'"
            " ORDER BY record_id LIMIT 3")]  # fmt: skip
        patients = [p for (p,) in conn.execute("SELECT DISTINCT patient FROM records")]
    conn.close()
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    try:
        live, updated, shredded = observations
        current = records.open_anchored(updated, 1)
        assert current is not None
        records.update(records.node_caller(), {**current, "status": "amended"}, updated)
        owner = records.record_meta(shredded)["patient"]
        key = records.custodial_key(owner)
        assert key is not None
        (receipt,) = node.execute(
            [("records", "shred", {"record": shredded, "reason": "patient_request"})], keypair=key
        )
        assert receipt["result"] == "accepted", receipt
        patient = records.record_meta(live)["patient"]
        resource = records.open_anchored(patient, 1)  # the Patient resource: names, birth date
        assert resource is not None
        words = tuple(_identifying(resource))
    finally:
        records.close()
        node.stop()
        node.ledger.store.close()
    with store_mac.connect(data / VAULT) as conn:
        assert conn.execute(
            "SELECT ciphertext FROM records WHERE record_id = ?", (shredded,)
        ).fetchone() == (None,)
    conn.close()
    other = next(p for p in patients if p not in {patient, owner})
    node_key = read_key_file(Settings.load(data).node_key_file)[1].public_b64
    return data, Ids(live, updated, shredded, other, node_key, words)


def _identifying(patient: dict[str, Any]) -> Iterator[str]:
    """The patient's names, birth date and address lines."""
    for name in patient.get("name", []):
        yield from [name.get("family", ""), *name.get("given", [])]
    yield patient.get("birthDate", "")
    for address in patient.get("address", []):
        yield from [*address.get("line", []), address.get("city", "")]


@contextmanager
def context_of(data: Path) -> Iterator[NodeContext]:
    settings = Settings.load(data)
    store = SQLiteStore(settings.store_path, readonly=True)
    try:
        _, key = read_key_file(settings.node_key_file)
        yield NodeContext(data, store, key, settings.node_name, settings.org)
    finally:
        store.close()


def audit(data: Path, check: VaultStoreCheck | None = None) -> tuple[list[Difference], int, int]:
    """(differences, rows reported to progress, size)."""
    check = check or VaultStoreCheck()
    with context_of(data) as context:
        done: list[int] = []
        found = list(check.check(context, done.append))
        return found, sum(done), check.size(context)


@pytest.fixture
def node(pristine: tuple[Path, Ids], tmp_path: Path) -> tuple[Path, Ids]:
    data, ids = pristine
    copy = tmp_path / "node"
    shutil.copytree(data, copy)
    return copy, ids


def test_a_clean_node_has_no_difference(pristine: tuple[Path, Ids]) -> None:
    data, _ = pristine
    found, done, size = audit(data)
    assert found == []
    assert done == size > 200


def test_the_ledger_is_listed_a_page_at_a_time(node: tuple[Path, Ids]) -> None:
    data, ids = node
    with context_of(data) as context:
        whole = list(_anchored_record_ids(context, 1_000_000))
        assert list(_anchored_record_ids(context, 3)) == whole
    assert len(whole) == len(set(whole)) > 200
    assert {ids.live, ids.updated, ids.shredded} <= set(whole)
    small = VaultStoreCheck()
    small.ledger_page = 3  # every prefix overflows: the listing goes characters deep
    assert audit(data, small)[0] == []
    with store_mac.connect(data / VAULT) as conn:
        conn.execute("DELETE FROM records WHERE record_id = ?", (ids.live,))
    conn.close()
    found = audit(data, small)[0]
    assert ("records", f"{ids.live} v1") in {(d.table, d.row) for d in found}
    assert {d.row for d in found} == {f"{ids.live} v1"}  # and its keys and tokens, orphaned


# -- tampering ------------------------------------------------------------------------------


Tamper = Callable[[sqlite3.Connection, Ids], object]


def flip(conn: sqlite3.Connection, table: str, column: str, where: str, *params: object) -> None:
    """Change one byte (or character) in the middle of one cell."""
    (value,) = conn.execute(f"SELECT {column} FROM {table} WHERE {where}", params).fetchone()
    if isinstance(value, str):
        middle = len(value) // 2
        changed: object = (
            value[:middle] + ("0" if value[middle] != "0" else "1") + value[middle + 1 :]
        )
    else:
        raw = bytearray(value)
        raw[len(raw) // 2] ^= 0x01
        changed = bytes(raw)
    cursor = conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (changed, *params))
    assert cursor.rowcount == 1


def one_token(conn: sqlite3.Connection, record_id: str) -> bytes:
    (token,) = conn.execute(
        "SELECT token FROM blind WHERE record_id = ? AND version = 1 LIMIT 1", (record_id,)
    ).fetchone()
    return bytes(token)


def copy_row(conn: sqlite3.Connection, table: str, new_id: str, record_id: str, at: int,
             **changes: object) -> None:  # fmt: skip
    """A copy of the first row of ``record_id`` at version ``at`` under ``new_id``, with ``changes``."""
    columns = [c for (_, c, *_) in conn.execute(f"PRAGMA table_info({table})")]
    rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table}"
                        " WHERE record_id = ? AND version = ?", (record_id, at)).fetchall()  # fmt: skip
    for row in rows[:1]:
        values = {**dict(zip(columns, row, strict=True)), "record_id": new_id, **changes}
        marks = ", ".join("?" for _ in columns)
        conn.execute(f"INSERT INTO {table}({', '.join(columns)}) VALUES({marks})",
                     [values[c] for c in columns])  # fmt: skip


CASES: dict[str, tuple[str, Tamper]] = {
    # records: a changed value in each column, deleted rows, added rows
    "records-ciphertext-byte": ("records", lambda c, i: flip(
        c, "records", "ciphertext", "record_id = ?", i.live)),
    "records-nonce-byte": ("records", lambda c, i: flip(c, "records", "nonce", "record_id = ?", i.live)),
    "records-salt-byte": ("records", lambda c, i: flip(c, "records", "salt", "record_id = ?", i.live)),
    "records-content-hash": ("records", lambda c, i: flip(
        c, "records", "content_hash", "record_id = ?", i.live)),
    "records-patient": ("records", lambda c, i: c.execute(
        "UPDATE records SET patient = ? WHERE record_id = ?", (i.other_patient, i.live))),
    "records-resource-type": ("records", lambda c, i: c.execute(
        "UPDATE records SET resource_type = 'Condition' WHERE record_id = ?", (i.live,))),
    "records-custodian": ("records", lambda c, i: c.execute(
        "UPDATE records SET custodian = 'northside-clinic' WHERE record_id = ?", (i.live,))),
    "records-created-byte": ("records", lambda c, i: flip(
        c, "records", "created", "record_id = ?", i.live)),
    "records-created-year": ("records", lambda c, i: c.execute(
        "UPDATE records SET created = '2019' || substr(created, 5) WHERE record_id = ?", (i.live,))),
    "records-marked-shredded": ("records", lambda c, i: c.execute(
        "UPDATE records SET shredded_at = created WHERE record_id = ?", (i.live,))),
    "records-version": ("records", lambda c, i: c.execute(
        "UPDATE records SET version = 3 WHERE record_id = ? AND version = 2", (i.updated,))),
    "records-shredded-content-back": ("records", lambda c, i: c.execute(
        "UPDATE records SET ciphertext = zeroblob(900) WHERE record_id = ?", (i.shredded,))),
    "records-shredded-unmarked": ("records", lambda c, i: c.execute(
        "UPDATE records SET shredded_at = NULL WHERE record_id = ?", (i.shredded,))),
    "records-delete-live": ("records", lambda c, i: c.execute(
        "DELETE FROM records WHERE record_id = ?", (i.live,))),
    "records-delete-old-version": ("records", lambda c, i: c.execute(
        "DELETE FROM records WHERE record_id = ? AND version = 1", (i.updated,))),
    "records-delete-tombstone": ("records", lambda c, i: c.execute(
        "DELETE FROM records WHERE record_id = ?", (i.shredded,))),
    "records-add-unanchored-record": ("records", lambda c, i: copy_row(
        c, "records", "f" * 32, i.live, 1)),
    "records-add-unanchored-version": ("records", lambda c, i: copy_row(
        c, "records", i.updated, i.updated, 2, version=3)),
    # wrapped_keys
    "wrapped-node-byte": ("wrapped_keys", lambda c, i: flip(
        c, "wrapped_keys", "wrapped", "record_id = ? AND version = 1 AND recipient = ?", i.live,
        i.node_key)),
    "wrapped-patient-byte": ("wrapped_keys", lambda c, i: flip(
        c, "wrapped_keys", "wrapped", "record_id = ? AND version = 1 AND recipient != ?", i.live,
        i.node_key)),
    "wrapped-patient-truncated": ("wrapped_keys", lambda c, i: c.execute(
        "UPDATE wrapped_keys SET wrapped = substr(wrapped, 1, 79)"
        " WHERE record_id = ? AND recipient != ?", (i.live, i.node_key))),
    "wrapped-recipient-byte": ("wrapped_keys", lambda c, i: flip(
        c, "wrapped_keys", "recipient", "record_id = ? AND version = 1 AND recipient != ?",
        i.live, i.node_key)),
    "wrapped-delete-node": ("wrapped_keys", lambda c, i: c.execute(
        "DELETE FROM wrapped_keys WHERE record_id = ? AND recipient = ?", (i.live, i.node_key))),
    "wrapped-delete-patient": ("wrapped_keys", lambda c, i: c.execute(
        "DELETE FROM wrapped_keys WHERE record_id = ? AND recipient != ?", (i.live, i.node_key))),
    "wrapped-add-orphan": ("wrapped_keys", lambda c, i: copy_row(
        c, "wrapped_keys", i.live, i.live, 1, version=7)),
    "wrapped-add-recipient": ("wrapped_keys", lambda c, i: copy_row(
        c, "wrapped_keys", i.live, i.live, 1, recipient="A" * 43)),
    "wrapped-add-to-shredded": ("wrapped_keys", lambda c, i: copy_row(
        c, "wrapped_keys", i.shredded, i.live, 1)),
    # blind
    "blind-token-byte": ("blind", lambda c, i: c.execute(
        "UPDATE blind SET token = ? WHERE token = ? AND record_id = ?",
        (bytes([one_token(c, i.live)[0] ^ 1]) + one_token(c, i.live)[1:], one_token(c, i.live),
         i.live))),
    "blind-delete-token": ("blind", lambda c, i: c.execute(
        "DELETE FROM blind WHERE token = ? AND record_id = ?", (one_token(c, i.live), i.live))),
    "blind-add-token": ("blind", lambda c, i: c.execute(
        "INSERT INTO blind(token, record_id, version) VALUES(?, ?, 1)", (b"\x07" * 16, i.live))),
    "blind-add-orphan": ("blind", lambda c, i: c.execute(
        "INSERT INTO blind(token, record_id, version) VALUES(?, ?, 5)",
        (one_token(c, i.live), i.live))),
    "blind-add-to-shredded": ("blind", lambda c, i: c.execute(
        "INSERT INTO blind(token, record_id, version) VALUES(?, ?, 1)",
        (one_token(c, i.live), i.shredded))),
    "blind-move-token": ("blind", lambda c, i: c.execute(
        "UPDATE blind SET record_id = ? WHERE record_id = ? AND token = (SELECT token FROM blind"
        " WHERE record_id = ? AND token NOT IN (SELECT token FROM blind WHERE record_id = ?)"
        " LIMIT 1)", (i.updated, i.live, i.live, i.updated))),
    # meta
    "meta-schema-version": ("meta", lambda c, i: c.execute(
        "UPDATE meta SET value = '2' WHERE name = 'schema_version'")),
    "meta-blind-index-value": ("meta", lambda c, i: c.execute(
        "UPDATE meta SET value = '0' WHERE name = 'blind_index'")),
    "meta-delete": ("meta", lambda c, i: c.execute("DELETE FROM meta WHERE name = 'blind_index'")),
    "meta-add": ("meta", lambda c, i: c.execute(
        "INSERT INTO meta(name, value) VALUES('rebuilt', '1')")),
    # the schema, named by the table it belongs to
    "schema-drop-index": ("records", lambda c, i: c.execute("DROP INDEX records_by_patient")),
    "schema-add-index": ("blind", lambda c, i: c.execute("CREATE INDEX by_version ON blind(version)")),
    "schema-add-table": ("extra", lambda c, i: c.execute("CREATE TABLE extra(x)")),
}  # fmt: skip


@pytest.mark.parametrize(("table", "tamper"), CASES.values(), ids=CASES.keys())
def test_a_change_in_any_table_is_named(node: tuple[Path, Ids], table: str, tamper: Tamper) -> None:
    data, ids = node
    with store_mac.connect(data / VAULT) as conn:
        tamper(conn, ids)
    conn.close()
    found, _, _ = audit(data)
    assert found, "the change went unnoticed"
    assert {d.store for d in found} == {VAULT}
    assert table in {d.table for d in found}, found
    for difference in found:  # plain statements, never the record's content
        assert not any(word in difference.problem for word in ids.words), difference
        assert "{" not in difference.problem


def test_a_patients_own_wrap_cannot_be_checked_beyond_its_form(node: tuple[Path, Ids]) -> None:
    """Without the patient's key, a wrap of the right length to the right key passes: the
    limit the module docstring states (and only the patient's access is lost)."""
    data, ids = node
    shutil.rmtree(data / "keys" / "patients")
    assert audit(data)[0] == []
    with store_mac.connect(data / VAULT) as conn:
        flip(conn, "wrapped_keys", "wrapped", "record_id = ? AND version = 1 AND recipient != ?",
             ids.live, ids.node_key)  # fmt: skip
    conn.close()
    assert audit(data)[0] == []


def _file_state(path: Path) -> tuple[object, ...]:
    """What the file holds, read through SQLite: every table's rows and the integrity check
    (which reads every index)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        tables = [t for (t,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        rows = [sorted(map(repr, conn.execute(f'SELECT * FROM "{t}"'))) for t in tables]
        check = conn.execute("PRAGMA integrity_check").fetchall()
        return (tables, rows, check)
    except sqlite3.DatabaseError as exc:  # the change broke the file's structure: live
        return (repr(exc),)
    finally:
        conn.close()


def test_a_missing_vault_is_named_when_the_ledger_anchored_records(node: tuple[Path, Ids]) -> None:
    data, _ = node
    (data / VAULT).unlink()
    found, done, size = audit(data)
    assert [(d.store, d.table) for d in found] == [(VAULT, "records")]
    assert done == size == 0


@pytest.mark.parametrize("which", ["record", "patient"])
@pytest.mark.parametrize("sample", [0, 1, 2])
def test_a_byte_changed_in_the_file_itself_is_caught(
    node: tuple[Path, Ids], which: str, sample: int
) -> None:
    """Not through SQL: one character of a record id or patient pseudonym, wherever the file
    holds it (the record's row, its keys, its tokens, an index), changed in place."""
    data, ids = node
    path = data / VAULT
    with store_mac.connect(path) as conn:
        (patient,) = conn.execute("SELECT patient FROM records WHERE record_id = ?",
                                  (ids.live,)).fetchone()  # fmt: skip
    conn.close()
    raw = bytearray(path.read_bytes())
    needle = (ids.live if which == "record" else patient).encode()
    places = [m.start() for m in re.finditer(re.escape(needle), raw)]
    assert len(places) > 3
    before = _file_state(path)
    first = sample * len(places) // 3
    for place in places[first:] + places[:first]:  # the sampled place, else the next live one
        changed = bytearray(raw)
        at = place + len(needle) - 2
        changed[at] = ord("0") if changed[at] != ord("0") else ord("1")
        path.write_bytes(bytes(changed))
        if _file_state(path) != before:
            break
        # a stale copy in a page's unallocated space (what SQLite leaves when it moves cells
        # while rebalancing): no table or index holds it, so there is nothing to catch
    else:
        pytest.fail("no occurrence of the identifier is in live data")
    found, _, _ = audit(data)
    assert found, "the change went unnoticed"
    assert {d.store for d in found} == {VAULT}
