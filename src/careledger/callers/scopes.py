"""SMART-on-FHIR style scopes carried by bearer tokens.

``patient/Observation.read`` (a patient's own data), ``user/*.write`` (whatever the user may
reach), SMART v1 actions ``read``, ``write`` and ``*``, and v2 letters ``c r u d s``. A token's
scopes are an upper bound: the ledger's consent still decides each access.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

from careledger.errors import ValidationError

_SCOPE = re.compile(
    r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*|c?r?u?d?s?)"
    r"(?:\?([A-Za-z0-9_.:|=&%,-]{1,200}))?$"
)
# Scopes about the launch, the user's identity and refresh, not about resources (SMART 2.2).
CONTEXT_SCOPES = frozenset(
    {
        "openid",
        "fhirUser",
        "profile",
        "launch",
        "launch/patient",
        "launch/encounter",
        "offline_access",
        "online_access",
    }
)
_V2_READ = frozenset("rs")
_V2_WRITE = frozenset("cud")

DEFAULT_SCOPES: dict[str, tuple[str, ...]] = {
    "patient": ("patient/*.read", "patient/*.write"),  # writes: consents and erasure only
    "clinician": ("user/*.read", "user/*.write"),
    "nurse": ("user/*.read", "user/*.write"),
    # SupplyChain: the drug-traceability API and EPCIS capture (not a FHIR resource type).
    "pharmacist": ("user/*.read", "user/SupplyChain.write"),
    "manufacturer": ("user/SupplyChain.read", "user/SupplyChain.write"),
    "distributor": ("user/SupplyChain.read", "user/SupplyChain.write"),
    "admin": ("user/*.read", "user/*.write"),
    "node": ("system/*.read", "system/*.write"),
    "device": ("user/Observation.write",),
    "auditor": ("user/AuditEvent.read",),
    # Trials: sponsors run studies; investigators also write CRF records (FHIR resources).
    "sponsor": ("user/ResearchStudy.read", "user/ResearchStudy.write"),
    "investigator": ("user/*.read", "user/*.write"),
    "researcher": ("user/ResearchStudy.read",),
}


# What each action needs: "read" (by id) r, "search" s, "create" c, "update" u, "delete" d;
# "write" (an older call that does not say which) any of c, u, d.
ACTION_LETTERS = {
    "read": frozenset("r"),
    "search": frozenset("s"),
    "create": frozenset("c"),
    "update": frozenset("u"),
    "delete": frozenset("d"),
    "write": _V2_WRITE,
}
V1_LETTERS = {"read": frozenset("rs"), "write": frozenset("cud"), "*": frozenset("cruds")}


@dataclass(frozen=True)
class Scope:
    context: str
    resource_type: str
    letters: frozenset[str]  # of c r u d s (SMART v1 read = rs, write = cud)
    # SMART v2 query restriction (``patient/Observation.rs?category=laboratory``): what it
    # reaches must also meet these search parameters.
    query: tuple[tuple[str, str], ...] = ()

    @property
    def read(self) -> bool:
        return bool(self.letters & _V2_READ)

    @property
    def write(self) -> bool:
        return bool(self.letters & _V2_WRITE)

    def covers(self, resource_type: str, action: str) -> bool:
        if self.resource_type not in ("*", resource_type):
            return False
        return bool(self.letters & ACTION_LETTERS[action])

    def text(self) -> str:
        """The scope as SMART v2 writes it (its query restriction kept)."""
        letters = "".join(c for c in "cruds" if c in self.letters)
        query = "?" + urlencode(self.query) if self.query else ""
        return f"{self.context}/{self.resource_type}.{letters}{query}"


def parse_scope(text: str) -> Scope:
    match = _SCOPE.match(text)
    if match is None or not match.group(3):
        raise ValidationError(f"not a SMART scope: {text[:80]!r}", code="BAD_SCOPE")
    context, resource_type, actions, query = match.groups()
    restriction: tuple[tuple[str, str], ...] = ()
    if query:
        if actions in V1_LETTERS:
            raise ValidationError("a query restriction is SMART v2 syntax", code="BAD_SCOPE")
        restriction = tuple(parse_qsl(query, keep_blank_values=False, strict_parsing=False))
        if not restriction or resource_type == "*":
            raise ValidationError(
                f"a query restriction names one resource type: {text[:80]!r}", code="BAD_SCOPE"
            )
    letters = V1_LETTERS.get(actions, frozenset(actions))
    return Scope(context, resource_type, letters, restriction)


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """The resource scopes of ``text``; launch, identity and refresh scopes are skipped."""
    return tuple(parse_scope(part) for part in text.split() if part not in CONTEXT_SCOPES)


def restrictions(
    scopes: tuple[Scope, ...], resource_type: str, action: str
) -> list[tuple[tuple[str, str], ...]] | None:
    """The query restrictions ``action`` on ``resource_type`` must meet (one of them), or None
    when some scope covers it without restriction."""
    found = []
    for scope in scopes:
        if scope.covers(resource_type, action):
            if not scope.query:
                return None
            found.append(scope.query)
    return found


def default_scopes(roles: frozenset[str] | set[str]) -> str:
    chosen: dict[str, None] = {}
    for role in sorted(roles):
        for scope in DEFAULT_SCOPES.get(role, ()):
            chosen[scope] = None
    return " ".join(chosen)


def allows(scopes: tuple[Scope, ...], resource_type: str, action: str) -> bool:
    return any(s.covers(resource_type, action) for s in scopes)


def patient_only(scopes: tuple[Scope, ...]) -> bool:
    """A token whose every scope is patient/...: it sees one patient's data only."""
    return bool(scopes) and all(s.context == "patient" for s in scopes)
