"""Each trial e-consent as a FHIR R4 Consent (scope and category research) in the site's vault.

The ledger's ``trials.consented`` transaction is what counts; the FHIR Consent is its clinical
record, kept by the participant's site with the other records of that patient, tied to the
protocol version and hash and to the ledger transaction. A withdrawal makes the Consent
inactive. Written by the site's node however the participant signed (portal, SDK, API).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import secrets
import threading
from pathlib import Path
from typing import Any

import orjson

from careledger.contracts.trials import NAMESPACE as TRIALS
from careledger.contracts.trials import participant_key, study_key
from careledger.errors import CareLedgerError
from careledger.health.service import HealthRecords
from careledger.ledger.execute import Executed
from careledger.sqlite_threads import ThreadConnections, iso_ms

log = logging.getLogger(__name__)
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
    study: dict[str, Any],
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

    def __init__(self, records: HealthRecords, path: Path) -> None:
        self.records = records
        self.ledger = records.ledger
        self._conns = ThreadConnections(path, "consent records")
        self._conns.get().executescript(SCHEMA)
        self._queue: queue.Queue[tuple[str, str]] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def attach(self) -> None:
        self.ledger.commit_listeners.append(self.on_commit)
        self._thread = threading.Thread(target=self._run, name="consent-records", daemon=True)
        self._thread.start()

    def detach(self) -> None:
        with contextlib.suppress(ValueError):
            self.ledger.commit_listeners.remove(self.on_commit)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._conns.close()

    def on_commit(self, executed: Executed) -> None:
        for event in executed.block.events:
            if event.type in EVENTS:
                data = orjson.loads(event.data)
                self._queue.put((data["study"], data["participant"]))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                study, participant = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            try:
                self.sync(study, participant)
            except CareLedgerError:
                log.exception("the FHIR Consent of a trial consent could not be written")

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
        study = self.ledger.state(TRIALS, study_key(study_id))
        entry = self.ledger.state(TRIALS, participant_key(study_id, participant))
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
            record = secrets.token_hex(16)
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
