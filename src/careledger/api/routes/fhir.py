"""FHIR R4 REST facade at /fhir: thin routes over the health-records service.

Bodies are ``application/fhir+json``; every error is an OperationOutcome (api/errors.py).
Each resource read carries its ledger anchor in headers, so a client can re-hash it and check
the anchoring transaction's inclusion proof: ``X-CareLedger-Anchor-Tx``,
``X-CareLedger-Leaf-Index``, ``X-CareLedger-Salt`` (base64url; the anchor is
HMAC-SHA256(salt, RFC 8785 bytes of the resource)).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of as _caller
from careledger.api.routes.smart import origin_of
from careledger.contracts.records import NAMESPACE as RECORDS_NS
from careledger.contracts.records import record_key, version_key
from careledger.errors import Conflict, NotFound, ValidationError
from careledger.fhir import extract, mapping
from careledger.fhir.outcome import FhirError, Issue, operation_outcome
from careledger.fhir.patch import JSON_PATCH, MAX_PATCH, apply_patch, operations_of
from careledger.fhir.search import SearchRequest, parse_search, shape
from careledger.fhir.search import matches as search_matches
from careledger.fhir.search import parameters as search_parameters
from careledger.fhir.types import NOT_HELD, ORG_ONLY_TYPES, patient_search
from careledger.fhir.validate import SUPPORTED_TYPES, find_issues, validate_resource
from careledger.health import bundles
from careledger.health.history import history as versions_of
from careledger.health.search import SearchResult, everything_page, existing, run_search
from careledger.health.service import HealthRecords, StoredResource
from careledger.jsonio import dumps, loads
from careledger.smart.discovery import capability_security


async def _accepts_json(request: Request) -> None:
    """406 when the client accepts only something other than JSON (XML, say)."""
    accept = request.headers.get("accept", "").lower()
    if accept and not any(k in accept for k in ("json", "*/*", "application/*")):
        raise FhirError(
            [Issue("error", "not-supported", "only application/fhir+json is served", ())],
            code="NOT_ACCEPTABLE",
            http_status=406,
        )


router = APIRouter(prefix="/fhir", tags=["fhir"], dependencies=[Depends(_accepts_json)])
FHIR_JSON = "application/fhir+json"
TYPE_PATTERN = r"^[A-Z][A-Za-z]{1,63}$"
ID_PATTERN = r"^[A-Za-z0-9\-.]{1,64}$"
PurposeHeader = Annotated[str, Header(alias="X-Purpose-Of-Use", pattern=r"^[A-Z]{3,12}$")]
MAX_PAGE = 1000


def _records(request: Request) -> HealthRecords:
    records: HealthRecords = request.app.state.health
    return records


def _fhir(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type=FHIR_JSON, headers=headers)


def _anchor_headers(stored: StoredResource, base: str = "") -> dict[str, str]:
    """ETag, an HTTP-date Last-Modified, an absolute Location (with ``base``), and the anchor."""
    return {
        "ETag": f'W/"{stored.version}"',
        "Last-Modified": _http_date(stored.last_updated),
        "Location": f"{base}/fhir/{stored.resource_type}/{stored.record_id}"
        f"/_history/{stored.version}",
        "X-CareLedger-Anchor-Tx": stored.anchor_tx,
        "X-CareLedger-Leaf-Index": str(stored.leaf_index),
        "X-CareLedger-Salt": stored.salt,
    }


def _http_date(instant: str) -> str:
    """An R4 instant as the HTTP-date Last-Modified requires (RFC 9110)."""
    try:
        moment = datetime.fromisoformat(instant.replace("Z", "+00:00"))
    except ValueError:
        return instant
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def _origin(request: Request) -> str:
    """This server's origin for absolute Location and fullUrl: ``public_url`` when configured,
    else as the client reached it (through a trusted proxy: api/forwarded.py)."""
    configured: str = getattr(request.app.state, "public_origin", "")
    return configured if configured and _configured(request) else str(request.base_url).rstrip("/")


def _configured(request: Request) -> bool:
    """Whether node.json names a public_url (public_origin otherwise defaults to the address
    the node serves on, which a proxied client did not use)."""
    node = getattr(request.app.state, "node", None)
    return bool(node is not None and node.settings.public_url)


def _etag_version(tag: str | None) -> int | None:
    """The version in an ETag-style header, weak (W/"3") or strong ("3"); None if absent."""
    if tag is None:
        return None
    text = tag.strip().removeprefix("W/").strip('"')
    if not text.isdigit() or len(text) > 12:
        raise FhirError([Issue("error", "invalid", 'an ETag is W/"n" or "n"', ())], code="BAD_ETAG")
    return int(text)


def _precondition_failed(message: str) -> FhirError:
    """412: the version a client conditioned its write on is no longer the current one."""
    return FhirError(
        [Issue("error", "conflict", message, ())], code="PRECONDITION_FAILED", http_status=412
    )


def _returning(request: Request, stored: StoredResource, status: int) -> Response:
    """Create and update answer as ``Prefer: return=`` asks (representation by default)."""
    headers = _anchor_headers(stored, _origin(request))
    prefer = request.headers.get("prefer", "").replace(" ", "")
    if "return=minimal" in prefer:
        return Response(status_code=status, headers=headers)
    if "return=OperationOutcome" in prefer:
        outcome = {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": "information",
                    "code": "informational",
                    "diagnostics": f"{stored.resource_type}/{stored.record_id} version "
                    f"{stored.version} stored and anchored",
                }
            ],
        }
        return _fhir(outcome, status, headers)
    return _fhir(stored.resource, status, headers)


def _check_type(resource_type: str) -> None:
    refused = NOT_HELD.get(resource_type)
    if refused is not None:  # R4 types this server refuses to hold, each for its reason
        code, why = refused
        status = 404 if code == "UNSUPPORTED_TYPE" else 405
        raise FhirError(
            [Issue("error", "not-supported", why, (resource_type,))], code=code, http_status=status
        )
    if resource_type not in SUPPORTED_TYPES:
        raise FhirError(
            [Issue("error", "not-supported", f"{resource_type} is not supported here", ())],
            code="UNSUPPORTED_TYPE",
            http_status=404,
        )


async def _body(request: Request, resource_type: str) -> dict[str, Any]:
    raw = await request.body()
    if len(raw) > 4 * 1024 * 1024:
        raise ValidationError("a resource may be at most 4 MiB", code="REQUEST_TOO_LARGE")
    resource = loads(raw)
    validate_resource(resource, expected_type=resource_type)
    assert isinstance(resource, dict)
    return resource


def _bundle(
    kind: str,
    stored: list[StoredResource],
    *,
    total: int | None = None,
    links: list[dict[str, str]] | None = None,
    sources: bool = False,
) -> dict[str, Any]:
    entries = []
    for s in stored:
        entry: dict[str, Any] = {
            "fullUrl": f"{s.resource_type}/{s.record_id}",
            "resource": s.resource,
        }
        if sources:  # which custodian answered for it (the resource itself stays as anchored)
            entry["extension"] = [{"url": SOURCE_ORG, "valueString": s.custodian}]
        if kind == "searchset":
            entry["search"] = {"mode": "match"}
        else:
            entry["request"] = {
                "method": "PUT" if s.version > 1 else "POST",
                "url": f"{s.resource_type}/{s.record_id}",
            }
            entry["response"] = {"status": "200", "etag": f'W/"{s.version}"'}
        entries.append(entry)
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": kind,
        "total": len(stored) if total is None else total,
        "entry": entries,
    }
    if links:
        bundle["link"] = links
    return bundle


def _capability(resource_type: str) -> dict[str, Any]:
    """What this server does with a type: exactly the search parameters it evaluates."""
    params = search_parameters(resource_type)
    references = sorted(c for c, p in params.items() if p.type == "reference" and p.paths)
    return {
        "type": resource_type,
        "interaction": [
            {"code": c}
            for c in (
                "read",
                "vread",
                "update",
                "patch",
                "delete",
                "history-instance",
                "history-type",
                "create",
                "search-type",
            )
        ],
        "versioning": "versioned",
        "readHistory": True,
        "updateCreate": resource_type != "Patient",
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "not-supported",
        "searchInclude": [f"{resource_type}:{c}" for c in references],
        "searchParam": [
            {
                "name": code,
                "definition": param.definition if param.definition.startswith("https:")
                else f"http://hl7.org/fhir/SearchParameter/{param.definition}",
                "type": param.type,
            }
            for code, param in sorted(params.items())
        ],
    }


@router.get("/metadata", summary="CapabilityStatement")
def metadata(request: Request) -> Response:
    resources = [_capability(t) for t in sorted(SUPPORTED_TYPES - {"Consent"})]
    resources.append(_audit_capability())
    return _fhir(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": time.strftime("%Y-%m-%d", time.gmtime(_records(request).clock.time())),
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "software": {"name": "CareLedger"},
            "rest": [
                {
                    "mode": "server",
                    "security": capability_security(origin_of(request)),
                    "resource": resources,
                    "interaction": [
                        {"code": "transaction"},
                        {"code": "batch"},
                        {"code": "history-system"},
                    ],
                    "operation": [
                        {
                            "name": "everything",
                            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                        },
                        {
                            "name": "validate",
                            "definition": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
                        },
                    ],
                }
            ],
        }
    )


@router.post("/Consent", status_code=201, summary="Grant a consent (the patient's)")
async def create_consent(request: Request, claims: MemberDep) -> Response:
    resource = await _body(request, "Consent")
    patient = extract.patient_id(resource)
    if patient is None:
        raise FhirError(
            [Issue("error", "required", "Consent.patient is required", ("Consent.patient",))]
        )
    args = mapping.consent_to_grant(resource)
    entry = await run_in_threadpool(_records(request).grant_consent, _caller(claims), patient, args)
    consent = mapping.grant_to_consent(entry)
    return _fhir(consent, 201, {"Location": f"/fhir/Consent/{consent['id']}"})


@router.get("/Consent/{consent_id}", summary="A consent, read from the ledger")
def read_consent(
    request: Request, claims: MemberDep, consent_id: Annotated[str, Path(pattern=ID_PATTERN)]
) -> Response:
    return _fhir(mapping.grant_to_consent(_records(request).consent(_caller(claims), consent_id)))


@router.put("/Consent/{consent_id}", summary="Revoke a consent (status inactive)")
async def update_consent(
    request: Request, claims: MemberDep, consent_id: Annotated[str, Path(pattern=ID_PATTERN)]
) -> Response:
    resource = await _body(request, "Consent")
    if resource.get("status") not in ("inactive", "rejected"):
        raise FhirError(
            [
                Issue(
                    "error",
                    "business-rule",
                    "a consent can only be revoked (status inactive)",
                    ("Consent.status",),
                )
            ],
            http_status=422,
        )
    entry = await run_in_threadpool(_records(request).revoke_consent, _caller(claims), consent_id)
    return _fhir(mapping.grant_to_consent(entry))


@router.get("/Consent", summary="A patient's consents, from the ledger")
def search_consents(
    request: Request, claims: MemberDep, patient: Annotated[str, Query(max_length=80)]
) -> Response:
    entries = _records(request).consents(_caller(claims), patient.removeprefix("Patient/"))
    resources = [mapping.grant_to_consent(e) for e in entries]
    return _fhir(_plain_bundle(resources))


AUDIT_SEARCH = ("date", "agent", "altid", "entity", "action", "subtype", "policy")


def _audit_capability() -> dict[str, Any]:
    """AuditEvent: read and searched, never written (the ledger's access events, as BALP)."""
    params = search_parameters("AuditEvent")
    return {
        "type": "AuditEvent",
        "supportedProfile": [
            mapping.BALP + k for k, _, _ in (*mapping.BALP_KINDS.values(), mapping.BALP_CREATE)
        ],
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "searchParam": [
            {
                "name": code,
                "definition": f"http://hl7.org/fhir/SearchParameter/{params[code].definition}",
                "type": params[code].type,
            }
            for code in ("patient", *AUDIT_SEARCH)
        ],
    }


@router.get("/AuditEvent", summary="Who accessed a patient's data (IHE BALP, from the ledger)")
def search_audit_events(request: Request, claims: MemberDep) -> Response:
    """A patient's access events as BALP AuditEvents, newest first; searchable by ``date``,
    ``agent`` (who), ``altid`` (a member's or an app's id), ``entity`` (a record), ``action``,
    ``subtype`` and ``policy`` (the consent or break-glass that allowed it)."""
    return _audit_search(request, claims, request.query_params.multi_items())


def _audit_search(request: Request, claims: Any, pairs: list[tuple[str, str]]) -> Response:
    patients = [v for k, v in pairs if k == "patient"]
    if len(patients) != 1:
        raise FhirError(
            [Issue("error", "required", "AuditEvent is searched for one patient", ("patient",))],
            code="PATIENT_REQUIRED",
        )
    rest = [(k, v) for k, v in pairs if k != "patient"]
    refused = sorted({k.split(":")[0] for k, _ in rest} - {*AUDIT_SEARCH, "_count", "_offset"})
    if refused:
        raise FhirError(
            [Issue("error", "not-supported", f"{refused[0]}: not searched here", (refused[0],))],
            code="UNSUPPORTED_SEARCH",
        )
    query = parse_search("AuditEvent", rest, max_count=MAX_PAGE)
    patient = patients[0].removeprefix("Patient/")
    records = _records(request)
    entries = records.access_log(_caller(claims), patient)
    events = _audit_events(request, entries)
    now, base = records.now(), _base_url(request)
    hits = [e for e in reversed(events) if search_matches(e, query, now=now, base_url=base)]
    page = hits[query.offset : query.offset + query.count]
    bundle = _plain_bundle(page)
    bundle["total"] = len(hits)
    return _fhir(bundle)


def _audit_events(request: Request, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    records = _records(request)
    types: dict[str, str] = {}
    for entry in entries:
        for record_id in entry.get("records", []):
            if record_id not in types:
                meta = records.ledger.state(RECORDS_NS, record_key(record_id))
                if meta is not None:
                    types[record_id] = str(meta["type"])
    origin = origin_of(request)
    return [
        mapping.access_to_audit_event(e, types, origin, created=_created(records, e))
        for e in entries
    ]


def _created(records: HealthRecords, entry: Mapping[str, Any]) -> bool:
    """A write whose every record was at its first version when the event was recorded."""
    if entry.get("action") != "write" or not entry.get("records"):
        return False
    height = int(entry.get("height", 0))
    for record_id in entry["records"]:
        first = records.ledger.state(RECORDS_NS, version_key(record_id, 1))
        second = records.ledger.state(RECORDS_NS, version_key(record_id, 2))
        if first is None or int(first["height"]) > height:
            return False
        if second is not None and int(second["height"]) <= height:
            return False
    return True


@router.get("/AuditEvent/{event_id}", summary="One access event (IHE BALP), by its transaction")
def read_audit_event(
    request: Request, claims: MemberDep, event_id: Annotated[str, Path(pattern=r"^[0-9a-f]{64}$")]
) -> Response:
    records = _records(request)
    entry = records.access_entry(_caller(claims), event_id)
    return _fhir(_audit_events(request, [entry])[0])


def _plain_bundle(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "entry": [
            {
                "fullUrl": f"{r['resourceType']}/{r['id']}",
                "resource": r,
                "search": {"mode": "match"},
            }
            for r in resources
        ],
    }


@router.post("", summary="A transaction (atomic) or batch Bundle")
async def bundle(request: Request, claims: MemberDep, purpose: PurposeHeader = "TREAT") -> Response:
    raw = await request.body()
    if len(raw) > 64 * 1024 * 1024:
        raise ValidationError("a Bundle may be at most 64 MiB", code="REQUEST_TOO_LARGE")
    body = loads(raw)
    kind = body.get("type") if isinstance(body, dict) else None
    handler = bundles.transaction if kind == "transaction" else bundles.batch
    result = await run_in_threadpool(handler, _records(request), _caller(claims), body, purpose)
    return _fhir(result)


@router.post("/{resource_type}", status_code=201, summary="Create a resource")
async def create(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    purpose: PurposeHeader = "TREAT",
    patient_key: Annotated[
        str | None, Header(alias="X-CareLedger-Patient-Key", max_length=64)
    ] = None,
) -> Response:
    _check_type(resource_type)
    resource = await _body(request, resource_type)
    condition = request.headers.get("if-none-exist")
    if condition is not None:
        found = await run_in_threadpool(
            existing,
            _records(request),
            _caller(claims),
            resource_type,
            condition,
            purpose=purpose,
            base_url=_base_url(request),
        )
        if len(found) > 1:
            raise FhirError(
                [Issue("error", "multiple-matches", "If-None-Exist matches several", ())],
                code="MULTIPLE_MATCHES",
                http_status=412,
            )
        if found:  # it exists: nothing is created, the existing resource is the answer
            return _returning(request, found[0], 200)
    stored = await run_in_threadpool(
        _records(request).create,
        _caller(claims),
        resource,
        patient_of=extract.patient_id,
        patient_public_key=patient_key,
        purpose=purpose,
    )
    return _returning(request, stored, 201)


@router.post("/{resource_type}/$validate", summary="Validate a resource (nothing is stored)")
async def validate(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
) -> Response:
    _check_type(resource_type)
    raw = await request.body()
    if len(raw) > 4 * 1024 * 1024:
        raise ValidationError("a resource may be at most 4 MiB", code="REQUEST_TOO_LARGE")
    body = loads(raw)
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        parts = body.get("parameter") or []
        given = [
            p.get("resource") for p in parts if isinstance(p, dict) and p.get("name") == "resource"
        ]
        body = given[0] if given else None
    issues = find_issues(body, expected_type=resource_type)
    if not issues:
        issues = [Issue("information", "informational", "the resource is valid R4", ())]
    return _fhir(operation_outcome(issues), 200)


@router.post("/{resource_type}/{record_id}/$validate",
             summary="Validate an update or an erasure of a resource (nothing is stored)")
async def validate_instance(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
    mode: Annotated[str | None, Query(max_length=16)] = None,
) -> Response:
    """FHIR's instance ``$validate``: ``mode=update`` (the default) checks the resource as an
    update of this record (valid R4, the same id) and that the caller may make it; ``mode=delete``
    checks that the caller may erase it (no resource needed)."""
    _check_type(resource_type)
    raw = await request.body()
    if len(raw) > 4 * 1024 * 1024:
        raise ValidationError("a resource may be at most 4 MiB", code="REQUEST_TOO_LARGE")
    body = loads(raw) if raw.strip() else None
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        parts = [p for p in body.get("parameter") or [] if isinstance(p, dict)]
        given = [p.get("resource") for p in parts if p.get("name") == "resource"]
        modes = [p.get("valueCode") for p in parts if p.get("name") == "mode"]
        body = given[0] if given else None
        mode = mode or (str(modes[0]) if modes else None)
    mode = mode or "update"
    if mode not in ("update", "delete"):
        raise FhirError([Issue("error", "not-supported",
                               f"mode {mode[:16]!r}: this server validates update or delete", ())],
                        code="UNSUPPORTED_MODE", http_status=400)  # fmt: skip
    await run_in_threadpool(
        _records(request).may_change, _caller(claims), record_id, resource_type, mode
    )
    if mode == "delete":
        issues = [Issue("information", "informational", "you may erase this record", ())]
        return _fhir(operation_outcome(issues), 200)
    issues = find_issues(body, expected_type=resource_type)
    if isinstance(body, dict) and body.get("id") not in (None, record_id):
        issues.append(Issue("error", "invariant", "the resource's id is not the one in the URL",
                            (f"{resource_type}.id",)))  # fmt: skip
    if not issues:
        issues = [Issue("information", "informational", "the update is valid R4", ())]
    return _fhir(operation_outcome(issues), 200)


@router.get("/Patient/{patient}/$everything", summary="Everything held about a patient")
def everything(
    request: Request,
    claims: MemberDep,
    patient: Annotated[str, Path(pattern=ID_PATTERN)],
    purpose: PurposeHeader = "TREAT",
    types: Annotated[str | None, Query(alias="_type", max_length=4096)] = None,
    since: Annotated[str | None, Query(alias="_since", max_length=40)] = None,
    start: Annotated[str | None, Query(max_length=40)] = None,
    end: Annotated[str | None, Query(max_length=40)] = None,
    count: Annotated[int, Query(alias="_count", ge=1)] = MAX_PAGE,
    offset: Annotated[int, Query(alias="_offset", ge=0, le=10**9)] = 0,
) -> Response:
    wanted = {t for t in (types or "").split(",") if t} or None
    for kind in wanted or ():
        _check_type(kind)
    count = min(count, MAX_PAGE)
    answer = everything_page(
        _records(request),
        _caller(claims),
        patient,
        types=wanted,
        since=since,
        start=start,
        end=end,
        count=count,
        offset=offset,
        purpose=purpose,
    )
    bundle = _bundle("searchset", answer.page, total=answer.total, sources=True)
    base = f"{_base_url(request)}/Patient/{patient}/$everything"
    params = [(k, v) for k, v in request.query_params.multi_items() if k != "_offset"]
    links = [{"relation": "self", "url": f"{base}?{urlencode([*params, ('_offset', offset)])}"}]
    if offset + count < answer.total:
        nxt = urlencode([*params, ("_offset", offset + count)])
        links.append({"relation": "next", "url": f"{base}?{nxt}"})
    bundle["link"] = links
    for included in _bundle("searchset", answer.referenced, sources=True)["entry"]:
        included["search"] = {"mode": "include"}
        bundle["entry"].append(included)
    if answer.missing:
        bundle["entry"].append(_partial(answer.missing))
    return _fhir(bundle)


SOURCE_ORG = "https://careledger.dev/fhir/StructureDefinition/source-organization"


def _partial(missing: list[tuple[str, str]]) -> dict[str, Any]:
    """An OperationOutcome entry: whose records are missing from this answer, and why."""
    issues = [
        {
            "severity": "warning",
            "code": "incomplete",
            "details": {"coding": [{"system": "https://careledger.dev/codes", "code": why}]},
            "diagnostics": f"records held by {org} are not included ({why})",
        }
        for org, why in missing
    ]
    return {
        "resource": {"resourceType": "OperationOutcome", "issue": issues},
        "search": {"mode": "outcome"},
    }


HISTORY_PARAMS = frozenset({"_count", "_since", "_offset", "_height", "_format"})


@router.get("/_history", summary="Every version of every record you may see, newest first")
def system_history(
    request: Request, claims: MemberDep, purpose: PurposeHeader = "TREAT"
) -> Response:
    return _history(request, claims, None, purpose)


@router.get("/{resource_type}/_history", summary="Every version of a type's records you may see")
def type_history(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    _check_type(resource_type)
    return _history(request, claims, resource_type, purpose)


def _history(request: Request, claims: Any, kind: str | None, purpose: str) -> Response:
    """R4 history-type and history-system: ``_count``, ``_since`` (an instant), paged at one
    ledger height; anything else (``_at``, ``_list``) is refused, never ignored."""
    pairs = request.query_params.multi_items()
    unknown = sorted({k for k, _ in pairs} - HISTORY_PARAMS)
    if unknown:
        raise FhirError(
            [Issue("error", "not-supported", f"history does not take {unknown[0]}", (unknown[0],))],
            code="UNSUPPORTED_SEARCH",
        )
    params = dict(pairs)
    if "xml" in params.get("_format", ""):
        raise FhirError(
            [Issue("error", "not-supported", "only application/fhir+json is served", ("_format",))],
            code="NOT_ACCEPTABLE",
            http_status=406,
        )
    try:
        count = min(int(params.get("_count", MAX_PAGE)), MAX_PAGE)
        offset = int(params.get("_offset", 0))
        height = int(params["_height"]) if "_height" in params else None
        since = None
        if "_since" in params:
            moment = datetime.fromisoformat(params["_since"].replace("Z", "+00:00"))
            if moment.tzinfo is None:
                raise ValueError("an instant has a time zone")
            since = int(moment.timestamp() * 1000)
    except ValueError:
        raise FhirError(
            [Issue("error", "invalid", "_count, _offset, _height: numbers; _since: instant", ())],
            code="UNSUPPORTED_SEARCH",
        ) from None
    if count < 0 or offset < 0 or (height is not None and height < 0):
        raise FhirError(
            [Issue("error", "invalid", "negative paging", ())], code="UNSUPPORTED_SEARCH"
        )
    answer = versions_of(
        _records(request), _caller(claims), [kind] if kind else None, since_ms=since, at=height,
        count=count, offset=offset, purpose=purpose,
    )  # fmt: skip
    bundle = _bundle("history", answer.page, total=answer.total, links=None)
    base = f"{_base_url(request)}/{kind}/_history" if kind else f"{_base_url(request)}/_history"
    kept = [(k, v) for k, v in pairs if k not in ("_offset", "_height")]

    def link(relation: str, at: int) -> dict[str, str]:
        query = urlencode([*kept, ("_height", answer.at), ("_offset", at)])
        return {"relation": relation, "url": f"{base}?{query}"}

    bundle["link"] = [link("self", offset)]
    if offset + count < answer.total:
        bundle["link"].append(link("next", offset + count))
    if answer.refused:
        note = f"types held here you may not see are left out: {', '.join(answer.refused)}"
        bundle["entry"].append(_outcome_entry(note))
    return _fhir(bundle)


def _outcome_entry(note: str) -> dict[str, Any]:
    return {"resource": {"resourceType": "OperationOutcome", "issue": [
        {"severity": "warning", "code": "informational", "diagnostics": note}]}}  # fmt: skip


@router.get("/{resource_type}/{record_id}", summary="Read the current version")
def read(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    _check_type(resource_type)
    cached = _etag_version(request.headers.get("if-none-match"))
    # Authorised (and logged) before anything is said: a 304 confirms a copy of the record is
    # current, which is for a caller who may read it, and tells a stranger nothing.
    stored = _records(request).read(_caller(claims), resource_type, record_id, purpose=purpose)
    if cached is not None and cached == stored.version:
        return Response(status_code=304, headers={"ETag": f'W/"{cached}"'})
    return _fhir(stored.resource, 200, _anchor_headers(stored, _origin(request)))


@router.get("/{resource_type}/{record_id}/_history/{version}", summary="Read one version")
def vread(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
    version: Annotated[int, Path(ge=1)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    _check_type(resource_type)
    stored = _records(request).read(
        _caller(claims), resource_type, record_id, version=version, purpose=purpose
    )
    return _fhir(stored.resource, 200, _anchor_headers(stored, _origin(request)))


@router.get("/{resource_type}/{record_id}/_history", summary="Every version, newest first")
def history(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    _check_type(resource_type)
    stored = _records(request).history(_caller(claims), resource_type, record_id, purpose=purpose)
    return _fhir(_bundle("history", stored))


@router.put("/{resource_type}/{record_id}", summary="Update (a new version)")
async def update(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
    purpose: PurposeHeader = "TREAT",
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=40)] = None,
) -> Response:
    _check_type(resource_type)
    resource = await _body(request, resource_type)
    if resource.get("id") not in (None, record_id):
        raise FhirError(
            [
                Issue(
                    "error",
                    "invalid",
                    "the resource id differs from the URL",
                    (f"{resource_type}.id",),
                )
            ]
        )
    expected = _etag_version(if_match)
    try:
        stored = await run_in_threadpool(
            _records(request).update,
            _caller(claims),
            resource,
            record_id,
            if_match=expected,
            purpose=purpose,
        )
    except Conflict as exc:
        if expected is None or exc.code != "VERSION_CONFLICT":
            raise
        raise _precondition_failed(f"If-Match names version {expected}: {exc.message}") from None
    except NotFound as exc:
        if exc.code != "UNKNOWN_RECORD" or expected is not None:
            raise
        # update as create: the client chose the id of a record nobody holds
        stored = await run_in_threadpool(
            functools.partial(_records(request).create_at, patient_of=extract.patient_id,
                              purpose=purpose),
            _caller(claims), resource, record_id,
        )  # fmt: skip
        return _returning(request, stored, 201)
    return _returning(request, stored, 200)


@router.put("/{resource_type}", summary="Conditional update: the one match, or a create")
async def conditional_update(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    purpose: PurposeHeader = "TREAT",
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=40)] = None,
) -> Response:
    """R4 conditional update: the search in the query finds the resource to update; none
    found, it is created; several, 412 (MULTIPLE_MATCHES). The search is read like any search
    (its access event names what it found)."""
    _check_type(resource_type)
    query = request.url.query
    if not query:
        raise FhirError(
            [Issue("error", "required", "a conditional update names a search (PUT Type?...)", ())],
            code="BAD_CONDITION",
        )
    resource = await _body(request, resource_type)
    parsed = ("PUT", resource_type, None, resource, _etag_version(if_match), query)
    records, caller = _records(request), _caller(claims)
    try:
        planned = await run_in_threadpool(
            bundles.plan_entry, records, caller, parsed, {}, purpose, resource_type
        )
        if isinstance(planned, StoredResource):  # a POST's outcome only; never for a PUT
            return _returning(request, planned, 200)
        (stored,) = await run_in_threadpool(
            functools.partial(records.write_all, purpose=purpose), caller, [planned]
        )
    except Conflict as exc:
        if exc.code != "VERSION_CONFLICT" or if_match is None:
            raise
        raise _precondition_failed(f"If-Match: {exc.message}") from None
    return _returning(request, stored, 201 if stored.version == 1 else 200)


@router.patch("/{resource_type}/{record_id}", summary="Update by JSON Patch (a new version)")
async def patch(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
    purpose: PurposeHeader = "TREAT",
    if_match: Annotated[str | None, Header(alias="If-Match", max_length=40)] = None,
) -> Response:
    _check_type(resource_type)
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind != JSON_PATCH:
        raise FhirError(
            [Issue("error", "not-supported", "PATCH takes application/json-patch+json", ())],
            code="UNSUPPORTED_MEDIA_TYPE",
            http_status=415,
        )
    raw = await request.body()
    if len(raw) > MAX_PATCH:
        raise ValidationError("a patch may be at most 1 MiB", code="REQUEST_TOO_LARGE")
    operations = operations_of(loads(raw))
    records = _records(request)
    caller = _caller(claims)
    # whether the caller may change it, before it is read (and the read logged)
    await run_in_threadpool(records.may_change, caller, record_id, resource_type, "update")
    current = await run_in_threadpool(
        records.read, caller, resource_type, record_id, purpose=purpose
    )
    expected = _etag_version(if_match)
    if expected is not None and expected != current.version:
        raise _precondition_failed(f"If-Match names version {expected}")
    patched = await run_in_threadpool(  # never on the event loop: a patch can be heavy
        apply_patch, current.resource, operations, resource_type, record_id
    )
    await run_in_threadpool(
        functools.partial(validate_resource, expected_type=resource_type), patched
    )
    try:
        stored = await run_in_threadpool(
            records.update, caller, patched, record_id, if_match=current.version, purpose=purpose
        )
    except Conflict as exc:
        if exc.code != "VERSION_CONFLICT":
            raise
        raise _precondition_failed("the resource changed while it was patched") from None
    return _returning(request, stored, 200)


@router.delete("/{resource_type}/{record_id}", summary="Erase (crypto-shred) a resource")
async def delete(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
) -> Response:
    _check_type(resource_type)
    records = _records(request)
    records.record_meta(record_id, resource_type)  # 404 for another type, 410 if erased already
    receipt = await run_in_threadpool(records.shred, _caller(claims), record_id)
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "informational",
                "diagnostics": f"{resource_type}/{record_id} was erased: its keys and ciphertext"
                f" are destroyed (ledger transaction {receipt['tx_id']})",
            }
        ],
    }
    return _fhir(outcome, 200)


