"""Telemedicine visits API: schedule, consent, join (the link), start, end with the note."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of as _caller
from careledger.api.replies import json_object as _object
from careledger.api.replies import json_response as _json
from careledger.errors import ValidationError
from careledger.monitoring.visits import VisitsService

router = APIRouter(prefix="/v1/visits", tags=["visits"])
VisitId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


def _service(request: Request) -> VisitsService:
    service: VisitsService = request.app.state.visits
    return service


@router.post("", status_code=201, summary="Schedule a visit (clinician)")
async def schedule(request: Request, claims: MemberDep, body: Annotated[Any, Body()]) -> Response:
    done = await run_in_threadpool(_service(request).schedule, _caller(claims), _object(body))
    return _json(done, 201)


@router.get("", summary="My visits, upcoming and past")
def mine(request: Request, claims: MemberDep) -> Response:
    return _json(_service(request).mine(_caller(claims)))


@router.get("/{visit}", summary="One visit")
def visit(request: Request, claims: MemberDep, visit: VisitId) -> Response:
    return _json(_service(request).visit(_caller(claims), visit))


@router.post("/{visit}/consent", summary="Consent to the visit, and to recording or not (patient)")
async def consent(
    request: Request, claims: MemberDep, visit: VisitId, body: Annotated[Any, Body()] = None
) -> Response:
    args = _object(body)
    recording = args.get("recording", False)
    if not isinstance(recording, bool):
        raise ValidationError("recording is true or false", code="BAD_REQUEST")
    done = await run_in_threadpool(
        _service(request).consent, _caller(claims), visit, recording, args.get("envelope")
    )
    return _json(done)


@router.post("/{visit}/join", summary="Join: recorded on the ledger, then the link is given")
async def join(
    request: Request, claims: MemberDep, visit: VisitId, body: Annotated[Any, Body()] = None
) -> Response:
    envelope = _object(body).get("envelope")
    service = _service(request)
    return _json(await run_in_threadpool(service.join, _caller(claims), visit, envelope))


@router.post("/{visit}/end", summary="End the visit with its note (clinician)")
async def end(
    request: Request, claims: MemberDep, visit: VisitId, body: Annotated[Any, Body()]
) -> Response:
    note = _object(body).get("note")
    if not isinstance(note, str):
        raise ValidationError("note is the visit note's text", code="BAD_NOTE")
    return _json(await run_in_threadpool(_service(request).end, _caller(claims), visit, note))


@router.post("/{visit}/{step}", summary="Start (clinician) or cancel (either participant)")
async def step(
    request: Request,
    claims: MemberDep,
    visit: VisitId,
    step: Annotated[str, Path(pattern=r"^(start|cancel)$")],
) -> Response:
    return _json(await run_in_threadpool(_service(request).step, _caller(claims), visit, step))
