"""Telemedicine visits: scheduled by a clinician, consented to by the patient (and, separately,
any recording), joined by authenticated participants, started and ended on the ledger, with
the visit note anchored as the patient's records.

The video itself happens elsewhere (a link to the organisation's video service); the ledger
keeps only the link's hash, so a leaked ledger gives no one a way into the call. The node that
scheduled the visit releases the link to its participants when they join.

State (namespace ``visits``):

* ``visit/{id}`` -> the visit: patient, clinician, org, times, link hash, consent, status,
  joins, start/end, notes
* ``by-patient/{patient}/{id}``, ``by-clinician/{member}/{id}`` -> ``{}`` (listings)
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from careledger.contracts.base import Args, Context, Contract, KeyLister, StateReader, tx_method
from careledger.contracts.records import anchored_records, require_patient
from careledger.errors import Rejected

NAMESPACE = "visits"
VISIT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
HASH = re.compile(r"^[0-9a-f]{64}$")
CARE_ROLES = frozenset({"clinician", "nurse"})
JOIN_EARLY_MS = 15 * 60_000
MAX_VISIT_MS = 8 * 60 * 60_000
NOTE_TYPES = frozenset({"Encounter", "DocumentReference"})
ON_BEHALF_METHODS = frozenset({"schedule", "join", "start", "end", "cancel"})


# -- views: what the node reads of this contract's state (pure; none is used by a ruleset) ----

VISIT_PREFIX = "visit/"


def visit_key(visit_id: str) -> str:
    return f"{VISIT_PREFIX}{visit_id}"


def visit_of(read: StateReader, visit_id: str) -> Mapping[str, Any] | None:
    """A visit (patient, clinician, org, times, link hash, status), or None: who may see it."""
    found: Mapping[str, Any] | None = read(NAMESPACE, visit_key(visit_id))
    return found


def _ids_under(keys: KeyLister, prefix: str, limit: int) -> list[str]:
    return [k[len(prefix) :] for k in keys(NAMESPACE, prefix, limit)]


def visit_ids(keys: KeyLister, limit: int) -> list[str]:
    """Every visit's id, in key order: what a node audit checks it keeps the links of."""
    return _ids_under(keys, VISIT_PREFIX, limit)


def patient_visit_ids(keys: KeyLister, patient: str, limit: int) -> list[str]:
    """The ids of a patient's visits: their list of visits."""
    return _ids_under(keys, f"by-patient/{patient}/", limit)


def clinician_visit_ids(keys: KeyLister, clinician: str, limit: int) -> list[str]:
    """The ids of the visits a clinician scheduled: their list of visits."""
    return _ids_under(keys, f"by-clinician/{clinician}/", limit)


