"""The REST API over real HTTP (uvicorn in a separate process) on a real SQLite store."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from careledger.core.canonical import canonical_bytes
from careledger.core.checkpoint import format_vkey
from careledger.core.keys import b64url_encode
from careledger.keyfile import generate_keypair, read_key_file
from careledger.sdk import Client, RemoteError, verify_checkpoint
from tests.support.nodes import Server, demo_node, login, run_cli, serving

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data = tmp_path_factory.mktemp("http") / "node"
    demo_node(data, with_records=False, with_supply=False)
    return data


@pytest.fixture(scope="module")
def server(node_dir: Path) -> Iterator[Server]:
    with serving(node_dir) as running:
        yield running


def member_key(node_dir: Path, name: str):
    return read_key_file(node_dir / "keys" / f"{name}.key")[1]


@pytest.fixture(scope="module")
def trusted(node_dir: Path) -> list[str]:
    """The node's verifier key, pinned from its key file, not asked of the server."""
    return [format_vkey("st-mary-node", member_key(node_dir, "st-mary-node").public_key)]


@pytest.fixture
def admin(server: Server, node_dir: Path) -> Iterator[Client]:
    with Client(server.url, keypair=member_key(node_dir, "st-mary-admin")) as client:
        client.login()  # an admin reads state, envelopes and events (ADR 0012)
        yield client


@pytest.fixture
def oversight(server: Server, node_dir: Path) -> Iterator[httpx.Client]:
    with login(server, node_dir / "keys" / "st-mary-admin.key") as http:
        yield http


def add_member_args(member_id: str) -> dict[str, Any]:
    return {
        "id": member_id,
        "name": "Nurse",
        "roles": ["nurse"],
        "public_key": generate_keypair().public_b64,
    }


def post(server: Server, payload: Any, **params: Any) -> httpx.Response:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return httpx.post(f"{server.url}/v1/tx", content=body, params=params, timeout=60)


def test_submit_wait_and_prove(server: Server, admin: Client, trusted: list[str]) -> None:
    receipt = admin.call("identity", "add_member", add_member_args("http-n1"))
    assert receipt["result"] == "accepted"
    verified = admin.verified_receipt(receipt["tx_id"], trusted)
    assert verified.receipt == receipt
    assert server.url and admin.verifier_keys() == trusted
    assert admin.state("identity", "member/http-n1")["org"] == "st-mary"


def test_batch_submit_and_queued_mode(server: Server, admin: Client) -> None:
    envelopes = [
        admin.build("identity", "add_member", add_member_args(f"batch-{i}")) for i in range(50)
    ]
    results = admin.submit(envelopes)
    assert [r["receipt"]["result"] for r in results] == ["accepted"] * 50
    queued = admin.submit(
        admin.build("identity", "add_member", add_member_args("queued-1")), wait=False
    )
    assert len(queued) == 64


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    return response.json()


def test_refusals_over_http(server: Server, admin: Client, node_dir: Path) -> None:
    good = admin.build("identity", "add_member", add_member_args("ref-1"))
    assert post(server, good, wait="true").status_code == 200

    cases: list[tuple[Any, int, str]] = [
        (b"{not json", 400, "MALFORMED_JSON"),
        ([], 400, "MALFORMED_TX"),
        ({"body": {}, "sig": ""}, 400, "MALFORMED_TX"),
        (good, 409, "DUPLICATE_TX"),
    ]
    wrong_chain = copy.deepcopy(good)
    wrong_chain["body"]["chain"] = "other.chain"
    cases.append((wrong_chain, 400, "WRONG_CHAIN"))
    forged = admin.build("identity", "add_member", add_member_args("ref-2"))
    forged["sig"] = b64url_encode(generate_keypair().sign(canonical_bytes(forged["body"])))
    cases.append((forged, 401, "BAD_SIGNATURE"))
    stranger = generate_keypair()
    cases.append(
        (
            admin.build("identity", "add_member", add_member_args("ref-3"), keypair=stranger),
            403,
            "UNKNOWN_SIGNER",
        )
    )
    big = admin.build("identity", "add_member", {**add_member_args("ref-4"), "name": "x" * 70_000})
    cases.append((big, 413, "TX_TOO_LARGE"))
    cases.append((admin.build("nosuch", "x", {}), 400, "UNKNOWN_CONTRACT"))
    head_before = httpx.get(f"{server.url}/v1/head").json()
    for payload, status, code in cases:
        response = post(server, payload, wait="true")
        assert response.status_code == status, (code, response.text)
        assert problem(response)["code"] == code
    assert httpx.get(f"{server.url}/v1/head").json() == head_before


