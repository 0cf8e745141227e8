"""Liveness and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from careledger.api.deps import NodeDep
from careledger.api.metrics import Metrics
from careledger.jsonio import dumps

router = APIRouter(tags=["operations"])


@router.get("/healthz")
def healthz(node: NodeDep) -> Response:
    head = node.ledger.head
    body = {
        "status": "ok",
        "chain": node.ledger.chain,
        "height": head.height,
        "log_size": head.log_size,
    }
    return Response(dumps(body), media_type="application/json")


@router.get("/metrics")
def metrics(request: Request, node: NodeDep) -> Response:
    m: Metrics = request.app.state.metrics
    m.queue_depth.set(node.orderer.queued)
    if node.witness is not None:
        m.fork_alarms.set(len(node.witness.alarms))
        m.head_signatures.set(node.witness.signatures_at_head())
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)
