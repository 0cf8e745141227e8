"""The integrity codes of a node's stores (``careledger.store_mac``, ADR 0019): kept by SQLite
itself on every write path, refused to writers without the node's key, given to old stores
once, never re-given to a store whose codes someone removed; refused to a store whose schema
someone changed (the review's proofs of concept are the tests at the end)."""

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
from careledger.node_audit.integrity import MALFORMED, ROW_CHANGED, ROWS_CHANGED, IntegrityCheck
from careledger.store_mac import StoreKeys, create_schema, encode
from careledger.supply.alerts import SCHEMA as ALERTS
from tests.support.forgery import forger

STORE = "test.sqlite"
NODE_KEY = generate_keypair()
KEYS = StoreKeys.for_node(NODE_KEY, STORE)
SCHEMA = """
CREATE TABLE IF NOT EXISTS items(
  seq INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL UNIQUE, size REAL, body BLOB);
CREATE INDEX IF NOT EXISTS items_size ON items(size);
CREATE TABLE IF NOT EXISTS pairs(a TEXT NOT NULL, b INTEGER NOT NULL, note TEXT,
  PRIMARY KEY(a, b)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS named(key TEXT PRIMARY KEY, value BLOB NOT NULL);
"""


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


def test_keys_are_derived_from_the_node_key_and_the_store_and_never_shown() -> None:
    key = generate_keypair()
    a, b = StoreKeys.for_node(key, "s"), StoreKeys.for_node(key, "s")
    assert a.row_mac("s", "t", [1]) == b.row_mac("s", "t", [1])
    other = StoreKeys.for_node(generate_keypair(), "s")
    assert a.row_mac("s", "t", [1]) != other.row_mac("s", "t", [1])
    # another store of the same node: no code, element or mask of one is the other's
    vault = StoreKeys.for_node(key, "vault.sqlite")
    assert vault.row_mac("s", "t", [1]) != a.row_mac("s", "t", [1])
    assert vault.element(b"c" * 32, None) != a.element(b"c" * 32, None)
    assert a.element(b"c" * 32, None) != a.row_mac("s", "t", [1])
    assert repr(a) == "StoreKeys('s', ...)" and key.seed.hex() not in repr(a)


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
    schema = SCHEMA + "CREATE TRIGGER IF NOT EXISTS keep AFTER DELETE ON named BEGIN SELECT 1; END;"
    with closing(open_store(path, keys=None, schema=schema)) as old:
        fill(old)
        old.execute("DELETE FROM items WHERE seq = 5")  # the sequence stays at 5
    with closing(open_store(path, schema=schema)) as conn:
        assert audit(conn) == []
        held = {t: (n, v) for t, n, v in conn.execute("SELECT tbl, rows, vouched FROM integrity")}
        assert held == {"items": (4, 4), "pairs": (3, 3), "named": (2, 2), "": (3, 9)}
        assert conn.execute("SELECT seq FROM sqlite_sequence").fetchone() == (5,)
        conn.execute("INSERT INTO items(name) VALUES('after')")
        assert conn.execute("SELECT MAX(seq) FROM items").fetchone() == (6,)
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master")}
        assert {"items_size", "keep", "integrity_items_insert"} <= names
        conn.execute("DELETE FROM named WHERE key = 'k1'")  # the module's own trigger runs
        assert audit(conn) == []
        assert schema_of(conn) == schema_created_by(schema, store=STORE)


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
    assert found.row_mac("s", "t", []) == StoreKeys.for_node(key, STORE).row_mac("s", "t", [])


# -- the review of the codes (ADR 0019, "Review"): each finding's proof of concept ----------------


def node_dir(tmp_path: Path) -> StoreKeys:
    """``tmp_path`` as a node's directory (node.json and its key): the keys of its test store."""
    (tmp_path / "node.json").write_bytes(orjson.dumps(
        {"node_name": "n", "org": "o", "node_key": "keys/n.key"}))  # fmt: skip
    (tmp_path / "keys").mkdir()
    write_key_file(tmp_path / "keys" / "n.key", NODE_KEY, name="n")
    found = store_mac.keys_for(tmp_path / STORE)
    assert found is not None
    return found