def test_contract_rejection_is_committed_with_receipt(server: Server, node_dir: Path) -> None:
    with Client(server.url, keypair=member_key(node_dir, "dr-ana-silva")) as clinician:
        envelope = clinician.build("identity", "add_member", add_member_args("rej-1"))
    response = post(server, envelope, wait="true")
    body = problem(response)
    assert (response.status_code, body["code"]) == (422, "NOT_AUTHORISED")
    assert body["receipt"]["result"] == "rejected"
    tx = httpx.get(f"{server.url}/v1/tx/{body['receipt']['tx_id']}").json()
    assert tx["receipt"] == body["receipt"]


def test_batch_refusal_lists_every_bad_envelope(
    server: Server, admin: Client, oversight: httpx.Client
) -> None:
    good = admin.build("identity", "add_member", add_member_args("bb-1"))
    bad = copy.deepcopy(admin.build("identity", "add_member", add_member_args("bb-2")))
    bad["body"]["chain"] = "nope"
    response = post(server, [good, bad, {"x": 1}], wait="true")
    body = problem(response)
    assert response.status_code == 400
    assert [(e["index"], e["code"]) for e in body["errors"]] == [
        (1, "WRONG_CHAIN"),
        (2, "MALFORMED_TX"),
    ]
    assert oversight.get("/v1/state/identity/member/bb-1").status_code == 404
    assert post(server, [good], wait="true").status_code == 200


def test_too_many_envelopes(server: Server) -> None:
    response = post(server, [{}] * 10_001)
    assert (response.status_code, problem(response)["code"]) == (400, "BATCH_TOO_LARGE")


def test_reads(
    server: Server, admin: Client, trusted: list[str], oversight: httpx.Client, node_dir: Path
) -> None:
    head = httpx.get(f"{server.url}/v1/head").json()
    block = httpx.get(f"{server.url}/v1/blocks/1").json()
    assert block["hash"] and block["transactions"][0]["tx_id"]
    assert block["transactions"][0]["receipt"]["height"] == 1
    # Public: headers, receipts, proofs. Envelopes, state, events, members: members (ADR 0012).
    assert "envelope" not in block["transactions"][0]
    assert "envelope" in oversight.get("/v1/blocks/1").json()["transactions"][0]
    with login(server, node_dir / "keys" / "ph-chen-li.key") as pharmacist:
        theirs = pharmacist.get("/v1/blocks/1").json()["transactions"]
        assert all("envelope" not in t for t in theirs)  # signed by others, naming others
        assert pharmacist.get("/v1/state/identity/orgs").status_code == 403
        assert pharmacist.get("/v1/members").status_code == 403
    for path in ("/v1/state/identity/orgs", "/v1/members", "/v1/events?follow=false"):
        refused = httpx.get(f"{server.url}{path}")
        assert (refused.status_code, refused.json()["code"]) == (401, "TOKEN_REQUIRED"), path
    assert (
        httpx.get(f"{server.url}/v1/blocks/{head['height'] + 100}").json()["code"]
        == "UNKNOWN_BLOCK"
    )
    assert httpx.get(f"{server.url}/v1/blocks/-1").status_code == 400
    assert httpx.get(f"{server.url}/v1/tx/{'z' * 64}").json()["code"] == "BAD_TX_ID"
    assert httpx.get(f"{server.url}/v1/tx/{'a' * 64}").status_code == 404
    note = httpx.get(f"{server.url}/v1/checkpoint").text
    checkpoint, signers = verify_checkpoint(note, trusted)
    assert checkpoint.origin == "careledger.demo" and signers == ("st-mary-node",)
    consistency = httpx.get(
        f"{server.url}/v1/proof/consistency", params={"first": 1, "second": checkpoint.size}
    ).json()
    assert set(consistency) == {"first", "second", "first_root", "second_root", "path"}
    assert (
        httpx.get(
            f"{server.url}/v1/proof/consistency", params={"first": 5, "second": 2}
        ).status_code
        == 400
    )
    members = oversight.get("/v1/members").json()
    assert {"st-mary-admin", "harbor-admin"} <= {m["id"] for m in members["members"]}
    assert httpx.get(f"{server.url}/healthz").json()["status"] == "ok"
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "careledger_tx_committed_total" in metrics and "careledger_head_height" in metrics
    assert httpx.get(f"{server.url}/docs").status_code == 200


