"""The visits store's checker on a real demo node: a clean node passes; a change, deletion or
insertion in either table is named by store and table (except a deleted reason: the ledger has
no trace of reasons); no difference carries a link or a reason."""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from careledger import store_mac
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.health.service import HealthRecords
from careledger.keyfile import read_key_file
from careledger.monitoring.visits import VISITS_FILE, VisitsService
from careledger.node import Node
from careledger.node_audit import Difference, NodeContext
from careledger.node_audit.visits_store import VisitsStoreCheck
from careledger.storage.sqlite import SQLiteStore
from careledger.vault.at_rest import AtRest
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration
Tamper = Callable[[sqlite3.Connection, AtRest], object]
DEMO_VISIT = "visit-demo-1"  # scheduled with the clinician's own key; it has a reason
DEMO_LINK = "https://video.example/careledger-demo"
DEMO_REASON = "oxygen saturation review"
SERVICE_LINK = "https://video.example/room-42"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The demo node, plus a visit scheduled through the visits API's service (no reason)."""
    data = tmp_path_factory.mktemp("visits-audit") / "node"
    demo_node(data, with_supply=False)
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    visits = VisitsService(records, data / VISITS_FILE)
    try:
        patient = visits.visit(clinician(), DEMO_VISIT)["patient"]
        start = int(time.time() * 1000) + 3_600_000
        body = {"patient": patient, "start": start, "end": start + 1_800_000, "link": SERVICE_LINK}
        scheduled = visits.schedule(clinician(), body)
    finally:
        visits.close()
        records.close()
        node.stop()
    assert scheduled["receipt"]["result"] == "accepted"
    with closing(store_mac.connect(data / VISITS_FILE)) as conn:
        assert {v for (v,) in conn.execute("SELECT visit FROM links")} == {
            DEMO_VISIT,
            scheduled["visit"]["id"],
        }
        assert {v for (v,) in conn.execute("SELECT visit FROM reasons")} == {DEMO_VISIT}
    return data, str(scheduled["visit"]["id"])


def clinician() -> Caller:
    roles = frozenset({"clinician"})
    return Caller("dr-ana-silva", "st-mary", roles, parse_scopes(default_scopes(roles)))


@pytest.fixture
def node(pristine: tuple[Path, str], tmp_path: Path) -> Path:
    copy = tmp_path / "node"
    shutil.copytree(pristine[0], copy)
    return copy


@pytest.fixture
def service_visit(pristine: tuple[Path, str]) -> str:
    return pristine[1]


def audit(data: Path) -> list[Difference]:
    settings = Settings.load(data)
    store = SQLiteStore(settings.store_path, readonly=True)
    try:
        key = read_key_file(settings.node_key_file)[1]
        context = NodeContext(data, store, key, settings.node_name, settings.org)
        check = VisitsStoreCheck()
        done: list[int] = []
        found = list(check.check(context, done.append))
        assert sum(done) == check.size(context)
        return found
    finally:
        store.close()


def tamper(data: Path, change: Tamper) -> None:
    sealed = AtRest.for_node(read_key_file(Settings.load(data).node_key_file)[1], "visits")
    with closing(store_mac.connect(data / VISITS_FILE)) as conn:
        change(conn, sealed)
        conn.commit()


def flip(table: str, column: str, visit: str) -> Tamper:
    def change(conn: sqlite3.Connection, _: AtRest) -> None:
        where = f"SELECT {column} FROM {table} WHERE visit = ?"
        (value,) = conn.execute(where, (visit,)).fetchone()
        changed = bytearray(value)
        changed[-1] ^= 1
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE visit = ?", (bytes(changed), visit))

    return change


def sql(statement: str, *params: object) -> Tamper:
    def change(conn: sqlite3.Connection, _: AtRest) -> None:
        conn.execute(statement, params)

    return change


def sealed_as(table: str, visit: str, value: str, row: str | None = None) -> Tamper:
    """A value sealed with the node's own key (someone holding it), for ``row``."""

    def change(conn: sqlite3.Connection, sealed: AtRest) -> None:
        blob = sealed.seal(value.encode(), row or f"{table}:{visit}")
        column = "link" if table == "links" else "reason"
        conn.execute(f"INSERT OR REPLACE INTO {table}(visit, {column}) VALUES(?, ?)", (visit, blob))

    return change


CASES: list[tuple[str, str, Tamper]] = [
    ("links", "change a byte", flip("links", "link", DEMO_VISIT)),
    ("links", "another link, sealed by the node", sealed_as("links", DEMO_VISIT, SERVICE_LINK)),
    ("links", "a link moved from another visit", sealed_as("links", DEMO_VISIT, DEMO_LINK,
                                                           row="links:visit-other")),
    ("links", "in clear", sql("UPDATE links SET link = ? WHERE visit = ?", DEMO_LINK, DEMO_VISIT)),
    ("links", "delete (a visit with a reason)", sql("DELETE FROM links WHERE visit = ?",
                                                    DEMO_VISIT)),
    ("links", "insert (an unknown visit)", sealed_as("links", "visit-nowhere", DEMO_LINK)),
    ("reasons", "change a byte", flip("reasons", "reason", DEMO_VISIT)),
    ("reasons", "in clear", sql("UPDATE reasons SET reason = 'x' WHERE visit = ?", DEMO_VISIT)),
    ("reasons", "empty", sealed_as("reasons", DEMO_VISIT, "")),
    ("reasons", "insert (an unknown visit)", sealed_as("reasons", "visit-nowhere", DEMO_REASON)),
    ("links", "add a trigger", sql("CREATE TRIGGER t AFTER INSERT ON links BEGIN SELECT 1; END")),
    ("reasons", "drop the table", sql("DROP TABLE reasons")),
]  # fmt: skip


def test_a_clean_node_has_no_difference(node: Path) -> None:
    assert audit(node) == []


@pytest.mark.parametrize(("table", "how", "change"), CASES, ids=[f"{t}: {h}" for t, h, _ in CASES])
def test_a_tampered_table_is_named(node: Path, table: str, how: str, change: Tamper) -> None:
    tamper(node, change)
    found = audit(node)
    assert any(d.store == VISITS_FILE and d.table == table for d in found), found
    for d in found:  # never a link or a reason
        for secret in (DEMO_LINK, SERVICE_LINK, DEMO_REASON, "video.example"):
            assert secret not in d.row + d.problem


def test_a_deleted_link_of_a_visit_this_node_scheduled_is_named(
    node: Path, service_visit: str
) -> None:
    tamper(node, sql("DELETE FROM links WHERE visit = ?", service_visit))
    (found,) = audit(node)
    assert (found.store, found.table, found.row) == (VISITS_FILE, "links", service_visit)
    assert "scheduled" in found.problem


def test_a_reason_added_to_a_visit_without_one_must_be_sealed_for_it(
    node: Path, service_visit: str
) -> None:
    tamper(node, sealed_as("reasons", service_visit, DEMO_REASON, row="reasons:visit-other"))
    (found,) = audit(node)
    assert (found.table, found.row) == ("reasons", service_visit)


def test_a_deleted_reason_cannot_be_told_from_none(node: Path) -> None:
    """The limit the module states: the ledger has no trace of a visit's reason."""
    tamper(node, sql("DELETE FROM reasons WHERE visit = ?", DEMO_VISIT))
    assert audit(node) == []


def test_a_missing_store_is_named_by_the_visits_this_node_scheduled(
    node: Path, service_visit: str
) -> None:
    (node / VISITS_FILE).unlink()
    (found,) = audit(node)
    assert (found.table, found.row) == ("links", service_visit)
