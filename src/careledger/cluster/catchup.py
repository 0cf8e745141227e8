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

import httpx

from careledger.contracts.identity import member_of, node_of, org_ids
from careledger.core.checkpoint import format_vkey, parse_checkpoint, parse_vkey, verify_note
from careledger.core.keys import b64url_encode, decode_public_key
from careledger.core.tx import check_signature
from careledger.errors import CareLedgerError, VerificationError
from careledger.ledger.engine import Ledger

log = logging.getLogger("careledger.catchup")


def peer_urls(ledger: Ledger, orgs: Sequence[str], own_org: str) -> list[str]:
    """Endpoints of the other organisations' registered, active nodes."""
    urls = []
    for org in orgs:
        if org == own_org:
            continue
        entry = node_of(ledger.state, org)
        if entry is not None and entry.get("status") == "active":
            urls.append(str(entry["endpoint"]).rstrip("/"))
    return urls


def node_vkeys(ledger: Ledger) -> list[str]:
    out = []
    for org in org_ids(ledger.state):
        entry = node_of(ledger.state, org)
        if entry is None or entry.get("status") != "active":
            continue
        member = member_of(ledger.state, entry["member"])
        if member is not None:
            out.append(format_vkey(member["id"], decode_public_key(member["key"])))
    return out


def _login(http: httpx.Client, ledger: Ledger) -> str:
    challenge = http.post("/v1/auth/challenge").json()
    signature = b64url_encode(ledger.node_key.sign(str(challenge["message"]).encode()))
    answer = http.post(
        "/v1/auth/token",
        json={
            "public_key": ledger.node_key.public_b64,
            "challenge": challenge["challenge"],
            "signature": signature,
        },
    )
    if answer.status_code != 200:
        raise VerificationError(f"the peer refused this node's sign-in: {answer.text[:200]}")
    return str(answer.json()["access_token"])


def catch_up(ledger: Ledger, peer: str, *, min_signatures: int, timeout: float = 30) -> None:
    """Replay the peer's blocks up to its newest checkpoint that ``min_signatures`` node
    members of this chain cosigned (their keys as this node knows them), each block only if
    every signature verifies and it re-executes here to the peer's header hash."""
    verifiers = [parse_vkey(v) for v in node_vkeys(ledger)]
    with httpx.Client(base_url=peer, timeout=timeout) as http:
        # Block envelopes are for members: this node signs in at the peer with its own key.
        http.headers["authorization"] = f"Bearer {_login(http, ledger)}"
        note = http.get("/v1/checkpoint", params={"signatures": min_signatures}).text
        body, signers = verify_note(note, verifiers, min_signatures=min_signatures)
        checkpoint = parse_checkpoint(body)
        start = ledger.head.height + 1
        height = start
        while ledger.head.log_size < checkpoint.size:
            block = http.get(f"/v1/blocks/{height}").json()
            txs = []
            for item in block["transactions"]:
                tx = ledger.decode(item["envelope"])
                check_signature(tx)  # a peer may not slip in what nobody signed
                txs.append(tx)
            ledger.commit(txs, int(block["header"]["time"]), expect_hash=str(block["hash"]))
            height += 1
    if checkpoint.size > ledger.head.log_size or ledger.root(checkpoint.size) != checkpoint.root:
        raise VerificationError(
            f"{peer}'s cosigned checkpoint does not match the replayed log", code="PEER_FORK"
        )
    log.info(
        "caught up %d blocks from %s to checkpoint %d, cosigned by %s",
        height - start,
        peer,
        checkpoint.size,
        ", ".join(signers),
    )


def catch_up_from_any(ledger: Ledger, own_org: str, *, min_signatures: int) -> None:
    errors = []
    for peer in peer_urls(ledger, org_ids(ledger.state), own_org):
        try:
            catch_up(ledger, peer, min_signatures=min_signatures)
            return
        except (CareLedgerError, httpx.HTTPError, KeyError, ValueError) as exc:
            errors.append(f"{peer}: {exc}")
            log.warning("catch-up from %s failed: %s", peer, exc)
    raise CareLedgerError(
        "no peer could bring this node up to date: " + "; ".join(errors or ["no peers"]),
        code="CATCHUP_FAILED",
    )
