"""Consortium status: how this node orders, and what its peers attested."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import Response

from careledger.api.deps import NodeDep
from careledger.jsonio import dumps

router = APIRouter(tags=["cluster"])


@router.get("/v1/cluster", summary="Ordering status (local or JetStream) of this node")
def cluster(node: NodeDep) -> Response:
    status: dict[str, Any] = {"kind": "local", "queued": node.orderer.queued}
    reporter = getattr(node.orderer, "status", None)
    if reporter is not None:
        status = reporter()
    status["node"] = node.settings.node_name
    status["org"] = node.settings.org
    status["height"] = node.ledger.head.height
    status["head"] = node.ledger.head_hash
    if node.witness is not None:
        status["alarms"] = list(node.witness.alarms)
        status["head_signatures"] = node.witness.signatures_at_head()
    return Response(dumps(status), media_type="application/json")
