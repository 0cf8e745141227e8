"""`careledger verify DIR` checks the whole node, not only its ledger (issue 14): a value changed
behind the node's back in any of its stores is named by store, table and row, and the command
exits 1; `--ledger-only` checks the ledger alone."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from tests.support.nodes import demo_node, run_cli

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("verify-node") / "node"
    demo_node(data)
    return data


def copy_of(pristine: Path, tmp_path: Path) -> Path:
    target = tmp_path / "node"
    shutil.copytree(pristine, target)
    return target


@pytest.mark.parametrize(
    ("store", "table", "sql"),
    [
        ("vault.sqlite", "records", "UPDATE records SET ciphertext = ciphertext || x'00' "
                                    "WHERE record_id = (SELECT MIN(record_id) FROM records) "
                                    "AND version = 1"),
        ("epcis.sqlite", "events", "DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)"),
        ("monitoring.sqlite", "windows", "UPDATE windows SET count = count + 1 WHERE (device, "
                                         "window) = (SELECT device, MIN(window) FROM windows)"),
        ("visits.sqlite", "links", "UPDATE links SET link = 'x' || link WHERE visit = "
                                   "(SELECT MIN(visit) FROM links)"),
    ],
)  # fmt: skip
def test_a_change_in_any_store_is_named(
    pristine: Path, tmp_path: Path, store: str, table: str, sql: str
) -> None:
    data = copy_of(pristine, tmp_path)
    conn = sqlite3.connect(data / store)
    changed = conn.execute(sql).rowcount
    conn.commit()
    conn.close()
    assert changed == 1
    done = run_cli("verify", str(data), "--json")
    assert done.returncode == 1, done.stdout
    report = json.loads(done.stdout)
    assert report["ok"] is False
    named = {(d["store"], d["table"]) for d in report["differences"]}
    # the table changed, or the first one that no longer agrees with it (a deleted event leaves
    # its EPC rows and its capture's count behind)
    assert any(s == store for s, _ in named), report
    assert (store, table) in named or store == "epcis.sqlite", named
    words = run_cli("verify", str(data))
    assert words.returncode == 1 and store in words.stderr and "Traceback" not in words.stderr
    assert run_cli("verify", str(data), "--ledger-only").returncode == 0  # the ledger is fine


def test_a_clean_node_passes_whole(pristine: Path) -> None:
    done = run_cli("verify", str(pristine), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is True and report["stores_checked"] is True
    assert report["differences"] == []


def test_damaged_stores_and_odd_paths_are_said_never_crash(pristine: Path, tmp_path: Path) -> None:
    """A store that is a directory, a name that is Rich markup or a terminal escape, and a
    directory whose name holds '?' and '#': each is named (exit 1) or passes, never a traceback,
    never a file written beside the node, never the store's content echoed."""
    data = copy_of(pristine, tmp_path)
    (data / "visits.sqlite").unlink()
    (data / "visits.sqlite").mkdir()
    conn = sqlite3.connect(data / "monitoring.sqlite")
    conn.execute("INSERT INTO devices VALUES('oxi[/red]\x1b[2J', x'00')")
    conn.commit()
    conn.close()
    done = run_cli("verify", str(data))
    assert done.returncode == 1, done.stdout + done.stderr
    assert "visits.sqlite" in done.stderr and "Traceback" not in done.stderr
    assert "\x1b[2J" not in done.stderr and "oxi[/red]" in done.stderr
    odd = tmp_path / "we?ird#dir"
    odd.mkdir()
    node = odd / "node"
    shutil.copytree(pristine, node)
    clean = run_cli("verify", str(node))
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert not (tmp_path / "we").exists()  # the '?' did not end the path
