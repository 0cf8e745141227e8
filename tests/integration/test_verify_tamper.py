"""`careledger verify` catches a byte changed anywhere in a real SQLite store, and names the height."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from careledger.errors import StorageError
from careledger.ledger.verify import verify_store
from careledger.storage.sqlite import SQLiteStore
from tests.support.nodes import demo_node, run_cli

pytestmark = pytest.mark.integration

# (table, column, key columns): every stored byte that verify must vouch for.
TARGETS = [
    ("blocks", "header", "height"),
    ("blocks", "hash", "height"),
    ("blocks", "writeset", "height"),
    ("txs", "envelope", "leaf"),
    ("txs", "receipt", "leaf"),
    ("txs", "tx_id", "leaf"),
    ("nodes", "hash", "level, idx"),
    ("state", "value", "ns, key"),
    ("events", "data", "height, seq"),
    ("events", "type", "height, seq"),
    ("meta", "value", "name"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("pristine") / "node"
    demo_node(data)
    return data


def copy_of(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "node"
    shutil.copytree(pristine, target)
    return target


def flip(db: Path, table: str, column: str, keys: str, row: int, position: float) -> int | None:
    """Flip one byte of one cell; returns the height the row belongs to (if it has one)."""
    conn = sqlite3.connect(db)
    rows = conn.execute(f"SELECT {keys}, {column} FROM {table} ORDER BY {keys}").fetchall()
    *key_values, value = rows[row % len(rows)]
    raw = bytearray(value.encode() if isinstance(value, str) else value)
    at = int(position * (len(raw) - 1))
    raw[at] = raw[at] ^ 0x01 if raw[at] ^ 0x01 else 0x02
    new = raw.decode("latin-1") if isinstance(value, str) else bytes(raw)
    where = " AND ".join(f"{k.strip()} = ?" for k in keys.split(","))
    conn.execute(f"UPDATE {table} SET {column} = ? WHERE {where}", (new, *key_values))
    height = None
    if table in ("blocks", "events"):
        height = key_values[0]
    elif table == "txs":
        height = conn.execute("SELECT height FROM txs WHERE leaf = ?", (key_values[0],)).fetchone()[
            0
        ]
    conn.commit()
    conn.close()
    return height


def test_clean_store_verifies(pristine: Path) -> None:
    for extra in ([], ["--reexecute"]):
        result = run_cli("verify", str(pristine), *extra)
        assert result.returncode == 0, result.stderr
        assert "ok" in result.stdout


@pytest.mark.parametrize(("table", "column", "keys"), TARGETS)
@pytest.mark.parametrize("row", [0, 1, -1])
@pytest.mark.parametrize("position", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("reexecute", [False, True], ids=["writesets", "reexecute"])
def test_any_flipped_byte_fails_verify(
    pristine: Path,
    tmp_path: Path,
    table: str,
    column: str,
    keys: str,
    row: int,
    position: float,
    reexecute: bool,
) -> None:
    data = copy_of(pristine, tmp_path)
    height = flip(data / "ledger.sqlite", table, column, keys, row, position)
    try:
        store = SQLiteStore(data / "ledger.sqlite", readonly=True)
    except StorageError:
        assert (table, row) == ("meta", -1)  # schema_version: the store refuses to open
        return
    report = verify_store(store, reexecute=reexecute)
    store.close()
    assert not report.ok, f"tampering {table}.{column} went unnoticed"
    if height is not None:
        assert report.height == height, report.problem


def test_deleted_rows_fail_verify(pristine: Path, tmp_path: Path) -> None:
    for statement in [
        "DELETE FROM state WHERE ns = 'identity' AND key = 'member/dr-ana-silva'",
        "DELETE FROM events WHERE height = 1 AND seq = 0",
        "DELETE FROM nodes WHERE level = 0 AND idx = 3",
        "INSERT INTO state(ns, key, value) VALUES('identity', 'member/mallory', '{}')",
    ]:
        data = copy_of(pristine, tmp_path / str(abs(hash(statement))))
        conn = sqlite3.connect(data / "ledger.sqlite")
        conn.execute(statement)
        conn.commit()
        conn.close()
        store = SQLiteStore(data / "ledger.sqlite", readonly=True)
        assert not verify_store(store).ok, statement
        assert not verify_store(store, reexecute=True).ok, statement
        store.close()


def test_cli_names_the_bad_height(pristine: Path, tmp_path: Path) -> None:
    data = copy_of(pristine, tmp_path)
    height = flip(data / "ledger.sqlite", "txs", "receipt", "leaf", 4, 0.5)
    result = run_cli("verify", str(data))
    assert result.returncode == 1
    assert f"at height {height}" in result.stderr
    as_json = run_cli("verify", str(data), "--json")
    assert as_json.returncode == 1
    assert f'"height": {height}' in as_json.stdout


def test_verify_refuses_a_non_node_dir(tmp_path: Path) -> None:
    result = run_cli("verify", str(tmp_path))
    assert result.returncode == 2
    assert "NOT_A_NODE_DIR" in result.stderr
