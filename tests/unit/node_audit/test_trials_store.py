"""The trials store's checker on a real demo node: a study's participant whose e-consent the
site recorded (``ConsentRecorder``), and a feasibility query answered (``RecruitmentResponder``
with its ``RecruitmentStore``) pass, whole; one change in any table is named by its table; no
difference carries a patient or the pseudonym key."""

from __future__ import annotations

from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from careledger import store_mac
from careledger.config import Settings
from careledger.health.service import HealthRecords
from careledger.keyfile import read_key_file
from careledger.node import Node
from careledger.node_audit import checks
from careledger.node_audit.trials_store import TrialsStoreCheck
from careledger.trials.consent_records import ConsentRecorder
from careledger.trials.recruitment import TRIALS_FILE, RecruitmentResponder, RecruitmentStore
from tests.support.nodes import demo_node
from tests.unit.node_audit.stores import audit, copy_of, leaked, run_sql

pytestmark = pytest.mark.integration
STUDY = "AUDIT-1"


@dataclass(frozen=True)
class Made:
    data: Path
    patient: str
    query: str
    secrets: list[str]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Made:
    data = tmp_path_factory.mktemp("trials-audit") / "node"
    demo_node(data, with_records=False, with_supply=False)
    keys = data / "keys"
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    store = RecruitmentStore(data / TRIALS_FILE)
    recorder = ConsentRecorder(records, data / TRIALS_FILE)
    try:
        patient = records.create(
            records.node_caller(), {"resourceType": "Patient", "gender": "male"}, patient_of=None
        ).patient
        own = records.custodial_key(patient)
        assert own is not None

        def run(key: Any, method: str, args: dict[str, Any]) -> str:
            key = read_key_file(keys / key)[1] if isinstance(key, str) else key
            (receipt,) = node.execute([("trials", method, args)], keypair=key)
            assert receipt["result"] == "accepted", (method, receipt)
            return str(receipt["tx_id"])

        run("trialco-admin.key", "register", {
            "study": STUDY, "registry_id": "NCT9", "title": "t", "protocol_hash": "5" * 64,
            "sap_hash": "6" * 64, "primary": ["p"], "secondary": [],
            "eligibility": {"age": [0, 150]}, "visits": [{"id": "baseline", "day": 0,
                                                          "window": 3}],
            "sites": ["st-mary"]})  # fmt: skip
        run("dr-ana-silva.key", "enrol", {"study": STUDY, "participant": patient})
        run(own, "consent", {"study": STUDY, "version": 1})
        assert recorder.sync(STUDY, patient) is not None
        query = run("trialco-admin.key", "feasibility", {"study": STUDY, "sites": ["st-mary"]})
        RecruitmentResponder(records, store).answer(query)
    finally:
        recorder.detach()
        store.close()
        records.close()
        node.stop()
    with closing(store_mac.connect(data / TRIALS_FILE)) as conn:
        (key,) = conn.execute("SELECT value FROM meta").fetchone()
    return Made(data, patient, query, [patient, bytes(key).hex()[:16]])


def test_the_checker_is_registered() -> None:
    assert any(isinstance(c, TrialsStoreCheck) for c in checks())


def test_a_clean_store_passes_whole(pristine: Made) -> None:
    assert audit(pristine.data, TrialsStoreCheck()) == []


def invitation(made: Made, status: str = "open", answered: str = "NULL") -> str:
    return (
        "INSERT INTO invitations VALUES('00112233445566778899aabb', 'site-0011223344556677',"
        f" '{STUDY}', 'st-mary', '{made.patient}', 1700000000000, '{status}', {answered})"
    )


@pytest.mark.parametrize(
    ("table", "statement"),
    [
        ("meta", "UPDATE meta SET value = x'00'"),
        ("meta", "INSERT INTO meta VALUES('other', x'00')"),
        ("released", "INSERT INTO released VALUES('{query}', 'st-mary', 5, zeroblob(40))"),
        ("released", "INSERT INTO released VALUES('{zeros}', 'st-mary', 5, zeroblob(40))"),
        ("invitations", "invite"),
        ("consent_records", "UPDATE consent_records SET record = '{zeros32}'"),
        ("consent_records", "UPDATE consent_records SET study = 'NO-SUCH'"),
        ("consent_records", "UPDATE consent_records SET participant = 'pt-0000000000000000'"),
        ("invitations", "CREATE INDEX invitations_study ON invitations(study)"),
    ],
)  # fmt: skip
def test_a_change_in_any_table_is_named(
    pristine: Made, tmp_path: Path, table: str, statement: str
) -> None:
    data = copy_of(pristine.data, tmp_path)
    sql = invitation(pristine) if statement == "invite" else statement.format(
        query=pristine.query, zeros="0" * 64, zeros32="0" * 32)  # fmt: skip
    run_sql(data / TRIALS_FILE, sql)
    found = audit(data, TrialsStoreCheck())
    assert (TRIALS_FILE, table) in {(d.store, d.table) for d in found}, found
    assert leaked(found, pristine.secrets) == []


def test_an_invitation_answered_without_a_time_is_named(pristine: Made, tmp_path: Path) -> None:
    data = copy_of(pristine.data, tmp_path)
    run_sql(data / TRIALS_FILE, invitation(pristine, "interested"))
    problems = [d.problem for d in audit(data, TrialsStoreCheck())]
    assert "answered is set exactly when answered; it is not" in problems
