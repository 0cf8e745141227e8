"""SMART v2 query-restricted scopes (``patient/Observation.rs?category=laboratory``, which ONC
HTI-1 asks for Condition and Observation categories): a token reaches only the resources that
also meet the scope's search parameters.

A search gets the restriction as extra criteria (R4 AND); several restrictions on the same
single parameter become one OR; anything the search syntax cannot say at once is refused with
403 rather than answered too widely. A read checks the resource itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from careledger.callers.scopes import Scope, restrictions
from careledger.errors import Forbidden
from careledger.fhir.outcome import FhirError
from careledger.fhir.search import SearchRequest, matches, parse_search


def _refuse(why: str) -> Forbidden:
    return Forbidden(f"the token's restricted scope cannot be applied: {why}", code="SCOPE")


def restrict_search(request: SearchRequest, scopes: tuple[Scope, ...]) -> SearchRequest:
    """``request`` narrowed to what the token's scopes reach (unchanged when unrestricted)."""
    for include in [*request.includes, *request.revincludes]:
        for kind in (include.source, include.target):
            if kind and restrictions(scopes, kind, "search"):
                raise _refuse(f"_include/_revinclude of {kind}, which it restricts")
    found = restrictions(scopes, request.resource_type, "search")
    if found is None:
        return request
    if not found:  # no scope allows searching the type at all: never read as unrestricted
        raise Forbidden(
            f"the token's scopes do not allow search of {request.resource_type}", code="SCOPE"
        )
    if len(found) == 1:
        pairs = list(found[0])
    else:
        names = {name for restriction in found for name, _ in restriction}
        if len(names) != 1 or any(len(r) != 1 for r in found):
            raise _refuse("several restrictions on different parameters")
        pairs = [(names.pop(), ",".join(value for r in found for _, value in r))]
    try:
        extra = parse_search(request.resource_type, pairs)
    except FhirError:
        raise _refuse("it names a parameter this server cannot search") from None
    return replace(request, criteria=[*request.criteria, *extra.criteria])


def within_scopes(
    resource: Mapping[str, Any],
    scopes: tuple[Scope, ...],
    base_url: str,
    action: str = "read",
    *,
    now: datetime | None = None,
) -> bool:
    """Whether the token's scopes reach this resource for ``action`` (restrictions met);
    ``now`` (the caller's clock) dates a restriction's relative dates, the system's if None."""
    kind = str(resource.get("resourceType", ""))
    found = restrictions(scopes, kind, action)
    if found is None:
        return True
    if now is None:
        now = datetime.now(UTC)
    for restriction in found:
        try:
            request = parse_search(kind, list(restriction))
        except FhirError:
            continue
        if matches(resource, request, now=now, base_url=base_url):
            return True
    return False
