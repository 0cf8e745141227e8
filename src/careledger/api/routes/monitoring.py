"""Remote monitoring API: devices, bindings, readings in (HTTP and WebSocket), proofs, alerts."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Path, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of as _caller
from careledger.api.replies import json_object as _object
from careledger.api.replies import json_response as _json
from careledger.api.routes.events import BlockSignal, follow_blocks
from careledger.api.routes.tx import read_body
from careledger.callers.caller import Caller
from careledger.contracts.monitoring import rules_of
from careledger.errors import CareLedgerError, ValidationError
from careledger.jsonio import dumps, loads
from careledger.monitoring.service import MonitoringService

router = APIRouter(tags=["monitoring"])
DeviceId = Annotated[
    str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
PatientId = Annotated[str, Path(min_length=1, max_length=64)]
MAX_BATCH_BYTES = 4 * 1024 * 1024
ALERT_EVENTS = frozenset({"monitoring.alert", "monitoring.acknowledged", "monitoring.escalated"})


def _service(request: Request) -> MonitoringService:
    service: MonitoringService = request.app.state.monitoring
    return service


# -- devices and bindings --------------------------------------------------------------------


@router.post("/v1/devices", status_code=201, summary="Register a device (the owner's admin)")
async def register(request: Request, claims: MemberDep, body: Annotated[Any, Body()]) -> Response:
    service = _service(request)
    args = _object(body, "{id, model, public_key}")
    receipt = await run_in_threadpool(service.act, _caller(claims), "register_device", args)
    return _json({"receipt": receipt, "device": service.device(str(args.get("id")))}, 201)


@router.get("/v1/devices/{device}", summary="A device, its binding and windows")
def device(request: Request, claims: MemberDep, device: DeviceId) -> Response:
    return _json(_service(request).device(device))


@router.post("/v1/devices/{device}/binding", summary="Bind the device to yourself (the patient)")
async def bind(
    request: Request, claims: MemberDep, device: DeviceId, body: Annotated[Any, Body()] = None
) -> Response:
    envelope = _object(body or {}, "{envelope?}").get("envelope")
    receipt = await run_in_threadpool(_service(request).bind, _caller(claims), device, envelope)
    return _json({"receipt": receipt})


@router.delete("/v1/devices/{device}/binding", summary="End the binding (patient or care team)")
async def unbind(
    request: Request,
    claims: MemberDep,
    device: DeviceId,
    reason: Annotated[str, Query(max_length=64, pattern=r"^[a-z][a-z0-9_-]*$")] = "ended",
) -> Response:
    receipt = await run_in_threadpool(
        _service(request).unbind, _caller(claims), device, reason, None
    )
    return _json({"receipt": receipt})


# -- readings in -------------------------------------------------------------------------------


async def _body(request: Request) -> Any:
    """The JSON body, read up to the limit only (the endpoint needs no token: the batch's
    signature authenticates it, so its size is checked before anything is held)."""
    return loads(await read_body(request, MAX_BATCH_BYTES))


@router.post(
    "/v1/devices/{device}/readings",
    status_code=202,
    summary="A signed batch of readings (the device's own signature authenticates it)",
)
async def readings(request: Request, device: DeviceId) -> Response:
    received = _service(request).arrived()
    envelope = await _body(request)
    ack = await run_in_threadpool(_service(request).accept, device, envelope, received)
    return _json(ack.as_json(), 202)


@router.websocket("/v1/devices/{device}/stream")
async def stream(websocket: WebSocket, device: str) -> None:
    """Signed batches as text messages; each is answered with its ack or ``{code, detail}``."""
    service: MonitoringService = websocket.app.state.monitoring
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive_text()
            received = service.arrived()
            try:
                if len(message) > MAX_BATCH_BYTES:
                    raise ValidationError("the batch is too large", code="REQUEST_TOO_LARGE")
                envelope = loads(message.encode())
                ack = await run_in_threadpool(service.accept, device, envelope, received)
                answer: dict[str, Any] = ack.as_json()
            except CareLedgerError as exc:
                answer = {"status": "refused", "code": exc.code, "detail": str(exc)}
            await websocket.send_text(dumps(answer).decode())
    except WebSocketDisconnect:
        return


# -- readings out, rules, alerts --------------------------------------------------------------


@router.get(
    "/v1/devices/{device}/windows/{window}/readings/{index}",
    summary="One reading, with its proof to the window root and the window's anchor",
)
def reading(
    request: Request,
    claims: MemberDep,
    device: DeviceId,
    window: Annotated[int, Path(ge=0)],
    index: Annotated[int, Path(ge=0)],
) -> Response:
    answer = _service(request).readings.reading(_caller(claims), device, window, index)
    return _json(answer)


@router.get("/v1/monitoring/patients/{patient}/readings", summary="A patient's readings and alerts")
def series(
    request: Request,
    claims: MemberDep,
    patient: PatientId,
    since: Annotated[int, Query(ge=0, description="ms since the epoch")] = 0,
) -> Response:
    return _json(_service(request).readings.series(_caller(claims), patient, since_ms=since))


@router.delete(
    "/v1/monitoring/patients/{patient}/readings",
    summary="Erase your readings (the patient): shredded on every node, proofs kept",
)
async def erase_readings(
    request: Request, claims: MemberDep, patient: PatientId, body: Annotated[Any, Body()] = None
) -> Response:
    envelope = _object(body or {}, "{envelope?}").get("envelope")
    receipt = await run_in_threadpool(
        _service(request).erase_readings, _caller(claims), patient, envelope
    )
    return _json({"receipt": receipt})


@router.put("/v1/monitoring/patients/{patient}/rules", summary="Set a patient's alert rules")
async def set_rules(
    request: Request, claims: MemberDep, patient: PatientId, body: Annotated[Any, Body()]
) -> Response:
    args = {**_object(body, "{device, rules}"), "patient": patient}
    service = _service(request)
    receipt = await run_in_threadpool(service.act, _caller(claims), "set_rules", args)
    return _json(
        {
            "receipt": receipt,
            "rules": rules_of(service.ledger.state, str(args.get("device"))),
        }
    )


@router.get("/v1/monitoring/alerts", summary="Unacknowledged alerts of the caller's patients")
def inbox(request: Request, claims: MemberDep) -> Response:
    return _json({"items": _service(request).readings.inbox(_caller(claims))})


@router.post("/v1/monitoring/alerts/{alert}/ack", summary="Acknowledge an alert (care team)")
async def acknowledge(
    request: Request,
    claims: MemberDep,
    alert: Annotated[str, Path(max_length=96)],
    body: Annotated[Any, Body()] = None,
) -> Response:
    if _object(body or {}, "an object"):
        raise ValidationError(
            "an acknowledgement takes no fields (notes stay in the organisation's records)",
            code="BAD_REQUEST",
        )
    args = {"alert": alert}
    service = _service(request)
    receipt = await run_in_threadpool(service.act, _caller(claims), "acknowledge", args)
    return _json({"receipt": receipt, "alert": service.alert(_caller(claims), alert)})


def _alert_frames(service: MonitoringService, caller: Caller, height: int) -> list[bytes]:
    store = service.ledger.store
    frames = []
    for event in store.block_events(height):
        if event.type not in ALERT_EVENTS:
            continue
        data = orjson.loads(event.data)
        try:
            alert = service.alert(caller, data["alert"])
        except CareLedgerError:
            continue  # not this caller's
        frames.append(
            b"id: %d:%d\nevent: %s\ndata: %s\n\n"
            % (height, event.seq, event.type.encode(), dumps(alert))
        )
    return frames


@router.get("/v1/monitoring/alerts/stream", summary="The care team's alerts, pushed (SSE)")
async def alert_stream(request: Request, claims: MemberDep) -> StreamingResponse:
    service = _service(request)
    caller = _caller(claims)
    signal: BlockSignal = request.app.state.block_signal
    start = service.ledger.head.height + 1

    async def frames() -> AsyncIterator[bytes]:
        yield b": connected\n\n"
        blocks = follow_blocks(
            request,
            service.node,
            signal,
            start,
            lambda height: _alert_frames(service, caller, height),
        )
        async for frame in blocks:
            yield frame

    return StreamingResponse(frames(), media_type="text/event-stream")
