"""Access events: every read or write of PHI is committed here before the data is released.

The custodian's node signs an access naming who asked, for which records, for what purpose and
on what basis (the patient themself, the custodian's own care team, a consent, or a break-glass).
The contract re-checks that basis against ledger state at this block, so a revoked consent stops
working from the block that revoked it, and a refused access is itself on the log.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from careledger.contracts.apps import CLIENT_ID, app_of
from careledger.contracts.base import Args, Context, Contract, tx_method
from careledger.contracts.consent import (
    ACTIONS,
    PURPOSES,
    break_glass_key,
    consent_covers,
    consent_key,
)
from careledger.contracts.consent import NAMESPACE as CONSENT
from careledger.contracts.identity import ID_PATTERN
from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.links import NAMESPACE as LINKS
from careledger.contracts.links import link_key, link_serves
from careledger.contracts.monitoring import NAMESPACE as MONITORING
from careledger.contracts.monitoring import window_key
from careledger.contracts.records import NAMESPACE as RECORDS
from careledger.contracts.records import RECORD_ID, record_key
from careledger.core.sealed import well_formed
from careledger.errors import Rejected

NAMESPACE = "audit"
WINDOW_REF = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}/[0-9]{1,12}$")
BASES = frozenset({"self", "custodian", "consent", "break_glass"})
CUSTODIAN_PURPOSES = frozenset({"TREAT", "ETREAT", "CAREMGT", "HPAYMT", "HOPERAT"})
CARE_ROLES = frozenset({"clinician", "nurse", "pharmacist", "admin", "node"})
ORG_GRANT_EXCLUDED = frozenset({"patient", "device"})
EXPORT = "export"


def access_prefix(patient: str) -> str:
    """Where a patient's access events are (``access_key``): their access log lists them."""
    return f"access/{patient}/"


def access_key(patient: str, height: int, tx_id: str) -> str:
    """Sorts a patient's accesses by block, for the patient's "who saw my data" list."""
    return f"access/{patient}/{height:012d}-{tx_id[:16]}"


