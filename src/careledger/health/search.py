"""FHIR search over a patient's records held here: candidates, R4 matching, order, one page,
includes. The semantics are :mod:`careledger.fhir.search`; this module decides which records are
looked at (the blind index narrows them: :mod:`careledger.fhir.blind_terms`) and which are
returned, and only those returned are in the access event the ledger must accept first.

Pages are stable: the first page fixes the ledger height it answered at (``at``) and every later
page sees the records as they stood then (versions written since are not mixed in, records made
since are left out), so a next link continues the same result set even while records are
written.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from careledger.callers.caller import Caller
from careledger.contracts.records import record_of
from careledger.errors import CareLedgerError, Forbidden, ValidationError
from careledger.fhir.blind_terms import plan
from careledger.fhir.outcome import FhirError, Issue
from careledger.fhir.search import (
    MAX_TIME,
    MIN_TIME,
    Criterion,
    Include,
    SearchRequest,
    date_ranges,
    matches,
    parameters,
    parse_date,
    parse_search,
    references,
    sort_key,
)
from careledger.fhir.types import EITHER_TYPES, ORG_ONLY_TYPES, ORG_TYPES, patient_search
from careledger.fhir.validate import SUPPORTED_TYPES
from careledger.health.scope_query import restrict_search, within_scopes
from careledger.health.service import HealthRecords, StoredResource

MAX_INCLUDED = 1_000
CONDITION_REFUSED = frozenset(
    {"_summary", "_count", "_offset", "_at", "_sort", "_elements", "_include", "_revinclude",
     "_total"}
)  # fmt: skip
MAX_UNINDEXED = 5_000  # an organisation's own records one search may decrypt and match
MAX_LOGGED = 10_000  # records one access event may name (the audit contract's limit)


@dataclass
class SearchResult:
    page: list[StoredResource]
    total: int
    at: int
    included: list[StoredResource] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    decrypted: int = 0  # records opened to answer (the page, or every candidate refined)
    matched: list[tuple[str, str]] = field(default_factory=list)  # (patient, record): all hits


def search_patient(
    records: HealthRecords,
    caller: Caller,
    request: SearchRequest,
    patient: str,
    *,
    purpose: str,
    base_url: str,
    now: datetime,
    implied: Criterion | None = None,
) -> SearchResult:
    """One page of ``request`` over ``patient``'s records of the requested type.

    Candidates come from the blind index; when its terms decide the answer alone the page is
    cut from ledger metadata and only the page is decrypted, else the candidates are decrypted
    and matched. Only what is returned is in the access event. ``implied``: the criterion that
    named the patient (every candidate meets it).
    """
    request = restrict_search(request, caller.scopes)
    at = request.at if request.at is not None else records.ledger.head.height
    kind = request.resource_type
    versions = records.searchable(caller, patient, kind, purpose=purpose, as_of=at)
    narrowing = replace(request, criteria=[c for c in request.criteria if c is not implied])
    planned = plan(narrowing, base_url=base_url)
    candidates = set(versions.items())
    if planned.groups and candidates:
        candidates &= records.blind_candidates(planned.groups)
    owner = {r: patient for r, _ in candidates}
    result = _page(records, request, list(candidates), owner, planned.exact, at, now, base_url)
    if request.revincludes and result.page:
        _revinclude(records, caller, request.revincludes, result, patient, purpose, at)
    return _disclose(records, caller, request, result, purpose, base_url)


def _disclose(
    records: HealthRecords,
    caller: Caller,
    request: SearchRequest,
    result: SearchResult,
    purpose: str,
    base_url: str,
) -> SearchResult:
    """Log what the search disclosed (nothing returned or counted: nothing logged; the basis
    was checked before looking), then add the _include records, logged with their own event."""
    disclosed = _disclosed(result, request.resource_type)
    records.log_reads_many(caller, disclosed, purpose=purpose)
    if request.includes and result.page:
        _include(records, caller, request.includes, result.page, result, purpose, base_url)
    return result


def _page(
    records: HealthRecords,
    request: SearchRequest,
    candidates: list[tuple[str, int]],
    patients: dict[str, str],
    exact: bool,
    at: int,
    now: datetime,
    base_url: str,
) -> SearchResult:
    """The page: cut from ledger order when the index decided the answer (only the page is
    decrypted), else every candidate decrypted, matched and sorted."""
    # newest version first (ledger order), then id: the order R4 leaves to the server
    order = sorted(candidates, key=lambda rv: (-records.version_height(*rv), rv[0]))
    start, stop = request.offset, request.offset + request.count
    if exact:
        window = order[start:stop] if request.summary != "count" else []
        page = [records.open_version(r, v) for r, v in window]
        result = SearchResult(page, len(order), at, decrypted=len(page))
        result.matched = [(patients[r], r) for r, _ in order]
        return result
    opened = [records.open_version(r, v) for r, v in order]
    hits = [s for s in opened if matches(s.resource, request, now=now, base_url=base_url)]
    for param, descending in reversed(request.sort):
        hits.sort(key=lambda s: sort_key(s.resource, param, descending), reverse=descending)
    page = hits[start:stop] if request.summary != "count" else []
    result = SearchResult(page, len(hits), at, decrypted=len(opened))
    result.matched = [(s.patient, s.record_id) for s in hits]
    return result


def _disclosed(result: SearchResult, kind: str) -> dict[str, list[tuple[str, str]]]:
    """patient -> (record, type) a search disclosed: what it returned or, when it returned
    none yet counted some (_summary=count, _count=0, a page past the end), every record it
    counted: a count says something about each of them."""
    out: dict[str, list[tuple[str, str]]] = {}
    if result.page or result.included:
        for stored in [*result.page, *result.included]:
            out.setdefault(stored.patient, []).append((stored.record_id, stored.resource_type))
    else:
        for patient, record_id in result.matched:
            out.setdefault(patient, []).append((record_id, kind))
    # "": an organisation's own records, which are no patient's data
    return {p: pairs[:MAX_LOGGED] for p, pairs in out.items() if p}


def about_patient(
    request: SearchRequest, caller: Caller, base_url: str
) -> tuple[str | None, Criterion | None]:
    """The patient a search is about, and the criterion that says so: its patient/subject (or
    a Patient's _id), one value; else the calling patient themself; else (None, None)."""
    named_by = patient_search(request.resource_type)
    for criterion in request.criteria:
        code = criterion.param.code
        is_id = request.resource_type == "Patient" and code == "_id"
        about = code in ("patient", "subject") or is_id
        if code == named_by != "patient" and criterion.values:  # Schedule?actor=Patient/x
            about = criterion.values[0].text.removeprefix(base_url + "/").startswith("Patient/")
        if about and criterion.modifier is None and len(criterion.values) == 1:
            ref = criterion.values[0].text.removeprefix(base_url + "/")
            return ref.removeprefix("Patient/").split("/_history/", 1)[0], criterion
    if caller.patient is not None:  # a SMART launch about one patient
        return caller.patient, None
    if "patient" in caller.roles:
        return caller.member, None
    return None, None


def run_search(
    records: HealthRecords,
    caller: Caller,
    request: SearchRequest,
    *,
    purpose: str,
    base_url: str,
    now: datetime,
) -> SearchResult:
    """A search about one patient when it names one, else across the caller's patients; of an
    organisation's own records (about no patient), over this organisation's. A type held
    either way (a Schedule) is searched as the patient's when the search names one of this
    ledger's patients, its ``_id`` is looked up wherever it is, and otherwise the
    organisation's own are searched."""
    kind = request.resource_type
    if kind in ORG_ONLY_TYPES:
        return search_own(records, caller, request, base_url=base_url, now=now, purpose=purpose)
    patient, implied = about_patient(request, caller, base_url)
    if kind in EITHER_TYPES and implied is not None and not _is_patient(records, patient):
        patient = None  # no patient of this ledger: the organisation's own, which name none
    if patient is None and kind in EITHER_TYPES and _named_ids(request) is None:
        return search_own(records, caller, request, base_url=base_url, now=now, purpose=purpose)
    if patient is None:
        return search_org(records, caller, request, purpose=purpose, base_url=base_url, now=now)
    return search_patient(
        records, caller, request, patient, purpose=purpose, base_url=base_url, now=now,
        implied=implied,
    )  # fmt: skip


def _is_patient(records: HealthRecords, patient: str | None) -> bool:
    try:
        records._patient_key(str(patient))
    except ValidationError:
        return False
    return True


def existing(
    records: HealthRecords,
    caller: Caller,
    resource_type: str,
    condition: str,
    *,
    purpose: str,
    base_url: str = "",
) -> list[StoredResource]:
    """What a conditional create (``If-None-Exist``, ``ifNoneExist``) finds: at most two of
    the resources the condition (a search query string) matches, read like any search."""
    pairs = parse_qsl(condition.removeprefix("?"), keep_blank_values=True)
    if not pairs:
        raise FhirError(
            [Issue("error", "invalid", "If-None-Exist is a search query", ())],
            code="BAD_CONDITION",
        )
    shaping = sorted({k.split(":", 1)[0] for k, _ in pairs} & CONDITION_REFUSED)
    if shaping:  # a condition selects: paging, a past height or includes would change it
        raise FhirError(
            [Issue("error", "invalid", f"a condition is criteria only, not {shaping[0]}", ())],
            code="BAD_CONDITION",
        )
    request = parse_search(resource_type, pairs)
    request.count, request.offset, request.at = 2, 0, None
    found = run_search(
        records, caller, request, purpose=purpose, base_url=base_url, now=records.now()
    )
    return found.page


def search_org(
    records: HealthRecords,
    caller: Caller,
    request: SearchRequest,
    *,
    purpose: str,
    base_url: str,
    now: datetime,
) -> SearchResult:
    """One page of ``request`` across the patients whose records this custodian holds and the
    caller may see (staff looking a patient up, or a code over their organisation's patients).

    Only the blind index finds candidates here: a search with no indexable criterion would
    have to decrypt every record the custodian holds, and is refused (SEARCH_TOO_BROAD).
    """
    request = restrict_search(request, caller.scopes)
    at = request.at if request.at is not None else records.ledger.head.height
    kind = request.resource_type
    planned = plan(request, base_url=base_url)
    named = _named_ids(request)
    if named is not None:  # _id names the records: look them up, no index needed
        found = ((r, records.current_at(r, at)) for r in named)
        pairs = [(r, c) for r, c in found if c is not None and _is_a(records, r, kind)]
        if kind in EITHER_TYPES:  # the organisation's own records of the type too
            mine = records.own_records(kind, at)
            own = [r for r in named if r in mine]
            if own:
                records.may_read_own(caller, kind, records.org, "search")
                pairs += [(r, ("", mine[r])) for r in own]
        allowed_ids = {p for _, (p, _) in pairs if p == "" or records.may_search(
            caller, p, kind, purpose=purpose)}  # fmt: skip
        chosen = [(r, v, p) for r, (p, v) in pairs if p in allowed_ids]
        owner = {r: p for r, _, p in chosen}
        result = _page(records, request, [(r, v) for r, v, _ in chosen], owner, False, at, now,
                       base_url)  # fmt: skip
        return _disclose(records, caller, request, result, purpose, base_url)
    if not planned.groups:
        raise FhirError(
            [
                Issue(
                    "error",
                    "too-costly",
                    f"a {kind} search across patients needs an identifying parameter (a code,"
                    " identifier, name, date or reference), or name the patient",
                    (kind,),
                )
            ],
            code="SEARCH_TOO_BROAD",
        )
    allowed: dict[str, bool] = {}
    candidates: list[tuple[str, int, str]] = []
    for record_id, version in records.blind_candidates(planned.groups):
        current = records.current_at(record_id, at)
        if current is None or current[1] != version:
            continue  # another version was current at the search's height
        patient = current[0]
        if patient not in allowed:
            allowed[patient] = records.may_search(caller, patient, kind, purpose=purpose)
        if allowed[patient]:
            candidates.append((record_id, version, patient))
    pairs = [(r, v) for r, v, _ in candidates]
    owner = {r: p for r, _, p in candidates}
    result = _page(records, request, pairs, owner, planned.exact, at, now, base_url)
    if request.revincludes:
        result.warnings.append("_revinclude is answered on searches about one patient")
    return _disclose(records, caller, request, result, purpose, base_url)


def search_own(
    records: HealthRecords,
    caller: Caller,
    request: SearchRequest,
    *,
    purpose: str,
    base_url: str,
    now: datetime,
) -> SearchResult:
    """One page of ``request`` over this organisation's own records of a type about no
    patient (its directory, definitions, Group lists). No consent decides and no access event
    is made (they are no patient's data); who may read them is :meth:`HealthRecords.may_read_own`.
    Records it includes from patients' records are logged as any include is."""
    kind = request.resource_type
    records.may_read_own(caller, kind, records.org, "search")
    request = restrict_search(request, caller.scopes)
    at = request.at if request.at is not None else records.ledger.head.height
    planned = plan(request, base_url=base_url)
    candidates = set(records.own_records(kind, at).items())
    if planned.groups and candidates:
        candidates &= records.blind_candidates(planned.groups)
    if not planned.exact and len(candidates) > MAX_UNINDEXED:
        raise FhirError(
            [Issue("error", "too-costly", f"this {kind} search would decrypt more than"
                   f" {MAX_UNINDEXED:,} records: add an indexed parameter (a name, an"
                   " identifier, a code)", (kind,))],
            code="SEARCH_TOO_BROAD",
        )  # fmt: skip
    owner = {r: "" for r, _ in candidates}
    result = _page(records, request, list(candidates), owner, planned.exact, at, now, base_url)
    result.matched = []  # nobody's data: nothing for an access event to name
    # a backstop: what a query-restricted scope does not reach is never returned
    result.page = [
        s for s in result.page if within_scopes(s.resource, caller.scopes, "", "read", now=now)
    ]
    if request.revincludes:
        result.warnings.append("_revinclude is answered on searches about one patient")
    if request.includes and result.page:
        _include(records, caller, request.includes, result.page, result, purpose, base_url)
    return result


def _named_ids(request: SearchRequest) -> list[str] | None:
    """The record ids an ``_id`` criterion (no modifier) names, else None."""
    for criterion in request.criteria:
        if criterion.param.code == "_id" and criterion.modifier is None:
            return sorted({v.text for v in criterion.values})[:MAX_INCLUDED]
    return None


def _is_a(records: HealthRecords, record_id: str, kind: str) -> bool:
    meta = record_of(records.ledger.state, record_id)
    return meta is not None and meta["type"] == kind


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
    pending: dict[str, list[tuple[str, str]]] = {}  # patient -> (record, type) to log
    fetched: list[StoredResource] = []
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
                stored = _included(records, caller, kind, ident, purpose, pending)
            except CareLedgerError as exc:
                result.warnings.append(f"{kind}/{ident} is not included ({exc.code})")
                continue
            frontier.append(stored)
            fetched.append(stored)
        if not frontier or not any(i.iterate for i in includes):
            break
    # one access event per patient for every record included here (not one per record),
    # committed before any of them is returned
    records.log_reads_many(caller, pending, purpose=purpose)
    result.included.extend(fetched)


def _included(
    records: HealthRecords,
    caller: Caller,
    kind: str,
    ident: str,
    purpose: str,
    pending: dict[str, list[tuple[str, str]]],
) -> StoredResource:
    """An included record: held here, opened once the caller's basis is checked (and logged
    with the others); held elsewhere, read from its custodian (who logs it)."""
    meta = records.record_meta(ident, kind)
    if meta["patient"] is None:  # an organisation's own record: no access event
        return records.read(caller, kind, ident, purpose=purpose)
    if meta["custodian"] != records.org:
        return records.read(caller, kind, ident, purpose=purpose)
    if not records.may_search(caller, meta["patient"], kind, purpose=purpose):
        raise Forbidden("no basis covers this record", code="NO_CONSENT")
    pending.setdefault(str(meta["patient"]), []).append((ident, kind))
    return records.open_version(ident, int(meta["version"]))


def _revinclude(
    records: HealthRecords,
    caller: Caller,
    includes: list[Include],
    result: SearchResult,
    patient: str,
    purpose: str,
    at: int,
) -> None:
    """Resources of the same patient that refer to the page (logged with the page)."""
    targets = {f"{s.resource_type}/{s.record_id}" for s in result.page}
    for include in includes:
        try:
            versions = records.searchable(
                caller, patient, include.source, purpose=purpose, as_of=at
            )
        except CareLedgerError as exc:
            result.warnings.append(f"{include.source} resources are not included ({exc.code})")
            continue
        for record_id, version in sorted(versions.items()):
            stored = records.open_version(record_id, version)
            result.decrypted += 1
            refs = {f"{k}/{i}" for k, i in references(include.param.values(stored.resource), "")}
            if refs & targets and len(result.included) < MAX_INCLUDED:
                result.included.append(stored)


@dataclass
class EverythingPage:
    page: list[StoredResource]
    total: int
    missing: list[tuple[str, str]]  # (custodian, why) of records not in the answer
    decrypted: int = 0
    referenced: list[StoredResource] = field(default_factory=list)  # the page's directory


def everything_page(
    records: HealthRecords,
    caller: Caller,
    patient: str,
    *,
    types: set[str] | None,
    since: str | None,
    start: str | None,
    end: str | None,
    count: int,
    offset: int,
    purpose: str,
) -> EverythingPage:
    """One page of Patient/$everything: the patient's records held here (and, in a
    consortium, those other custodians answer for), newest first, filtered by ``_type``,
    ``_since`` (changed at or after) and ``start``/``end`` (care dates: a resource with no
    clinical date is kept, as R4 says). Only the page is decrypted when no care dates are
    asked for; only the page's records are in the access event."""
    if any(scope.query for scope in caller.scopes):
        raise Forbidden(
            "$everything is not for a token with query-restricted scopes: search each type",
            code="SCOPE",
        )
    kinds = types or set(SUPPORTED_TYPES)  # Consent records too (a trial's e-consent)
    since_ms = _instant_ms(since, "_since") if since is not None else None
    window = _care_window(start, end)
    at = records.ledger.head.height
    local, refused = records.visible_versions(caller, patient, kinds, purpose=purpose, as_of=at)
    missing: list[tuple[str, str]] = [(records.org, "NO_CONSENT")] if refused else []
    if since_ms is not None:
        local = [c for c in local if records.version_time(c[0], c[1]) >= since_ms]
    local.sort(key=lambda c: (-records.version_height(c[0], c[1]), c[0]))
    decrypted = 0
    if window is not None:
        opened = [records.open_version(r, v) for r, v, _ in local]
        decrypted = len(opened)
        kept = [s for s in opened if _in_care_window(s.resource, window)]
        ordered: list[StoredResource | tuple[str, int, str]] = list(kept)
    else:
        ordered = list(local)
    remote: list[StoredResource] = []
    others = records.custodians_of(patient)
    if others and records.federation is not None:
        remote, gone = records.federation.everything(
            caller, patient, others, types=types, purpose=purpose
        )
        missing += gone
        if window is not None:
            remote = [s for s in remote if _in_care_window(s.resource, window)]
    elif others:
        missing += [(org, "REMOTE_UNAVAILABLE") for org in others]
    everything: list[StoredResource | tuple[str, int, str]] = [*ordered, *remote]
    chosen = everything[offset : offset + count]
    page: list[StoredResource] = []
    for item in chosen:
        if isinstance(item, tuple):
            page.append(records.open_version(item[0], item[1]))
            decrypted += 1
        else:
            page.append(item)
    mine = [(s.record_id, s.resource_type) for s in page if s.custodian == records.org]
    records.log_reads_many(caller, {patient: mine}, purpose=purpose)
    if refused and not local and not remote and all(o == records.org for o, _ in missing):
        raise Forbidden("no consent covers these records", code="NO_CONSENT")
    directory = _directory(records, caller, page)
    return EverythingPage(page, len(everything), missing, decrypted, directory)


def _directory(
    records: HealthRecords, caller: Caller, page: list[StoredResource]
) -> list[StoredResource]:
    """The organisation records held here that the page's resources refer to (the
    Organization, Practitioner, Location, Medication a record names): R4's $everything
    returns what the patient's resources reference, and these are no patient's data."""
    wanted: dict[tuple[str, str], None] = {}
    for stored in page:
        for ref in _reference_strings(stored.resource):
            kind, _, ident = ref.partition("/")
            if kind in ORG_TYPES and ident and "/" not in ident:
                wanted[(kind, ident)] = None
    for kind, ident in [w for w in wanted if w[0] in EITHER_TYPES]:
        meta = record_of(records.ledger.state, ident)
        if meta is None or meta["patient"] is not None:  # a patient's Schedule: not directory
            del wanted[(kind, ident)]
    out: list[StoredResource] = []
    for kind, ident in list(wanted)[:MAX_INCLUDED]:
        try:
            out.append(records.read(caller, kind, ident))
        except CareLedgerError:
            continue  # not held here, erased, or not the caller's to read (a Group)
    return out


def _reference_strings(value: Any) -> Iterator[str]:
    """Every relative ``Reference.reference`` in a resource (bounded by its nesting)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str):
                yield ref
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))


def _instant_ms(text: str, name: str) -> int:
    parsed = parse_date(text)
    if parsed is None:
        raise FhirError(
            [Issue("error", "invalid", f"{name} is a FHIR instant", (name,))], code="BAD_DATE"
        )
    return parsed[0] // 1000


def _care_window(start: str | None, end: str | None) -> tuple[int, int] | None:
    if start is None and end is None:
        return None
    low = parse_date(start) if start is not None else None
    high = parse_date(end) if end is not None else None
    if (start is not None and low is None) or (end is not None and high is None):
        raise FhirError(
            [Issue("error", "invalid", "start and end are FHIR dates", ("start", "end"))],
            code="BAD_DATE",
        )
    return (low[0] if low else MIN_TIME, high[1] if high else MAX_TIME)


def _in_care_window(resource: dict[str, Any], window: tuple[int, int]) -> bool:
    param = parameters(str(resource.get("resourceType"))).get("date")
    if param is None or param.type != "date":
        return True  # no clinical date: kept
    ranges = [r for v in param.values(resource) for r in date_ranges(v)]
    return not ranges or any(s < window[1] and e > window[0] for s, e in ranges)
