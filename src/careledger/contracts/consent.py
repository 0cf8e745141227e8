"""Patient consent: who may read or write which of a patient's records, for what, and when.

A patient (or a delegate the patient named) grants a consent to an organisation or to one
member: actions, FHIR resource types (or all), purposes of use (HL7 v3 PurposeOfUse codes) and a
period. A revocation takes effect from the block that commits it. Break-glass lets a clinician
read without consent in an emergency (purpose ETREAT, a stated reason code); it is time-limited,
flagged on every access and announced to the patient by an event.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, ClassVar

from careledger.contracts.base import Args, Context, Contract, KeyLister, StateReader, tx_method
from careledger.contracts.identity import ID_PATTERN
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import RESOURCE_TYPE, record_key, require_patient
from careledger.errors import Rejected

NAMESPACE = "consent"
ACTIONS = frozenset({"read", "write"})
# HL7 v3 PurposeOfUse (http://terminology.hl7.org/CodeSystem/v3-ActReason), the codes we honour.
PURPOSES = frozenset(
    {"TREAT", "ETREAT", "CAREMGT", "HPAYMT", "HOPERAT", "HRESCH", "CLINTRCH", "PUBHLTH", "PATRQT"}
)
ALL_TYPES = "*"
TYPE_OR_ALL = re.compile(rf"^(\*|{RESOURCE_TYPE.pattern[1:-1]})$")
BREAK_GLASS_REASONS = frozenset(
    {"unconscious", "life_threatening", "unable_to_consent", "incapacitated", "other_emergency"}
)
BREAK_GLASS_ROLES = frozenset({"clinician", "nurse"})
BREAK_GLASS_MS = 4 * 60 * 60 * 1000


def consent_key(consent_id: str) -> str:
    return f"consent/{consent_id}"


def by_patient_key(patient: str, consent_id: str) -> str:
    return f"by-patient/{patient}/{consent_id}"


def patient_consents_prefix(patient: str) -> str:
    """Where a patient's consents are indexed (``by_patient_key``): the node lists them."""
    return by_patient_key(patient, "")


def consent_of(read: StateReader, consent_id: str) -> Mapping[str, Any] | None:
    """A consent (grantee, actions, types, purposes, period, status), or None."""
    found: Mapping[str, Any] | None = read(NAMESPACE, consent_key(consent_id))
    return found


def consents_of(
    read: StateReader, keys: KeyLister, patient: str, limit: int
) -> Iterator[Mapping[str, Any]]:
    """A patient's consents (revoked ones too), among the first ``limit`` of the patient's
    index, in its order (by consent id), read lazily: what the node judges an access by (with
    :func:`consent_covers`) and what a patient's consent list shows."""
    indexed = patient_consents_prefix(patient)
    for key in keys(NAMESPACE, indexed, limit):
        consent: Mapping[str, Any] | None = read(NAMESPACE, consent_key(key[len(indexed) :]))
        if consent is not None:
            yield consent


def break_glass_key(access_id: str) -> str:
    return f"break-glass/{access_id}"


def break_glass_index_key(patient: str, member: str) -> str:
    """The latest break-glass by ``member`` for ``patient``, so a node can find it."""
    return f"break-glass-by/{patient}/{member}"


def delegate_key(patient: str, delegate: str) -> str:
    return f"delegate/{patient}/{delegate}"


CONSENT_PREFIX = "consent/"


def every_consent(read: StateReader, keys: KeyLister, limit: int) -> list[Any]:
    """Every consent granted on the chain (revoked ones too), in key order, at most ``limit``:
    which patients a clinician's consents reach (judged with :func:`consent_covers`)."""
    found = (read(NAMESPACE, k) for k in keys(NAMESPACE, CONSENT_PREFIX, limit))
    return [e for e in found if e is not None]


def consent_covers(
    consent: Mapping[str, Any],
    *,
    member: str,
    org: str,
    action: str,
    resource_type: str,
    purpose: str,
    time: int,
) -> bool:
    """Whether an active consent lets ``member`` of ``org`` do ``action`` at ``time``."""
    grantee = consent["grantee"]
    return (
        consent["status"] == "active"
        and (grantee.get("member") == member or grantee.get("org") == org)
        and action in consent["actions"]
        and (ALL_TYPES in consent["resource_types"] or resource_type in consent["resource_types"])
        and purpose in consent["purposes"]
        and consent["start"] <= time
        and (consent["end"] is None or time < consent["end"])
    )