def test_the_functions_code_for_their_own_store_only(store: sqlite3.Connection) -> None:
    """H1: a trigger in one store cannot have the node compute another store's codes: the
    function refuses another store's name, and the other store's keys are not these."""
    with pytest.raises(sqlite3.OperationalError, match="user-defined function raised"):
        store.execute("SELECT careledger_row_mac('vault.sqlite', 'wrapped_keys', 'text', x'00')")
    (own,) = store.execute("SELECT careledger_row_mac(?, 'named', 'text', x'6b')", (STORE,)
                           ).fetchone()  # fmt: skip
    assert own == KEYS.row_mac(STORE, "named", ["k"])
    assert own != StoreKeys.for_node(NODE_KEY, "vault.sqlite").row_mac(STORE, "named", ["k"])


@pytest.mark.parametrize("planted", [
    "CREATE TRIGGER zz_loot AFTER INSERT ON named BEGIN "
    "UPDATE items SET body = careledger_row_mac('test.sqlite', 'items', 'text', x'00'); END",
    "CREATE TRIGGER zz_loot AFTER INSERT ON named BEGIN UPDATE items SET size = -1; END",
    "CREATE VIEW zz_loot AS SELECT careledger_row_mac('test.sqlite', 'named', 'text', x'00')",
    "CREATE TABLE zz_loot(k TEXT, v BLOB)",
    "CREATE INDEX zz_loot ON named(careledger_row_mac('test.sqlite', 'named', 'text', key))",
])  # fmt: skip
def test_an_object_planted_in_the_file_stops_the_node_writing(
    tmp_path: Path, store: sqlite3.Connection, planted: str
) -> None:
    """H1 (poc_trigger_oracle.py): whoever can write the file adds a trigger, view, table or
    expression index; the node's next open, and its open connection at its next use (the
    schema version moved), refuse the store, naming the object."""
    path = tmp_path / STORE
    guard = store_mac.SchemaGuard.for_store(STORE, [SCHEMA])
    checked = guard.check(store, None)
    assert guard.check(store, checked) == checked  # one pragma while nothing moved
    with closing(forger(path)) as attacker:  # an index's expression is checked at its making
        attacker.execute(planted)
    with pytest.raises(StorageError, match="'zz_loot'"):
        guard.check(store, checked)
    with pytest.raises(StorageError, match="'zz_loot', which no module of the node creates"):
        open_store(path).close()
    assert store.execute("SELECT COUNT(*) FROM items WHERE size = -1 OR length(body) = 32"
                         ).fetchone() == (0,)  # fmt: skip


def test_a_table_changed_in_the_file_stops_the_node_writing(
    tmp_path: Path, store: sqlite3.Connection
) -> None:
    path = tmp_path / STORE
    with closing(sqlite3.connect(path)) as attacker:
        attacker.execute("PRAGMA writable_schema=ON")
        attacker.execute("UPDATE sqlite_master SET sql = replace(sql, 'value BLOB NOT NULL', "
                         "'value BLOB NOT NULL CHECK (1)') WHERE name = 'named'")  # fmt: skip
        attacker.commit()
    with pytest.raises(StorageError, match="'named', not as the node creates it"):
        open_store(path).close()


def test_a_trigger_planted_after_the_check_cannot_use_the_node_connection(
    tmp_path: Path, store: sqlite3.Connection
) -> None:
    """H1 (c): between the schema check and a write, a planted trigger or a view compiles in
    the node's statement, and the authorizer denies everything it does: no code computed, no
    row written."""
    path = tmp_path / STORE
    guard = store_mac.SchemaGuard.for_store(STORE, [SCHEMA])
    checked = guard.check(store, None)
    with closing(sqlite3.connect(path, isolation_level=None)) as attacker:
        attacker.execute("CREATE TABLE loot(v BLOB)")
        attacker.execute("CREATE TRIGGER zz_loot AFTER INSERT ON named BEGIN INSERT INTO loot "
                         "VALUES(careledger_row_mac('test.sqlite', 'named', 'text', x'00')); "
                         "UPDATE items SET size = -1; END")  # fmt: skip
        attacker.execute("CREATE VIEW zz_view AS SELECT careledger_row_mac('test.sqlite', "
                         "'named', 'text', x'00') AS v")  # fmt: skip
        for statement in ("INSERT INTO named VALUES('k3', x'03')", "SELECT * FROM zz_view"):
            with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
                store.execute(statement)
        assert attacker.execute("SELECT COUNT(*) FROM loot").fetchone() == (0,)
        attacker.execute("DROP TRIGGER zz_loot")
        attacker.execute("DROP VIEW zz_view")
        attacker.execute("DROP TABLE loot")
    guard.check(store, checked)  # as the node does at the next use: the schema moved back
    store.execute("INSERT INTO named VALUES('k3', x'03')")  # the node's own triggers run
    assert audit(store) == []


