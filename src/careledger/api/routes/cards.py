"""SMART Health Cards: the patient asks for one, lists and revokes them; any verifier fetches
the issuer's keys and revocation list (no account, any origin). See health/health_cards.py."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of
from careledger.api.routes.smart import origin_of
from careledger.errors import ValidationError
from careledger.health.health_cards import HealthCards
from careledger.jsonio import dumps

router = APIRouter(tags=["health cards"])
ID = r"^[A-Za-z0-9\-.]{1,64}$"
CARD = r"^[0-9a-f]{32}$"
KID = r"^[A-Za-z0-9_-]{43}$"
PUBLIC = {"access-control-allow-origin": "*", "cache-control": "max-age=60"}


def _cards(request: Request) -> HealthCards:
    cards: HealthCards = request.app.state.health_cards
    return cards


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


@router.post("/v1/patients/{patient}/cards", status_code=201,
             summary="A SMART Health Card of your immunizations or lab results")  # fmt: skip
async def issue(
    request: Request, claims: MemberDep, patient: Annotated[str, Path(pattern=ID)]
) -> Response:
    try:
        raw = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raw = None
    if not isinstance(raw, dict) or set(raw) - {"kind"}:
        raise ValidationError('send {"kind": "immunizations" or "lab-results"}',
                              code="BAD_CARD")  # fmt: skip
    card = await run_in_threadpool(  # an ES256 signature per try and a commit: off the loop
        _cards(request).issue, caller_of(claims), patient, str(raw.get("kind")),
        origin_of(request),
    )  # fmt: skip
    return _json(card, 201, {"cache-control": "no-store"})


@router.get("/v1/patients/{patient}/cards", summary="Your SMART Health Cards")
def listing(
    request: Request, claims: MemberDep, patient: Annotated[str, Path(pattern=ID)]
) -> Response:
    return _json({"patient": patient, "cards": _cards(request).cards(caller_of(claims), patient)})


@router.delete("/v1/patients/{patient}/cards/{card}", summary="Revoke a SMART Health Card")
async def revoke(
    request: Request,
    claims: MemberDep,
    patient: Annotated[str, Path(pattern=ID)],
    card: Annotated[str, Path(pattern=CARD)],
) -> Response:
    try:
        raw = orjson.loads(await request.body() or b"null")
    except orjson.JSONDecodeError:
        raise ValidationError("the body is not JSON", code="BAD_REQUEST") from None
    envelope = raw.get("envelope") if isinstance(raw, dict) else None
    receipt = await run_in_threadpool(
        _cards(request).revoke, caller_of(claims), patient, card, envelope
    )
    return _json({"card": card, "status": "revoked", "receipt": receipt})


@router.get("/shc/{org}/.well-known/jwks.json", summary="A card issuer's public keys")
def jwks(request: Request, org: Annotated[str, Path(pattern=ID)]) -> Response:
    return _json(_cards(request).jwks(org), headers=PUBLIC)


@router.get("/shc/{org}/.well-known/crl/{kid}.json", summary="A card issuer's revocation list")
def revocations(
    request: Request,
    org: Annotated[str, Path(pattern=ID)],
    kid: Annotated[str, Path(pattern=KID)],
) -> Response:
    return _json(_cards(request).revocations(org, kid), headers=PUBLIC)
