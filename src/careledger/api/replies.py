"""What the API routes share: the authenticated caller, JSON replies, JSON object bodies."""

from __future__ import annotations

from typing import Any

from fastapi.responses import Response

from careledger.callers.caller import Caller
from careledger.callers.tokens import TokenClaims
from careledger.errors import ValidationError
from careledger.jsonio import dumps


def caller_of(claims: TokenClaims) -> Caller:
    """The member behind a checked token, as the services take it."""
    return Caller(
        claims.member,
        claims.org,
        frozenset(claims.roles),
        claims.scopes,
        app=claims.app,
        patient=claims.patient,
    )


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


def json_object(body: Any, what: str = "a JSON object") -> dict[str, Any]:
    """A request body that must be a JSON object (absent: an empty one)."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ValidationError(f"the body is {what}", code="BAD_REQUEST")
    return body
