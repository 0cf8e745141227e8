"""The caller of a service: a member, or a SMART app, with its roles and its token's scopes."""

from __future__ import annotations

from dataclasses import dataclass

from careledger.callers.scopes import Scope, allows
from careledger.errors import Forbidden

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
