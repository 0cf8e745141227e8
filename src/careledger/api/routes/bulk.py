"""FHIR Bulk Data Access 2.0 at /fhir: kick-off (``$export`` for the system and for Patient),
status polling, the NDJSON files and cancellation. See ``health/bulk_export.py``."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Annotated
from urllib.parse import parse_qsl

from fastapi import APIRouter, Path, Request
from fastapi.responses import FileResponse, Response

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of
from careledger.api.routes.smart import origin_of
from careledger.contracts.consent import PURPOSES
from careledger.fhir.outcome import FhirError, Issue, operation_outcome
from careledger.fhir.search import SearchRequest, parse_search
from careledger.fhir.types import ORG_ONLY_TYPES
from careledger.fhir.validate import SUPPORTED_TYPES
from careledger.health.bulk_export import ExportJobs, ExportRequest
from careledger.jsonio import dumps

router = APIRouter(prefix="/fhir", tags=["bulk data"])
FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
KNOWN = frozenset({"_outputFormat", "_type", "_since", "_typeFilter"})
JOB = r"^[0-9a-f]{24}$"
FILE = r"^[A-Za-z]{1,64}\.ndjson$"
RETRY_SECONDS = "2"


def _jobs(request: Request) -> ExportJobs:
    jobs: ExportJobs = request.app.state.exports
    return jobs


def _refuse(message: str, code: str = "BAD_EXPORT", status: int = 400) -> FhirError:
    return FhirError([Issue("error", "invalid", message, ())], code=code, http_status=status)


def _request(request: Request, kind: str) -> ExportRequest:
    """The kick-off, checked: Prefer respond-async, NDJSON only, known types, a valid _since
    and _typeFilter searches this server evaluates; anything else is refused, never ignored."""
    if "respond-async" not in request.headers.get("prefer", ""):
        raise _refuse("a bulk export is asynchronous: send Prefer: respond-async")
    pairs = request.query_params.multi_items()
    unknown = sorted({k for k, _ in pairs} - KNOWN)
    if unknown:
        raise _refuse(f"unsupported parameter {unknown[0]}", code="UNSUPPORTED_SEARCH")
    params: dict[str, list[str]] = {}
    for key, value in pairs:
        params.setdefault(key, []).append(value)
    output = (params.get("_outputFormat") or ["application/fhir+ndjson"])[0]
    if output not in FORMATS:
        raise _refuse("_outputFormat is application/fhir+ndjson")
    types = {t for v in params.get("_type", []) for t in v.split(",") if t}
    bad = sorted(types - SUPPORTED_TYPES)
    if bad:
        raise _refuse(f"_type names a type this server does not hold: {bad[0]}")
    own = sorted(types & ORG_ONLY_TYPES)  # a Schedule may be a patient's: exported then
    if own:  # never accepted and then left out without a word
        raise _refuse(
            f"_type names {own[0]}, an organisation's own record (about no patient): a bulk "
            "export holds patients' records; read these with a FHIR search",
            code="UNSUPPORTED_TYPE",
        )
    since = None
    if params.get("_since"):
        try:
            moment = datetime.fromisoformat(params["_since"][0].replace("Z", "+00:00"))
        except ValueError:
            raise _refuse("_since is a FHIR instant") from None
        if moment.tzinfo is None:
            raise _refuse("_since is a FHIR instant, with a time zone")
        since = int(moment.timestamp() * 1000)
    filters: dict[str, list[SearchRequest]] = {}
    for text in params.get("_typeFilter", []):
        for one in text.split(","):
            kind_, _, query = one.partition("?")
            if kind_ not in SUPPORTED_TYPES - ORG_ONLY_TYPES or (types and kind_ not in types):
                raise _refuse(f"_typeFilter names a type not exported: {kind_[:64]}")
            filters.setdefault(kind_, []).append(parse_search(kind_, parse_qsl(query)))
    purpose = request.headers.get("x-purpose-of-use", "HOPERAT")
    if purpose not in PURPOSES or purpose == "ETREAT":
        # an automated export is never emergency treatment
        raise _refuse("X-Purpose-Of-Use is a purpose of use other than ETREAT", code="BAD_PURPOSE")
    return ExportRequest(
        kind=kind,
        types=frozenset(types) or None,
        since_ms=since,
        filters=filters,
        url=str(request.url),
        purpose=purpose,
        origin=origin_of(request),
    )


def _accepted(request: Request, job: str) -> Response:
    where = f"{origin_of(request)}/fhir/$export-status/{job}"
    return Response(status_code=202, headers={"Content-Location": where})


@router.get("/$export", summary="Bulk export of every record the app may see (system level)")
def export_system(request: Request, claims: MemberDep) -> Response:
    job = _jobs(request).start(caller_of(claims), _request(request, "system"))
    return _accepted(request, job)


@router.get("/Patient/$export", summary="Bulk export of the patients' records")
def export_patients(request: Request, claims: MemberDep) -> Response:
    job = _jobs(request).start(caller_of(claims), _request(request, "patient"))
    return _accepted(request, job)


@router.get("/Group/{group_id}/$export", summary="Bulk export of a Group's member patients")
def export_group(
    request: Request,
    claims: MemberDep,
    group_id: Annotated[str, Path(pattern=r"^[A-Za-z0-9\-.]{1,64}$")],
) -> Response:
    """The Group's members' records (ruleset r10: a Group is the organisation's own record),
    for the custodian's own apps; the manifest proves the member set (health/bulk_export.py)."""
    asked = replace(_request(request, "group"), group=group_id)
    job = _jobs(request).start(caller_of(claims), asked)
    return _accepted(request, job)


@router.get("/$export-status/{job}", summary="An export's progress, then its manifest")
def export_status(
    request: Request, claims: MemberDep, job: Annotated[str, Path(pattern=JOB)]
) -> Response:
    status, progress, manifest, error = _jobs(request).status(caller_of(claims), job)
    if status == "complete" and manifest is not None:
        return Response(dumps(manifest), media_type="application/json", headers={"Expires": "0"})
    if status == "failed":
        outcome = operation_outcome([Issue("error", "exception", error, ())])
        return Response(dumps(outcome), status_code=500, media_type="application/fhir+json")
    if status == "withdrawn":
        outcome = operation_outcome([Issue("error", "deleted", error, ())])
        return Response(dumps(outcome), status_code=410, media_type="application/fhir+json")
    return Response(
        status_code=202, headers={"X-Progress": progress[:100], "Retry-After": RETRY_SECONDS}
    )


@router.delete("/$export-status/{job}", summary="Cancel an export (its files are deleted)")
def export_cancel(
    request: Request, claims: MemberDep, job: Annotated[str, Path(pattern=JOB)]
) -> Response:
    _jobs(request).cancel(caller_of(claims), job)
    return Response(status_code=202)


@router.get("/$export-file/{job}/{name}", summary="One NDJSON file of a completed export")
def export_file(
    request: Request,
    claims: MemberDep,
    job: Annotated[str, Path(pattern=JOB)],
    name: Annotated[str, Path(pattern=FILE)],
) -> Response:
    path = _jobs(request).file(caller_of(claims), job, name)
    return FileResponse(path, media_type="application/fhir+ndjson")
