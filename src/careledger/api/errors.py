"""Map the CareLedgerError tree to HTTP: status plus an ``application/problem+json`` body."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from careledger.errors import BatchRefused, CareLedgerError, RateLimited
from careledger.fhir.outcome import FhirError
from careledger.jsonio import dumps

log = logging.getLogger("careledger.api")
PROBLEM = "application/problem+json"


def problem(status: int, code: str, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": code, "status": status, "code": code, "detail": detail}
    body.update(extra)
    return Response(dumps(body), status_code=status, media_type=PROBLEM)


# FHIR IssueType for each HTTP status we answer with.
_ISSUE_TYPES = {
    400: "invalid",
    401: "login",
    403: "forbidden",
    404: "not-found",
    409: "conflict",
    410: "deleted",
    412: "conflict",
    413: "too-costly",
    406: "not-supported",
    405: "not-supported",
    422: "processing",
    503: "transient",
}


def fhir_outcome(
    status: int, code: str, detail: str, issues: list[dict[str, Any]] | None = None
) -> Response:
    """An OperationOutcome for /fhir routes; our stable code travels in ``details.coding``."""
    body = {
        "resourceType": "OperationOutcome",
        "issue": issues
        or [
            {
                "severity": "error",
                "code": _ISSUE_TYPES.get(status, "exception"),
                "details": {"coding": [{"system": "https://careledger.dev/codes", "code": code}]},
                "diagnostics": detail,
            }
        ],
    }
    return Response(
        dumps(body),
        status_code=status,
        media_type="application/fhir+json",
        headers={"X-CareLedger-Code": code},
    )


# FHIR's own status for some of our codes (http://hl7.org/fhir/R4/http.html): an erased
# resource is Gone, a stale If-Match is a failed precondition.
FHIR_STATUS = {"RECORD_SHREDDED": 410}


def _plain(status: int) -> str:
    return {
        404: "There is no page at this address.",
        405: "This page cannot be used that way.",
    }.get(status, "The request could not be answered.")


def _allowed(request: Request) -> list[str]:
    """The methods some route takes at this request's path."""
    methods = set()
    for route in request.app.router.routes:
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            match, _ = route.matches({**request.scope, "method": method})
            if match == Match.FULL:
                methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


# Paths of the machine interfaces: everything else is the portal, whose errors a browser sees.
_MACHINE_PATHS = ("/v1", "/fhir", "/epcis", "/.well-known", "/docs", "/openapi", "/redoc",
                  "/session", "/static", "/metrics", "/healthz", "/auth/token",
                  "/auth/introspect", "/auth/revoke")  # fmt: skip


def _portal_page(request: Request, status: int, code: str, message: str) -> Response | None:
    """The portal's error page, when a browser asked for a portal page (else None)."""
    render = getattr(request.app.state, "error_page", None)
    path = request.url.path
    if render is None or path.startswith(_MACHINE_PATHS) or request.headers.get("hx-request"):
        return None
    if "text/html" not in request.headers.get("accept", ""):
        return None
    response: Response = render(request, status, code, message)
    return response


def _challenge(request: Request, exc: CareLedgerError, response: Response) -> None:
    """401 says how to authenticate (RFC 6750 section 3): a bearer token, and why this one
    was refused when one was sent."""
    if exc.http_status != 401:
        return
    value = 'Bearer realm="careledger"'
    if request.headers.get("authorization", "").lower().startswith("bearer "):
        reason = exc.message.replace('"', "'")
        value += f', error="invalid_token", error_description="{reason}"'
    response.headers["WWW-Authenticate"] = value


def _is_fhir(request: Request) -> bool:
    return request.url.path.startswith("/fhir")


def install(app: FastAPI) -> None:
    @app.exception_handler(CareLedgerError)
    async def _careledger(request: Request, exc: CareLedgerError) -> Response:
        if exc.http_status >= 500:
            log.error("request failed: %s (%s)", exc.code, exc.message)
        shown = _portal_page(request, exc.http_status, exc.code, exc.message)
        if shown is not None:
            return shown
        if _is_fhir(request):
            status = FHIR_STATUS.get(exc.code, exc.http_status)
            issues = None
            if isinstance(exc, FhirError):
                issues = [issue.to_json() for issue in exc.issues]
                for issue in issues:
                    issue.setdefault(
                        "details",
                        {"coding": [{"system": "https://careledger.dev/codes", "code": exc.code}]},
                    )
            response = fhir_outcome(status, exc.code, exc.message, issues)
            _challenge(request, exc, response)
            if isinstance(exc, RateLimited):
                response.headers["Retry-After"] = str(exc.retry_after)
            return response
        extra: dict[str, Any] = {}
        if isinstance(exc, BatchRefused):
            extra = {"errors": exc.errors, "refused": exc.total}
        receipt = getattr(exc, "receipt", None)
        if receipt is not None:
            extra["receipt"] = receipt
        extra.update(getattr(exc, "extra", None) or {})
        response = problem(exc.http_status, exc.code, exc.message, **extra)
        _challenge(request, exc, response)
        if isinstance(exc, RateLimited):
            response.headers["Retry-After"] = str(exc.retry_after)
        return response

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # Field locations and messages only: never echo the submitted values back.
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        if _is_fhir(request):
            where = "; ".join(".".join(e["loc"]) for e in errors)
            return fhir_outcome(400, "INVALID_REQUEST", f"invalid request parameters: {where}")
        return problem(400, "INVALID_REQUEST", "the request parameters are invalid", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        shown = _portal_page(request, exc.status_code, code, _plain(exc.status_code))
        if shown is not None:
            return shown
        if _is_fhir(request):
            response = fhir_outcome(exc.status_code, code, str(exc.detail))
        else:
            response = problem(exc.status_code, code, str(exc.detail))
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:  # every method some route takes at this path, not the first's
            response.headers["Allow"] = ", ".join(_allowed(request))
        return response

    @app.exception_handler(OverflowError)
    async def _overflow(request: Request, exc: OverflowError) -> Response:
        # An integer no store or encoder can hold (2^63 and above) is bad input, not a fault.
        if _is_fhir(request):
            return fhir_outcome(400, "OUT_OF_RANGE", "a number is out of range")
        return problem(400, "OUT_OF_RANGE", "a number is out of range")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return problem(500, "INTERNAL_ERROR", "the node failed to handle the request")
