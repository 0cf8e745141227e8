"""Who may read what of the ledger over the API (ADR 0012, replacing ADR 0004).

Public, for transparency: block headers, transaction ids, receipts (the Merkle log's leaves),
inclusion and consistency proofs, checkpoints and their keys. Everything else names patients by
pseudonym (consents, access events, alert rules and times, anchors) and needs a member token:
- oversight (a node, or an organisation's admin or auditor): envelopes, state, events, members,
  as every node of the consortium holds them anyway;
- any other member: the envelopes of transactions it signed, and of transactions that name it
  as the patient (so a patient verifies their own records' and readings' anchors).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials

from careledger.api.deps import IssuerDep, NodeDep, _bearer, get_member
from careledger.callers.tokens import TokenClaims
from careledger.errors import Forbidden, Unauthorized

OVERSIGHT_ROLES = frozenset({"node", "admin", "auditor"})


async def optional_member(
    request: Request,
    node: NodeDep,
    issuer: IssuerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenClaims | None:
    """The member behind a bearer token, or None without one (a bad token is still refused)."""
    if credentials is None:
        return None
    return get_member(request, node, issuer, credentials)


ReaderDep = Annotated[TokenClaims | None, Depends(optional_member)]


def is_oversight(reader: TokenClaims | None) -> bool:
    return reader is not None and bool(OVERSIGHT_ROLES & set(reader.roles))


def require_oversight(reader: TokenClaims | None, what: str) -> None:
    if reader is None:
        raise Unauthorized(
            f"{what} name patients by pseudonym: sign in as a node, admin or auditor",
            code="TOKEN_REQUIRED",
        )
    if not is_oversight(reader):
        raise Forbidden(
            f"{what} are for nodes and organisations' admins and auditors", code="NOT_AUTHORISED"
        )


def may_read_envelope(reader: TokenClaims | None, envelope: Mapping[str, Any]) -> bool:
    if reader is None:
        return False
    if is_oversight(reader):
        return True
    body = envelope.get("body") or {}
    return body.get("signer") == reader.public_key or reader.member in _patients_named(
        body.get("args")
    )


def _patients_named(args: object) -> set[str]:
    """Pseudonyms an envelope's arguments name as ``patient`` (top level, nested calls of
    ``on_behalf``, and each anchor of a batch)."""
    found: set[str] = set()
    stack = [args]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            patient = item.get("patient")
            if isinstance(patient, str):
                found.add(patient)
            stack.extend(v for k, v in item.items() if k in ("args", "anchors", "windows"))
        elif isinstance(item, list):
            stack.extend(item)
    return found
