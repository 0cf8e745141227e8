"""Request bodies are limited while they stream, before any route buffers them.

A route that reads ``await request.body()`` first and checks the size afterwards has already
held the whole body in memory (an attack buffered 400-600 MiB on two routes before they refused).
This ASGI middleware refuses a declared ``Content-Length`` over the path's limit at once, and
counts the bytes of a chunked body as they arrive, answering 413 ``REQUEST_TOO_LARGE`` the moment
the limit is passed; whatever the route would have answered is dropped.
"""

from __future__ import annotations

from collections.abc import Sequence

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from careledger.api.errors import fhir_outcome, problem

KIB = 1024
MIB = 1024 * KIB
LIMITS: Sequence[tuple[str, int]] = (
    ("/v1/federation", 64 * KIB),
    ("/v1/tx", 64 * MIB),
    ("/fhir", 64 * MIB),
    ("/epcis", 16 * MIB),
    ("/v1/devices", 4 * MIB),
    ("/v1/", 1 * MIB),
)
PORTAL_LIMIT = 64 * KIB  # portal forms, /session: small by nature


def limit_for(path: str) -> int:
    for prefix, limit in LIMITS:
        if path == prefix or path.startswith(prefix + "/") or path.startswith(prefix + "?"):
            return limit
        if prefix.endswith("/") and path.startswith(prefix):
            return limit
    return PORTAL_LIMIT


class _TooLarge(Exception):
    pass


class BodyLimit:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = limit_for(path)
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await _refuse(path, limit, scope, receive, send)
            return
        received = 0
        refused = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, refused
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    refused = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if refused:
                return  # the route's own answer to a body it never fully got
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        except Exception:
            if not refused:
                raise
        if refused and not started:
            await _refuse(path, limit, scope, receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _refuse(path: str, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
    detail = f"the request body exceeds this route's limit of {limit} bytes"
    if path.startswith("/fhir"):
        response = fhir_outcome(413, "REQUEST_TOO_LARGE", detail)
    else:
        response = problem(413, "REQUEST_TOO_LARGE", detail, limit=limit)
    response.headers["Connection"] = "close"
    await response(scope, receive, send)