@router.get("/{resource_type}", summary="Search (R4 semantics; see the CapabilityStatement)")
def search(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    pairs = list(request.query_params.multi_items())
    return _search(request, claims, resource_type, pairs, purpose)


@router.post("/{resource_type}/_search", summary="Search with the parameters in a form body")
async def search_by_post(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    kind = request.headers.get("content-type", "").split(";")[0].strip()
    if kind not in ("application/x-www-form-urlencoded", ""):
        raise ValidationError(
            "_search takes application/x-www-form-urlencoded", code="UNSUPPORTED_MEDIA_TYPE"
        )
    raw = await request.body()
    try:
        body = parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise ValidationError("the form body is not UTF-8", code="BAD_FORM") from None
    pairs = [*request.query_params.multi_items(), *body]
    return await run_in_threadpool(_search, request, claims, resource_type, pairs, purpose)


@router.get("/Patient/{patient}/{resource_type}", summary="Search one patient's compartment")
def compartment_search(
    request: Request,
    claims: MemberDep,
    patient: Annotated[str, Path(pattern=ID_PATTERN)],
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    if resource_type == "AuditEvent":  # the patient's access log: what AuditEvent?patient= is
        pairs = [("patient", patient), *request.query_params.multi_items()]
        return _audit_search(request, claims, pairs)
    _check_type(resource_type)
    if resource_type in ORG_ONLY_TYPES:  # never a patient's: never "the patient's compartment"
        raise FhirError(
            [Issue("error", "not-supported",
                   f"{resource_type} is an organisation's record, in no patient's compartment",
                   (resource_type,))],
            code="NOT_IN_COMPARTMENT",
        )  # fmt: skip
    # R4's patient or compartment parameter, or this server's (a Slot, a Binary: types R4 gives
    # no parameter naming their patient): the patient's records of the type, by the ledger
    pairs = [(patient_search(resource_type), f"Patient/{patient}"),
             *request.query_params.multi_items()]  # fmt: skip
    return _search(request, claims, resource_type, pairs, purpose)


def _search(
    request: Request,
    claims: Any,
    resource_type: str,
    pairs: list[tuple[str, str]],
    purpose: str,
) -> Response:
    _check_type(resource_type)
    if any(k == "_format" and "xml" in v for k, v in pairs):
        raise FhirError(
            [Issue("error", "not-supported", "only application/fhir+json is served", ("_format",))],
            code="NOT_ACCEPTABLE",
            http_status=406,
        )
    caller = _caller(claims)
    lenient = "handling=lenient" in request.headers.get("prefer", "").replace(" ", "")
    query = parse_search(resource_type, pairs, lenient=lenient, max_count=MAX_PAGE)
    base_url = _base_url(request)
    records = _records(request)
    result = run_search(
        records, caller, query, purpose=purpose, base_url=base_url, now=records.now()
    )
    return _fhir(_searchset(request, query, result, base_url))


def _base_url(request: Request) -> str:
    return _origin(request) + "/fhir"


def _searchset(
    request: Request, query: SearchRequest, result: SearchResult, base_url: str
) -> dict[str, Any]:
    url = f"{base_url}/{query.resource_type}"
    kept = list(query.kept)

    def link(relation: str, offset: int) -> dict[str, str]:
        params = [*kept, ("_at", str(result.at))]
        if offset:
            params.append(("_offset", str(offset)))
        return {"relation": relation, "url": f"{url}?{urlencode(params)}"}

    links = [link("self", query.offset)]
    if query.summary != "count" and query.offset + query.count < result.total:
        links.append(link("next", query.offset + query.count))
    if query.offset > 0:
        links.append(link("previous", max(0, query.offset - query.count)))
    entries: list[dict[str, Any]] = []
    for mode, stored in [("match", s) for s in result.page] + [
        ("include", s) for s in result.included
    ]:
        entries.append(
            {
                "fullUrl": f"{base_url}/{stored.resource_type}/{stored.record_id}",
                "resource": shape(stored.resource, query.summary, query.elements),
                "search": {"mode": mode},
            }
        )
    notes = [f"{name} was ignored: {why}" for name, why in query.ignored] + result.warnings
    if notes:
        entries.append(
            {
                "resource": {
                    "resourceType": "OperationOutcome",
                    "issue": [
                        {"severity": "warning", "code": "informational", "diagnostics": note}
                        for note in notes
                    ],
                },
                "search": {"mode": "outcome"},
            }
        )
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if query.total != "none":
        bundle["total"] = result.total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle
