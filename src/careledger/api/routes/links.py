"""SMART Health Links: the patient makes, lists and revokes them (/v1/patients/{id}/links); a
recipient anywhere opens them (/shl/..., no account, any origin). See health/share_links.py."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from careledger.api.deps import MemberDep
from careledger.api.replies import caller_of
from careledger.api.routes.smart import origin_of
from careledger.clock import Clock
from careledger.errors import CareLedgerError, RateLimited, ValidationError
from careledger.health.share_links import Selection, ShareLinks, WrongPasscode
from careledger.jsonio import dumps

router = APIRouter(tags=["health links"])
ID = r"^[A-Za-z0-9\-.]{1,64}$"
LINK = r"^[0-9a-f]{64}$"
URL_SEGMENT = r"^[A-Za-z0-9_-]{1,128}$"  # a link or file URL's token (43 chars when ours)
MAX_BODY = 4096
CORS = {"access-control-allow-origin": "*", "access-control-allow-headers": "content-type",
        "access-control-allow-methods": "GET, POST, OPTIONS",
        "access-control-expose-headers": "retry-after"}  # fmt: skip
NO_STORE = {"cache-control": "no-store"}


def _links(request: Request) -> ShareLinks:
    links: ShareLinks = request.app.state.share_links
    return links


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json",
                    headers=headers)  # fmt: skip


async def _body(request: Request) -> Any:
    """The JSON body (None when empty); 400 for anything else than JSON."""
    raw = await request.body()
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise ValidationError("the body is not JSON", code="BAD_REQUEST") from None


def _clock(request: Request) -> Clock:
    clock: Clock = request.app.state.services.clock
    return clock


def _expiry(raw: dict[str, Any], clock: Clock) -> int | None:
    """``expires`` (an ISO date-time, or seconds since the epoch) or ``expires_in_days``
    (counted from ``clock``'s now)."""
    if raw.get("expires_in_days") is not None:
        days = raw["expires_in_days"]
        if type(days) is not int or not 1 <= days <= 366:
            raise ValidationError("expires_in_days: 1 to 366", code="BAD_EXPIRY")
        return int(clock.time()) + days * 86_400
    value = raw.get("expires")
    if value is None:
        return None
    if type(value) is int:
        return value
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise ValidationError("expires: an ISO date-time", code="BAD_EXPIRY") from None
    if moment.tzinfo is None:
        raise ValidationError("expires: give a time zone", code="BAD_EXPIRY")
    return int(moment.timestamp())


@router.post("/v1/patients/{patient}/links", status_code=201,
             summary="Make a SMART Health Link to share some of your records")  # fmt: skip
async def create(
    request: Request, claims: MemberDep, patient: Annotated[str, Path(pattern=ID)]
) -> Response:
    raw = await _body(request)
    if not isinstance(raw, dict):
        raise ValidationError("send a JSON object", code="BAD_REQUEST")
    known = {"types", "summary", "since", "until", "long_term", "passcode", "direct", "expires",
             "expires_in_days", "label", "key", "envelope", "viewer", "prepare"}  # fmt: skip
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValidationError(f"unknown field {unknown[0]!r}", code="BAD_REQUEST")
    types = raw.get("types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ValidationError("types: a list of FHIR resource types", code="BAD_SELECTION")
    for name in ("summary", "long_term", "direct", "prepare"):
        if not isinstance(raw.get(name, False), bool):
            raise ValidationError(f"{name}: true or false", code="BAD_REQUEST")
    for name in ("since", "until", "passcode", "label", "key", "viewer"):
        if raw.get(name) is not None and not isinstance(raw[name], str):
            raise ValidationError(f"{name}: a string", code="BAD_REQUEST")
    if raw.get("expires_in_days") is not None and (raw.get("prepare") or raw.get("envelope")):
        why = "a signed link needs an absolute expires: expires_in_days changes between calls"
        raise ValidationError(why, code="BAD_EXPIRY")
    passcode = raw.get("passcode") or None
    flags = ("L" if raw.get("long_term") else "") + ("P" if passcode else "") + (
        "U" if raw.get("direct") else ""
    )
    if "P" in flags and "U" in flags:
        raise ValidationError("a direct-file link cannot have a passcode (the spec)",
                              code="BAD_FLAGS")  # fmt: skip
    selection = Selection(tuple(sorted(set(types))), bool(raw.get("summary")),
                          raw.get("since"), raw.get("until"))  # fmt: skip
    expires = _expiry(raw, _clock(request))
    made = await run_in_threadpool(  # scrypt and a ledger commit: off the event loop
        _links(request).create, caller_of(claims), patient, origin=origin_of(request),
        selection=selection, flags=flags, passcode=passcode, expires=expires,
        label=raw.get("label"), key=raw.get("key"), envelope=raw.get("envelope"),
        viewer=raw.get("viewer"), prepare=bool(raw.get("prepare")),
    )  # fmt: skip
    return _json(made, 200 if raw.get("prepare") else 201, NO_STORE)


@router.get("/v1/patients/{patient}/links", summary="Your SMART Health Links")
def listing(
    request: Request, claims: MemberDep, patient: Annotated[str, Path(pattern=ID)]
) -> Response:
    links = _links(request).links(caller_of(claims), patient)
    return _json({"patient": patient, "links": links})


@router.delete("/v1/patients/{patient}/links/{link}", summary="Revoke a SMART Health Link")
async def revoke(
    request: Request,
    claims: MemberDep,
    patient: Annotated[str, Path(pattern=ID)],
    link: Annotated[str, Path(pattern=LINK)],
) -> Response:
    raw = await _body(request)
    envelope = raw.get("envelope") if isinstance(raw, dict) else None
    receipt = await run_in_threadpool(
        _links(request).revoke, caller_of(claims), patient, link, envelope
    )
    return _json({"link": link, "status": "revoked", "receipt": receipt})


# -- the recipient's side: no account, any origin (the spec's receivers are web apps too) -----


@router.options("/shl/{token}", include_in_schema=False)
@router.options("/shl/file/{token}", include_in_schema=False)
def preflight(token: str) -> Response:
    return Response(status_code=204, headers=CORS)


def _spec_error(exc: CareLedgerError) -> Response:
    """The spec's answers: 401 with the attempts left for a wrong passcode, 404 for a link
    that does not exist or no longer works (which are not told apart), 400 otherwise."""
    if isinstance(exc, WrongPasscode):
        return _json({"remainingAttempts": exc.remaining}, 401, CORS)
    if isinstance(exc, RateLimited):
        return _json({"error": exc.message, "code": exc.code}, 429,
                     {**CORS, "retry-after": str(exc.retry_after)})  # fmt: skip
    status = 404 if exc.code == "LINK_INACTIVE" else 400
    return _json({"error": exc.message, "code": exc.code}, status,
                 {**CORS, "x-careledger-code": exc.code})  # fmt: skip


@router.post("/shl/{token}", summary="A SMART Health Link's manifest (POST recipient, passcode)")
async def manifest(request: Request, token: Annotated[str, Path(pattern=URL_SEGMENT)]) -> Response:
    body = await request.body()
    if len(body) > MAX_BODY:
        return _json({"error": "the request is too large", "code": "TOO_LARGE"}, 413, CORS)
    try:
        try:  # orjson: a deeply nested document is a 400, never a RecursionError
            raw = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ValidationError("send JSON", code="BAD_REQUEST") from None
        if not isinstance(raw, dict):
            raise ValidationError("send a JSON object with recipient", code="BAD_REQUEST")
        # scrypt, decryption and the ledger commit on a worker thread: never the event loop
        answer = await run_in_threadpool(
            _links(request).manifest, token, raw, origin_of(request)
        )
    except CareLedgerError as exc:
        return _spec_error(exc)
    return _json(answer, 200, {**CORS, **NO_STORE})


@router.get("/shl/{token}", summary="A direct-file (U) SMART Health Link's file")
def direct(
    request: Request,
    token: Annotated[str, Path(pattern=URL_SEGMENT)],
    recipient: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    try:
        sealed = _links(request).direct(token, recipient, origin_of(request))
    except CareLedgerError as exc:
        return _spec_error(exc)
    return Response(sealed, media_type="application/jose", headers={**CORS, **NO_STORE})


@router.get("/shl/file/{token}", summary="A SMART Health Link file (location URL, one hour)")
def location(request: Request, token: Annotated[str, Path(pattern=URL_SEGMENT)]) -> Response:
    try:
        sealed = _links(request).location(token)
    except CareLedgerError as exc:
        return _spec_error(exc)
    return Response(sealed, media_type="application/jose", headers={**CORS, **NO_STORE})
