"""kill -9 of a serving node under load: every acknowledged transaction survives, the store verifies."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from careledger.keyfile import generate_keypair, read_key_file
from careledger.sdk import Client
from tests.support.nodes import Server, demo_node, free_port, run_cli

pytestmark = pytest.mark.integration


def load(url: str, key_file: Path, acked: list[str], stop: threading.Event, worker: int) -> None:
    keypair = read_key_file(key_file)[1]
    with Client(url, keypair=keypair, timeout=10) as client:
        for batch in range(10_000):  # bounded; the kill ends it much sooner
            if stop.is_set():
                return
            envelopes = [
                client.build(
                    "identity",
                    "add_member",
                    {
                        "id": f"w{worker}-{batch}-{i}",
                        "name": "Load",
                        "roles": ["nurse"],
                        "public_key": generate_keypair().public_b64,
                    },
                )
                for i in range(20)
            ]
            try:
                results = client.submit(envelopes, wait=True)
            except Exception:
                return  # the server died mid-request: nothing was acknowledged
            acked.extend(r["tx_id"] for r in results if "receipt" in r)


def test_kill9_under_load_loses_nothing_acknowledged(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    server = Server(data, free_port(), tmp_path / "server.log")
    server.start()
    acked: list[str] = []
    stop = threading.Event()
    workers = [
        threading.Thread(
            target=load, args=(server.url, data / "keys" / admin, acked, stop, n), daemon=True
        )
        for n, admin in enumerate(["st-mary-admin.key", "city-pharmacy-admin.key"])
    ]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 60
    while len(acked) < 400 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill9()
    stop.set()
    for w in workers:
        w.join(30)
    assert len(acked) >= 400, "the load never got going"
    snapshot = list(acked)

    verified = run_cli("verify", str(data))
    assert verified.returncode == 0, verified.stderr

    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            for tx_id in snapshot:
                response = http.get(f"/v1/tx/{tx_id}")
                assert response.status_code == 200, f"acknowledged {tx_id} lost after kill -9"
            head = http.get("/v1/head").json()
        # The restarted node accepts new work on top of the recovered chain.
        with Client(server.url, keypair=read_key_file(data / "keys" / "st-mary-admin.key")[1]) as c:
            receipt = c.call(
                "identity",
                "add_member",
                {
                    "id": "after-crash",
                    "name": "A",
                    "roles": ["nurse"],
                    "public_key": generate_keypair().public_b64,
                },
            )
        assert receipt["height"] == head["height"] + 1
    finally:
        server.stop()
    assert run_cli("verify", str(data)).returncode == 0
