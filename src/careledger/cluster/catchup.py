"""Catching up from a peer when the stream no longer holds what this node missed.

The stream keeps every batch by default; with a retention limit a node that was down long
enough finds the batches it needs gone. It then takes the blocks from a peer's block API and
re-executes each one itself: a block is accepted only if this node derives the very header
hash the peer served. At the end the peer's checkpoint must carry the signatures of at least
``min_signatures`` node members of this chain (so one lying peer cannot feed a fork), and its
root must be this node's root at that size. Then consumption resumes at the peer's sequence.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import httpx

from careledger.contracts.identity import NAMESPACE as IDENTITY
from careledger.contracts.identity import member_key, node_key
from careledger.core.checkpoint import format_vkey, parse_checkpoint, parse_vkey, verify_note
from careledger.core.keys import decode_public_key
from careledger.errors import CareLedgerError, VerificationError
from careledger.ledger.engine import Ledger

log = logging.getLogger("careledger.catchup")


def peer_urls(ledger: Ledger, orgs: Sequence[str], own_org: str) -> list[str]:
    """Endpoints of the other organisations' registered, active nodes."""
    urls = []
    for org in orgs:
        if org == own_org:
            continue
        entry = ledger.state(IDENTITY, node_key(org))
        if entry is not None and entry.get("status") == "active":
            urls.append(str(entry["endpoint"]).rstrip("/"))
    return urls


def node_vkeys(ledger: Ledger) -> list[str]:
    out = []
    for org in ledger.state(IDENTITY, "orgs") or []:
        entry = ledger.state(IDENTITY, node_key(org))
        if entry is None or entry.get("status") != "active":
            continue
        member = ledger.state(IDENTITY, member_key(entry["member"]))
        if member is not None:
            out.append(format_vkey(member["id"], decode_public_key(member["key"])))
    return out


def catch_up(ledger: Ledger, peer: str, *, min_signatures: int, timeout: float = 30) -> int:
    """Replay the peer's blocks past this node's head; the stream sequence to resume after."""
    with httpx.Client(base_url=peer, timeout=timeout) as http:
        status: dict[str, Any] = http.get("/v1/cluster").json()
        target, seq = int(status["applied_height"]), int(status["applied_seq"])
        start = ledger.head.height + 1
        for height in range(start, target + 1):
            block = http.get(f"/v1/blocks/{height}").json()
            txs = [ledger.decode(t["envelope"]) for t in block["transactions"]]
            time_ms = int(block["header"]["time"])
            executed = ledger.commit(txs, time_ms)
            derived = None if executed is None else executed.block.header_hash
            if derived != block["hash"]:
                raise VerificationError(
                    f"block {height} from {peer} does not re-execute to its header",
                    code="PEER_FORK",
                )
        note = http.get("/v1/checkpoint", params={"signatures": min_signatures}).text
    verifiers = [parse_vkey(v) for v in node_vkeys(ledger)]
    body, signers = verify_note(note, verifiers, min_signatures=min_signatures)
    checkpoint = parse_checkpoint(body)
    if checkpoint.size > ledger.head.log_size or ledger.root(checkpoint.size) != checkpoint.root:
        raise VerificationError(
            f"{peer}'s cosigned checkpoint does not match the replayed log", code="PEER_FORK"
        )
    log.info(
        "caught up %d blocks from %s; checkpoint %d cosigned by %s",
        target - start + 1,
        peer,
        checkpoint.size,
        ", ".join(signers),
    )
    return seq


def catch_up_from_any(ledger: Ledger, own_org: str, *, min_signatures: int) -> int:
    errors = []
    for peer in peer_urls(ledger, ledger.state(IDENTITY, "orgs") or [], own_org):
        try:
            return catch_up(ledger, peer, min_signatures=min_signatures)
        except (CareLedgerError, httpx.HTTPError, KeyError, ValueError) as exc:
            errors.append(f"{peer}: {exc}")
            log.warning("catch-up from %s failed: %s", peer, exc)
    raise CareLedgerError(
        "no peer could bring this node up to date: " + "; ".join(errors or ["no peers"]),
        code="CATCHUP_FAILED",
    )
