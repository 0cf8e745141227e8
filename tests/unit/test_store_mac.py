"""The integrity codes of a node's stores (``careledger.store_mac``, ADR 0019): kept by SQLite
itself on every write path, refused to writers without the node's key, given to old stores
once, never re-given to a store whose codes someone removed."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import orjson
import pytest

from careledger import store_mac
from careledger.errors import StorageError
from careledger.keyfile import generate_keypair, write_key_file
from careledger.node_audit import Difference, schema_created_by, schema_of
from careledger.node_audit.integrity import ROW_CHANGED, ROWS_CHANGED, IntegrityCheck
from careledger.store_mac import StoreKeys, create_schema, encode
from careledger.supply.alerts import SCHEMA as ALERTS
from tests.support.forgery import forger

KEYS = StoreKeys.for_node(generate_keypair())
SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, size REAL, body BLOB);
CREATE INDEX IF NOT EXISTS items_size ON items(size);
CREATE TABLE IF NOT EXISTS pairs(a TEXT NOT NULL, b INTEGER NOT NULL, note TEXT,
  PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS named(key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""
STORE = "test.sqlite"


def open_store(path: Path, keys: StoreKeys | None = KEYS, schema: str = SCHEMA) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    if keys is not None:
        keys.attach(conn)
    create_schema(conn, path, keys, [schema])
    return conn


def audit(conn: sqlite3.Connection, keys: StoreKeys = KEYS) -> list[Difference]:
    found = list(IntegrityCheck(STORE).check_connection(conn, keys, lambda n: None))
    conn.text_factory = str
    return found


def fill(conn: sqlite3.Connection) -> None:
    for i in range(5):
        conn.execute("INSERT INTO items(name, size, body) VALUES(?, ?, ?)",
                     (f"n{i}", i / 3, bytes([i]) * 4))  # fmt: skip
    conn.execute("INSERT INTO pairs VALUES('x', 1, NULL), ('x', 2, 'é'), ('y', 1, '')")
    conn.execute("INSERT INTO named VALUES('k1', x'00'), ('k2', x'0102')")


@pytest.fixture
def store(tmp_path: Path) -> sqlite3.Connection:
    conn = open_store(tmp_path / STORE)
    fill(conn)
    return conn


def test_keys_are_derived_from_the_node_key_and_never_shown() -> None:
    key = generate_keypair()
    a, b = StoreKeys.for_node(key), StoreKeys.for_node(key)
    assert a.row_mac("s", "t", [1]) == b.row_mac("s", "t", [1])
    assert a.row_mac("s", "t", [1]) != StoreKeys.for_node(generate_keypair()).row_mac("s", "t", [1])
    assert a.element(b"c" * 32, None) != a.row_mac("s", "t", [1])
    assert repr(a) == "StoreKeys(...)" and key.seed.hex() not in repr(a)


def test_the_encoding_keeps_types_and_boundaries_apart() -> None:
    one = [encode("s", "t", [v]) for v in (1, 1.0, "1", b"1", None, store_mac.RawText(b"1"))]
    assert len(set(one)) == 5  # text read back as raw bytes is the same text
    assert encode("s", "t", ["ab", "c"]) != encode("s", "t", ["a", "bc"])
    assert encode("st", "t", []) != encode("s", "tt", [])
    assert encode("s", "t", [None]) != encode("s", "t", [])


def test_every_write_path_keeps_codes_and_digests(store: sqlite3.Connection) -> None:
    store.execute("UPDATE items SET size = size + 1 WHERE seq > 2")
    store.execute("INSERT OR REPLACE INTO items(seq, name, size) VALUES(1, 'n0', 9.5)")
    store.execute("INSERT OR REPLACE INTO named VALUES('k1', x'ff')")  # removes the old row
    store.execute("INSERT INTO pairs VALUES('x', 1, 'again') ON CONFLICT(a, b) "
                  "DO UPDATE SET note = excluded.note")  # fmt: skip
    store.execute("DELETE FROM items WHERE seq = 2")
    store.execute("UPDATE items SET rowid = 40 WHERE seq = 3")
    store.execute("BEGIN")
    store.execute("DELETE FROM pairs")
    store.execute("ROLLBACK")
    assert audit(store) == []
    rows = dict(store.execute("SELECT tbl, rows FROM integrity").fetchall())
    assert rows == {"items": 4, "pairs": 3, "named": 2, "": 3}


def test_a_connection_without_the_key_cannot_write(tmp_path: Path, store: sqlite3.Connection) -> None:
    with closing(sqlite3.connect(tmp_path / STORE)) as plain:
        assert plain.execute("SELECT COUNT(*) FROM items").fetchone() == (5,)  # reads do
        for statement in ("INSERT INTO named VALUES('k3', x'03')",
                          "UPDATE items SET size = 0", "DELETE FROM pairs"):  # fmt: skip
            with pytest.raises(sqlite3.OperationalError, match="careledger_"):
                plain.execute(statement)
        with pytest.raises(sqlite3.OperationalError, match="generated column"):
            plain.execute("UPDATE items SET mac = zeroblob(32)")


def test_a_forged_write_is_named_by_its_row_or_its_digest(store: sqlite3.Connection) -> None:
    path = Path(store.execute("PRAGMA database_list").fetchone()[2])
    (code,) = store.execute("SELECT mac FROM items WHERE seq = 3").fetchone()
    with closing(forger(path, code=code)) as conn:
        conn.execute("UPDATE items SET size = 99 WHERE seq = 3")  # the row's code kept
        conn.execute("DELETE FROM named WHERE key = 'k2'")
    found = audit(store)
    assert Difference(STORE, "items", "rowid 3", ROW_CHANGED) in found
    assert Difference(STORE, "items", "-", ROWS_CHANGED) in found
    assert Difference(STORE, "named", "-", ROWS_CHANGED) in found


def test_a_row_put_back_as_it_was_is_caught_by_the_digest(store: sqlite3.Connection) -> None:
    """Its code is the node's own; the table's digest no longer counts it."""
    path = Path(store.execute("PRAGMA database_list").fetchone()[2])
    (code,) = store.execute("SELECT mac FROM pairs WHERE a = 'y'").fetchone()
    store.execute("UPDATE pairs SET note = 'changed by the node' WHERE a = 'y'")
    assert audit(store) == []
    with closing(forger(path, code=code)) as conn:
        conn.execute("UPDATE pairs SET note = '' WHERE a = 'y'")
    assert audit(store) == [Difference(STORE, "pairs", "-", ROWS_CHANGED)]


def test_a_row_without_rowids_is_named_by_its_key_without_blobs(store: sqlite3.Connection) -> None:
    path = Path(store.execute("PRAGMA database_list").fetchone()[2])
    with closing(forger(path)) as conn:
        conn.execute("UPDATE pairs SET note = 'x' WHERE a = 'x' AND b = 2")
    assert Difference(STORE, "pairs", "a=x, b=2", ROW_CHANGED) in audit(store)


def test_an_old_store_is_coded_once_as_found(tmp_path: Path) -> None:
    """Rows from before are vouched for (counted, with the time); its indexes, AUTOINCREMENT
    sequence and other triggers stay, and its layout is the one the audit expects."""
    path = tmp_path / STORE
    with closing(open_store(path, keys=None)) as old:
        fill(old)
        old.execute("DELETE FROM items WHERE seq = 5")  # the sequence stays at 5
        old.execute("CREATE TRIGGER keep AFTER DELETE ON named BEGIN SELECT 1; END")
    with closing(open_store(path)) as conn:
        assert audit(conn) == []
        held = {t: (n, v) for t, n, v in conn.execute("SELECT tbl, rows, vouched FROM integrity")}
        assert held == {"items": (4, 4), "pairs": (3, 3), "named": (2, 2), "": (3, 9)}
        assert conn.execute("SELECT seq FROM sqlite_sequence").fetchone() == (5,)
        conn.execute("INSERT INTO items(name) VALUES('after')")
        assert conn.execute("SELECT MAX(seq) FROM items").fetchone() == (6,)
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"items_size", "keep", "integrity_items_insert"} <= names
        conn.execute("DROP TRIGGER keep")
        assert audit(conn) == []
        assert schema_of(conn) == schema_created_by(SCHEMA, store=STORE)


def test_a_new_store_has_the_layout_the_audit_expects(tmp_path: Path) -> None:
    with closing(open_store(tmp_path / STORE, schema=ALERTS)) as conn:
        assert schema_of(conn) == schema_created_by(ALERTS, store=STORE)


def test_codes_removed_from_a_table_are_not_given_again(tmp_path: Path) -> None:
    """A table whose digest row is gone, or which was dropped and is made again empty, is not
    vouched for afresh at the next open: the audit still says so."""
    path = tmp_path / STORE
    with closing(open_store(path)) as conn:
        fill(conn)
    with closing(forger(path)) as conn:
        conn.execute("DELETE FROM integrity WHERE tbl = 'named'")
        conn.execute("DROP TABLE pairs")
        conn.execute("DELETE FROM integrity WHERE tbl = 'pairs'")
    with closing(open_store(path)) as conn:  # the node opens it again: pairs is made anew
        found = audit(conn)
        assert Difference(STORE, "named", "-", "the table has no integrity digest: rows were "
                          "added or removed outside the node") in found  # fmt: skip
        assert any(d.table == "integrity" and d.row == "(tables)" for d in found)
        conn.execute("INSERT INTO named VALUES('k9', x'09')")  # the node still writes


def test_a_table_added_by_a_newer_node_is_coded_from_empty(tmp_path: Path) -> None:
    path = tmp_path / STORE
    with closing(open_store(path)) as conn:
        fill(conn)
    with closing(open_store(path, schema=SCHEMA + ALERTS)) as conn:
        conn.execute("INSERT INTO alert_meta VALUES('height', 3)")
        assert audit(conn) == []
        assert conn.execute("SELECT vouched FROM integrity WHERE tbl = 'alerts'").fetchone() == (0,)


def test_a_store_outside_a_node_directory_has_no_codes(tmp_path: Path) -> None:
    assert store_mac.keys_for(tmp_path / STORE) is None
    with closing(store_mac.connect(tmp_path / STORE)) as conn:
        conn.executescript(SCHEMA)
        fill(conn)  # a plain store, as unit tests of the store modules make


def test_a_node_directory_whose_key_cannot_be_read_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_bytes(orjson.dumps(
        {"node_name": "n", "org": "o", "node_key": "keys/n.key"}))  # fmt: skip
    with pytest.raises(StorageError, match="node key"):
        store_mac.keys_for(tmp_path / STORE)
    (tmp_path / "keys").mkdir()
    key = generate_keypair()
    write_key_file(tmp_path / "keys" / "n.key", key, name="n")
    found = store_mac.keys_for(tmp_path / STORE)
    assert found is not None
    assert found.row_mac("s", "t", []) == StoreKeys.for_node(key).row_mac("s", "t", [])
