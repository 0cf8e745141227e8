"""A CRF capture the trial refuses after its dry run leaves no readable record behind."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from careledger.callers.caller import Caller
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.config import Settings
from careledger.errors import NotFound, Rejected
from careledger.health.service import HealthRecords
from careledger.keyfile import read_key_file
from careledger.node import Node
from careledger.trials.recruitment import TRIALS_FILE, RecruitmentStore
from careledger.trials.service import TrialsService
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration


class Racing(TrialsService):
    """The withdrawal lands between the dry run and the commit (the dry run saw consent)."""

    def _dry_run(self, caller: Caller, method: str, args: Any) -> None:
        return None


def test_entries_the_trial_refuses_after_all_are_shredded(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    keys = data / "keys"
    node = Node(Settings.load(data))
    node.start()
    records = HealthRecords.for_node(node)
    store = RecruitmentStore(data / TRIALS_FILE)
    try:
        roles = frozenset({"clinician", "investigator"})
        investigator = Caller("dr-ana-silva", "st-mary", roles, parse_scopes(default_scopes(roles)))
        patient = records.create(
            records.node_caller(), {"resourceType": "Patient", "gender": "male"}, patient_of=None
        ).patient
        own = records.custodial_key(patient)
        assert own is not None

        def run(key_file: Any, contract: str, method: str, args: dict[str, Any]) -> None:
            key = key_file if not isinstance(key_file, Path) else read_key_file(key_file)[1]
            (receipt,) = node.execute([(contract, method, args)], keypair=key)
            assert receipt["result"] == "accepted", (method, receipt)

        registration = {
            "study": "RACE-1",
            "registry_id": "NCT1",
            "title": "t",
            "protocol_hash": "5" * 64,
            "sap_hash": "6" * 64,
            "primary": ["p"],
            "secondary": [],
            "eligibility": {"age": [0, 150]},
            "visits": [{"id": "baseline", "day": 0, "window": 3}],
            "sites": ["st-mary"],
        }
        run(keys / "trialco-admin.key", "trials", "register", registration)
        run(
            keys / "dr-ana-silva.key",
            "trials",
            "enrol",
            {"study": "RACE-1", "participant": patient},
        )
        run(own, "trials", "consent", {"study": "RACE-1", "version": 1})
        run(own, "trials", "withdraw", {"study": "RACE-1"})
        entry = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "weight"},
            "subject": {"reference": f"Patient/{patient}"},
            "valueQuantity": {"value": 80, "unit": "kg"},
        }
        honest = TrialsService(node, records, store)
        with pytest.raises(Rejected) as refused:
            honest.capture(investigator, "RACE-1", patient, "baseline", [entry])
        assert refused.value.code == "WITHDRAWN"
        assert records.patient_records(patient, {"Observation"}) == []  # nothing was written

        with pytest.raises(Rejected) as late:
            Racing(node, records, store).capture(
                investigator, "RACE-1", patient, "baseline", [entry]
            )
        assert late.value.code == "WITHDRAWN"
        assert records.patient_records(patient, {"Observation"}) == []  # shredded: off the index
        (shredded,) = [
            k
            for k in node.ledger.store.state_keys("records", "record/", 1000)
            if "/v/" not in k and node.ledger.state("records", k)["type"] == "Observation"
        ]
        with pytest.raises(NotFound):
            records.record_meta(shredded.split("/")[1])
    finally:
        store.close()
        records.close()
        node.stop()
