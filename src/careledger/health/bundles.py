"""FHIR Bundle ``transaction`` (atomic) and ``batch`` (independent entries) for POST /fhir.

Writing entries: POST (with ``ifNoneExist``: a conditional create), PUT Type/id (an update, or
an update-as-create of an id nobody holds), PUT Type?search (a conditional update: the one
match updated, none created, several 412) and PATCH Type/id (a Binary holding a JSON Patch).
A batch also reads (GET) and erases (DELETE).

A transaction resolves ``urn:uuid:`` references between its entries, checks every entry, then
anchors all records in one ledger transaction: all of them are committed, or none. New Patients
are registered as ledger members first; if the transaction then fails, those pseudonymous
members remain (they carry no PHI) and nothing else does.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from careledger.callers.caller import Caller
from careledger.contracts.records import MAX_BATCH
from careledger.errors import CareLedgerError, NotFound, ValidationError
from careledger.fhir.extract import patient_id
from careledger.fhir.outcome import FhirError, Issue, operation_outcome
from careledger.fhir.patch import apply_patch, operations_in_binary
from careledger.fhir.search import parse_search
from careledger.fhir.types import ORG_TYPES, RECORD_PATHS, RECORD_TYPES
from careledger.fhir.validate import SUPPORTED_TYPES, validate_resource
from careledger.health.importer import entry_rank, rewrite_references
from careledger.health.search import existing, run_search
from careledger.health.service import HealthRecords, StoredResource

_URL = re.compile(r"^([A-Z][A-Za-z]{1,63})(?:/([A-Za-z0-9\-.]{1,64}))?$")
_ETAG = re.compile(r'^(?:W/)?"([0-9]+)"$')
MAX_ENTRIES = 1000
MAX_TRANSACTION = MAX_BATCH  # one ledger transaction anchors them all


def _entries(bundle: object, kind: str) -> list[dict[str, Any]]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise ValidationError("POST /fhir takes a Bundle", code="NOT_A_BUNDLE")
    if bundle.get("type") != kind:
        raise ValidationError(f"expected a {kind} Bundle", code="NOT_A_BUNDLE")
    entries = bundle.get("entry") or []
    if not isinstance(entries, list) or len(entries) > MAX_ENTRIES:
        raise ValidationError(f"Bundle.entry: a list of at most {MAX_ENTRIES}", code="NOT_A_BUNDLE")
    return entries


Parsed = tuple[str, str, str | None, dict[str, Any], int | None, str | None]


def _request(entry: object, index: int) -> Parsed:
    """(method, type, id, resource, if-match, condition) of one entry, or FhirError naming the
    entry. The condition is a POST's ``ifNoneExist`` (conditional create) or the query of a
    ``PUT Type?query`` (conditional update)."""
    where = f"Bundle.entry[{index}]"
    if not isinstance(entry, dict) or not isinstance(entry.get("request"), dict):
        raise FhirError([Issue("error", "required", "entry.request is required", (where,))])
    request, resource = entry["request"], entry.get("resource")
    method, url = request.get("method"), request.get("url")
    path, _, query = url.partition("?") if isinstance(url, str) else ("", "", "")
    match = _URL.match(path)
    if method not in ("POST", "PUT", "PATCH") or match is None:
        raise FhirError(
            [
                Issue(
                    "error",
                    "not-supported",
                    "transaction entries may POST Type, PUT Type/id or Type?query, PATCH"
                    " Type/id (a batch also GETs and DELETEs: an erasure is its own ledger"
                    " transaction, never part of another)",
                    (f"{where}.request",),
                )
            ]
        )
    resource_type, record_id = match.groups()
    conditional_put = method == "PUT" and record_id is None and bool(query)
    wrong = (
        (method == "POST" and (record_id is not None or query))
        or (method == "PUT" and not conditional_put and (record_id is None or query))
        or (method == "PATCH" and (record_id is None or query))
    )
    if wrong:
        raise FhirError(
            [
                Issue(
                    "error",
                    "invalid",
                    "POST takes Type, PUT Type/id or Type?search (a conditional update), PATCH"
                    " Type/id",
                    (f"{where}.request.url",),
                )
            ]
        )
    if resource_type not in SUPPORTED_TYPES or resource_type == "Consent":
        raise FhirError(
            [Issue("error", "not-supported", f"{resource_type} is not supported here", (where,))]
        )
    if not isinstance(resource, dict):
        raise FhirError(
            [Issue("error", "required", "entry.resource is required", (f"{where}.resource",))]
        )
    etag = request.get("ifMatch")
    if_match = None
    if etag is not None:
        found = _ETAG.match(str(etag))
        if found is None:
            raise FhirError(
                [Issue("error", "invalid", 'ifMatch is W/"n"', (f"{where}.request.ifMatch",))]
            )
        if_match = int(found.group(1))
    condition = request.get("ifNoneExist")
    if conditional_put:
        condition = query
    elif condition is not None and (method != "POST" or not isinstance(condition, str)):
        raise FhirError(
            [
                Issue(
                    "error",
                    "invalid",
                    "ifNoneExist is a search query on a POST",
                    (f"{where}.request.ifNoneExist",),
                )
            ]
        )
    return method, resource_type, record_id, resource, if_match, condition


def _response_entry(stored: StoredResource, method: str, *, made: bool = True) -> dict[str, Any]:
    """``made``: the entry created the resource (a POST, or a PUT that created)."""
    created = made and method in ("POST", "PUT") and stored.version == 1
    return {
        "fullUrl": f"{stored.resource_type}/{stored.record_id}",
        "resource": stored.resource,
        "response": {
            "status": "201 Created" if created else "200 OK",
            "location": f"{stored.resource_type}/{stored.record_id}/_history/{stored.version}",
            "etag": f'W/"{stored.version}"',
            "lastModified": stored.last_updated,
        },
    }


def transaction(
    records: HealthRecords, caller: Caller, bundle: object, purpose: str
) -> dict[str, Any]:
    entries = _entries(bundle, "transaction")
    if len(entries) > MAX_TRANSACTION:
        raise ValidationError(
            f"a transaction Bundle holds at most {MAX_TRANSACTION} entries (use batch or split)",
            code="BUNDLE_TOO_LARGE",
        )
    parsed = [_request(e, i) for i, e in enumerate(entries)]
    for index, (method, resource_type, _, resource, _, _) in enumerate(parsed):
        if method == "PATCH":
            continue  # a Binary holding the patch: the patched resource is validated
        try:
            validate_resource(resource, expected_type=resource_type)
        except FhirError as exc:
            prefixed = [
                Issue(
                    i.severity,
                    i.code,
                    i.diagnostics,
                    tuple(f"Bundle.entry[{index}].resource.{e}" for e in i.expression),
                )
                for i in exc.issues
            ]
            raise FhirError(prefixed) from None
    # Every entry's id first (Patients are registered, conditional creates and updates are
    # searched, in the order of entry_rank, so an ifNoneExist may name an earlier entry), so
    # that EVERY urn:uuid: reference between entries is rewritten before any entry is checked.
    order = sorted(range(len(parsed)), key=lambda i: entry_rank(parsed[i][1]))
    ids: dict[str, str] = {}
    pending: dict[str, str] = {}  # Type/id -> patient of the entries planned so far
    writes: dict[int, tuple[dict[str, Any], str, int, str]] = {}
    found: dict[int, StoredResource] = {}
    new_ids: dict[int, str] = {}
    for index in order:
        where = f"Bundle.entry[{index}]"
        resolved = resolve_entry(records, caller, parsed[index], ids, purpose, where)
        if isinstance(resolved, StoredResource):  # it exists: nothing written, refs go to it
            found[index] = resolved
            local = resolved.record_id
        else:
            parsed[index] = resolved
            resource_type, record_id = resolved[1], resolved[2]
            if record_id is not None:
                local = record_id
            elif resource_type == "Patient":  # its id is its ledger pseudonym: registered now
                writes[index] = _plan(records, caller, resolved, ids, purpose, where, pending)
                local = writes[index][1]
                pending[f"Patient/{local}"] = writes[index][3]
            else:
                local = new_ids[index] = records.new_record_id()
        full_url = entries[index].get("fullUrl")
        if isinstance(full_url, str):
            ids[full_url] = f"{parsed[index][1]}/{local}"
    for index, (_, local, version, patient) in list(writes.items()):  # new Patients
        rewritten = rewrite_references(parsed[index][3], ids)
        rewritten.pop("id", None)
        writes[index] = (rewritten, local, version, patient)
    for index in _planning_order(parsed, ids, new_ids, found, writes):
        writes[index] = _plan(
            records, caller, parsed[index], ids, purpose, f"Bundle.entry[{index}]", pending,
            new_ids.get(index),
        )  # fmt: skip
        pending[f"{parsed[index][1]}/{writes[index][1]}"] = writes[index][3]
    to_write = [i for i in range(len(parsed)) if i in writes]
    stored = (
        records.write_all(caller, [writes[i] for i in to_write], purpose=purpose)
        if to_write
        else []
    )
    written = dict(zip(to_write, stored, strict=True))
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            _response_entry(written[i], parsed[i][0])
            if i in written
            else _response_entry(found[i], parsed[i][0], made=False)
            for i in range(len(parsed))
        ],
    }


def _planning_order(
    parsed: list[Parsed],
    ids: dict[str, str],
    new_ids: dict[int, str],
    found: dict[int, StoredResource],
    planned: dict[int, Any],
) -> list[int]:
    """The order the entries left are checked in: an entry whose patient (or whether it may be
    the organisation's own) depends on the records it refers to (a Provenance, a Slot, a stored
    Bundle; an organisation's record naming a Schedule) after the entries of this transaction
    it refers to, so that their patients are known when it is checked (a PATCH, whose content
    is known only once applied, last). A cycle among those is refused."""
    left = [i for i in range(len(parsed)) if i not in found and i not in planned]
    local: dict[str, int] = {}
    for index in left:
        record_id = parsed[index][2] if index not in new_ids else new_ids[index]
        local[f"{parsed[index][1]}/{record_id}"] = index
    needs: dict[int, set[int]] = {}
    for index in left:
        method, resource_type, _, resource, _, _ = parsed[index]
        needs[index] = set()
        if method == "PATCH" or not (
            resource_type in RECORD_PATHS or resource_type == "Bundle" or resource_type in ORG_TYPES
        ):
            continue
        for target in _reference_strings(rewrite_references(resource, ids)):
            other = local.get(_HISTORY.sub("", target))
            if other is not None and other != index and parsed[other][1] in RECORD_TYPES:
                needs[index].add(other)
    out: list[int] = []
    done: set[int] = set()
    ready = sorted((i for i in left if parsed[i][0] != "PATCH"), key=lambda i: (
        entry_rank(parsed[i][1]), i))  # fmt: skip
    while ready:
        progressed = False
        for index in list(ready):
            if needs[index] <= done:
                out.append(index)
                done.add(index)
                ready.remove(index)
                progressed = True
                break
        if not progressed:
            cycle = ", ".join(f"Bundle.entry[{i}]" for i in sorted(ready))
            raise ValidationError(
                f"{cycle}: these entries refer to each other in a cycle, so none of their"
                " patients can be found from the others' (write them in separate transactions)",
                code="REFERENCE_CYCLE",
            )
    return out + [i for i in left if parsed[i][0] == "PATCH"]


_HISTORY = re.compile(r"/_history/[A-Za-z0-9\-.]{1,64}$")


def _reference_strings(node: Any) -> list[str]:
    """Every ``reference`` string in ``node``, at any depth."""
    out: list[str] = []
    stack = [node]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            ref = item.get("reference")
            if isinstance(ref, str):
                out.append(ref)
            stack.extend(v for v in item.values() if isinstance(v, dict | list))
        elif isinstance(item, list):
            stack.extend(v for v in item if isinstance(v, dict | list))
    return out


def resolve_entry(
    records: HealthRecords,
    caller: Caller,
    parsed: Parsed,
    ids: dict[str, str],
    purpose: str,
    where: str,
) -> StoredResource | Parsed:
    """An entry's condition searched: the resource a conditional create found (nothing to
    write), or the entry with no condition left (a conditional update names its one match)."""
    method, resource_type, record_id, resource, if_match, condition = parsed
    if condition is not None:
        matches = existing(
            records, caller, resource_type, rewrite_condition(condition, ids), purpose=purpose
        )
        if len(matches) > 1:
            what = "ifNoneExist" if method == "POST" else "the conditional update's search"
            raise FhirError(
                [Issue("error", "multiple-matches", f"{what} matches several resources",
                       (f"{where}.request",))],
                code="MULTIPLE_MATCHES",
                http_status=412,
            )  # fmt: skip
        if matches and method == "POST":
            return matches[0]
        if matches:  # a conditional update of the one match
            record_id = matches[0].record_id
            if resource.get("id") not in (None, record_id):
                raise FhirError([Issue("error", "invalid", "the resource id is not the match's",
                                       (f"{where}.resource.id",))])  # fmt: skip
    return method, resource_type, record_id, resource, if_match, None


def plan_entry(
    records: HealthRecords,
    caller: Caller,
    parsed: Parsed,
    ids: dict[str, str],
    purpose: str,
    where: str,
    pending: dict[str, str] | None = None,
) -> StoredResource | tuple[dict[str, Any], str, int, str]:
    """What one writing entry does: the resource a conditional create found (nothing to
    write), or the write prepared (resource, record id, version, patient), checked as the REST
    interaction would check it (the REST conditional update is planned here too). ``ids``: the
    fullUrls of entries already planned; ``where``: the entry, as errors name it."""
    resolved = resolve_entry(records, caller, parsed, ids, purpose, where)
    if isinstance(resolved, StoredResource):
        return resolved
    return _plan(records, caller, resolved, ids, purpose, where, pending)


def _plan(
    records: HealthRecords,
    caller: Caller,
    parsed: Parsed,
    ids: dict[str, str],
    purpose: str,
    where: str,
    pending: dict[str, str] | None = None,
    new_id: str | None = None,
) -> tuple[dict[str, Any], str, int, str]:
    """The write of an entry with no condition left prepared; ``new_id``: the id a create takes
    (a transaction chose it before any entry was checked, for the references to it)."""
    method, resource_type, record_id, resource, if_match, _ = parsed
    body = rewrite_references(resource, ids)
    if method == "PATCH":
        assert record_id is not None
        operations = operations_in_binary(body, where)  # a bad patch is refused unread
        records.may_change(caller, record_id, resource_type, "update")  # before reading it
        current = records.read(caller, resource_type, record_id, purpose=purpose)
        if if_match is not None and if_match != current.version:
            raise _stale(where, if_match)
        patched = apply_patch(current.resource, operations, resource_type, record_id)
        validate_resource(patched, expected_type=resource_type)
        return records.prepare(caller, patched, record_id=record_id, patient_of=patient_id,
                               if_match=current.version, pending=pending)  # fmt: skip
    body.pop("id", None)
    if record_id is None:  # a create (POST, or a conditional update that matched nothing)
        prepared, made, version, patient = records.prepare(
            caller, body, record_id=None, patient_of=patient_id, pending=pending
        )
        if new_id is not None and resource_type != "Patient":
            made = new_id  # as random as the one prepare drew
        return prepared, made, version, patient
    try:
        return records.prepare(
            caller, body, record_id=record_id, patient_of=patient_id, if_match=if_match,
            pending=pending,
        )  # fmt: skip
    except NotFound as exc:
        if exc.code != "UNKNOWN_RECORD" or if_match is not None:
            raise
    # update as create: the client chose the id of a record nobody holds
    if resource_type == "Patient":
        raise ValidationError(
            "a Patient's id is its ledger pseudonym: create it with POST", code="PATIENT_ID"
        )
    records.require_free_id(record_id)
    prepared, _, version, patient = records.prepare(
        caller, body, record_id=None, patient_of=patient_id, pending=pending
    )
    return prepared, record_id, version, patient


def _stale(where: str, if_match: int) -> FhirError:
    return FhirError(
        [Issue("error", "conflict", f"ifMatch names version {if_match}, not the current one",
               (f"{where}.request.ifMatch",))],
        code="VERSION_CONFLICT",
        http_status=412,
    )  # fmt: skip


def rewrite_condition(condition: str, ids: dict[str, str]) -> str:
    """An ifNoneExist may name another entry by its fullUrl (patient=urn:uuid:...)."""
    for full_url, local in ids.items():
        condition = condition.replace(full_url, local)
    return condition


def _read_entry(
    records: HealthRecords, caller: Caller, entry: object, purpose: str
) -> dict[str, Any] | None:
    """A GET or DELETE entry of a batch, answered; None for the entries that write."""
    request = entry.get("request") if isinstance(entry, dict) else None
    method = request.get("method") if isinstance(request, dict) else None
    url = request.get("url") if isinstance(request, dict) else None
    if method not in ("GET", "DELETE") or not isinstance(url, str):
        return None
    path, _, query = url.partition("?")
    match = _URL.match(path)
    if match is None:
        raise FhirError([Issue("error", "invalid", "entry.request.url is Type, Type/id", ())])
    resource_type, record_id = match.groups()
    if resource_type not in SUPPORTED_TYPES or resource_type == "Consent":
        raise FhirError([Issue("error", "not-supported", f"{resource_type} is not held here", ())])
    if method == "DELETE":
        if record_id is None or query:
            raise FhirError([Issue("error", "not-supported", "DELETE takes Type/id", ())])
        records.record_meta(record_id, resource_type)
        receipt = records.shred(caller, record_id)
        note = f"{resource_type}/{record_id} was erased (ledger transaction {receipt['tx_id']})"
        outcome = operation_outcome([Issue("information", "informational", note, ())])
        return {"response": {"status": "200 OK", "outcome": outcome}}
    if record_id is not None:
        stored = records.read(caller, resource_type, record_id, purpose=purpose)
        return _response_entry(stored, "GET", made=False)
    found = run_search(
        records,
        caller,
        parse_search(resource_type, parse_qsl(query, keep_blank_values=True)),
        purpose=purpose,
        base_url="",
        now=records.now(),
    )
    searchset = {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": found.total,
        "entry": [
            {
                "fullUrl": f"{s.resource_type}/{s.record_id}",
                "resource": s.resource,
                "search": {"mode": "match"},
            }
            for s in found.page
        ],
    }
    return {"resource": searchset, "response": {"status": "200 OK"}}


def batch(records: HealthRecords, caller: Caller, bundle: object, purpose: str) -> dict[str, Any]:
    """Each entry on its own: GET (read or search), DELETE (erase), POST and PUT (write)."""
    out = []
    for index, entry in enumerate(_entries(bundle, "batch")):
        try:
            answered = _read_entry(records, caller, entry, purpose)
            if answered is not None:
                out.append(answered)
                continue
            parsed = _request(entry, index)
            method, resource_type = parsed[0], parsed[1]
            if method != "PATCH":
                validate_resource(parsed[3], expected_type=resource_type)
            planned = plan_entry(records, caller, parsed, {}, purpose, f"Bundle.entry[{index}]")
            if isinstance(planned, StoredResource):
                out.append(_response_entry(planned, method, made=False))
                continue
            (stored,) = records.write_all(caller, [planned], purpose=purpose)
            out.append(_response_entry(stored, method))
        except CareLedgerError as exc:
            issues = (
                exc.issues
                if isinstance(exc, FhirError)
                else [Issue("error", "processing", exc.message, ())]
            )
            outcome = operation_outcome(issues)
            out.append({"response": {"status": str(exc.http_status), "outcome": outcome}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}
