"""What a reverse proxy says about the request it forwards, believed only from a proxy the node
is configured to trust (``trusted_proxies`` in node.json: addresses or networks).

From a trusted peer, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Forwarded-For`` (or
RFC 7239 ``Forwarded``: its ``proto``, ``host`` and ``for``) replace the scheme, the Host and the
client address the app sees, so absolute URLs (FHIR ``Location``, ``fullUrl``, paging links) name
the address the client used. From anyone else they are ignored: a client must not choose the URLs
a server hands out, nor the address it is rate-limited by. Uvicorn's own proxy handling is off
(``careledger serve``): this is the one place headers are believed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)


def networks(trusted: Iterable[str]) -> tuple[Network, ...]:
    """The trusted proxies, parsed (ValueError naming a bad one)."""
    out = []
    for text in trusted:
        try:
            out.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted_proxies: {text!r} is not an address or network") from None
    return tuple(out)


def _first(value: str) -> str:
    """The first hop's value: the client side of a chain of proxies."""
    return value.split(",", 1)[0].strip()


def _forwarded(value: str) -> dict[str, str]:
    """RFC 7239: the first element's ``proto``, ``host`` and ``for`` (quotes removed)."""
    out = {}
    for pair in _first(value).split(";"):
        name, _, raw = pair.partition("=")
        out[name.strip().lower()] = raw.strip().strip('"')
    return out


class ForwardedHeaders:
    """ASGI middleware: applies a trusted proxy's forwarding headers (see the module)."""

    def __init__(self, app: Any, trusted: Sequence[Network]) -> None:
        self.app = app
        self.trusted = tuple(trusted)

    def _trusts(self, scope: dict[str, Any]) -> bool:
        client = scope.get("client")
        if not self.trusted or not client:
            return False
        try:
            peer = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(peer in net for net in self.trusted)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self._trusts(scope):
            scope = self._apply(scope)
        await self.app(scope, receive, send)

    def _apply(self, scope: dict[str, Any]) -> dict[str, Any]:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        said = _forwarded(headers["forwarded"]) if "forwarded" in headers else {}
        proto = said.get("proto") or _first(headers.get("x-forwarded-proto", ""))
        host = said.get("host") or _first(headers.get("x-forwarded-host", ""))
        client = said.get("for") or _first(headers.get("x-forwarded-for", ""))
        scope = dict(scope)
        if proto.lower() in ("http", "https"):
            ws = scope["type"] == "websocket"
            scope["scheme"] = {"http": "ws", "https": "wss"}[proto.lower()] if ws else proto.lower()
        if host and _HOST.match(host):
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k.lower() != b"host"
            ] + [(b"host", host.encode("latin-1"))]
        if client:
            try:
                address = str(ipaddress.ip_address(client.strip("[]")))
            except ValueError:
                address = ""
            if address:
                scope["client"] = (address, 0)
        return scope
