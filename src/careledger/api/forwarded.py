"""What a reverse proxy says about the request it forwards, believed only from a proxy the node
is configured to trust (``trusted_proxies`` in node.json: addresses or networks).

From a trusted peer, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and ``X-Forwarded-For`` (or,
when node.json's ``forwarded_headers`` is "forwarded", RFC 7239 ``Forwarded``: its ``proto``,
``host`` and ``for``; one family only) replace the scheme, the Host and the client address the
app sees, so absolute URLs (FHIR ``Location``, ``fullUrl``, paging links) name
the address the client used. From anyone else they are ignored: a client must not choose the URLs
a server hands out, nor the address it is rate-limited by. Uvicorn's own proxy handling is off
(``careledger serve``): this is the one place headers are believed.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Sequence
from typing import Any

from careledger.config import Network

_HOST = re.compile(
    r"^(?:[A-Za-z0-9](?:[A-Za-z0-9\-.]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?$"
)


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An address as a header or RFC 7239 names it (``"[2001:db8::1]:4711"``, ``1.2.3.4:80``,
    quoted), IPv4-mapped IPv6 read as IPv4; None for ``unknown``, obfuscated or malformed."""
    text = text.strip().strip('"')
    if text.startswith("["):
        text = text[1 : text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        found = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(found, "ipv4_mapped", None)
    return mapped if mapped is not None else found


def _values(headers: list[tuple[bytes, bytes]], name: bytes) -> list[str]:
    """Every comma-separated value of every line of a header, in order (nearest hop last)."""
    out: list[str] = []
    for key, value in headers:
        if key.lower() == name:
            out += [v.strip() for v in value.decode("latin-1").split(",") if v.strip()]
    return out


def _element(text: str) -> dict[str, str]:
    """One RFC 7239 element's pairs (``for``, ``proto``, ``host``), quotes removed."""
    out = {}
    for pair in text.split(";"):
        name, _, raw = pair.partition("=")
        out[name.strip().lower()] = raw.strip().strip('"')
    return out


class ForwardedHeaders:
    """ASGI middleware: applies a trusted proxy's forwarding headers (see the module)."""

    def __init__(
        self, app: Any, trusted: Sequence[Network], family: str = "x-forwarded"
    ) -> None:
        self.app = app
        self.trusted = tuple(trusted)
        self.family = family

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in net for net in self.trusted)

    def _trusts(self, scope: dict[str, Any]) -> bool:
        client = scope.get("client")
        return bool(self.trusted and client) and self._trusted(_ip(str(client[0])))

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket") and self._trusts(scope):
            scope = self._apply(scope)
        await self.app(scope, receive, send)

    def _apply(self, scope: dict[str, Any]) -> dict[str, Any]:
        """One header family is read (``forwarded`` names it: "x-forwarded" or "forwarded"),
        so a client's own header of the other family, passed through, is never believed. The
        client is the nearest address on the chain that is not a trusted proxy (right to left:
        the left is the client's to write); the scheme and host are the nearest hop's."""
        headers = scope["headers"]
        if self.family == "forwarded":
            hops = [_element(v) for v in _values(headers, b"forwarded")]
            chain = [h.get("for", "") for h in hops]
            proto = hops[-1].get("proto", "") if hops else ""
            host = hops[-1].get("host", "") if hops else ""
        else:
            chain = _values(headers, b"x-forwarded-for")
            protos = _values(headers, b"x-forwarded-proto")
            hosts = _values(headers, b"x-forwarded-host")
            proto = protos[-1] if protos else ""
            host = hosts[-1] if hosts else ""
        scope = dict(scope)
        if proto.lower() in ("http", "https"):
            ws = scope["type"] == "websocket"
            scope["scheme"] = {"http": "ws", "https": "wss"}[proto.lower()] if ws else proto.lower()
        if host and _HOST.match(host):
            scope["headers"] = [(k, v) for k, v in headers if k.lower() != b"host"] + [
                (b"host", host.encode("latin-1"))
            ]
        for hop in reversed(chain):
            address = _ip(hop)
            if address is None:
                break  # unknown or obfuscated: nothing further left can be believed
            if not self._trusted(address):
                scope["client"] = (str(address), 0)
                break
        return scope
