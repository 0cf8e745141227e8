"""On what basis the ledger may let a caller see a patient's records.

The node proposes a basis (the patient themself, the custodian's care team, a consent, or a
break-glass) from ledger state; the audit contract re-checks it at commit, so the decision that
counts is the ledger's, made at the block that records the access.
"""

from __future__ import annotations

from collections.abc import Collection

from careledger.callers.caller import Caller
from careledger.contracts.audit import CARE_ROLES as AUDIT_CARE_ROLES
from careledger.contracts.audit import CUSTODIAN_PURPOSES as AUDIT_CUSTODIAN_PURPOSES
from careledger.contracts.consent import (
    NAMESPACE as CONSENT,
)
from careledger.contracts.consent import (
    break_glass_index_key,
    break_glass_key,
    consent_covers,
    consents_of,
)
from careledger.errors import Forbidden
from careledger.ledger.engine import Ledger

CARE_ROLES = AUDIT_CARE_ROLES  # one source: the audit contract judges own-team access
CUSTODIAN_PURPOSES = AUDIT_CUSTODIAN_PURPOSES
MAX_CONSENTS_SCANNED = 1000


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
    consents = consents_of(ledger.state, ledger.store.state_keys, patient, MAX_CONSENTS_SCANNED)
    for consent in consents:
        if all(
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
            return {"kind": "consent", "id": str(consent["id"])}
    if purpose == "ETREAT" and action == "read" and not caller.is_app:
        latest = ledger.state(CONSENT, break_glass_index_key(patient, caller.member))
        if latest is not None:
            entry = ledger.state(CONSENT, break_glass_key(latest["id"]))
            if entry is not None and entry["start"] <= time < entry["end"]:
                return {"kind": "break_glass", "id": latest["id"]}
    raise Forbidden("no consent covers this access", code="NO_CONSENT")
