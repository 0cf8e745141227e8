"""No 5xx from bad input: schemathesis drives every operation of the node's own OpenAPI (valid and
invalid examples, a bounded count each), every integer parameter gets 2^64, and every portal form
route gets bytes that are not UTF-8 or not JSON. A 5xx anywhere fails the test with its route."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from tests.support.nodes import Server, demo_node, login, serving

pytestmark = pytest.mark.integration
EXAMPLES = 4
STREAMS = {"/v1/events", "/v1/monitoring/alerts/stream"}  # server-sent events: they never end
PORTAL_POSTS = [
    "/session",
    "/me/consents",
    "/me/consents/x/revoke",
    "/me/records/x/erase",
    "/me/research/invitations/x",
    "/me/research/x/consent",
    "/alerts/x/ack",
    "/visits/x/join",
    "/recalls",
    "/verify/dispense",
    "/admin/patients",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data = tmp_path_factory.mktemp("fuzz") / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data) as running:
        yield running


def _caller(server: Server, strategy: Any, label: str, found: dict[str, str]) -> Any:
    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    def call(case: Any) -> None:
        response = case.call(base_url=server.url, timeout=30)
        if response.status_code >= 500:
            found.setdefault(label, f"{response.status_code} {response.text[:200]}")

    return call


def server_errors(server: Server, mode: schemathesis.GenerationMode) -> dict[str, str]:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    found: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in STREAMS:
            continue
        label = f"{operation.method.upper()} {operation.path}"

        call = _caller(server, operation.as_strategy(generation_mode=mode), label, found)
        try:
            call()
        except Exception as exc:  # an operation with nothing to vary cannot be generated for
            if "Unsatisfiable" not in type(exc).__name__:
                raise
    return found


@pytest.mark.parametrize(
    "mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
)
def test_schemathesis_finds_no_server_error(
    server: Server, mode: schemathesis.GenerationMode
) -> None:
    assert server_errors(server, mode) == {}


def test_integers_beyond_64_bits_are_a_clear_400(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    big = str(2**64)
    tried = 0
    for path, operations in spec["paths"].items():
        if path in STREAMS:
            continue
        for method, operation in operations.items():
            for param in operation.get("parameters", []):
                if "integer" not in json.dumps(param.get("schema", {})):
                    continue
                url, query = path, {}
                if param["in"] == "path":
                    url = url.replace("{" + param["name"] + "}", big)
                else:
                    query = {param["name"]: big}
                url = url.replace("{", "").replace("}", "")
                answer = httpx.request(method.upper(), f"{server.url}{url}", params=query)
                tried += 1
                assert answer.status_code < 500, (method, path, param["name"], answer.text)
    assert tried >= 5
    for url in ("/explorer/blocks/" + big, "/v1/blocks/" + big):
        answer = httpx.get(f"{server.url}{url}")
        assert answer.status_code == 400 and "OUT_OF_RANGE" in answer.text


def test_portal_routes_refuse_bytes_that_are_not_text_or_json(server: Server) -> None:
    member = login(server, server.data_dir / "keys" / "patient-0001.key")
    token = member.headers["authorization"].split()[1]
    member.close()
    cookies = {"careledger_session": token}
    for path in PORTAL_POSTS:
        for content, kind in (
            (b"\xff\xfe\x00junk", "application/x-www-form-urlencoded"),
            (b"\xff\xfe\x00junk", "application/json"),
            (b"{not json", "application/json"),
            (b"a=" + b"%" * 3000, "application/x-www-form-urlencoded"),
        ):
            answer = httpx.post(
                f"{server.url}{path}",
                content=content,
                headers={"content-type": kind, "origin": server.url},
                cookies=cookies,
            )
            assert answer.status_code < 500, (path, kind, answer.text[:200])
