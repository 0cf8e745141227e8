"""FHIR R4 REST facade at /fhir: thin routes over the health-records service.

Bodies are ``application/fhir+json``; every error is an OperationOutcome (api/errors.py).
Each resource read carries its ledger anchor in headers, so a client can re-hash it and check
the anchoring transaction's inclusion proof: ``X-CareLedger-Anchor-Tx``,
``X-CareLedger-Leaf-Index``, ``X-CareLedger-Salt`` (base64url; the anchor is
HMAC-SHA256(salt, RFC 8785 bytes of the resource)).
"""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of as _caller
from careledger.errors import ValidationError
from careledger.fhir import extract, mapping
from careledger.fhir.outcome import FhirError, Issue
from careledger.fhir.validate import SUPPORTED_TYPES, validate_resource
from careledger.health import bundles
from careledger.health.access import Caller
from careledger.health.service import HealthRecords, StoredResource
from careledger.jsonio import dumps, loads

router = APIRouter(prefix="/fhir", tags=["fhir"])
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


def _anchor_headers(stored: StoredResource) -> dict[str, str]:
    return {
        "ETag": f'W/"{stored.version}"',
        "Last-Modified": stored.last_updated,
        "Location": f"/fhir/{stored.resource_type}/{stored.record_id}/_history/{stored.version}",
        "X-CareLedger-Anchor-Tx": stored.anchor_tx,
        "X-CareLedger-Leaf-Index": str(stored.leaf_index),
        "X-CareLedger-Salt": stored.salt,
    }


def _check_type(resource_type: str) -> None:
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


