"""Search through the blind index (issue 16): only what a page needs is decrypted, only what is
returned is logged, no term is on disk in clear, and shredding takes a record's terms with it.
A real node directory, vault file and ledger, in process."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from careledger import store_mac
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import VAULT_FILE, Settings
from careledger.fhir.search import parse_search
from careledger.health.search import search_patient
from careledger.health.service import BLIND_INDEX_META, HealthRecords
from careledger.node import Node
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration
LOINC = "http://loinc.org"
NOW = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Node, HealthRecords, Path]]:
    data = tmp_path_factory.mktemp("blind") / "node"
    demo_node(data, with_records=False, with_supply=False)
    running = Node(Settings.load(data))
    running.start()
    records = HealthRecords.for_node(running)
    try:
        yield running, records, data
    finally:
        records.close()
        running.stop()


def clinician() -> Caller:
    roles = frozenset({"clinician"})
    return Caller("dr-ana-silva", "st-mary", roles, parse_scopes(default_scopes(roles)))


def observation(pid: str, code: str, when: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": 70, "unit": "/min"},
    }


@pytest.fixture(scope="module")
def patient(node: tuple[Node, HealthRecords, Path]) -> str:
    _, records, _ = node
    from careledger.fhir.extract import patient_id

    caller = clinician()
    made = records.create(
        caller, {"resourceType": "Patient", "gender": "female"}, patient_of=patient_id
    )
    pid = made.record_id
    writes = []
    for i in range(120):
        code = "8867-4" if i % 3 else "4548-4"  # 80 heart rates, 40 HbA1c
        month = 1 + i % 12
        writes.append((observation(pid, code, f"2024-{month:02d}-15"), f"obs-{i:03d}", 1, pid))
    records.write_all(caller, writes)
    return pid


def run(records: HealthRecords, pid: str, query: list[tuple[str, str]]) -> Any:
    request = parse_search("Observation", [("patient", pid), *query])
    return search_patient(
        records, clinician(), request, pid, purpose="TREAT", base_url="", now=NOW,
        implied=request.criteria[0],
    )  # fmt: skip


def test_a_page_decrypts_only_the_page(
    node: tuple[Node, HealthRecords, Path], patient: str
) -> None:
    _, records, _ = node
    page = run(records, patient, [("_count", "10")])
    assert page.total == 120 and len(page.page) == 10 and page.decrypted == 10
    coded = run(records, patient, [("code", f"{LOINC}|8867-4"), ("_count", "10")])
    assert coded.total == 80 and coded.decrypted == 10  # the index decides codes exactly
    assert all(s.resource["code"]["coding"][0]["code"] == "8867-4" for s in coded.page)
    dated = run(records, patient, [("code", "4548-4"), ("date", "2024-04-15")])
    # month buckets narrow to April's HbA1c (10 of 120); those are decrypted and refined by day
    assert dated.total == 10 and dated.decrypted == 10
    assert {s.resource["effectiveDateTime"] for s in dated.page} == {"2024-04-15"}


def test_the_access_event_names_exactly_the_records_returned(
    node: tuple[Node, HealthRecords, Path], patient: str
) -> None:
    _, records, _ = node
    page = run(records, patient, [("code", "4548-4"), ("_count", "3")])
    returned = sorted(s.record_id for s in page.page)
    admin_roles = frozenset({"admin"})
    admin = Caller("st-mary-admin", "st-mary", admin_roles, parse_scopes("user/*.read"))
    latest = records.access_log(admin, patient)[-1]
    assert sorted(latest["records"]) == returned


def test_no_term_is_on_disk_in_clear_and_shredding_takes_the_terms(
    node: tuple[Node, HealthRecords, Path], patient: str
) -> None:
    _, records, data = node
    raw = (data / VAULT_FILE).read_bytes()
    for term in (b"8867-4", b"4548-4", b"loinc", b"2024-03"):
        assert term not in raw
    conn = sqlite3.connect(data / VAULT_FILE)
    try:
        before = conn.execute("SELECT COUNT(*) FROM blind WHERE record_id = 'obs-000'").fetchone()
        assert before[0] > 0
        records.vault.store.shred("obs-000")
        after = conn.execute("SELECT COUNT(*) FROM blind WHERE record_id = 'obs-000'").fetchone()
        assert after[0] == 0
    finally:
        conn.close()


def test_records_stored_before_the_index_are_indexed_once(
    node: tuple[Node, HealthRecords, Path], patient: str
) -> None:
    _, records, data = node
    conn = store_mac.connect(data / VAULT_FILE)
    try:
        conn.execute("DELETE FROM blind WHERE record_id = 'obs-001'")
        conn.execute("DELETE FROM meta WHERE name = ?", (BLIND_INDEX_META,))
        conn.commit()
    finally:
        conn.close()
    missing = run(records, patient, [("code", "8867-4")])
    assert "obs-001" not in {s.record_id for s in missing.page} or missing.total == 79
    assert records.build_blind_index() >= 100
    assert records.build_blind_index() == 0  # once
    found = run(records, patient, [("code", "8867-4"), ("_count", "100")])
    assert "obs-001" in {s.record_id for s in found.page}


def test_a_count_is_a_disclosure_and_is_logged(
    node: tuple[Node, HealthRecords, Path], patient: str
) -> None:
    """_summary=count returns no record but says how many match: each counted record is in
    the access event (else 'has she diagnosis X?' would leave no trace)."""
    _, records, _ = node
    counted = run(
        records, patient, [("code", "4548-4"), ("date", "2024-04-15"), ("_summary", "count")]
    )
    assert counted.page == [] and counted.total == 10
    admin_roles = frozenset({"admin"})
    admin = Caller("st-mary-admin", "st-mary", admin_roles, parse_scopes("user/*.read"))
    latest = records.access_log(admin, patient)[-1]
    assert sorted(latest["records"]) == sorted(r for _, r in counted.matched)
    beyond = run(records, patient, [("code", "4548-4"), ("_offset", "500")])
    assert beyond.page == [] and beyond.total > 0
    assert len(records.access_log(admin, patient)[-1]["records"]) == beyond.total
