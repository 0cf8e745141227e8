"""Cross-origin access for the browser apps registered on the ledger, and for no one else.

A SMART app running in a browser (SMART's JavaScript client) reads the discovery documents,
exchanges its code at the token endpoint and calls /fhir from its own origin. The origins
allowed are those of the redirect URIs of active apps on the ledger, read again whenever the
chain grows; no cookies are ever allowed cross-origin (the portal's session stays same-site).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from careledger.contracts.apps import APP_PREFIX
from careledger.contracts.apps import NAMESPACE as APPS

PATHS = ("/fhir", "/.well-known/", "/auth/token", "/auth/introspect", "/auth/revoke")
ALLOW_HEADERS = (
    "authorization, content-type, accept, prefer, if-match, if-none-match, if-none-exist, "
    "if-modified-since, x-purpose-of-use"
)
EXPOSE_HEADERS = (
    "location, content-location, etag, last-modified, retry-after, x-progress, "
    "www-authenticate, x-careledger-anchor-tx, x-careledger-leaf-index, x-careledger-salt"
)
MAX_APPS = 10_000


DEFAULT_PORTS = {"https": 443, "http": 80}


def origin_of(uri: str) -> str:
    """An origin as browsers send it: scheme and host, the port only when not the default."""
    parts = urlsplit(uri)
    host = (parts.hostname or "").lower()
    host = f"[{host}]" if ":" in host else host
    port = parts.port
    shown = "" if port is None or port == DEFAULT_PORTS.get(parts.scheme) else f":{port}"
    return f"{parts.scheme}://{host}{shown}"


class AppOriginIndex:
    """The origins of active apps' redirect URIs, read again only when a block changes apps
    (a commit listener): not on every request, whose own access event makes a new block."""

    def __init__(self, ledger: Any) -> None:
        self.ledger = ledger
        self._generation = 0  # bumped by each block that changes apps
        self._read: tuple[int, frozenset[str]] | None = None

    def on_commit(self, executed: Any) -> None:
        if any(event.type.startswith(f"{APPS}.") for event in executed.block.events):
            self._generation += 1

    def allowed(self) -> frozenset[str]:
        generation, read = self._generation, self._read
        if read is not None and read[0] == generation:
            return read[1]
        found = set()
        for key in self.ledger.store.state_keys(APPS, APP_PREFIX, MAX_APPS):
            app = self.ledger.state(APPS, key)
            if app is not None and app["status"] == "active":
                found.update(origin_of(u) for u in app.get("redirect_uris", []))
        # kept under the generation read before: a change since makes it read again
        origins = frozenset(found)
        self._read = (generation, origins)
        return origins


class AppOrigins:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    @staticmethod
    def _allowed(scope: Scope) -> frozenset[str]:
        index: AppOriginIndex | None = getattr(scope["app"].state, "app_origins", None)
        return frozenset() if index is None else index.allowed()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope["path"]).startswith(PATHS):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        origin = headers.get(b"origin", b"").decode("latin-1").lower()
        if not origin or origin not in self._allowed(scope):

            async def vary(message: Message) -> None:  # the answer depends on Origin
                if message["type"] == "http.response.start":
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"vary", b"Origin")]}  # fmt: skip
                await send(message)

            await self.app(scope, receive, vary)
            return
        cors = [
            (b"access-control-allow-origin", origin.encode("latin-1")),
            (b"vary", b"Origin"),
            (b"access-control-expose-headers", EXPOSE_HEADERS.encode()),
        ]
        if scope["method"] == "OPTIONS" and b"access-control-request-method" in headers:
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [
                        *cors,
                        (b"access-control-allow-methods", b"GET, POST, PUT, PATCH, DELETE"),
                        (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                        (b"access-control-max-age", b"600"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return

        async def with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *cors]}
            await send(message)

        await self.app(scope, receive, with_cors)
