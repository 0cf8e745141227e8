"""Supply-chain API: DSCSA verification, recalls, suspect product, inventory, alerts."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep, get_issuer, get_member, get_node
from careledger.api.replies import caller_of as _caller
from careledger.api.replies import json_response as _json
from careledger.callers.caller import Caller
from careledger.errors import ValidationError
from careledger.supply.supply_service import (
    SupplyService,
    check_lms_request,
    lms_request_from_link,
)

router = APIRouter(prefix="/v1/supply", tags=["supply"])
_bearer = HTTPBearer(auto_error=False)
Gtin = Annotated[str, Path(min_length=8, max_length=14, pattern=r"^[0-9]+$")]
Serial = Annotated[str, Path(min_length=1, max_length=20)]
MAX_PAGE = 1000


def _service(request: Request) -> SupplyService:
    service: SupplyService = request.app.state.supply
    return service


def _optional_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller | None:
    """Verification is open to anyone; a token, when given, must be valid and is logged."""
    if credentials is None:
        return None
    claims = get_member(request, get_node(request), get_issuer(request), credentials)
    return _caller(claims)


OptionalCaller = Annotated[Caller | None, Depends(_optional_caller)]


def _page(items: list[dict[str, Any]], last: int | None, request: Request) -> Response:
    body: dict[str, Any] = {"items": items}
    headers = {}
    if last is not None:
        body["next"] = last
        headers["Link"] = f'<{request.url.include_query_params(after=str(last))}>; rel="next"'
    return _json(body, headers=headers)


# -- verification (GS1 Lightweight Messaging Standard shape) -------------------------------------


@router.get(
    "/verify/01/{gtin}/21/{serial}",
    summary="Verify a product identifier (LMS request as a Digital Link path)",
)
async def verify_path(
    request: Request,
    caller: OptionalCaller,
    gtin: Gtin,
    serial: Serial,
    lot: Annotated[str | None, Query(alias="10", max_length=20)] = None,
    expiry: Annotated[str | None, Query(alias="17", max_length=6)] = None,
    corr_uuid: Annotated[str | None, Query(alias="corrUUID", max_length=64)] = None,
    req_gln: Annotated[str | None, Query(alias="reqGLN", max_length=13)] = None,
    explain: Annotated[bool, Query(description="add the dispense verdict in words")] = False,
) -> Response:
    raw = {"gtin": gtin, "serialNumber": serial, "lotNumber": lot, "expirationDate": expiry}
    raw |= {"corrUUID": corr_uuid, "requestorGLN": req_gln}
    req = check_lms_request({k: v for k, v in raw.items() if v is not None})
    answer = await run_in_threadpool(_service(request).verify, caller, req, explain=explain)
    return _json(answer)


@router.get("/verify", summary="Verify the pack a GS1 Digital Link URI names")
async def verify_link(
    request: Request,
    caller: OptionalCaller,
    link: Annotated[str, Query(min_length=10, max_length=1024)],
    corr_uuid: Annotated[str | None, Query(alias="corrUUID", max_length=64)] = None,
    req_gln: Annotated[str | None, Query(alias="reqGLN", max_length=13)] = None,
    explain: Annotated[bool, Query(description="add the dispense verdict in words")] = False,
) -> Response:
    raw = lms_request_from_link(link, {"corrUUID": corr_uuid, "requestorGLN": req_gln})
    req = check_lms_request(raw)
    answer = await run_in_threadpool(_service(request).verify, caller, req, explain=explain)
    return _json(answer)


@router.post("/verify", summary="Verify a product identifier (LMS request body)")
async def verify_body(
    request: Request, caller: OptionalCaller, body: Annotated[Any, Body()]
) -> Response:
    req = check_lms_request(body)
    return _json(await run_in_threadpool(_service(request).verify, caller, req))


@router.get("/verifications", summary="The verification log (own requests and own brands)")
def verifications(
    request: Request,
    claims: MemberDep,
    gtin: Annotated[str | None, Query(max_length=14)] = None,
    serial: Annotated[str | None, Query(max_length=20)] = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    items, last = _service(request).list_verifications(
        _caller(claims), gtin=gtin, serial=serial, after=after, limit=limit
    )
    return _page(items, last, request)


# -- alerts, inventory, units ----------------------------------------------------------------


@router.get("/alerts", summary="Counterfeit and diversion alerts (own and own brands)")
def alerts(
    request: Request,
    claims: MemberDep,
    kind: Annotated[list[str] | None, Query()] = None,
    gtin: Annotated[str | None, Query(max_length=14)] = None,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
) -> Response:
    items, last = _service(request).list_alerts(
        _caller(claims), kinds=kind or [], gtin=gtin, after=after, limit=limit
    )
    return _page(items, last, request)


@router.get("/inventory", summary="Units in stock by GTIN and location (ledger state)")
def inventory(
    request: Request,
    claims: MemberDep,
    gtin: Annotated[str | None, Query(max_length=14)] = None,
    location: Annotated[str | None, Query(max_length=13)] = None,
) -> Response:
    return _json(_service(request).inventory(_caller(claims), gtin=gtin, location=location))


@router.get("/units/{gtin}/{serial}", summary="One unit's ledger state")
def unit(request: Request, claims: MemberDep, gtin: Gtin, serial: Serial) -> Response:
    return _json(_service(request).unit(_caller(claims), gtin, serial))


# -- recalls ---------------------------------------------------------------------------------


@router.post("/recalls", status_code=201, summary="Recall lots of a GTIN (the brand owner)")
async def recall(request: Request, claims: MemberDep, body: Annotated[Any, Body()]) -> Response:
    if not isinstance(body, dict):
        raise ValidationError("a recall is {gtin, lots, reason}", code="BAD_REQUEST")
    service = _service(request)
    caller = _caller(claims)
    receipt = await run_in_threadpool(service.act, caller, "recall", body)
    view = await run_in_threadpool(service.recall, caller, receipt["tx_id"])
    return _json(view, 201, {"Location": f"/v1/supply/recalls/{receipt['tx_id']}"})


@router.get("/recalls/{recall_id}", summary="A recall and the current holders of its units")
def recall_view(
    request: Request,
    claims: MemberDep,
    recall_id: Annotated[str, Path(min_length=64, max_length=64, pattern=r"^[0-9a-f]+$")],
) -> Response:
    return _json(_service(request).recall(_caller(claims), recall_id))


# -- suspect product -------------------------------------------------------------------------

_CASE_STEPS = {
    "suspect": ("flag_suspect", "reason"),
    "investigation": ("investigate", "note"),
    "determination": ("determine", "determination"),
    "notification": ("notify", "reference"),
}


@router.get("/suspects", summary="Suspect-product cases (quarantine to determination)")
def suspects(
    request: Request, claims: MemberDep, open_only: Annotated[bool, Query(alias="open")] = False
) -> Response:
    return _json({"items": _service(request).suspects(_caller(claims), open_only=open_only)})


@router.post(
    "/units/{gtin}/{serial}/{step}",
    summary="A suspect-product step: suspect, investigation, determination, notification",
)
async def case_step(
    request: Request,
    claims: MemberDep,
    gtin: Gtin,
    serial: Serial,
    step: Annotated[str, Path(pattern=r"^(suspect|investigation|determination|notification)$")],
    body: Annotated[Any, Body()],
) -> Response:
    method, field = _CASE_STEPS[step]
    if not isinstance(body, dict) or set(body) != {field}:
        raise ValidationError(f"the body is {{{field!r}: ...}}", code="BAD_REQUEST")
    args = {"gtin": gtin, "serial": serial, field: body[field]}
    service = _service(request)
    caller = _caller(claims)
    receipt = await run_in_threadpool(service.act, caller, method, args)
    unit_state = await run_in_threadpool(service.unit, caller, gtin, serial)
    return _json({"receipt": receipt, "unit": unit_state})


# -- set-up: company prefixes and locations ---------------------------------------------------


@router.post("/prefixes", status_code=201, summary="Claim a GS1 company prefix (manufacturers)")
async def claim_prefix(
    request: Request, claims: MemberDep, body: Annotated[Any, Body()]
) -> Response:
    if not isinstance(body, dict) or set(body) != {"prefix"}:
        raise ValidationError("the body is {'prefix': '0614141'}", code="BAD_REQUEST")
    receipt = await run_in_threadpool(
        _service(request).act, _caller(claims), "register_prefix", body
    )
    return _json({"prefix": body["prefix"], "receipt": receipt}, 201)


@router.post("/locations", status_code=201, summary="Register a location (GLN) of your org")
async def register_location(
    request: Request, claims: MemberDep, body: Annotated[Any, Body()]
) -> Response:
    if not isinstance(body, dict) or set(body) != {"gln", "name"}:
        raise ValidationError("the body is {'gln': ..., 'name': ...}", code="BAD_REQUEST")
    receipt = await run_in_threadpool(
        _service(request).act, _caller(claims), "register_location", body
    )
    return _json({"gln": body["gln"], "receipt": receipt}, 201)
