"""The bulk export store's checker on a real demo node: a backend app's export withdrawn by a
patient's erasure and a second one complete (both through ``ExportJobs``, its commit listener
on) pass, whole; one change in the job table or in an export's files is named; no difference
carries a patient or a line of a file."""

from __future__ import annotations

import json
import shutil
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from careledger import store_mac
from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.fhir.extract import patient_id
from careledger.health.bulk_export import EXPORT_DIR, EXPORT_FILE, ExportJobs, ExportRequest
from careledger.health.service import HealthRecords
from careledger.keyfile import read_key_file
from careledger.node import Node
from careledger.node_audit import checks
from careledger.node_audit.export_store import ExportStoreCheck
from tests.support.nodes import demo_node
from tests.unit.node_audit.stores import audit, copy_of, leaked, run_sql

pytestmark = pytest.mark.integration
APP = "st-mary-export"
ORIGIN = "https://node.example"
KEY = ec.generate_private_key(ec.SECP384R1())
PUBLIC = {**json.loads(jwt.get_algorithm_by_name("ES384").to_jwk(KEY.public_key())), "kid": "k1"}


@dataclass(frozen=True)
class Made:
    data: Path
    complete: str
    withdrawn: str
    patients: list[str]


def wait(jobs: ExportJobs, caller: Caller, job: str) -> str:
    for _ in range(600):
        status, *_ = jobs.status(caller, job)
        if status not in ("accepted", "in-progress"):
            return status
        time.sleep(0.05)
    raise AssertionError("the export did not finish")


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Made:
    data = tmp_path_factory.mktemp("export-audit") / "node"
    demo_node(data, with_supply=False)
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    jobs = ExportJobs(records, data)
    node.ledger.commit_listeners.append(jobs.on_commit)
    try:
        admin = read_key_file(data / "keys" / "st-mary-admin.key")[1]
        (receipt,) = node.execute([("apps", "register", {
            "client_id": APP, "name": "Export", "kind": "backend", "scopes": "system/*.rs",
            "jwks": {"keys": [PUBLIC]}})], keypair=admin)  # fmt: skip
        assert receipt["result"] == "accepted", receipt
        app = Caller(APP, "st-mary", frozenset({"system"}), parse_scopes("system/*.rs"), app=APP)
        request = ExportRequest("system", frozenset({"Condition", "Observation"}), None, {},
                                f"{ORIGIN}/fhir/$export?_type=Condition,Observation", "HOPERAT", ORIGIN)  # fmt: skip
        patient = sorted(p.stem for p in (data / "keys" / "patients").glob("*.key"))[0]
        roles = frozenset({"clinician"})
        clinician = Caller("dr-ana-silva", "st-mary", roles, parse_scopes(default_scopes(roles)))
        doomed = records.create(clinician, {"resourceType": "Condition",
                                            "subject": {"reference": f"Patient/{patient}"},
                                            "code": {"text": "to be erased"}},
                                patient_of=patient_id)  # fmt: skip
        withdrawn = jobs.start(app, request)
        assert wait(jobs, app, withdrawn) == "complete"
        mine = frozenset({"patient"})
        records.shred(Caller(patient, "st-mary", mine, parse_scopes(default_scopes(mine))),
                      doomed.record_id)  # fmt: skip
        assert jobs.status(app, withdrawn)[0] == "withdrawn"
        complete = jobs.start(app, request)
        assert wait(jobs, app, complete) == "complete"
    finally:
        jobs.close()
        records.close()
        node.stop()
    with closing(store_mac.connect(data / EXPORT_FILE)) as conn:
        (listed,) = conn.execute("SELECT patients FROM job WHERE id = ?", (complete,)).fetchone()
    patients = json.loads(listed)
    assert patients and not (data / EXPORT_DIR / withdrawn).exists()
    return Made(data, complete, withdrawn, [*patients, patient])


def test_the_checker_is_registered() -> None:
    assert any(isinstance(c, ExportStoreCheck) for c in checks())


def test_a_clean_store_passes_whole(pristine: Made) -> None:
    assert audit(pristine.data, ExportStoreCheck()) == []