class ConsentV1(Contract):
    name = NAMESPACE

    @staticmethod
    def _acting_for(ctx: Context, patient: str) -> None:
        """The signer is the patient, or a delegate the patient named."""
        if ctx.signer.member == patient and ctx.signer.has_role("patient"):
            return
        if ctx.state.get(delegate_key(patient, ctx.signer.member)) is None:
            raise Rejected("NOT_AUTHORISED", "only the patient or the patient's delegate")

    @tx_method
    def grant(self, ctx: Context, args: Args) -> None:
        args.only("patient", "grantee", "actions", "resource_types", "purposes", "start", "end")
        patient = (
            args.string("patient", pattern=ID_PATTERN) if args.has("patient") else ctx.signer.member
        )
        require_patient(ctx, patient)
        self._acting_for(ctx, patient)
        grantee = args.mapping("grantee")
        grantee.only("org", "member")
        if grantee.has("org") == grantee.has("member"):
            raise Rejected("BAD_ARGS", "grantee names exactly one of 'org' or 'member'")
        if grantee.has("org"):
            target = {"org": grantee.string("org", pattern=ID_PATTERN)}
            org = ctx.state.read(IDENTITY, f"org/{target['org']}")
            if org is None or org["status"] != "active":
                raise Rejected("UNKNOWN_ORG", "no active organisation with that id")
        else:
            target = {"member": grantee.string("member", pattern=ID_PATTERN)}
            if ctx.state.read(IDENTITY, f"member/{target['member']}") is None:
                raise Rejected("UNKNOWN_MEMBER", "no member with that id")
        start = args.optional_integer("start")
        end = args.optional_integer("end")
        start = ctx.time if start is None else start
        if end is not None and end <= start:
            raise Rejected("BAD_ARGS", "the consent period ends before it starts")
        consent = {
            "id": ctx.tx_id,
            "patient": patient,
            "grantee": target,
            "actions": args.strings("actions", allowed=ACTIONS),
            "resource_types": args.names("resource_types", pattern=TYPE_OR_ALL),
            "purposes": args.strings("purposes", allowed=PURPOSES),
            "start": start,
            "end": end,
            "status": "active",
            "granted_by": ctx.signer.member,
            "granted_at": ctx.height,
        }
        ctx.state.put(consent_key(ctx.tx_id), consent)
        ctx.state.put(by_patient_key(patient, ctx.tx_id), {"grantee": target})
        ctx.emit("consent.granted", {"consent": ctx.tx_id, "patient": patient, "grantee": target})

    @tx_method
    def revoke(self, ctx: Context, args: Args) -> None:
        args.only("consent")
        consent_id = args.string("consent", max_len=64)
        consent = ctx.state.get(consent_key(consent_id))
        if consent is None:
            raise Rejected("UNKNOWN_CONSENT", "no such consent")
        self._acting_for(ctx, consent["patient"])
        if consent["status"] != "active":
            raise Rejected("CONSENT_REVOKED", "the consent is already revoked")
        revoked = {
            **consent,
            "status": "revoked",
            "revoked_at": ctx.height,
            "revoked_time": ctx.time,
        }
        ctx.state.put(consent_key(consent_id), revoked)
        ctx.emit("consent.revoked", {"consent": consent_id, "patient": consent["patient"]})

    @tx_method
    def add_delegate(self, ctx: Context, args: Args) -> None:
        args.only("delegate")
        delegate = args.string("delegate", pattern=ID_PATTERN)
        if not ctx.signer.has_role("patient"):
            raise Rejected("NOT_AUTHORISED", "only a patient names delegates")
        if ctx.state.read(IDENTITY, f"member/{delegate}") is None:
            raise Rejected("UNKNOWN_MEMBER", "no member with that id")
        ctx.state.put(delegate_key(ctx.signer.member, delegate), {"since": ctx.height})
        ctx.emit("consent.delegate_added", {"patient": ctx.signer.member, "delegate": delegate})

    @tx_method
    def remove_delegate(self, ctx: Context, args: Args) -> None:
        args.only("delegate")
        delegate = args.string("delegate", pattern=ID_PATTERN)
        if ctx.state.get(delegate_key(ctx.signer.member, delegate)) is None:
            raise Rejected("UNKNOWN_DELEGATE", "that member is not your delegate")
        ctx.state.delete(delegate_key(ctx.signer.member, delegate))
        ctx.emit("consent.delegate_removed", {"patient": ctx.signer.member, "delegate": delegate})

    BREAK_GLASS_ARGS: ClassVar[tuple[str, ...]] = ("patient", "reason", "purpose")

    def _glass_request(self, ctx: Context, args: Args) -> tuple[str, str]:
        """(patient, reason) of a break-glass request, its purpose and signer checked."""
        args.only(*self.BREAK_GLASS_ARGS)
        patient = args.string("patient", pattern=ID_PATTERN)
        reason = args.string("reason")
        if reason not in BREAK_GLASS_REASONS:
            raise Rejected("BAD_ARGS", f"reason must be one of {sorted(BREAK_GLASS_REASONS)}")
        if args.string("purpose") != "ETREAT":
            raise Rejected("BAD_ARGS", "break-glass is for purpose ETREAT only")
        if not ctx.signer.roles & BREAK_GLASS_ROLES:
            raise Rejected("NOT_AUTHORISED", "only a clinician or nurse may break the glass")
        return patient, reason

    @tx_method
    def break_glass(self, ctx: Context, args: Args) -> None:
        """Emergency access without consent: flagged, time-limited, and the patient is told."""
        patient, reason = self._glass_request(ctx, args)
        require_patient(ctx, patient)
        entry = {
            "id": ctx.tx_id,
            "patient": patient,
            "member": ctx.signer.member,
            "org": ctx.signer.org,
            "reason": reason,
            "purpose": "ETREAT",
            "start": ctx.time,
            "end": ctx.time + BREAK_GLASS_MS,
            "height": ctx.height,
        }
        ctx.state.put(break_glass_key(ctx.tx_id), entry)
        ctx.state.put(break_glass_index_key(patient, ctx.signer.member), {"id": ctx.tx_id})
        ctx.emit(
            "consent.break_glass",
            {"id": ctx.tx_id, "patient": patient, "member": ctx.signer.member, "reason": reason},
        )


