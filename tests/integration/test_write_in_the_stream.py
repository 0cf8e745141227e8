"""A write whose commit failed in a way that leaves its batch in the consortium's ordering
stream (the node stopped ordering: STREAM_GAP, ORDERING_STOPPED) keeps its sealed versions:
the anchor commits on the other nodes, and here on catch-up, so the vault must still hold what
it anchors. Any other failure discards them, as before (the ledger refused or never saw it)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
    with demo_records(tmp_path_factory.mktemp("in-the-stream") / "node", with_supply=False) as held:
        yield held


def _write_failing_with(
    records: HealthRecords, monkeypatch: pytest.MonkeyPatch, code: str
) -> tuple[str, StorageError]:
    """Create a Condition whose commit fails with ``code``, as the orderer fails its waiters;
    the record id it was sealed under, and the error the caller got."""
    keys = Path(records.node.settings.data_dir) / "keys" / "patients"
    patient = sorted(p.stem for p in keys.glob("*.key"))[0]
    roles = frozenset({"clinician"})
    doctor = Caller("dr-ana-silva", "st-mary", roles, parse_scopes(default_scopes(roles)))
    sealed: list[str] = []
    put_many = records.vault.store.put_many

    def remember(found: Any, tokens: Any = None) -> None:
        sealed.extend(r.record_id for r in found)
        put_many(found, tokens)

    def failing(calls: Any, **_: Any) -> list[dict[str, Any]]:
        raise StorageError("this node stopped ordering (a test's)", code=code)

    monkeypatch.setattr(records.vault.store, "put_many", remember)
    monkeypatch.setattr(records.node, "execute", failing)
    resource = {"resourceType": "Condition", "subject": {"reference": f"Patient/{patient}"},
                "code": {"text": f"sealed before {code}"}}  # fmt: skip
    with pytest.raises(StorageError) as raised:
        records.create(doctor, resource, patient_of=patient_id)
    monkeypatch.undo()
    (record_id,) = sealed
    return record_id, raised.value


@pytest.mark.parametrize("code", ["STREAM_GAP", "ORDERING_STOPPED"])
def test_a_write_whose_batch_is_in_the_stream_keeps_its_sealed_versions(
    records: HealthRecords, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    record_id, error = _write_failing_with(records, monkeypatch, code)
    assert error.code == code  # the caller is told, with the code
    assert records.vault.store.versions(record_id) == [1]  # kept for the anchor to come


def test_any_other_failure_discards_them(
    records: HealthRecords, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_id, _ = _write_failing_with(records, monkeypatch, "STORAGE_ERROR")
    with pytest.raises(NotFound) as gone:
        records.vault.store.versions(record_id)
    assert gone.value.code == "UNKNOWN_RECORD"