@router.get("/metadata", summary="CapabilityStatement")
def metadata() -> Response:
    resources = [
        {
            "type": t,
            "interaction": [
                {"code": c}
                for c in ("read", "vread", "update", "history-instance", "create", "search-type")
            ],
            "versioning": "versioned",
            "searchParam": [
                {"name": n, "type": ty}
                for n, ty in (
                    ("patient", "reference"),
                    ("subject", "reference"),
                    ("code", "token"),
                    ("date", "date"),
                    ("_id", "token"),
                    ("_lastUpdated", "date"),
                )
            ],
        }
        for t in sorted(SUPPORTED_TYPES - {"Consent"})
    ]
    return _fhir(
        {
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "kind": "instance",
            "fhirVersion": "4.0.1",
            "format": ["application/fhir+json"],
            "software": {"name": "CareLedger"},
            "rest": [
                {
                    "mode": "server",
                    "security": {
                        "description": "EdDSA JWT bearer tokens (/v1/auth/token), SMART scopes",
                    },
                    "resource": resources,
                    "operation": [
                        {
                            "name": "everything",
                            "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
                        }
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


@router.get("/AuditEvent", summary="Who accessed a patient's data (read-only, from the ledger)")
def search_audit_events(
    request: Request, claims: MemberDep, patient: Annotated[str, Query(max_length=80)]
) -> Response:
    entries = _records(request).access_log(_caller(claims), patient.removeprefix("Patient/"))
    return _fhir(_plain_bundle([mapping.access_to_audit_event(e) for e in entries]))


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
    stored = await run_in_threadpool(
        _records(request).create,
        _caller(claims),
        resource,
        patient_of=extract.patient_id,
        patient_public_key=patient_key,
        purpose=purpose,
    )
    return _fhir(stored.resource, 201, _anchor_headers(stored))


@router.get("/Patient/{patient}/$everything", summary="Everything held about a patient")
def everything(
    request: Request,
    claims: MemberDep,
    patient: Annotated[str, Path(pattern=ID_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    records = _records(request)
    stored, missing = records.everything_everywhere(_caller(claims), patient, purpose=purpose)
    bundle = _bundle("searchset", stored, sources=True)
    if missing:
        bundle["entry"].append(_partial(missing))
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


@router.get("/{resource_type}/{record_id}", summary="Read the current version")
def read(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    record_id: Annotated[str, Path(pattern=ID_PATTERN)],
    purpose: PurposeHeader = "TREAT",
) -> Response:
    _check_type(resource_type)
    stored = _records(request).read(_caller(claims), resource_type, record_id, purpose=purpose)
    return _fhir(stored.resource, 200, _anchor_headers(stored))


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
    return _fhir(stored.resource, 200, _anchor_headers(stored))


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
    if_match: Annotated[str | None, Header(alias="If-Match", pattern=r'^W/"[0-9]+"$')] = None,
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
    expected = int(if_match[3:-1]) if if_match else None
    stored = await run_in_threadpool(
        _records(request).update,
        _caller(claims),
        resource,
        record_id,
        if_match=expected,
        purpose=purpose,
    )
    return _fhir(stored.resource, 200, _anchor_headers(stored))


@router.get("/{resource_type}", summary="Search one patient's resources")
def search(
    request: Request,
    claims: MemberDep,
    resource_type: Annotated[str, Path(pattern=TYPE_PATTERN)],
    patient: Annotated[str | None, Query(max_length=80)] = None,
    subject: Annotated[str | None, Query(max_length=80)] = None,
    code: Annotated[str | None, Query(max_length=256)] = None,
    date: Annotated[list[str] | None, Query(max_length=40)] = None,
    last_updated: Annotated[list[str] | None, Query(alias="_lastUpdated", max_length=40)] = None,
    ids: Annotated[str | None, Query(alias="_id", max_length=4096)] = None,
    count: Annotated[int, Query(alias="_count", ge=0, le=MAX_PAGE)] = 50,
    offset: Annotated[int, Query(alias="_offset", ge=0)] = 0,
    purpose: PurposeHeader = "TREAT",
) -> Response:
    _check_type(resource_type)
    caller = _caller(claims)
    who = _patient_param(resource_type, patient, subject, ids, caller)
    records = _records(request)
    if who is None:
        raise FhirError(
            [
                Issue(
                    "error", "required", "search needs patient (or subject)", (f"{resource_type}",)
                )
            ],
            code="PATIENT_REQUIRED",
        )
    stored = records.everything(caller, who, types={resource_type}, purpose=purpose)
    matches = [s for s in stored if _matches(s, code, date or [], last_updated or [], ids)]
    matches.sort(key=lambda s: s.last_updated, reverse=True)
    page = matches[offset : offset + count]
    links = [{"relation": "self", "url": str(request.url)}]
    if offset + count < len(matches):
        nxt = request.url.include_query_params(_offset=offset + count, _count=count)
        links.append({"relation": "next", "url": str(nxt)})
    return _fhir(_bundle("searchset", page, total=len(matches), links=links))


def _patient_param(
    resource_type: str, patient: str | None, subject: str | None, ids: str | None, caller: Caller
) -> str | None:
    raw = patient or subject
    if raw is not None:
        return raw.removeprefix("Patient/")
    if resource_type == "Patient" and ids and "," not in ids:
        return ids
    if "patient" in caller.roles:
        return caller.member
    return None


def _matches(
    s: StoredResource, code: str | None, dates: list[str], updated: list[str], ids: str | None
) -> bool:
    if ids is not None and s.record_id not in ids.split(","):
        return False
    if code is not None:
        wanted = [c.split("|", 1) if "|" in c else [None, c] for c in code.split(",")]
        have = extract.codes(s.resource)
        if not any((sys is None or sys == hs) and c == hc for sys, c in wanted for hs, hc in have):
            return False
    resource_dates = extract.search_dates(s.resource) if s.resource_type != "Patient" else []
    return all(_date_ok(resource_dates, d) for d in dates) and all(
        _date_ok([s.last_updated], d) for d in updated
    )


_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le")


def _date_ok(values: list[str], param: str) -> bool:
    prefix, value = (param[:2], param[2:]) if param[:2] in _PREFIXES else ("eq", param)
    if not value:
        raise ValidationError("empty date parameter", code="BAD_SEARCH")

    def test(v: str) -> bool:
        head = v[: len(value)]
        return {
            "eq": head == value,
            "ne": head != value,
            "gt": head > value,
            "lt": head < value,
            "ge": head >= value,
            "le": head <= value,
        }[prefix]

    return any(test(v) for v in values)
