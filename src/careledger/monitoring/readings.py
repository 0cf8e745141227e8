"""Reading device data back: authorised, logged, and with the proof of every reading.

A reading's proof goes from the reading to its window's root (an RFC 9162 inclusion path over
the window's salted digests), and from the window to the ledger (the ``monitoring.anchor_window``
transaction that carries the root, with its own inclusion proof to a signed checkpoint). Reads
of readings are PHI reads: each is authorised by the ledger (the patient, the device owner's
care team, or a consent) and leaves an access event naming the windows read.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson

from careledger.callers.caller import Caller, require_scope
from careledger.contracts.monitoring import alerts_of_patient, open_alerts, window_of
from careledger.core import merkle
from careledger.core.keys import b64url_encode
from careledger.core.vitals import to_observation
from careledger.errors import Forbidden, NotFound
from careledger.health.service import HealthRecords
from careledger.ledger.execute import Executed
from careledger.monitoring.batches import open_batch, reading_salt
from careledger.monitoring.store import ClosedWindow, ReadingsStore, erasure_of

log = logging.getLogger(__name__)
MAX_WINDOWS_READ = 2000


class ReadingsService:
    def __init__(self, records: HealthRecords, store: ReadingsStore) -> None:
        self.records = records
        self.ledger = records.ledger
        self.store = store

    def on_commit(self, executed: Executed) -> None:
        """Shred a patient's readings when the ledger records their erasure (a commit listener,
        on the committer's thread: index lookups of the patient's batches and windows).

        A failure (a busy store) is not the erasure lost: it stays unrecorded in the store, and
        the ingestor applies it at its next pass or start (``Ingestor.forget_erased``)."""
        for event in executed.block.events:
            if event.type != "monitoring.readings_erased":
                continue
            patient = str(orjson.loads(event.data)["patient"])
            erasure = erasure_of(self.ledger, patient)
            if erasure is None:
                continue
            try:
                self.store.shred_patient(patient, erasure)
            except Exception as exc:  # the ingestor retries it; never the patient in a log
                log.warning(
                    "shredding erased readings at height %d failed (%s); it will be retried",
                    executed.block.header.height,
                    type(exc).__name__,
                )

    def _authorise(self, caller: Caller, patient: str, windows: list[str], purpose: str) -> None:
        require_scope(caller, "Observation", "read", patient)
        self.records.authorise(
            caller,
            patient=patient,
            records=[],
            windows=windows,
            types={"Observation"},
            action="read",
            purpose=purpose,
        )

    def _anchored(self, device: str, window: int) -> tuple[ClosedWindow, dict[str, Any]]:
        closed = self.store.window(device, window)
        anchored = window_of(self.ledger.state, device, window)
        if closed is None or closed.status != "anchored" or anchored is None:
            raise NotFound("no anchored window with that number", code="UNKNOWN_WINDOW")
        return closed, dict(anchored)

    def reading(
        self, caller: Caller, device: str, window: int, index: int, *, purpose: str = "TREAT"
    ) -> dict[str, Any]:
        """One reading with its proof to the window root and the window's anchor."""
        closed, anchored = self._anchored(device, window)
        batch = self.store.batch_at(device, window, index)
        if batch is None:
            raise NotFound("no reading at that index", code="UNKNOWN_READING")
        self._authorise(caller, closed.patient, [f"{device}/{window}"], purpose)
        readings = open_batch(batch, self.ledger.node_key, "custodian")
        position = index - batch.first_index
        reading = readings[position]
        digests = b"".join(b.digests for b in self.store.batches_of(device, window))
        leaves = [merkle.leaf_hash(digests[i : i + 32]) for i in range(0, len(digests), 32)]
        path = merkle.inclusion_proof_in(leaves, index)
        return {
            "observation": to_observation(reading, patient=closed.patient, device=device),
            "reading": reading.as_json(),
            "device": device,
            "salt": b64url_encode(reading_salt(batch.salt, position)),
            "window": {
                "device": device,
                "window": window,
                "index": index,
                "count": closed.count,
                "root": anchored["root"],
                "path": [p.hex() for p in path],
            },
            "anchor": {"tx_id": closed.tx, "height": anchored["height"]},
        }

    def series(
        self, caller: Caller, patient: str, *, since_ms: int = 0, purpose: str = "TREAT"
    ) -> dict[str, Any]:
        """A patient's anchored readings held here (oldest first) and their alerts, for charts.

        Authorised like any read (the ledger records it, naming the windows); with nothing held
        here, only the patient or the care team of an organisation monitoring them may ask."""
        require_scope(caller, "Observation", "read", patient)
        windows = self.store.windows_of_patient(patient, since_ms, MAX_WINDOWS_READ)
        alerts = self.alerts_of(patient)
        if windows:
            self._authorise(caller, patient, [f"{w.device}/{w.window}" for w in windows], purpose)
        elif not caller.is_patient(patient) and not self._monitors(caller, alerts):
            # the same answer for an unknown patient: ids are not probed here
            raise Forbidden("no readings of this patient are yours to see", code="NO_CONSENT")
        out: list[dict[str, Any]] = []
        values: dict[tuple[Any, ...], Any] = {}
        for w in windows:
            for batch in self.store.batches_of(w.device, w.window):
                if not batch.wrapped:
                    continue  # erased by the patient: nothing to show, the window stays proven
                for i, reading in enumerate(open_batch(batch, self.ledger.node_key, "custodian")):
                    index = batch.first_index + i
                    row = reading.as_json()
                    values[(w.device, w.window, index)] = row["value"]
                    if reading.time_ms >= since_ms:
                        out.append(
                            {
                                **row,
                                "device": w.device,
                                "window": w.window,
                                "index": index,
                            }
                        )
        out.sort(key=lambda r: r["time"])
        shown = []
        for alert in alerts:
            if not caller.is_patient(patient) and alert["org"] != caller.org:
                continue
            key = (alert["device"], alert.get("window"), alert.get("index"))
            shown.append({**alert, "value": values.get(key)})  # the value only where read
        return {"patient": patient, "readings": out, "alerts": shown}

    @staticmethod
    def _monitors(caller: Caller, alerts: list[dict[str, Any]]) -> bool:
        """Whether the caller is care staff of an organisation with one of these alerts."""
        return bool(caller.roles & {"clinician", "nurse"}) and any(
            a["org"] == caller.org for a in alerts
        )

    def alerts_of(self, patient: str) -> list[dict[str, Any]]:
        found = alerts_of_patient(self.ledger.state, self.ledger.store.state_keys, patient, 100_000)
        return [dict(alert) for alert in found]

    def inbox(self, caller: Caller) -> list[dict[str, Any]]:
        """Unacknowledged alerts of the caller's organisation (its devices' patients)."""
        if not caller.roles & {"clinician", "nurse"}:
            raise Forbidden("the care team's inbox", code="NOT_AUTHORISED")
        out = [dict(alert) for alert in open_alerts(self.ledger.state, caller.org)]
        return sorted(out, key=lambda a: a["raised"], reverse=True)