def test_two_copies_of_the_file_do_not_give_a_row_share_of_the_digest(
    tmp_path: Path, store: sqlite3.Connection
) -> None:
    """H2 (poc_xor_delta.py): the digest is masked under a counter every write advances, so
    the difference of two copies around a write is not the written row's share: removing that
    row and patching the digest with it is still named."""
    path = tmp_path / STORE
    held = "SELECT digest, seq FROM integrity WHERE tbl = 'named'"
    before, seq = store.execute(held).fetchone()
    store.execute("INSERT INTO named VALUES('stolen', x'05')")
    after, seq_after = store.execute(held).fetchone()
    assert seq_after == seq + 1 and len(after) == 64
    (code, rowid) = store.execute("SELECT mac, rowid FROM named WHERE key = 'stolen'").fetchone()
    delta = store_mac._xor(before[:32], after[:32])
    assert delta != KEYS.element(code, rowid)
    store.execute("INSERT INTO named VALUES('later', x'06')")
    with closing(forger(path)) as attacker:
        attacker.execute("BEGIN")
        attacker.execute("DELETE FROM named WHERE key = 'stolen'")
        attacker.execute("UPDATE integrity SET digest = ?, seq = ? WHERE tbl = 'named'",
                         (store_mac._xor(after[:32], delta) + after[32:], seq_after))  # fmt: skip
        attacker.execute("COMMIT")
    assert audit(store) == [Difference(STORE, "named", "-", ROWS_CHANGED)]


def test_a_store_stripped_of_its_codes_is_not_vouched_for_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """H3 (poc_strip_revouch.py): the integrity table and triggers dropped, a row deleted: the
    node refuses the store at its next open; the explicit enrolment shows what it vouches for,
    then codes it, its since moved and its vouched counting every row."""
    keys = node_dir(tmp_path)
    path = tmp_path / STORE
    with closing(open_store(path, keys=keys)) as conn:
        fill(conn)
        (since,) = conn.execute("SELECT since FROM integrity WHERE tbl = ''").fetchone()
    with closing(sqlite3.connect(path, isolation_level=None)) as attacker:  # no key
        for (name,) in attacker.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'"
                                        ).fetchall():  # fmt: skip
            attacker.execute(f'DROP TRIGGER "{name}"')
        attacker.execute("DELETE FROM named WHERE key = 'k2'")
        attacker.execute("DROP TABLE integrity")
    with pytest.raises(StorageError, match="integrity codes were removed"):
        open_store(path, keys=keys).close()
    assert store_mac.enrol(path, write=False) == {"items": 5, "named": 1, "pairs": 3}
    assert store_mac.main(["enrol", str(path)]) == 0  # shows, writes nothing
    with closing(sqlite3.connect(path)) as conn:
        assert not store_mac.has_rowid(conn, "integrity")  # still no integrity table
    monkeypatch.setattr(store_mac, "_utc_now", lambda: "2099-01-01T00:00:00Z")
    assert store_mac.main(["enrol", str(path), "--yes"]) == 0
    with closing(open_store(path, keys=keys)) as conn:
        assert audit(conn, keys) == []
        assert conn.execute("SELECT since, vouched FROM integrity WHERE tbl = ''").fetchone() == (
            "2099-01-01T00:00:00Z", 9) != (since, 0)


def test_a_malformed_integrity_row_is_named_never_a_crash(
    tmp_path: Path, store: sqlite3.Connection
) -> None:
    """L1 (probe_verify_crash.py): counts that are no integers (infinity, a REAL)."""
    path = tmp_path / STORE
    with closing(sqlite3.connect(path, isolation_level=None)) as attacker:
        attacker.execute("UPDATE integrity SET rows = 9e999 WHERE tbl = 'items'")
        attacker.execute("UPDATE integrity SET seq = 99999999999999999999 WHERE tbl = 'pairs'")
        attacker.execute("UPDATE integrity SET vouched = -9e999 WHERE tbl = ''")
    found = audit(store)
    for name in ("items", "pairs", "(tables)"):
        assert Difference(STORE, "integrity", name, MALFORMED) in found
    with closing(open_store(path)) as conn:  # the node still opens it, and writes
        conn.execute("INSERT INTO items(name) VALUES('after')")
        conn.execute("DELETE FROM pairs WHERE a = 'y'")
        assert Difference(STORE, "integrity", "items", MALFORMED) in audit(conn)


