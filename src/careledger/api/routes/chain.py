"""Blocks, checkpoints, consistency proofs and state: the ledger's provable reads.

Headers, receipts, proofs and checkpoints are public; what names patients needs a member token
(see api/ledger_reads.py and ADR 0012)."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query
from fastapi.responses import PlainTextResponse, Response

from careledger.api.deps import NodeDep
from careledger.api.ledger_reads import ReaderDep, may_read_envelope, require_oversight
from careledger.api.replies import json_response as _json
from careledger.errors import Conflict, NotFound, ValidationError
from careledger.ledger.views import members_view

router = APIRouter(tags=["ledger"])


@router.get("/v1/head", summary="The latest block header and its hash")
def head(node: NodeDep) -> Response:
    header = node.ledger.head
    return _json(
        {"height": header.height, "hash": node.ledger.head_hash, "header": header.to_json()}
    )


@router.get(
    "/v1/blocks/{height}",
    summary="A block header and its transactions (envelopes: see ADR 0012)",
)
def block(node: NodeDep, reader: ReaderDep, height: Annotated[int, Path(ge=0)]) -> Response:
    """Anyone sees the header and each transaction's id and receipt; an envelope only a member
    allowed to read it (oversight roles, its signer, the patient it names)."""
    store = node.ledger.store
    header = store.header(height)
    if header is None:
        raise NotFound(f"no block at height {height}", code="UNKNOWN_BLOCK")
    txs = []
    for tx in store.block_txs(height):
        item: dict[str, Any] = {
            "tx_id": tx.tx_id,
            "leaf_index": tx.leaf_index,
            "receipt": orjson.loads(tx.receipt),
        }
        if reader is not None:
            envelope = orjson.loads(tx.envelope)
            if may_read_envelope(reader, envelope):
                item["envelope"] = envelope
        txs.append(item)
    return _json(
        {
            "height": height,
            "hash": store.header_hash(height),
            "header": header.to_json(),
            "transactions": txs,
        }
    )


@router.get("/v1/checkpoint", response_class=PlainTextResponse, summary="Signed tree head (C2SP)")
def checkpoint(
    node: NodeDep,
    tree_size: Annotated[int | None, Query(gt=0)] = None,
    signatures: Annotated[int, Query(ge=1, le=64, description="cosigners required")] = 1,
) -> str:
    """The checkpoint; with ``signatures=K``, the newest one K organisations' nodes signed."""
    if signatures > 1:
        if node.witness is None:
            raise Conflict(
                "this node runs alone: its checkpoints carry one signature",
                code="NOT_ENOUGH_SIGNATURES",
            )
        return node.witness.cosigned(signatures)
    return node.ledger.checkpoint(tree_size)


@router.get("/v1/checkpoint/keys", response_class=PlainTextResponse, summary="Note verifier keys")
def checkpoint_keys(node: NodeDep) -> str:
    return node.ledger.verifier_key() + "\n"


@router.get("/v1/proof/consistency", summary="RFC 9162 consistency proof between two tree sizes")
def consistency(
    node: NodeDep,
    first: Annotated[int, Query(gt=0)],
    second: Annotated[int, Query(gt=0)],
) -> Response:
    return _json(node.ledger.consistency(first, second))


@router.get("/v1/state/{contract}/{key:path}", summary="A contract's current value for a key")
def state(node: NodeDep, reader: ReaderDep, contract: str, key: str) -> Response:
    require_oversight(reader, "ledger state values")
    if len(key) > 512 or len(contract) > 64:
        raise ValidationError("contract or key too long", code="BAD_KEY")
    value = node.ledger.state(contract, key)
    if value is None:
        raise NotFound(f"no value for {contract}/{key}", code="UNKNOWN_KEY")
    return _json(
        {"contract": contract, "key": key, "value": value, "height": node.ledger.head.height}
    )


@router.get("/v1/members", summary="The chain's members, their organisations, roles and keys")
def members(node: NodeDep, reader: ReaderDep) -> Response:
    require_oversight(reader, "the member list (patients among them)")
    return _json(members_view(node.ledger))