def manifest_edit(made: Made, change: str) -> str:
    return (f"UPDATE job SET manifest = json_set(manifest, {change}) "
            f"WHERE id = '{made.complete}'")  # fmt: skip


@pytest.mark.parametrize(
    ("where", "statement"),
    [
        ("complete", "UPDATE job SET client = 'ghost-app' WHERE id = '{complete}'"),
        ("complete", "UPDATE job SET org = 'northside-clinic' WHERE id = '{complete}'"),
        ("complete", "UPDATE job SET request = '{{}}' WHERE id = '{complete}'"),
        ("complete", "UPDATE job SET finished = NULL WHERE id = '{complete}'"),
        ("complete", "UPDATE job SET status = 'failed' WHERE id = '{complete}'"),
        ("complete", "UPDATE job SET patients = '[\"Not An Id\"]' WHERE id = '{complete}'"),
        ("complete", "UPDATE job SET manifest = json_set(manifest, '$.output[0].count', 999) "
                     "WHERE id = '{complete}'"),
        ("withdrawn", "UPDATE job SET status = 'complete', error = NULL, manifest = "
                      "(SELECT manifest FROM job WHERE id = '{complete}') WHERE id = '{withdrawn}'"),
        ("withdrawn", "UPDATE job SET error = 'oops' WHERE id = '{withdrawn}'"),
        ("(client st-mary-export)", "INSERT INTO job(id, client, org, request, status, progress,"
                                   " created) SELECT substr(id, 2) || substr(id, 1, 1), client,"
                                   " org, request, 'in-progress', 'x', created FROM job"),
        ("job", "CREATE TRIGGER quiet AFTER UPDATE ON job BEGIN SELECT 1; END"),
    ],
)  # fmt: skip
def test_a_change_in_the_job_table_is_named(
    pristine: Made, tmp_path: Path, where: str, statement: str
) -> None:
    data = copy_of(pristine.data, tmp_path)
    run_sql(data / EXPORT_FILE,
            statement.format(complete=pristine.complete, withdrawn=pristine.withdrawn))  # fmt: skip
    found = audit(data, ExportStoreCheck())
    row = {"complete": pristine.complete, "withdrawn": pristine.withdrawn}.get(where, where)
    assert any(d.store == EXPORT_FILE and d.table == "job" and d.row.startswith(row)
               for d in found) or (where == "job" and found), found  # fmt: skip
    assert leaked(found, pristine.patients) == []


def test_a_byte_changed_in_an_exported_file_is_named(pristine: Made, tmp_path: Path) -> None:
    data = copy_of(pristine.data, tmp_path)
    folder = data / EXPORT_DIR / pristine.complete
    target = folder / "Condition.ndjson"
    raw = bytearray(target.read_bytes())
    raw[10] ^= 1
    target.write_bytes(bytes(raw))
    found = audit(data, ExportStoreCheck())
    assert [(d.table, d.row) for d in found] == [("job", f"{pristine.complete}/Condition.ndjson")]
    assert leaked(found, pristine.patients) == []


def test_files_added_removed_or_left_behind_are_named(pristine: Made, tmp_path: Path) -> None:
    data = copy_of(pristine.data, tmp_path)
    folder = data / EXPORT_DIR / pristine.complete
    (folder / "records.ndjson").unlink()
    (folder / "Extra.ndjson").write_text("{}\n")
    shutil.copytree(folder, data / EXPORT_DIR / pristine.withdrawn)
    (data / EXPORT_DIR / ("f" * 24)).mkdir()
    found = audit(data, ExportStoreCheck())
    named = {(d.table, d.row) for d in found}
    assert ("job", f"{pristine.complete}/records.ndjson") in named
    assert ("job", f"{pristine.complete}/(a file it does not list)") in named
    assert ("job", pristine.withdrawn) in named
    assert ("(folder)", "f" * 24) in named


def test_a_manifest_signed_by_another_key_is_named(pristine: Made, tmp_path: Path) -> None:
    data = copy_of(pristine.data, tmp_path)
    run_sql(data / EXPORT_FILE, manifest_edit(pristine, "'$.transactionTime', '2000-01-01'"))
    found = audit(data, ExportStoreCheck())
    assert [d.problem for d in found] == ["manifest: changed after the node signed it"]