def test_events_stream_and_resume(server: Server, oversight: httpx.Client) -> None:
    with oversight.stream("GET", "/v1/events", params={"from_height": 1, "follow": "false"}) as r:
        text = "".join(r.iter_text())
    frames = [f for f in text.split("\n\n") if f.strip()]
    ids = [
        line.split(": ", 1)[1] for f in frames for line in f.splitlines() if line.startswith("id: ")
    ]
    assert ids[0] == "1:0" and "1:b" in ids
    resumed = oversight.get(
        "/v1/events", params={"follow": "false"}, headers={"last-event-id": "1:b"}
    ).text
    resumed_ids = [line[4:] for line in resumed.splitlines() if line.startswith("id: ")]
    assert resumed_ids == ids[ids.index("1:b") + 1 :]


def test_login_and_token(server: Server, node_dir: Path) -> None:
    key = member_key(node_dir, "ph-chen-li")
    with Client(server.url, keypair=key) as client:
        client.login()
        who = client.get_json("/v1/auth/whoami")
    assert (who["member"], who["org"], who["roles"]) == (
        "ph-chen-li",
        "city-pharmacy",
        ["pharmacist"],
    )
    assert httpx.get(f"{server.url}/v1/auth/whoami").json()["code"] == "TOKEN_REQUIRED"
    bad = httpx.get(f"{server.url}/v1/auth/whoami", headers={"authorization": "Bearer x.y.z"})
    assert (bad.status_code, bad.json()["code"]) == (401, "BAD_TOKEN")
    challenge = httpx.post(f"{server.url}/v1/auth/challenge").json()
    stranger = generate_keypair()
    denied = httpx.post(
        f"{server.url}/v1/auth/token",
        json={
            "public_key": stranger.public_b64,
            "challenge": challenge["challenge"],
            "signature": b64url_encode(stranger.sign(challenge["message"].encode())),
        },
    )
    assert (denied.status_code, denied.json()["code"]) == (401, "UNKNOWN_SIGNER")
    token = run_cli("token", str(node_dir), "dr-ana-silva", check=True).stdout.strip()
    who = httpx.get(
        f"{server.url}/v1/auth/whoami", headers={"authorization": f"Bearer {token}"}
    ).json()
    assert who["member"] == "dr-ana-silva"
    assert run_cli("token", str(node_dir), "nobody").returncode == 2


def test_cli_against_server(server: Server, node_dir: Path, tmp_path: Path) -> None:
    keys_file = tmp_path / "trusted.vkeys"
    keys_file.write_text(httpx.get(f"{server.url}/v1/checkpoint/keys").text)
    new_key = tmp_path / "n.key"
    public = run_cli("keygen", str(new_key), check=True).stdout.strip()
    assert run_cli("keygen", str(new_key)).returncode == 2  # never overwrites a key
    args = json.dumps({"id": "cli-n1", "name": "CLI", "roles": ["nurse"], "public_key": public})
    submitted = run_cli(
        "submit",
        "--key",
        str(node_dir / "keys" / "st-mary-admin.key"),
        "identity",
        "add_member",
        args,
        "--url",
        server.url,
        "--json",
        check=True,
    )
    receipt = json.loads(submitted.stdout)
    assert receipt["result"] == "accepted"
    proof = run_cli(
        "proof",
        "inclusion",
        receipt["tx_id"],
        "--url",
        server.url,
        "--keys",
        str(keys_file),
        "--json",
        check=True,
    )
    assert json.loads(proof.stdout)["verified"] is True
    size = json.loads(run_cli("status", "--url", server.url, "--json", check=True).stdout)[
        "header"
    ]["log_size"]
    consistency = run_cli(
        "proof",
        "consistency",
        "2",
        str(size),
        "--url",
        server.url,
        "--keys",
        str(keys_file),
        check=True,
    )
    assert "verified" in consistency.stdout
    members = json.loads(run_cli("members", str(node_dir), "--json", check=True).stdout)
    assert any(m["id"] == "cli-n1" and m["public_key"] == public for m in members)
    refused = run_cli(
        "submit", "--key", str(new_key), "identity", "add_member", args, "--url", server.url
    )
    assert refused.returncode == 2 and "NOT_AUTHORISED" in refused.stderr
    unreachable = run_cli("status", "--url", "http://127.0.0.1:9")
    assert unreachable.returncode == 2 and "NODE_UNREACHABLE" in unreachable.stderr


def test_remote_error_carries_code(server: Server, admin: Client) -> None:
    with pytest.raises(RemoteError) as info:
        admin.tx("b" * 64)
    assert (info.value.http_status, info.value.code) == (404, "UNKNOWN_TX")