class AuditV1(Contract):
    name = NAMESPACE
    BASES: frozenset[str] = BASES

    ACCESS_ARGS: tuple[str, ...] = (
        "patient",
        "accessor",
        "accessor_org",
        "records",
        "windows",
        "action",
        "purpose",
        "basis",
    )

    @tx_method
    def access(self, ctx: Context, args: Args) -> None:
        args.only(*self.ACCESS_ARGS)
        app = self._app(ctx, args)
        if not ctx.signer.has_role("node"):
            raise Rejected("NOT_AUTHORISED", "accesses are recorded by the custodian's node")
        patient = args.string("patient", pattern=ID_PATTERN)
        accessor = args.string("accessor", pattern=ID_PATTERN)
        accessor_org = args.string("accessor_org", pattern=ID_PATTERN)
        records = (
            args.names("records", pattern=RECORD_ID, max_items=10_000)
            if args.has("records")
            else []
        )
        windows = (
            args.names("windows", pattern=WINDOW_REF, max_items=10_000)
            if args.has("windows")
            else []
        )
        if not records and not windows:
            raise Rejected("BAD_ARGS", "an access names records or windows of readings")
        action = args.string("action")
        purpose = args.string("purpose")
        if action not in ACTIONS | {EXPORT}:
            raise Rejected("BAD_ARGS", "action must be read, write or export")
        if purpose not in PURPOSES:
            raise Rejected("BAD_ARGS", "unknown purpose of use")
        basis = args.mapping("basis")
        basis.only("kind", "id")
        kind = basis.string("kind")
        if kind not in self.BASES:
            raise Rejected("BAD_ARGS", f"basis.kind must be one of {sorted(self.BASES)}")
        types = self._record_types(ctx, patient, records) | self._window_types(
            ctx, patient, windows
        )
        flagged = self._check_basis(
            ctx, kind, basis, patient, accessor, accessor_org, action, purpose, types, app
        )
        entry: dict[str, Any] = {
            "patient": patient,
            "accessor": accessor,
            "accessor_org": accessor_org,
            "custodian": ctx.signer.org,
            "records": records,
            "windows": windows,
            "action": action,
            "purpose": purpose,
            "basis": {"kind": kind, "id": basis.raw.get("id")},
            "break_glass": flagged,
            "height": ctx.height,
            "time": ctx.time,
            "tx": ctx.tx_id,
        }
        if app is not None:
            entry["app"] = app["client_id"]
        entry.update(self._extra(args, action))
        ctx.state.put(access_key(patient, ctx.height, ctx.tx_id), entry)
        event = {k: entry[k] for k in ("patient", "accessor", "accessor_org", "action", "purpose")}
        ctx.emit(
            "audit.break_glass_access" if flagged else "audit.access",
            {**event, "count": len(records) + len(windows)},
        )

    def _app(self, ctx: Context, args: Args) -> Mapping[str, Any] | None:
        """The app behind the access: none before apps were on the ledger (``AuditV2``)."""
        return None

    def _extra(self, args: Args, action: str) -> dict[str, Any]:
        """More the entry records (``AuditV3``: the FHIR interaction)."""
        return {}

    @staticmethod
    def _record_types(ctx: Context, patient: str, records: list[str]) -> set[str]:
        types = set()
        for record_id in records:
            record = ctx.state.read(RECORDS, record_key(record_id))
            if record is None:
                raise Rejected("UNKNOWN_RECORD", "a named record does not exist")
            if record["shredded"]:
                raise Rejected("RECORD_SHREDDED", "a named record was shredded")
            if record["patient"] != patient:
                raise Rejected("BAD_ARGS", "a named record belongs to another patient")
            if record["custodian"] != ctx.signer.org:
                raise Rejected("NOT_CUSTODIAN", "a node records accesses to its own records only")
            types.add(record["type"])
        return types

    @staticmethod
    def _window_types(ctx: Context, patient: str, windows: list[str]) -> set[str]:
        """Windows of device readings (``device/seq``): the custodian is the device's owner."""
        for ref in windows:
            device_id, seq = ref.rsplit("/", 1)
            window = ctx.state.read(MONITORING, window_key(device_id, int(seq)))
            device = ctx.state.read(MONITORING, f"device/{device_id}")
            if window is None or device is None:
                raise Rejected("UNKNOWN_RECORD", "a named window of readings does not exist")
            if window["patient"] != patient:
                raise Rejected("BAD_ARGS", "a named window is another patient's")
            if device["org"] != ctx.signer.org:
                raise Rejected("NOT_CUSTODIAN", "a node records accesses to its own readings only")
        return {"Observation"} if windows else set()

    def _accessor_roles(
        self, ctx: Context, accessor: str, accessor_org: str, app: Mapping[str, Any] | None
    ) -> set[str]:
        """The accessor's roles: a member of ``accessor_org``, as the ledger has it."""
        member = ctx.state.read(IDENTITY, f"member/{accessor}")
        if member is None or member["org"] != accessor_org:
            raise Rejected("UNKNOWN_MEMBER", "the accessor is not a member of accessor_org")
        return set(member["roles"])

    def _check_basis(
        self,
        ctx: Context,
        kind: str,
        basis: Args,
        patient: str,
        accessor: str,
        accessor_org: str,
        action: str,
        purpose: str,
        types: set[str],
        app: Mapping[str, Any] | None,
    ) -> bool:
        """Raise NO_CONSENT (or a sharper code) unless the basis covers it; True if flagged."""
        roles = self._accessor_roles(ctx, accessor, accessor_org, app)
        if kind == "self":
            if accessor != patient:
                raise Rejected("NO_CONSENT", "'self' is for the patient's own access")
            return False
        if kind == "custodian":
            own_team = accessor_org == ctx.signer.org and bool(roles & CARE_ROLES)
            if not own_team or purpose not in CUSTODIAN_PURPOSES or action == EXPORT:
                raise Rejected("NO_CONSENT", "the custodian basis covers its own care team only")
            return False
        basis_id = basis.string("id", max_len=64)
        if kind == "break_glass":
            entry: Any = ctx.state.read(CONSENT, break_glass_key(basis_id))
            if entry is None or entry["patient"] != patient or entry["member"] != accessor:
                raise Rejected("NO_CONSENT", "no break-glass by this accessor for this patient")
            if purpose != "ETREAT" or action != "read":
                raise Rejected("NO_CONSENT", "break-glass is for reading, for emergency treatment")
            if not entry["start"] <= ctx.time < entry["end"]:
                raise Rejected("BREAK_GLASS_EXPIRED", "the break-glass window has closed")
            return True
        consent = self._active_consent(ctx, basis_id, patient)
        if consent["grantee"].get("org") is not None and not roles - ORG_GRANT_EXCLUDED:
            # A consent to an organisation is for its people, not its patients' or devices' keys.
            raise Rejected("NO_CONSENT", "an organisation's consent does not extend to this member")
        self._consent_covers_all(ctx, consent, accessor, accessor_org, action, purpose, types)
        return False

    @staticmethod
    def _active_consent(ctx: Context, basis_id: str, patient: str) -> Any:
        consent = ctx.state.read(CONSENT, consent_key(basis_id))
        if consent is None or consent["patient"] != patient:
            raise Rejected("NO_CONSENT", "no such consent for this patient")
        if consent["status"] != "active":
            raise Rejected("CONSENT_REVOKED", "the consent was revoked")
        return consent

    @staticmethod
    def _consent_covers_all(
        ctx: Context,
        consent: Any,
        member: str,
        org: str,
        action: str,
        purpose: str,
        types: set[str],
    ) -> None:
        needed = "read" if action == EXPORT else action
        for resource_type in types:
            if not consent_covers(
                consent,
                member=member,
                org=org,
                action=needed,
                resource_type=resource_type,
                purpose=purpose,
                time=ctx.time,
            ):
                raise Rejected("NO_CONSENT", "the consent does not cover this access")