BREAK_GLASS_CONFIRM_MS = 60 * 60 * 1000
BREAK_GLASS_PREFIX = "break-glass/"


def break_glass_entries(read: StateReader, keys: KeyLister, limit: int) -> list[Any]:
    """Every break-glass request and access, in key order, at most ``limit``: what
    :func:`awaiting_cosignature` and :func:`opened_for_custodian` are given."""
    found = (read(NAMESPACE, k) for k in keys(NAMESPACE, BREAK_GLASS_PREFIX, limit))
    return [e for e in found if e is not None]


def awaiting_cosignature(
    entries: Iterable[Mapping[str, Any]], *, org: str, now: int
) -> list[Mapping[str, Any]]:
    """Break-glass requests of ``org``'s staff still waiting for a colleague (the view the
    node's portal shows; ``entries`` are the ``break-glass/`` values of this namespace)."""
    return [
        e
        for e in entries
        if e.get("status") == "pending"
        and e["org"] == org
        and now <= e["requested"] + BREAK_GLASS_CONFIRM_MS
    ]


def opened_for_custodian(
    entries: Iterable[Mapping[str, Any]], *, custodian: str, since: int
) -> list[Mapping[str, Any]]:
    """Break-glass accesses opened since ``since`` to patients whose organisation is
    ``custodian`` (what the custodian's staff are told at once), newest first."""
    opened = [
        e
        for e in entries
        if e.get("custodian") == custodian and e.get("status") == "active" and e["start"] >= since
    ]
    return sorted(opened, key=lambda e: e["start"], reverse=True)


BREAK_GLASS_WINDOW_MS = 24 * 60 * 60 * 1000
BREAK_GLASS_PER_WINDOW = 2
CARE_PROVIDER_KINDS = frozenset({"hospital", "clinic"})


