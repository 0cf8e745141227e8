"""Node-to-node reads of health records (see careledger.health.federation)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.errors import ValidationError
from careledger.health.federation import FederationServer
from careledger.jsonio import dumps, loads

router = APIRouter(prefix="/v1/federation", tags=["federation"])


@router.post("/{operation}", summary="A peer node reads for one of its members (signed)")
async def federated(
    request: Request,
    operation: str,
    node: Annotated[str, Header(alias="X-CareLedger-Node", max_length=64)],
    signature: Annotated[str, Header(alias="X-CareLedger-Signature", max_length=128)],
) -> Response:
    raw = await request.body()
    if len(raw) > 64 * 1024:
        raise ValidationError("a federation request is at most 64 KiB", code="REQUEST_TOO_LARGE")
    body: Any = loads(raw)
    server: FederationServer = request.app.state.federation
    answer = await run_in_threadpool(server.handle, operation, node, signature, body)
    return Response(dumps(answer), media_type="application/json")
