"""Request dependencies: the node, and the authenticated member behind a bearer token."""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from careledger.callers.caller import SYSTEM
from careledger.callers.scopes import default_scopes, parse_scopes
from careledger.callers.tokens import TokenClaims, TokenIssuer, scope_within
from careledger.contracts.apps import app_of
from careledger.errors import CareLedgerError, Forbidden, Unauthorized
from careledger.node import Node

_bearer = HTTPBearer(auto_error=False)


def get_node(request: Request) -> Node:
    node: Node = request.app.state.node
    return node


def get_issuer(request: Request) -> TokenIssuer:
    issuer: TokenIssuer = request.app.state.issuer
    return issuer


# The dependencies are async: FastAPI runs a plain ``def`` dependency on the thread pool, a
# hand-off of about 150 µs of CPU each, four of them per request; their work is short (a
# remembered token, the ledger's cached signer) and runs on the event loop instead.


async def _node(request: Request) -> Node:
    return get_node(request)


async def _issuer(request: Request) -> TokenIssuer:
    return get_issuer(request)


NodeDep = Annotated[Node, Depends(_node)]
IssuerDep = Annotated[TokenIssuer, Depends(_issuer)]


APP_PATHS = ("/fhir/", "/fhir?")


def get_member(
    request: Request,
    node: NodeDep,
    issuer: IssuerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenClaims:
    """The token's member, re-checked against the ledger so a revoked key's token dies at once.
    A token issued to a SMART app is for the FHIR API only: its scopes say nothing about the
    rest (registering apps, payments, devices), so it opens none of it."""
    if credentials is None:
        raise Unauthorized("a bearer token is required", code="TOKEN_REQUIRED")
    claims = current_claims(node, issuer.verify(credentials.credentials))
    if claims.app is not None and not (request.url.path + "?").startswith(APP_PATHS):
        raise Forbidden("a token issued to an app is for the FHIR API (/fhir) only", code="SCOPE")
    return claims


def current_claims(node: Node, claims: TokenClaims) -> TokenClaims:
    """A verified token's claims as the ledger has them now: the member's key still active,
    roles and organisation as they are, scopes cut to what the roles (and the app) allow;
    a token issued to an app dies with the app's suspension."""
    if claims.app is not None:
        app = app_of(node.ledger.state, claims.app)
        if app is None or app["status"] != "active":
            raise Unauthorized(
                "the app this token was issued to is suspended", code="APP_SUSPENDED"
            )
        registered = parse_scopes(app["scopes"])
        scopes = tuple(s for s in claims.scopes if any(scope_within(s, a) for a in registered))
        claims = replace(claims, scopes=scopes)
        if app["kind"] == "backend":
            if claims.member != app["client_id"]:
                raise Unauthorized("the token is not valid for this node", code="BAD_TOKEN")
            return replace(claims, org=app["org"], roles=(SYSTEM,))
    try:
        signer = node.ledger.signer(claims.public_key)
    except CareLedgerError:
        raise Unauthorized("the token's key is no longer active", code="TOKEN_REVOKED") from None
    if signer.member != claims.member:
        raise Unauthorized("the token's key belongs to another member", code="BAD_TOKEN")
    # Roles and organisation come from the ledger now, not from when the token was issued;
    # scopes are cut down to what the member's current roles allow.
    allowed = parse_scopes(default_scopes(signer.roles))
    scopes = tuple(s for s in claims.scopes if any(scope_within(s, a) for a in allowed))
    return replace(claims, org=signer.org, roles=tuple(sorted(signer.roles)), scopes=scopes)


async def _member(
    request: Request,
    node: NodeDep,
    issuer: IssuerDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> TokenClaims:
    return get_member(request, node, issuer, credentials)


MemberDep = Annotated[TokenClaims, Depends(_member)]