class AuditV2(AuditV1):
    """Access events name the app behind an access (``app``: a client id on the ledger).

    A user's access through an app is judged as the user's, and the app must be registered
    and not suspended at this block. A backend app (SMART Backend Services) is itself the
    accessor: it acts for its organisation, reads (and bulk-exports) the organisation's own
    records as custodian for its operations, and others' records under a consent to the
    organisation; it never uses "self" or break-glass, and a consent naming one member never
    reaches it.
    """

    version = 2
    ACCESS_ARGS = (*AuditV1.ACCESS_ARGS, "app")

    def _app(self, ctx: Context, args: Args) -> Mapping[str, Any] | None:
        if not args.has("app"):
            return None
        client_id = args.string("app", pattern=CLIENT_ID)
        app = app_of(ctx.state.read, client_id)
        if app is None:
            raise Rejected("UNKNOWN_APP", f"no app {client_id!r}")
        if app["status"] != "active":
            raise Rejected("APP_SUSPENDED", "the app is suspended")
        return app

    def _accessor_roles(
        self, ctx: Context, accessor: str, accessor_org: str, app: Mapping[str, Any] | None
    ) -> set[str]:
        if app is None or app["kind"] != "backend":
            return super()._accessor_roles(ctx, accessor, accessor_org, app)
        if accessor != app["client_id"] or accessor_org != app["org"]:
            raise Rejected("UNKNOWN_MEMBER", "a backend app accesses as itself, for its org")
        return {"system"}

    def _check_basis(
        self,
        ctx: Context,
        kind: str,
        basis: Args,
        patient: str,
        accessor: str,
        accessor_org: str,
        action: str,
        purpose: str,
        types: set[str],
        app: Mapping[str, Any] | None,
    ) -> bool:
        if app is None or app["kind"] != "backend":
            return super()._check_basis(
                ctx, kind, basis, patient, accessor, accessor_org, action, purpose, types, app
            )
        self._accessor_roles(ctx, accessor, accessor_org, app)
        if kind == "custodian":
            if accessor_org != ctx.signer.org or purpose not in CUSTODIAN_PURPOSES:
                raise Rejected("NO_CONSENT", "the custodian basis covers its own care team only")
            return False
        if kind != "consent":
            raise Rejected("NO_CONSENT", "a backend app reads under a consent or as custodian")
        consent = self._active_consent(ctx, basis.string("id", max_len=64), patient)
        # member "": a consent to one person never reaches an app
        self._consent_covers_all(ctx, consent, "", accessor_org, action, purpose, types)
        return False


