"""EPCIS 2.0 capture and query (a subset of the standard REST binding), for members."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of as _caller
from careledger.api.replies import json_response as _json
from careledger.errors import ValidationError
from careledger.jsonio import loads
from careledger.supply.access import require_supply
from careledger.supply.cbv import vocabulary_word
from careledger.supply.repository import EventQuery
from careledger.supply.service import EpcisService, canonical_epc, utc_millis

router = APIRouter(prefix="/epcis", tags=["epcis"])
EPCIS_CONTEXT = "https://ref.gs1.org/standards/epcis/2.0.0/epcis-context.jsonld"
MAX_PER_PAGE = 1000
Values = Annotated[list[str] | None, Query()]


def _service(request: Request) -> EpcisService:
    service: EpcisService = request.app.state.epcis
    return service


@router.post(
    "/capture", status_code=202, summary="Capture an EPCIS 2.0 document (whole or not at all)"
)
async def capture(request: Request, claims: MemberDep) -> Response:
    raw = await request.body()
    if len(raw) > 16 * 1024 * 1024:
        raise ValidationError("a capture document may be at most 16 MiB", code="REQUEST_TOO_LARGE")
    document = loads(raw)
    result = await run_in_threadpool(_service(request).capture, _caller(claims), document)
    location = f"/epcis/capture/{result['captureID']}"
    return _json(result, 202, {"Location": location})


@router.get("/capture/{capture_id}", summary="A capture's status and per-event errors")
def capture_status(
    request: Request, claims: MemberDep, capture_id: Annotated[str, Path(max_length=64)]
) -> Response:
    require_supply(_caller(claims), "read")
    return _json(_service(request).repository.capture(capture_id))


def _page(request: Request, claims: Any, q: EventQuery) -> Response:
    require_supply(_caller(claims), "read")
    events, last = _service(request).query(q)
    body = {
        "@context": [EPCIS_CONTEXT],
        "type": "EPCISQueryDocument",
        "schemaVersion": "2.0",
        "epcisBody": {
            "queryResults": {"queryName": "SimpleEventQuery", "resultsBody": {"eventList": events}}
        },
    }
    headers = {}
    if last is not None:
        nxt = request.url.include_query_params(nextPageToken=str(last))
        headers["Link"] = f'<{nxt}>; rel="next"'
        body["nextPageToken"] = str(last)
    return _json(body, headers=headers)


def _token(value: str | None) -> int:
    if value is None:
        return 0
    if not value.isdigit():
        raise ValidationError("nextPageToken is not valid", code="BAD_PAGE_TOKEN")
    return int(value)


@router.get("/events", summary="Query events (EQ_/MATCH_/GE_/LT_ parameters)")
def events(
    request: Request,
    claims: MemberDep,
    eq_biz_step: Annotated[list[str] | None, Query(alias="EQ_bizStep")] = None,
    eq_disposition: Annotated[list[str] | None, Query(alias="EQ_disposition")] = None,
    eq_biz_location: Annotated[list[str] | None, Query(alias="EQ_bizLocation")] = None,
    match_epc: Annotated[list[str] | None, Query(alias="MATCH_epc")] = None,
    match_any_epc: Annotated[list[str] | None, Query(alias="MATCH_anyEPC")] = None,
    ge_event_time: Annotated[str | None, Query(alias="GE_eventTime")] = None,
    lt_event_time: Annotated[str | None, Query(alias="LT_eventTime")] = None,
    per_page: Annotated[int, Query(alias="perPage", ge=1, le=MAX_PER_PAGE)] = 100,
    next_page_token: Annotated[str | None, Query(alias="nextPageToken", max_length=20)] = None,
) -> Response:
    def split(values: list[str] | None) -> list[str]:
        return [v for value in values or [] for v in value.split("|") if v]

    q = EventQuery(
        biz_steps=[w for w in (vocabulary_word(v) for v in split(eq_biz_step)) if w],
        dispositions=[w for w in (vocabulary_word(v) for v in split(eq_disposition)) if w],
        biz_locations=[canonical_epc(v) for v in split(eq_biz_location)],
        epcs=[canonical_epc(v) for v in split(match_epc)],
        any_epcs=[canonical_epc(v) for v in split(match_any_epc)],
        ge_time=utc_millis(ge_event_time) if ge_event_time else None,
        lt_time=utc_millis(lt_event_time) if lt_event_time else None,
        after_seq=_token(next_page_token),
        limit=per_page,
    )
    return _page(request, claims, q)


@router.get("/epcs/{epc:path}/events", summary="Every event naming one EPC (URN or Digital Link)")
def epc_events(
    request: Request,
    claims: MemberDep,
    epc: str,
    per_page: Annotated[int, Query(alias="perPage", ge=1, le=MAX_PER_PAGE)] = 100,
    next_page_token: Annotated[str | None, Query(alias="nextPageToken", max_length=20)] = None,
) -> Response:
    q = EventQuery(any_epcs=[canonical_epc(epc)], after_seq=_token(next_page_token), limit=per_page)
    return _page(request, claims, q)
