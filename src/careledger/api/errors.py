"""Map the CareLedgerError tree to HTTP: status plus an ``application/problem+json`` body."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from careledger.errors import BatchRefused, CareLedgerError
from careledger.jsonio import dumps

log = logging.getLogger("careledger.api")
PROBLEM = "application/problem+json"


def problem(status: int, code: str, detail: str, **extra: Any) -> Response:
    body = {"type": "about:blank", "title": code, "status": status, "code": code, "detail": detail}
    body.update(extra)
    return Response(dumps(body), status_code=status, media_type=PROBLEM)


def install(app: FastAPI) -> None:
    @app.exception_handler(CareLedgerError)
    async def _careledger(_: Request, exc: CareLedgerError) -> Response:
        extra: dict[str, Any] = {}
        if isinstance(exc, BatchRefused):
            extra = {"errors": exc.errors, "refused": exc.total}
        receipt = getattr(exc, "receipt", None)
        if receipt is not None:
            extra["receipt"] = receipt
        if exc.http_status >= 500:
            log.error("request failed: %s (%s)", exc.code, exc.message)
        return problem(exc.http_status, exc.code, exc.message, **extra)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> Response:
        # Field locations and messages only: never echo the submitted values back.
        errors = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        return problem(400, "INVALID_REQUEST", "the request parameters are invalid", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}.get(exc.status_code, "HTTP_ERROR")
        return problem(exc.status_code, code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        log.exception("unexpected error")
        return problem(500, "INTERNAL_ERROR", "the node failed to handle the request")
