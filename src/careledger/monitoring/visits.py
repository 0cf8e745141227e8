"""Telemedicine visits on a node: scheduling, the patient's consent, joining, the visit note.

The video link stays at the scheduling node (the ledger holds its hash) and is handed to a
participant only once the ledger has accepted their join. The note is a FHIR Encounter
(class virtual) and a DocumentReference (a progress note) written to the vault as the
patient's records, anchored in the same submission as the visit's end, which names them.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from careledger.callers.caller import Caller
from careledger.clock import SYSTEM_CLOCK, Clock
from careledger.contracts.visits import NAMESPACE as VISITS
from careledger.contracts.visits import clinician_visit_ids, patient_visit_ids, visit_of
from careledger.entropy import SYSTEM_RANDOM, Random, token_hex
from careledger.errors import Forbidden, NotFound, Rejected, ValidationError
from careledger.health.service import WRITER_ROLES, HealthRecords
from careledger.patient_signing import sign_as_patient
from careledger.sqlite_threads import ThreadConnections, iso_ms
from careledger.vault.at_rest import AtRest

VISITS_FILE = "visits.sqlite"
MAX_NOTE = 64 * 1024
# The room's link and the visit's reason are the scheduling organisation's (the ledger holds the
# link's hash only, and no free text).
SCHEMA = """
CREATE TABLE IF NOT EXISTS links(visit TEXT PRIMARY KEY, link TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS reasons(visit TEXT PRIMARY KEY, reason TEXT NOT NULL);
"""


def encounter(visit: Mapping[str, Any], record_id: str, *, ended_ms: int) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": record_id,
        "identifier": [{"system": "urn:careledger:visit", "value": visit["id"]}],
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "VR",
            "display": "virtual",
        },
        "subject": {"reference": f"Patient/{visit['patient']}"},
        "participant": [{"individual": {"display": visit["clinician"]}}],
        "period": {"start": iso_ms(visit["started"]), "end": iso_ms(ended_ms)},
        "reasonCode": [{"text": visit["reason"]}] if visit.get("reason") else [],
    }


def progress_note(
    visit: Mapping[str, Any], encounter_id: str, text: str, *, date_ms: int
) -> dict[str, Any]:
    return {
        "resourceType": "DocumentReference",
        "status": "current",
        "type": {
            "coding": [
                {"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}
            ]
        },
        "subject": {"reference": f"Patient/{visit['patient']}"},
        "date": iso_ms(date_ms),
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(text.encode()).decode(),
                }
            }
        ],
        "context": {"encounter": [{"reference": f"Encounter/{encounter_id}"}]},
    }


class VisitsService:
    def __init__(
        self,
        records: HealthRecords,
        path: Path,
        *,
        clock: Clock = SYSTEM_CLOCK,
        random: Random = SYSTEM_RANDOM,
    ) -> None:
        self.records = records
        self._clock = clock  # upcoming or past, and the note's times
        self._random = random  # visit and note ids
        self.node = records.node
        self.ledger = records.ledger
        self._conns = ThreadConnections(path, "visit links")
        self._conns.schema(SCHEMA)
        self._sealed = AtRest.for_node(self.ledger.node_key, "visits")

    def close(self) -> None:
        self._conns.close()

    def keep_link(self, visit_id: str, link: str, reason: str = "") -> None:
        """Keep a scheduled visit's link (and reason); only once: a link is never replaced."""
        conn = self._conns.get()
        sealed_link = self._sealed.seal(link.encode(), f"links:{visit_id}")
        conn.execute("INSERT INTO links(visit, link) VALUES(?, ?)", (visit_id, sealed_link))
        if reason:
            sealed = self._sealed.seal(reason.encode(), f"reasons:{visit_id}")
            conn.execute("INSERT INTO reasons(visit, reason) VALUES(?, ?)", (visit_id, sealed))

    def visit(self, caller: Caller, visit_id: str) -> dict[str, Any]:
        visit = visit_of(self.ledger.state, visit_id)
        if visit is None:
            raise NotFound("no such visit", code="UNKNOWN_VISIT")
        if caller.member not in {visit["patient"], visit["clinician"]}:
            raise Forbidden("a visit is seen by its patient and clinician", code="NOT_AUTHORISED")
        row = (
            self._conns.get()
            .execute("SELECT reason FROM reasons WHERE visit = ?", (visit_id,))
            .fetchone()
        )
        shown = {k: v for k, v in visit.items() if k != "link_hash"}
        if row is None:
            return {**shown, "reason": ""}
        reason = self._sealed.open(_as_bytes(row[0]), f"reasons:{visit_id}").decode()
        return {**shown, "reason": reason}

    def mine(self, caller: Caller) -> dict[str, list[dict[str, Any]]]:
        """The caller's visits (as patient or clinician), upcoming and past."""
        listed = patient_visit_ids if "patient" in caller.roles else clinician_visit_ids
        ids = listed(self.ledger.store.state_keys, caller.member, 10_000)
        visits = [self.visit(caller, i) for i in ids]
        now = int(self._clock.time() * 1000)
        upcoming = [
            v for v in visits if v["status"] in {"scheduled", "in_progress"} and v["end"] >= now
        ]
        past = [v for v in visits if v not in upcoming]
        return {
            "upcoming": sorted(upcoming, key=lambda v: v["start"]),
            "past": sorted(past, key=lambda v: v["start"], reverse=True),
        }

    def schedule(self, caller: Caller, body: Mapping[str, Any]) -> dict[str, Any]:
        link = body.get("link")
        if not isinstance(link, str) or not link.startswith("https://") or len(link) > 2048:
            raise ValidationError("link is the video room's https:// address", code="BAD_LINK")
        reason = body.get("reason") or ""
        if not isinstance(reason, str) or len(reason) > 512:
            raise ValidationError("reason is a short text", code="BAD_REQUEST")
        # never the caller's: ids are not claimable
        visit_id = f"visit-{token_hex(self._random, 8)}"
        args = {
            "id": visit_id,
            "patient": body.get("patient"),
            "start": body.get("start"),
            "end": body.get("end"),
            "link_hash": hashlib.sha256(link.encode()).hexdigest(),
            "recording": bool(body.get("recording", False)),
        }
        receipt = self.node.act_for(VISITS, caller.member, "schedule", args)
        self.keep_link(visit_id, link, reason)  # only once the ledger scheduled it
        return {"receipt": receipt, "visit": self.visit(caller, visit_id)}

    def consent(
        self, caller: Caller, visit_id: str, recording: bool, envelope: object | None
    ) -> dict[str, Any]:
        args = {"id": visit_id, "recording": recording}
        receipt = sign_as_patient(self.records, caller, VISITS, "consent", args, envelope)
        return {"receipt": receipt, "visit": self.visit(caller, visit_id)}

    def step(self, caller: Caller, visit_id: str, method: str) -> dict[str, Any]:
        """``start`` or ``cancel`` (a patient cancels with their own key)."""
        if method == "cancel" and "patient" in caller.roles:
            args = {"id": visit_id, "reason": "patient_cancelled"}
            receipt = sign_as_patient(self.records, caller, VISITS, "cancel", args, None)
        else:
            args = (
                {"id": visit_id} if method == "start" else {"id": visit_id, "reason": "cancelled"}
            )
            receipt = self.node.act_for(VISITS, caller.member, method, args)
        return {"receipt": receipt, "visit": self.visit(caller, visit_id)}

    def join(self, caller: Caller, visit_id: str, envelope: object | None = None) -> dict[str, Any]:
        """Record the join on the ledger; only then is the room's link released. A patient's
        join is signed by the patient (their own envelope, or the key held for them)."""
        self.visit(caller, visit_id)
        args = {"id": visit_id}
        if "patient" in caller.roles:
            receipt = sign_as_patient(self.records, caller, VISITS, "join", args, envelope)
        else:
            receipt = self.node.act_for(VISITS, caller.member, "join", args)
        row = (
            self._conns.get()
            .execute("SELECT link FROM links WHERE visit = ?", (visit_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound("the room's link is held by the scheduling node", code="REMOTE_LINK")
        link = self._sealed.open(_as_bytes(row[0]), f"links:{visit_id}").decode()
        return {"receipt": receipt, "link": link}

    def end(self, caller: Caller, visit_id: str, note: str) -> dict[str, Any]:
        """End the visit with its note (Encounter + DocumentReference), all or nothing."""
        visit = self.visit(caller, visit_id)
        if not isinstance(note, str) or not 0 < len(note) <= MAX_NOTE:
            raise ValidationError(f"the note is 1..{MAX_NOTE} characters", code="BAD_NOTE")
        if caller.member != visit["clinician"]:
            raise Forbidden("the clinician ends the visit", code="NOT_AUTHORISED")
        if visit["status"] != "in_progress":
            raise Rejected("NOT_STARTED", "only a visit in progress ends")
        if caller.org != self.records.org or not caller.roles & WRITER_ROLES:
            raise Forbidden("the visit's organisation keeps its note", code="NOT_CUSTODIAN")
        encounter_id, note_id = token_hex(self._random, 16), token_hex(self._random, 16)
        ended = int(self._clock.time() * 1000)  # the encounter's end is the note's date
        writes = [
            (encounter(visit, encounter_id, ended_ms=ended), encounter_id, 1, visit["patient"]),
            (progress_note(visit, encounter_id, note, date_ms=ended), note_id, 1, visit["patient"]),
        ]

        def ending(written: list[tuple[str, int, str]]) -> list[tuple[str, str, Mapping[str, Any]]]:
            notes = [{"record": r, "version": v, "hash": h} for r, v, h in written]
            call = {
                "actor": caller.member,
                "method": "end",
                "args": {"id": visit_id, "notes": notes},
            }
            return [(VISITS, "on_behalf", call)]

        _, (receipt,) = self.records.write_then(caller, writes, then=ending)
        if receipt["result"] != "accepted":
            calls = [
                ("records", "shred", {"record": r, "reason": "visit_end_refused"})
                for r in (encounter_id, note_id)
            ]
            self.node.execute(calls)
            raise Rejected(str(receipt["code"]), "the visit did not end; its note was shredded")
        return {
            "receipt": receipt,
            "visit": self.visit(caller, visit_id),
            "encounter": encounter_id,
            "note": note_id,
        }


def _as_bytes(value: object) -> bytes:
    """A column value as bytes (sealed values are BLOBs; rows written before sealing, TEXT)."""
    return value if isinstance(value, bytes) else str(value).encode()
