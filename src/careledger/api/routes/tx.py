"""Submit transactions and fetch their receipts with inclusion proofs."""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import NodeDep
from careledger.api.metrics import Metrics
from careledger.api.replies import json_response as _json
from careledger.errors import CareLedgerError, Conflict, Rejected, ValidationError
from careledger.jsonio import loads

router = APIRouter(tags=["transactions"])


class RejectedWithReceipt(Rejected):
    def __init__(self, receipt: dict[str, Any]) -> None:
        super().__init__(str(receipt["code"]), "the transaction was committed as rejected")
        self.http_status = 422
        self.receipt = receipt


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused as soon as it exceeds ``limit`` bytes (never held whole)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ValidationError(f"the request body exceeds {limit} bytes", code="REQUEST_TOO_LARGE")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ValidationError(
                f"the request body exceeds {limit} bytes", code="REQUEST_TOO_LARGE"
            )
        chunks.append(chunk)
    return b"".join(chunks)


@router.post("/v1/tx/check", summary="Dry run: would this signed envelope be accepted now?")
async def check(request: Request, node: NodeDep) -> Response:
    raw = await read_body(request, node.settings.max_request_bytes)
    payload = loads(raw)
    if not isinstance(payload, dict):
        raise ValidationError("send one envelope object", code="MALFORMED_TX")
    why = await run_in_threadpool(node.ledger.check, payload, size=len(raw))
    if why is None:
        return _json({"result": "would_accept"})
    return _json(
        {"result": "would_reject", "code": why.code, "message": why.message, **dict(why.detail)}
    )


@router.post(
    "/v1/tx",
    summary="Submit one signed envelope or a JSON array of up to 10,000",
    responses={202: {"description": "queued"}, 200: {"description": "committed (wait=true)"}},
)
async def submit(
    request: Request,
    node: NodeDep,
    wait: Annotated[bool, Query(description="answer after the block is durable")] = False,
    timeout: Annotated[float, Query(gt=0, le=300)] = 30.0,
) -> Response:
    settings = node.settings
    raw = await read_body(request, settings.max_request_bytes)
    payload = loads(raw)
    single = isinstance(payload, dict)
    objs: list[Any] = [payload] if single else payload if isinstance(payload, list) else []
    if not objs:
        raise ValidationError("send one envelope object or a non-empty array", code="MALFORMED_TX")
    if len(objs) > settings.max_batch_envelopes:
        raise ValidationError(
            f"at most {settings.max_batch_envelopes} envelopes per request", code="BATCH_TOO_LARGE"
        )
    sizes = [len(raw)] if single else [None] * len(objs)
    metrics: Metrics = request.app.state.metrics
    started = time.perf_counter()
    txs = await run_in_threadpool(node.admit_all, objs, sizes)
    try:
        node.charge_writes(txs)
    except CareLedgerError:
        node.ledger.release(txs)  # nothing ordered: the nonces are free again
        raise
    futures = node.submit(txs)
    metrics.tx_admitted.inc(len(txs))
    ids = [tx.tx_id for tx in txs]
    if not wait:
        body: dict[str, Any] = {"status": "queued"}
        body.update({"tx_id": ids[0]} if single else {"tx_ids": ids})
        return _json(body, 202)
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True),
            timeout,
        )
    except TimeoutError:
        raise CareLedgerError(
            "not committed within the timeout; the transactions may still commit",
            code="COMMIT_TIMEOUT",
        ) from None
    metrics.commit_wait.observe(time.perf_counter() - started)
    if single:
        outcome = outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        if outcome["result"] != "accepted":
            raise RejectedWithReceipt(outcome)
        return _json({"tx_id": ids[0], "receipt": outcome})
    results: list[dict[str, Any]] = []
    for tx_id, outcome in zip(ids, outcomes, strict=True):
        if isinstance(outcome, CareLedgerError):
            results.append(
                {"tx_id": tx_id, "error": {"code": outcome.code, "detail": outcome.message}}
            )
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            results.append({"tx_id": tx_id, "receipt": outcome})
    return _json({"results": results})


@router.get("/v1/tx/{tx_id}", summary="A receipt with its inclusion proof and checkpoint")
def get_tx(
    tx_id: str,
    node: NodeDep,
    tree_size: Annotated[int | None, Query(gt=0)] = None,
    signatures: Annotated[int, Query(ge=1, le=64, description="cosigners required")] = 1,
) -> Response:
    """With ``signatures=K``: the proof against the newest checkpoint K nodes cosigned."""
    if len(tx_id) != 64 or any(c not in "0123456789abcdef" for c in tx_id):
        raise ValidationError("a transaction id is 64 lowercase hex digits", code="BAD_TX_ID")
    if signatures == 1:
        return _json(node.ledger.tx_proof(tx_id, tree_size))
    if node.witness is None:
        raise Conflict("this node runs alone: one signature", code="NOT_ENOUGH_SIGNATURES")
    note = node.witness.cosigned(signatures)
    size = int(note.split("\n")[1])
    answer = node.ledger.tx_proof(tx_id, size)
    answer["checkpoint"] = note
    return _json(answer)