class ConsentV2(ConsentV1):
    """r2: break-glass needs a care relationship the ledger can see, or a colleague's signature.

    The relationship is the patient's own organisation, or an Encounter of the patient that the
    clinician's organisation anchored (``encounter``: its record id); otherwise a second
    clinician or nurse of the same organisation confirms the request before it opens. One
    break-glass per clinician and patient at a time (no renewal while one runs) and at most two
    a day; every opening names the patient's custodian, whose node tells its staff at once.
    """

    version = 2
    BREAK_GLASS_ARGS = ("patient", "reason", "purpose", "encounter")

    @tx_method
    def break_glass(self, ctx: Context, args: Args) -> None:
        patient, reason = self._glass_request(ctx, args)
        record = require_patient(ctx, patient)
        self._check_limits(ctx, patient, ctx.signer.member)
        related = record["org"] == ctx.signer.org or (
            args.has("encounter") and self._encounter_held(ctx, patient, args)
        )
        entry = {
            "id": ctx.tx_id,
            "patient": patient,
            "member": ctx.signer.member,
            "org": ctx.signer.org,
            "custodian": record["org"],
            "reason": reason,
            "purpose": "ETREAT",
            "height": ctx.height,
            "basis": "care_relationship" if related else "cosignature",
            "status": "active" if related else "pending",
        }
        if related:
            self._open(ctx, entry)
            return
        entry["requested"] = ctx.time
        ctx.state.put(break_glass_key(ctx.tx_id), entry)
        ctx.emit(
            "consent.break_glass_requested",
            {
                "id": ctx.tx_id,
                "patient": patient,
                "member": ctx.signer.member,
                "reason": reason,
                "custodian": record["org"],
            },
        )

    @tx_method
    def confirm_break_glass(self, ctx: Context, args: Args) -> None:
        """A second clinician or nurse of the requester's organisation co-signs a pending
        break-glass (within an hour of the request), which opens it."""
        args.only("id")
        entry = ctx.state.get(break_glass_key(args.string("id", max_len=64)))
        if entry is None or entry.get("status") != "pending":
            raise Rejected("UNKNOWN_BREAK_GLASS", "no pending break-glass with that id")
        if (
            not ctx.signer.roles & BREAK_GLASS_ROLES
            or ctx.signer.org != entry["org"]
            or ctx.signer.member == entry["member"]
        ):
            raise Rejected(
                "NOT_AUTHORISED", "a second clinician or nurse of the same organisation confirms"
            )
        if ctx.time > entry["requested"] + BREAK_GLASS_CONFIRM_MS:
            raise Rejected("BREAK_GLASS_EXPIRED", "the request is over an hour old: ask again")
        self._check_limits(ctx, entry["patient"], entry["member"])
        self._open(ctx, {**entry, "status": "active", "cosigner": ctx.signer.member})

    @staticmethod
    def _encounter_held(ctx: Context, patient: str, args: Args) -> bool:
        encounter = ctx.state.read(RECORDS, record_key(args.string("encounter", max_len=64)))
        if (
            encounter is None
            or encounter["type"] != "Encounter"
            or encounter["patient"] != patient
            or encounter["custodian"] != ctx.signer.org
            or encounter["shredded"]
        ):
            raise Rejected("NO_CARE_RELATIONSHIP", "no Encounter of this patient held by you")
        return True

    @staticmethod
    def _check_limits(ctx: Context, patient: str, member: str) -> None:
        history = ctx.state.get(f"break-glass-count/{patient}/{member}") or []
        latest = ctx.state.get(break_glass_index_key(patient, member))
        if latest is not None:
            running = ctx.state.get(break_glass_key(latest["id"]))
            if running is not None and ctx.time < running["end"]:
                raise Rejected(
                    "BREAK_GLASS_ACTIVE",
                    "a break-glass for this patient is still open: it is not renewed",
                )
        recent = [t for t in history if t > ctx.time - BREAK_GLASS_WINDOW_MS]
        if len(recent) >= BREAK_GLASS_PER_WINDOW:
            raise Rejected(
                "BREAK_GLASS_LIMIT",
                f"at most {BREAK_GLASS_PER_WINDOW} break-glass accesses to one patient a day",
            )

    @staticmethod
    def _open(ctx: Context, entry: dict[str, Any]) -> None:
        patient, member = entry["patient"], entry["member"]
        entry = {**entry, "start": ctx.time, "end": ctx.time + BREAK_GLASS_MS}
        history = ctx.state.get(f"break-glass-count/{patient}/{member}") or []
        recent = [t for t in history if t > ctx.time - BREAK_GLASS_WINDOW_MS]
        ctx.state.put(f"break-glass-count/{patient}/{member}", [*recent, ctx.time])
        ctx.state.put(break_glass_key(entry["id"]), entry)
        ctx.state.put(break_glass_index_key(patient, member), {"id": entry["id"]})
        ctx.emit(
            "consent.break_glass",
            {
                "id": entry["id"],
                "patient": patient,
                "member": member,
                "reason": entry["reason"],
                "custodian": entry["custodian"],
                "basis": entry["basis"],
            },
        )
