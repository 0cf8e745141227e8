"""Who is asking, and on what basis the ledger may let them see a patient's records.

The node proposes a basis (the patient themself, the custodian's care team, a consent, or a
break-glass) from ledger state; the audit contract re-checks it at commit, so the decision that
counts is the ledger's, made at the block that records the access.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from careledger.contracts.audit import CARE_ROLES as AUDIT_CARE_ROLES
from careledger.contracts.audit import CUSTODIAN_PURPOSES as AUDIT_CUSTODIAN_PURPOSES
from careledger.contracts.consent import (
    NAMESPACE as CONSENT,
)
from careledger.contracts.consent import (
    break_glass_index_key,
    break_glass_key,
    consent_covers,
    consent_key,
    patient_consents_prefix,
)
from careledger.errors import Forbidden
from careledger.ledger.engine import Ledger
from careledger.scopes import Scope, allows

CARE_ROLES = AUDIT_CARE_ROLES  # one source: the audit contract judges own-team access
CUSTODIAN_PURPOSES = AUDIT_CUSTODIAN_PURPOSES
MAX_CONSENTS_SCANNED = 1000


SYSTEM = "system"  # the role a backend app (SMART Backend Services) acts with


@dataclass(frozen=True)
class Caller:
    member: str  # a member id, or a backend app's client id
    org: str
    roles: frozenset[str]
    scopes: tuple[Scope, ...]
    app: str | None = None  # the SMART app behind the request (its client id)
    patient: str | None = None  # the patient a SMART launch is about

    @property
    def is_app(self) -> bool:
        """A backend app acting for its organisation, not a person."""
        return SYSTEM in self.roles

    def is_patient(self, patient: str) -> bool:
        """Whether the caller is ``patient`` themself (an app never is, whatever its id)."""
        return self.member == patient and not self.is_app

    @property
    def own_patient(self) -> str | None:
        """The one patient ``patient/`` scopes reach: the launch's, or the patient themself."""
        if self.patient is not None:
            return self.patient
        return None if self.is_app else self.member


def require_scope(caller: Caller, resource_type: str, action: str, patient: str | None) -> None:
    """Forbidden(SCOPE) unless a scope of the token allows ``action`` (read, search, create,
    update, delete, or write: any of the three) on ``patient``'s ``resource_type``. A
    ``patient/`` scope counts only for the token's own patient (the launch's, or the patient
    themself); never for another patient, nor for a resource about no patient yet."""
    usable = caller.scopes
    if patient is None or patient != caller.own_patient:
        usable = tuple(s for s in usable if s.context != "patient")
    if allows(usable, resource_type, action):
        return
    if allows(caller.scopes, resource_type, action):
        raise Forbidden("a patient token reaches that patient's data only", code="SCOPE")
    raise Forbidden(f"the token's scopes do not allow {action} of {resource_type}", code="SCOPE")


def choose_basis(
    ledger: Ledger,
    caller: Caller,
    *,
    patient: str,
    custodian: str,
    action: str,
    purpose: str,
    types: Collection[str],
    time: int,
) -> dict[str, str]:
    """A basis the audit contract should accept, or Forbidden(NO_CONSENT). A backend app
    reads its organisation's own records as custodian (export included) and others' under a
    consent to its organisation; never as a patient, a person or by break-glass."""
    if caller.is_patient(patient):
        return {"kind": "self"}
    own_team = caller.org == custodian and bool(caller.roles & CARE_ROLES)
    if own_team and purpose in CUSTODIAN_PURPOSES and action != "export":
        return {"kind": "custodian"}
    if caller.is_app and caller.org == custodian and purpose in CUSTODIAN_PURPOSES:
        return {"kind": "custodian"}
    needed = "read" if action == "export" else action
    indexed = patient_consents_prefix(patient)
    for key in ledger.store.state_keys(CONSENT, indexed, MAX_CONSENTS_SCANNED):
        consent_id = key.rsplit("/", 1)[1]
        consent = ledger.state(CONSENT, consent_key(consent_id))
        if consent is not None and all(
            consent_covers(
                consent,
                member="" if caller.is_app else caller.member,
                org=caller.org,
                action=needed,
                resource_type=t,
                purpose=purpose,
                time=time,
            )
            for t in types
        ):
            return {"kind": "consent", "id": consent_id}
    if purpose == "ETREAT" and action == "read" and not caller.is_app:
        latest = ledger.state(CONSENT, break_glass_index_key(patient, caller.member))
        if latest is not None:
            entry = ledger.state(CONSENT, break_glass_key(latest["id"]))
            if entry is not None and entry["start"] <= time < entry["end"]:
                return {"kind": "break_glass", "id": latest["id"]}
    raise Forbidden("no consent covers this access", code="NO_CONSENT")
