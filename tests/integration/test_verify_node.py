"""`careledger verify DIR` checks the whole node, not only its ledger (issue 14): a value changed
behind the node's back in any of its stores is named by store, table and row, and the command
exits 1; `--ledger-only` checks the ledger alone. A change made with the node's key is caught by
the ledger's anchors; one made without it by the store's integrity codes too (ADR 0019), even
where the ledger holds nothing to compare."""

from __future__ import annotations

import json
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from careledger import store_mac
from careledger.config import Settings
from careledger.keyfile import read_key_file
from careledger.node_audit.integrity import ROW_CHANGED, ROWS_CHANGED
from tests.support.forgery import forger
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
        ("vault.sqlite", "records", "UPDATE records SET ciphertext = "
                                    "CAST(ciphertext || x'00' AS BLOB) "
                                    "WHERE record_id = (SELECT MIN(record_id) FROM records) "
                                    "AND version = 1"),
        ("epcis.sqlite", "events", "DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)"),
        ("monitoring.sqlite", "windows", "UPDATE windows SET count = count + 1 WHERE (device, "
                                         "window) = (SELECT device, MIN(window) FROM windows)"),
        ("visits.sqlite", "links", "UPDATE links SET link = CAST('x' || link AS BLOB) "
                                   "WHERE visit = (SELECT MIN(visit) FROM links)"),
    ],
)  # fmt: skip
def test_a_change_in_any_store_is_named(
    pristine: Path, tmp_path: Path, store: str, table: str, sql: str
) -> None:
    data = copy_of(pristine, tmp_path)
    conn = store_mac.connect(data / store)  # as the node writes: the ledger tells
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
    conn = store_mac.connect(data / "monitoring.sqlite")
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


def verify_differences(data: Path) -> list[dict[str, str]]:
    done = run_cli("verify", str(data), "--json")
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] is False
    return list(report["differences"])


def test_a_patients_wrap_replaced_without_the_key_is_named_by_its_row(
    pristine: Path, tmp_path: Path
) -> None:
    """A wrap to a patient's own key cannot be opened by the node, and the ledger holds no hash
    of it: only its integrity code tells a same-size replacement (it was invisible before)."""
    data = copy_of(pristine, tmp_path)
    node_key = read_key_file(Settings.load(data).node_key_file)[1].public_b64
    with closing(sqlite3.connect(data / "vault.sqlite")) as conn:
        record, version, recipient, wrapped, code = conn.execute(
            "SELECT record_id, version, recipient, wrapped, mac FROM wrapped_keys "
            "WHERE recipient != ? ORDER BY record_id, version, recipient LIMIT 1",
            (node_key,),
        ).fetchone()
        with pytest.raises(sqlite3.OperationalError, match="careledger_row_mac"):
            conn.execute("UPDATE wrapped_keys SET wrapped = zeroblob(80)")  # no key: no write
    with closing(forger(data / "vault.sqlite", code=code)) as conn:  # the code left as it was
        conn.execute(
            "UPDATE wrapped_keys SET wrapped = ? WHERE record_id = ? AND version = ? "
            "AND recipient = ?",
            (bytes(b ^ 0xFF for b in wrapped), record, version, recipient),
        )
    found = verify_differences(data)
    row = f"record_id={record}, version={version}, recipient={recipient}"
    assert found[0] == {"store": "vault.sqlite", "table": "wrapped_keys", "row": row,
                        "problem": ROW_CHANGED}  # fmt: skip


def test_a_deleted_row_the_ledger_does_not_name_is_caught(pristine: Path, tmp_path: Path) -> None:
    """A visit's reason is optional and off the ledger: deleted, it looked like none given. Now
    the visits table's digest no longer holds."""
    data = copy_of(pristine, tmp_path)
    with closing(forger(data / "visits.sqlite")) as conn:
        assert conn.execute("DELETE FROM reasons").rowcount == 1
    found = verify_differences(data)
    assert {"store": "visits.sqlite", "table": "reasons", "row": "-",
            "problem": ROWS_CHANGED} in found  # fmt: skip


def test_a_dropped_trigger_then_a_write_is_caught(pristine: Path, tmp_path: Path) -> None:
    """With the digest's trigger gone, even a write with the node's key leaves the digest
    behind; the schema check names the missing trigger."""
    data = copy_of(pristine, tmp_path)
    with closing(store_mac.connect(data / "epcis.sqlite")) as conn:
        conn.execute("DROP TRIGGER integrity_event_epcs_delete")
        (seq, epc, role) = conn.execute(
            "SELECT seq, epc, role FROM event_epcs ORDER BY seq DESC LIMIT 1"
        ).fetchone()
        conn.execute(
            "DELETE FROM event_epcs WHERE seq = ? AND epc = ? AND role = ?", (seq, epc, role)
        )
        conn.commit()
    found = verify_differences(data)
    assert {"store": "epcis.sqlite", "table": "event_epcs", "row": "-",
            "problem": ROWS_CHANGED} in found  # fmt: skip
    assert any(d["store"] == "epcis.sqlite" and "integrity_event_epcs_delete" in d["row"]
               for d in found)  # fmt: skip
