"""Server-sent events of committed blocks, resumable by height (or Last-Event-ID)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Annotated

import orjson
from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import NodeDep
from careledger.api.ledger_reads import ReaderDep, require_oversight
from careledger.errors import ValidationError
from careledger.jsonio import dumps
from careledger.node import Node

router = APIRouter(tags=["events"])
KEEPALIVE_SECONDS = 15.0


class BlockSignal:
    """Wakes every waiting stream when a block commits (set from the committer thread)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.event = asyncio.Event()

    def pulse_threadsafe(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._pulse)

    def _pulse(self) -> None:
        old, self.event = self.event, asyncio.Event()
        old.set()


async def follow_blocks(
    request: Request,
    node: Node,
    signal: BlockSignal,
    start: int,
    frames: Callable[[int], list[bytes]],
    *,
    follow: bool = True,
) -> AsyncIterator[bytes]:
    """Server-sent frames of each committed block from ``start`` on, then of each new one as it
    commits (keepalives between), until the client goes or, without ``follow``, the head."""
    height = start
    while True:
        waiter = signal.event
        head = node.ledger.head.height
        while height <= head:
            for frame in await run_in_threadpool(frames, height):
                yield frame
            height += 1
        if not follow or await request.is_disconnected():
            return
        try:
            await asyncio.wait_for(waiter.wait(), KEEPALIVE_SECONDS)
        except TimeoutError:
            yield b": keepalive\n\n"


BLOCK_DONE = "b"


def _parse_last_event_id(value: str) -> tuple[int, int]:
    """(height to start at, last seq seen there); ``H:b`` means block H was fully seen."""
    try:
        height, seq = value.split(":")
        if seq == BLOCK_DONE:
            return int(height) + 1, -1
        return int(height), int(seq)
    except ValueError:
        raise ValidationError("Last-Event-ID must be HEIGHT:SEQ", code="BAD_EVENT_ID") from None


def _block_frames(node: Node, height: int, after_seq: int) -> list[bytes]:
    store = node.ledger.store
    header_hash = store.header_hash(height)
    txs = store.block_txs(height)
    frames = []
    for event in store.block_events(height):
        if event.seq <= after_seq:
            continue
        data = {
            "height": height,
            "seq": event.seq,
            "tx_id": txs[event.tx_index].tx_id if event.tx_index < len(txs) else None,
            "type": event.type,
            "data": orjson.loads(event.data),
        }
        frames.append(
            b"id: %d:%d\nevent: %s\ndata: %s\n\n"
            % (height, event.seq, event.type.encode(), dumps(data))
        )
    block = {"height": height, "hash": header_hash, "tx_count": len(txs)}
    frames.append(b"id: %d:b\nevent: block\ndata: %s\n\n" % (height, dumps(block)))
    return frames


@router.get("/v1/events", summary="Committed events as server-sent events")
async def events(
    request: Request,
    node: NodeDep,
    reader: ReaderDep,
    from_height: Annotated[int, Query(ge=0)] = 0,
    follow: Annotated[bool, Query(description="keep streaming new blocks")] = True,
    last_event_id: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    require_oversight(reader, "ledger events")
    start, after_seq = from_height, -1
    if last_event_id:
        start, after_seq = _parse_last_event_id(last_event_id)
    signal: BlockSignal = request.app.state.block_signal
    skip = after_seq

    def frames(height: int) -> list[bytes]:
        nonlocal skip
        out, skip = _block_frames(node, height, skip), -1  # a seq only skips in the first block
        return out

    stream = follow_blocks(request, node, signal, start, frames, follow=follow)
    return StreamingResponse(stream, media_type="text/event-stream")
