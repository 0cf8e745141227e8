"""Each trial e-consent as a FHIR R4 Consent (scope and category research) in the site's vault.

The ledger's ``trials.consented`` transaction is what counts; the FHIR Consent is its clinical
record, kept by the participant's site with the other records of that patient, tied to the
protocol version and hash and to the ledger transaction. A withdrawal makes the Consent
inactive. Written by the site's node however the participant signed (portal, SDK, API).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from careledger.commit_worker import CommitWorker
from careledger.contracts.trials import participant_of, study_of
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex
from careledger.health.service import HealthRecords
from careledger.sqlite_threads import ThreadConnections, iso_ms

SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
CATEGORY = "http://terminology.hl7.org/CodeSystem/consentcategorycodes"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
TX_SYSTEM = "urn:careledger:tx"
EVENTS = frozenset({"trials.consented", "trials.withdrawn"})

SCHEMA = """
CREATE TABLE IF NOT EXISTS consent_records(
  study TEXT NOT NULL, participant TEXT NOT NULL, record TEXT NOT NULL,
  PRIMARY KEY(study, participant));
"""


def fhir_consent(
    *,
    study: Mapping[str, Any],
    participant: str,
    site: str,
    version: int,
    time_ms: int,
    tx_id: str,
    withdrawn_ms: int | None = None,
) -> dict[str, Any]:
    """The FHIR Consent of a participant's consent to one protocol version."""
    protocol = next(p for p in study["protocols"] if p["version"] == version)
    period: dict[str, str] = {"start": iso_ms(time_ms)}
    if withdrawn_ms is not None:
        period["end"] = iso_ms(withdrawn_ms)
    return {
        "resourceType": "Consent",
        "identifier": [{"system": TX_SYSTEM, "value": tx_id}],
        "status": "inactive" if withdrawn_ms is not None else "active",
        "scope": {"coding": [{"system": SCOPE, "code": "research"}]},
        "category": [{"coding": [{"system": CATEGORY, "code": "research"}]}],
        "patient": {"reference": f"Patient/{participant}"},
        "dateTime": iso_ms(time_ms),
        "organization": [{"reference": f"Organization/{site}"}],
        "policy": [
            {
                "authority": f"urn:careledger:study:{study['id']}",
                "uri": f"urn:careledger:protocol:{study['id']}:v{version}:{protocol['hash']}",
            }
        ],
        "provision": {
            "type": "permit",
            "period": period,
            "purpose": [{"system": ACT_REASON, "code": "CLINTRCH"}],
        },
    }


class ConsentRecorder:
    """Keeps the FHIR Consent of every e-consent of this site's participants up to date."""

    def __init__(
        self, records: HealthRecords, path: Path, *, random: Random = SYSTEM_RANDOM
    ) -> None:
        self.records = records
        self._random = random  # the Consent records' ids
        self.ledger = records.ledger
        self._conns = ThreadConnections(path, "consent records")
        self._conns.schema(SCHEMA)
        self._worker: CommitWorker[tuple[str, str]] = CommitWorker(
            self.ledger, "consent-records", self._pick, lambda item: self.sync(*item)
        )

    def attach(self) -> None:
        self._worker.attach()

    def detach(self) -> None:
        self._worker.detach()
        self._conns.close()

    @staticmethod
    def _pick(kind: str, data: dict[str, Any]) -> tuple[str, str] | None:
        """A participant whose consent changed."""
        return (data["study"], data["participant"]) if kind in EVENTS else None

    def record_of(self, study: str, participant: str) -> str | None:
        row = (
            self._conns.get()
            .execute(
                "SELECT record FROM consent_records WHERE study = ? AND participant = ?",
                (study, participant),
            )
            .fetchone()
        )
        return None if row is None else str(row[0])

    def sync(self, study_id: str, participant: str) -> str | None:
        """Write (or update) the participant's FHIR Consent; its record id (None: not ours)."""
        study = study_of(self.ledger.state, study_id)
        entry = participant_of(self.ledger.state, study_id, participant)
        if study is None or entry is None or entry["site"] != self.records.org:
            return None
        if not entry["consents"]:
            return None
        latest = entry["consents"][-1]
        resource = fhir_consent(
            study=study,
            participant=participant,
            site=entry["site"],
            version=latest["version"],
            time_ms=latest["time"],
            tx_id=latest.get("tx", ""),
            withdrawn_ms=entry.get("withdrawn"),
        )
        caller = self.records.node_caller()
        record = self.record_of(study_id, participant)
        if record is None:
            record = token_hex(self._random, 16)
            self.records.write_all(caller, [(resource, record, 1, participant)])
            self._conns.get().execute(
                "INSERT INTO consent_records(study, participant, record) VALUES(?,?,?)",
                (study_id, participant, record),
            )
            return record
        meta = self.records.record_meta(record)
        current, _ = self.records.vault.open(record, meta["version"], self.ledger.node_key)
        unchanged = {k: v for k, v in current.items() if k not in {"id", "meta"}} == resource
        if not unchanged:
            self.records.write_all(caller, [(resource, record, meta["version"] + 1, participant)])
        return record