class VisitsV1(Contract):
    name = NAMESPACE

    @tx_method
    def on_behalf(self, ctx: Context, args: Args) -> None:
        """A node runs a participant's step for a member it authenticated. A patient's consent
        is never among them: the patient signs it."""
        ctx.rules.run_on_behalf(self, ctx, args, ON_BEHALF_METHODS)

    @staticmethod
    def _visit(ctx: Context, visit_id: str) -> dict[str, Any]:
        visit = ctx.state.get(f"visit/{visit_id}")
        if visit is None:
            raise Rejected("UNKNOWN_VISIT", f"no visit {visit_id!r}")
        return dict(visit)

    @tx_method
    def schedule(self, ctx: Context, args: Args) -> None:
        args.only("id", "patient", "start", "end", "link_hash", "recording")
        visit_id = args.string("id", pattern=VISIT_ID)
        patient = args.string("patient", max_len=64)
        if not ctx.signer.roles & CARE_ROLES:
            raise Rejected("NOT_AUTHORISED", "a clinician or nurse schedules a visit")
        require_patient(ctx, patient)
        if ctx.state.get(f"visit/{visit_id}") is not None:
            raise Rejected("VISIT_EXISTS", f"visit {visit_id} exists")
        start, end = args.integer("start"), args.integer("end")
        if not start < end <= start + MAX_VISIT_MS:
            raise Rejected("BAD_ARGS", "a visit ends after it starts, within 8 hours")
        if end <= ctx.time:
            raise Rejected("BAD_ARGS", "the visit would be over already")
        visit = {
            "id": visit_id,
            "patient": patient,
            "clinician": ctx.signer.member,
            "org": ctx.signer.org,
            "start": start,
            "end": end,
            "link_hash": args.string("link_hash", pattern=HASH),
            "recording_requested": args.boolean("recording"),
            "consent": None,
            "status": "scheduled",
            "joins": [],
            "started": None,
            "ended": None,
            "notes": [],
            "scheduled": ctx.height,
        }
        ctx.state.put(f"visit/{visit_id}", visit)
        ctx.state.put(f"by-patient/{patient}/{visit_id}", {})
        ctx.state.put(f"by-clinician/{ctx.signer.member}/{visit_id}", {})
        ctx.emit("visits.scheduled", {"visit": visit_id, "patient": patient, "start": start})

    @tx_method
    def consent(self, ctx: Context, args: Args) -> None:
        """The patient, with their own key, agrees to the visit and says yes or no to recording."""
        args.only("id", "recording")
        visit = self._visit(ctx, args.string("id", pattern=VISIT_ID))
        if ctx.signer.member != visit["patient"]:
            raise Rejected("NOT_AUTHORISED", "the patient consents to their visit")
        if visit["status"] not in {"scheduled"}:
            raise Rejected("VISIT_CLOSED", f"the visit is {visit['status']}")
        recording = args.boolean("recording")
        if recording and not visit["recording_requested"]:
            raise Rejected("BAD_ARGS", "no recording was asked for")
        visit["consent"] = {"time": ctx.time, "recording": recording, "tx": ctx.tx_id}
        ctx.state.put(f"visit/{visit['id']}", visit)
        ctx.emit("visits.consented", {"visit": visit["id"], "recording": recording})

    @tx_method
    def cancel(self, ctx: Context, args: Args) -> None:
        args.only("id", "reason")
        visit = self._visit(ctx, args.string("id", pattern=VISIT_ID))
        if ctx.signer.member not in {visit["patient"], visit["clinician"]}:
            raise Rejected("NOT_AUTHORISED", "the patient or the clinician cancels")
        if visit["status"] in {"ended", "cancelled"}:
            raise Rejected("VISIT_CLOSED", f"the visit is {visit['status']}")
        visit.update(status="cancelled", cancelled={"by": ctx.signer.member, "time": ctx.time})
        ctx.state.put(f"visit/{visit['id']}", visit)
        ctx.emit("visits.cancelled", {"visit": visit["id"]})

    def _open(self, ctx: Context, visit: dict[str, Any]) -> None:
        if visit["status"] in {"ended", "cancelled"}:
            raise Rejected("VISIT_CLOSED", f"the visit is {visit['status']}")
        if visit["consent"] is None:
            raise Rejected("NO_CONSENT", "the patient has not consented to the visit")
        if not visit["start"] - JOIN_EARLY_MS <= ctx.time <= visit["end"]:
            raise Rejected("OUTSIDE_WINDOW", "the visit is not open now")

    @tx_method
    def join(self, ctx: Context, args: Args) -> None:
        """A participant (the patient or the clinician) joins; recorded with the time."""
        args.only("id")
        visit = self._visit(ctx, args.string("id", pattern=VISIT_ID))
        if ctx.signer.member not in {visit["patient"], visit["clinician"]}:
            raise Rejected("NOT_AUTHORISED", "only the visit's patient and clinician join")
        self._open(ctx, visit)
        visit["joins"] = [*visit["joins"], {"member": ctx.signer.member, "time": ctx.time}]
        ctx.state.put(f"visit/{visit['id']}", visit)
        ctx.emit("visits.joined", {"visit": visit["id"], "member": ctx.signer.member})

    @tx_method
    def start(self, ctx: Context, args: Args) -> None:
        args.only("id")
        visit = self._visit(ctx, args.string("id", pattern=VISIT_ID))
        if ctx.signer.member != visit["clinician"]:
            raise Rejected("NOT_AUTHORISED", "the clinician starts the visit")
        self._open(ctx, visit)
        if visit["status"] != "scheduled":
            raise Rejected("VISIT_STARTED", "the visit has started")
        visit.update(status="in_progress", started=ctx.time)
        ctx.state.put(f"visit/{visit['id']}", visit)
        ctx.emit("visits.started", {"visit": visit["id"]})

    @tx_method
    def end(self, ctx: Context, args: Args) -> None:
        """The clinician ends the visit; its note (Encounter, DocumentReference) is anchored as
        the patient's records and named here by version and salted hash."""
        args.only("id", "notes")
        visit = self._visit(ctx, args.string("id", pattern=VISIT_ID))
        if ctx.signer.member != visit["clinician"]:
            raise Rejected("NOT_AUTHORISED", "the clinician ends the visit")
        if visit["status"] != "in_progress":
            raise Rejected("NOT_STARTED", "only a visit in progress ends")
        notes = anchored_records(
            ctx,
            args.raw.get("notes"),
            patient=visit["patient"],
            types=NOTE_TYPES,
            max_items=10,
            what="the visit's note",
        )
        visit.update(status="ended", ended=ctx.time, notes=notes)
        ctx.state.put(f"visit/{visit['id']}", visit)
        ctx.emit("visits.ended", {"visit": visit["id"], "notes": len(notes)})