# The FHIR interaction behind an access, by the ledger action it must come with.
INTERACTIONS = {
    "read": frozenset({"read", "vread", "history", "search"}),
    "write": frozenset({"create", "update", "patch", "delete"}),
    EXPORT: frozenset({"export"}),
}


class AuditV3(AuditV2):
    """An access event may say which FHIR interaction it was (read, vread, history, search,
    create, update, patch, delete, export), one that fits its action: audit logs in the IHE
    BALP shape tell a query from a read and a create from an update by it."""

    version = 3
    ACCESS_ARGS = (*AuditV2.ACCESS_ARGS, "interaction")

    def _extra(self, args: Args, action: str) -> dict[str, Any]:
        if not args.has("interaction"):
            return {}
        interaction = args.string("interaction", max_len=16)
        if interaction not in INTERACTIONS.get(action, frozenset()):
            raise Rejected("BAD_ARGS", "the interaction does not fit the action")
        return {"interaction": interaction}


class AuditV4(AuditV3):
    """r9: an opening of a patient's SMART Health Link is an access on the ``link`` basis.

    The accessor is the link (its id), for the custodian that serves it; the recipient's
    declared name travels sealed for the patient and the custodian's node (``recipient``), so
    "who saw my data" can name them without the name being readable on the ledger.
    """

    version = 4
    BASES = BASES | {"link"}
    ACCESS_ARGS = (*AuditV3.ACCESS_ARGS, "recipient")

    def _extra(self, args: Args, action: str) -> dict[str, Any]:
        extra = super()._extra(args, action)
        kind = (args.raw.get("basis") or {}).get("kind")
        if args.has("recipient") != (kind == "link"):
            raise Rejected("BAD_ARGS", "a link's opening, and only it, names its recipient")
        if kind == "link":
            recipient = args.raw["recipient"]
            if not well_formed(recipient):
                raise Rejected("BAD_ARGS", "recipient must be sealed ({box, keys})")
            extra["recipient"] = recipient
        return extra

    def _check_basis(
        self,
        ctx: Context,
        kind: str,
        basis: Args,
        patient: str,
        accessor: str,
        accessor_org: str,
        action: str,
        purpose: str,
        types: set[str],
        app: Mapping[str, Any] | None,
    ) -> bool:
        if kind != "link":
            return super()._check_basis(
                ctx, kind, basis, patient, accessor, accessor_org, action, purpose, types, app
            )
        link_id = basis.string("id", max_len=64)
        if app is not None or accessor != link_id or accessor_org != ctx.signer.org:
            raise Rejected("NO_CONSENT", "a link's opening is the link's, served by its node")
        if action != "read" or purpose != "PATRQT":
            raise Rejected("NO_CONSENT", "a link is read at the patient's request (PATRQT)")
        link = ctx.state.read(LINKS, link_key(link_id))
        why = link_serves(
            link, patient=patient, custodian=ctx.signer.org, time=ctx.time, types=types
        )
        if why is not None:
            raise Rejected(why, "the link does not serve this")
        return False
