"""FHIR search over a patient's records held here: candidates, R4 matching, order, one page,
includes. The semantics are :mod:`careledger.fhir.search`; this module decides which records are
looked at and read, through the same consent checks and access events as any read.

Pages are stable: the first page fixes the ledger height it answered at (``at``) and every later
page sees the records as they stood then (versions written since are not mixed in, records made
since are left out), so a next link continues the same result set even while records are
written.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from careledger.errors import CareLedgerError
from careledger.fhir.search import (
    Include,
    SearchRequest,
    matches,
    references,
    sort_key,
)
from careledger.health.access import Caller
from careledger.health.service import HealthRecords, StoredResource

MAX_INCLUDED = 1_000


@dataclass
class SearchResult:
    page: list[StoredResource]
    total: int
    at: int
    included: list[StoredResource] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def search_patient(
    records: HealthRecords,
    caller: Caller,
    request: SearchRequest,
    patient: str,
    *,
    purpose: str,
    base_url: str,
    now: datetime,
) -> SearchResult:
    """One page of ``request`` over ``patient``'s records of the requested type."""
    at = request.at if request.at is not None else records.ledger.head.height
    found = records.everything(
        caller, patient, types={request.resource_type}, purpose=purpose, as_of=at
    )
    hits = [s for s in found if matches(s.resource, request, now=now, base_url=base_url)]
    # default order: newest change first, then id; explicit keys applied last-to-first (stable)
    hits.sort(key=lambda s: s.record_id)
    hits.sort(key=lambda s: s.last_updated, reverse=True)
    for param, descending in reversed(request.sort):
        hits.sort(key=lambda s: sort_key(s.resource, param, descending), reverse=descending)
    page = hits[request.offset : request.offset + request.count]
    result = SearchResult(page, len(hits), at)
    if request.summary == "count":
        result.page = []
        return result
    if request.includes:
        _include(records, caller, request.includes, page, result, purpose, base_url)
    if request.revincludes:
        _revinclude(records, caller, request.revincludes, page, result, patient, purpose, at)
    return result


def _include(
    records: HealthRecords,
    caller: Caller,
    includes: list[Include],
    page: list[StoredResource],
    result: SearchResult,
    purpose: str,
    base_url: str,
) -> None:
    seen = {(s.resource_type, s.record_id) for s in page}
    frontier = list(page)
    for _ in range(3):  # :iterate follows at most three hops
        wanted: list[tuple[str, str]] = []
        for include in includes:
            for source in frontier:
                if source.resource_type != include.source:
                    continue
                for kind, ident in references(include.param.values(source.resource), base_url):
                    if include.target is None or include.target == kind:
                        wanted.append((kind, ident))
        frontier = []
        for kind, ident in dict.fromkeys(wanted):
            if (kind, ident) in seen or len(result.included) >= MAX_INCLUDED:
                continue
            seen.add((kind, ident))
            try:
                stored = records.read(caller, kind, ident, purpose=purpose)
            except CareLedgerError as exc:
                result.warnings.append(f"{kind}/{ident} is not included ({exc.code})")
                continue
            result.included.append(stored)
            frontier.append(stored)
        if not frontier or not any(i.iterate for i in includes):
            break


def _revinclude(
    records: HealthRecords,
    caller: Caller,
    includes: list[Include],
    page: list[StoredResource],
    result: SearchResult,
    patient: str,
    purpose: str,
    at: int,
) -> None:
    targets = {f"{s.resource_type}/{s.record_id}" for s in page}
    for include in includes:
        try:
            candidates = records.everything(
                caller, patient, types={include.source}, purpose=purpose, as_of=at
            )
        except CareLedgerError as exc:
            result.warnings.append(f"{include.source} resources are not included ({exc.code})")
            continue
        for stored in candidates:
            refs = {f"{k}/{i}" for k, i in references(include.param.values(stored.resource), "")}
            if refs & targets and len(result.included) < MAX_INCLUDED:
                result.included.append(stored)
