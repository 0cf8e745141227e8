"""Opened record versions are kept in memory (issue 20) through the real node: a second read
is served from memory and no caller can alter what the next one reads; a shredded record
leaves memory with its keys and is refused. (Tampering after a version was opened:
tests/unit/vault/test_opened.py and test_health_records' tampering test.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.errors import NotFound, StorageError
from careledger.fhir.extract import patient_id
from careledger.health.service import HealthRecords
from tests.support.nodes import demo_records

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def records(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HealthRecords]:
    with demo_records(tmp_path_factory.mktemp("opened") / "node", with_supply=False) as held:
        yield held


def _caller(member: str, role: str) -> Caller:
    roles = frozenset({role})
    return Caller(member, "st-mary", roles, parse_scopes(default_scopes(roles)))


def _patient(records: HealthRecords) -> str:
    keys = Path(records.node.settings.data_dir) / "keys" / "patients"
    return sorted(p.stem for p in keys.glob("*.key"))[0]


def _condition(records: HealthRecords, text: str) -> tuple[str, str]:
    patient = _patient(records)
    resource = {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient}"},
                "code": {"text": text}}  # fmt: skip
    stored = records.create(_caller("dr-ana-silva", "clinician"), resource, patient_of=patient_id)
    return patient, stored.record_id


def test_a_second_read_is_served_from_memory_and_no_caller_alters_it(
    records: HealthRecords,
) -> None:
    _, record_id = _condition(records, "kept in memory")
    doctor = _caller("dr-ana-silva", "clinician")
    first = records.read(doctor, "Condition", record_id)
    hits = records.vault.opened.hits
    first.resource["code"]["text"] = "altered by a caller"
    second = records.read(doctor, "Condition", record_id)
    assert records.vault.opened.hits == hits + 1
    assert second.resource["code"]["text"] == "kept in memory"
    assert (second.anchor_tx, second.content_hash) == (first.anchor_tx, first.content_hash)


def test_a_shredded_record_leaves_memory_and_is_refused(records: HealthRecords) -> None:
    patient, record_id = _condition(records, "to be shredded")
    opened = records.open_version(record_id, 1)
    assert records.open_version(record_id, 1).resource == opened.resource
    key = (record_id, 1, records.ledger.node_key.public_b64)
    held = len(records.vault.opened)
    records.shred(_caller(patient, "patient"), record_id)
    # the commit listener ran before the receipt: out of memory, keys gone
    assert len(records.vault.opened) == held - 1
    assert records.vault.opened.get(key, b"") is None
    with pytest.raises(NotFound) as caught:
        records.open_version(record_id, 1)
    assert caught.value.code == "RECORD_SHREDDED"


def test_a_shredding_the_vault_cannot_make_stops_no_other_and_is_made_at_the_next_start(
    records: HealthRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    patient, failing = _condition(records, "its disk is locked")
    _, other = _condition(records, "shredded beside it")
    for record_id in (failing, other):
        records.open_version(record_id, 1)  # both in memory
    store = records.vault.store
    real_shred = store.shred

    def shred(record_id: str) -> list[int]:
        if record_id == failing:  # as a locked or full disk would
            raise StorageError("vault record was not shredded: database is locked")
        return real_shred(record_id)

    monkeypatch.setattr(store, "shred", shred)
    # one block shredding both, the failing one first
    assert records.shred_held([failing, other]) == 1
    assert store.is_shredded(other) and not store.is_shredded(failing)
    key = records.ledger.node_key.public_b64
    assert records.vault.opened.get((failing, 1, key), b"") is None
    assert records.vault.opened.get((other, 1, key), b"") is None
    # the ledger shreds it while the vault still cannot: nothing opens it any more
    records.shred(_caller(patient, "patient"), failing)
    assert not store.is_shredded(failing)
    assert records.open_anchored(failing, 1) is None  # what trial feasibility counts read
    with pytest.raises(NotFound):
        records.open_version(failing, 1)
    monkeypatch.undo()
    # the next start's sweep makes the shredding the block could not
    assert records.shred_missed() == 1
    assert store.is_shredded(failing)
    assert records.shred_missed() == 0
    records.shred(_caller(patient, "patient"), other)  # the ledger agrees with the vault again


def test_a_scan_over_every_record_keeps_nothing_in_memory(records: HealthRecords) -> None:
    """open_anchored serves the custodian's own computations over all its records (a trial's
    feasibility count): the plaintext of patients nobody read does not stay in memory."""
    _, record_id = _condition(records, "counted, not read")
    key = (record_id, 1, records.ledger.node_key.public_b64)
    held = len(records.vault.opened)
    opened = records.open_anchored(record_id, 1)
    assert opened is not None and opened["code"]["text"] == "counted, not read"
    assert len(records.vault.opened) == held and records.vault.opened.get(key, b"") is None
    records.open_version(record_id, 1)  # a read's open is kept, as before
    assert len(records.vault.opened) == held + 1