def test_text_that_is_not_utf8_is_coded_updated_and_deleted(
    tmp_path: Path, store: sqlite3.Connection
) -> None:
    """L2 (probe_nonutf8.py): values reach the functions as their type and bytes, never
    decoded: a damaged text is named by the audit, and the node (or a repair through
    ``connect``) still updates and deletes its row."""
    path = tmp_path / STORE
    store.execute("INSERT INTO named VALUES(CAST(x'6bfe' AS TEXT), x'01')")  # by the node
    assert audit(store) == []
    with closing(forger(path)) as attacker:
        attacker.execute("UPDATE pairs SET note = CAST(x'ff41' AS TEXT) WHERE a = 'y'")
    assert Difference(STORE, "pairs", "a=y, b=1", ROW_CHANGED) in audit(store)
    store.execute("UPDATE pairs SET b = 7 WHERE a = 'y'")
    store.execute("DELETE FROM pairs WHERE a = 'y'")
    store.execute("DELETE FROM named WHERE key = CAST(x'6bfe' AS TEXT)")
    assert audit(store) == [Difference(STORE, "pairs", "-", ROWS_CHANGED)]  # broken stays so


def test_a_failed_purge_does_not_keep_a_nonce_from_being_recorded(tmp_path: Path) -> None:
    """L2: the replay guard's purge of stale nonces fails (a damaged row); the request's nonce
    is still recorded, and a replay still refused."""
    from careledger.errors import Unauthorized
    from careledger.health.replay_guard import ReplayGuard

    guard = ReplayGuard(tmp_path / "federation.sqlite", keep_ms=1000)
    real = guard._conns.get

    class Failing:
        def __init__(self, conn: sqlite3.Connection) -> None:
            self.conn = conn

        def execute(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
            if sql.startswith("DELETE"):
                raise sqlite3.OperationalError("user-defined function raised exception")
            return self.conn.execute(sql, params)

    guard._conns.get = lambda: Failing(real())  # type: ignore[assignment,return-value]
    try:
        guard.first_use("n-1", 10_000)
        with pytest.raises(Unauthorized):
            guard.first_use("n-1", 10_001)
        guard.first_use("n-2", 20_000)
        assert real().execute("SELECT nonce FROM seen ORDER BY at").fetchall() == [
            ("n-1",), ("n-2",)]  # fmt: skip
    finally:
        guard.close()


def test_a_table_others_reference_is_coded_in_place(tmp_path: Path) -> None:
    """L3 (probe_fk_migration.py): SQLite's own procedure makes the table again under another
    name and renames it into place: other tables' REFERENCES still name it, and foreign keys
    hold (cascades run, coded)."""
    schema = """
    CREATE TABLE IF NOT EXISTS parent(k TEXT PRIMARY KEY, n INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS child(id INTEGER PRIMARY KEY,
      k TEXT REFERENCES parent(k) ON DELETE CASCADE, v);
    """
    path = tmp_path / STORE
    with closing(open_store(path, keys=None, schema=schema)) as old:
        old.execute("INSERT INTO parent VALUES('a', 1), ('b', 2)")
        old.execute("INSERT INTO child(k, v) VALUES('a', 1), ('a', 2), ('b', 3)")
    with closing(open_store(path, schema=schema)) as conn:
        sql = dict(conn.execute("SELECT name, sql FROM sqlite_master").fetchall())
        assert "REFERENCES parent(k)" in sql["child"] and "__integrity" not in "".join(
            s or "" for s in sql.values())
        assert schema_of(conn) == schema_created_by(schema, store=STORE)
        conn.execute("PRAGMA foreign_keys=ON")
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        conn.execute("DELETE FROM parent WHERE k = 'a'")
        assert conn.execute("SELECT COUNT(*) FROM child").fetchone() == (1,)
        assert audit(conn) == []
