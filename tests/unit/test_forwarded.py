"""A trusted proxy's forwarding headers (api/forwarded.py): the client is the nearest untrusted
hop, one header family is read, addresses in every RFC 7239 form, IPv4-mapped read as IPv4."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from careledger.api.forwarded import ForwardedHeaders
from careledger.config import networks


def seen(headers: dict[str, str], *, peer: str = "10.0.0.5", family: str = "x-forwarded",
         trusted: tuple[str, ...] = ("10.0.0.0/8",)) -> dict[str, Any]:  # fmt: skip
    got: dict[str, Any] = {}

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        got.update(scope)

    scope = {"type": "http", "scheme": "http", "client": (peer, 1234),
             "headers": [(k.encode(), v.encode()) for k, v in headers.items()]
             + [(b"host", b"node.internal:8000")]}  # fmt: skip
    asyncio.run(ForwardedHeaders(app, networks(trusted), family)(scope, None, None))
    host = dict(got["headers"])[b"host"].decode()
    return {"client": got["client"][0], "scheme": got["scheme"], "host": host}


def test_the_client_is_the_nearest_untrusted_hop() -> None:
    # nginx's $proxy_add_x_forwarded_for after a client sent its own header
    assert seen({"x-forwarded-for": "6.6.6.6, 203.0.113.9"})["client"] == "203.0.113.9"
    assert seen({"x-forwarded-for": "203.0.113.9, 10.0.0.7"})["client"] == "203.0.113.9"
    assert seen({"x-forwarded-for": "203.0.113.9:51234"})["client"] == "203.0.113.9"
    assert seen({"x-forwarded-for": "::ffff:203.0.113.9"})["client"] == "203.0.113.9"
    assert seen({"x-forwarded-for": "unknown"})["client"] == "10.0.0.5"


def test_one_header_family_and_the_nearest_scheme_and_host() -> None:
    mixed = {"x-forwarded-host": "evil.example, ehr.example.org", "x-forwarded-proto": "https",
             "forwarded": 'for="[2001:db8::17]:4711";proto=http;host=evil.example'}  # fmt: skip
    assert seen(mixed) == {"client": "10.0.0.5", "scheme": "https", "host": "ehr.example.org"}
    rfc = seen(mixed, family="forwarded")
    assert rfc == {"client": "2001:db8::17", "scheme": "http", "host": "evil.example"}


def test_an_untrusted_or_dual_stack_peer() -> None:
    proxied = {"x-forwarded-for": "6.6.6.6", "x-forwarded-host": "evil.example"}
    assert seen(proxied, peer="192.0.2.1") == {
        "client": "192.0.2.1", "scheme": "http", "host": "node.internal:8000"}  # fmt: skip
    assert seen(proxied, peer="::ffff:10.0.0.5")["client"] == "6.6.6.6"


def test_a_bad_trusted_proxy_is_refused() -> None:
    with pytest.raises(ValueError):
        networks(["not-an-address"])
