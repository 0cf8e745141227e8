"""`careledger keygen` and `init` from a genesis document, as an operator would run them."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.support.nodes import CLI, demo_node, free_port, run_cli, serving, wait_for

pytestmark = pytest.mark.integration


def write_genesis(tmp_path: Path, admin_key: str) -> Path:
    genesis = {
        "chain": "regional.health",
        "time": 1_790_000_000_000,
        "orgs": [{"id": "general", "name": "General Hospital", "kind": "hospital"}],
        "members": [
            {
                "id": "gen-admin",
                "name": "Admin",
                "org": "general",
                "roles": ["admin"],
                "public_key": admin_key,
            },
        ],
    }
    path = tmp_path / "genesis.json"
    path.write_text(json.dumps(genesis))
    return path


def test_init_from_genesis_then_verify(tmp_path: Path) -> None:
    node_key = tmp_path / "node.key"
    admin = json.loads(run_cli("keygen", str(tmp_path / "admin.key"), "--json", check=True).stdout)
    run_cli("keygen", str(node_key), "--name", "general-node", check=True)
    genesis = write_genesis(tmp_path, admin["public_key"])
    data = tmp_path / "node"
    args = [
        "--genesis",
        str(genesis),
        "--node-key",
        str(node_key),
        "--node-name",
        "general-node",
        "--org",
        "general",
    ]
    created = run_cli("init", str(data), *args, check=True)
    assert "regional.health" in created.stdout
    assert run_cli("verify", str(data)).returncode == 0
    members = json.loads(run_cli("members", str(data), "--json", check=True).stdout)
    assert [(m["id"], m["public_key"]) for m in members] == [("gen-admin", admin["public_key"])]

    again = run_cli("init", str(data), *args)
    assert again.returncode == 2
    assert "NODE_EXISTS" in again.stderr


def test_init_refusals(tmp_path: Path) -> None:
    missing = run_cli("init", str(tmp_path / "a"))
    assert missing.returncode == 2
    assert "MISSING_OPTION" in missing.stderr
    node_key = tmp_path / "node.key"
    run_cli("keygen", str(node_key), check=True)
    bad = write_genesis(tmp_path, "not-a-key")
    refused = run_cli(
        "init",
        str(tmp_path / "b"),
        "--genesis",
        str(bad),
        "--node-key",
        str(node_key),
        "--node-name",
        "n",
        "--org",
        "general",
    )
    assert refused.returncode == 2
    assert "BAD_GENESIS" in refused.stderr
    assert not (tmp_path / "b").exists()  # nothing half-made: the same command can run again
    broken = tmp_path / "broken.json"
    broken.write_text("{nope")
    refused = run_cli(
        "init",
        str(tmp_path / "c"),
        "--genesis",
        str(broken),
        "--node-key",
        str(node_key),
        "--node-name",
        "n",
        "--org",
        "general",
    )
    assert refused.returncode == 2
    assert "MALFORMED_JSON" in refused.stderr


def _read_only(path: Path) -> bool:
    """Make ``path`` read-only for root too (a read-only bind mount); False where not allowed."""
    bound = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if bound.returncode != 0:
        return False
    ro = subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], capture_output=True)
    return ro.returncode == 0


def test_serve_refuses_a_directory_it_cannot_write_or_that_is_served(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    with serving(data):
        busy = run_cli("serve", str(data), "--port", str(free_port()), timeout=60)
    assert busy.returncode == 2 and "error NODE_BUSY" in busy.stderr
    assert "serving" not in busy.stdout and "Traceback" not in busy.stderr
    if _read_only(data):
        try:
            refused = run_cli("serve", str(data), "--port", str(free_port()), timeout=60)
        finally:
            subprocess.run(["umount", str(data)], check=True)
    else:  # no mount allowed here: a lock path the node cannot open fails the same way
        (data / "node.lock").unlink(missing_ok=True)
        (data / "node.lock").mkdir()
        refused = run_cli("serve", str(data), "--port", str(free_port()), timeout=60)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "error DIR_NOT_WRITABLE" in refused.stderr and "Traceback" not in refused.stderr
    assert "serving" not in refused.stdout


def test_node_files_are_owner_only(tmp_path: Path) -> None:
    data = tmp_path / "node"
    run_cli("init", "--demo", str(data), check=True)
    port = free_port()
    server = subprocess.Popen(
        [*CLI, "serve", str(data), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _up(port), "the node to serve")
    finally:
        server.terminate()
        server.wait(30)
    loose = [
        f"{p.relative_to(data)} {oct(p.stat().st_mode & 0o777)}"
        for p in [data, *data.rglob("*")]
        if p.stat().st_mode & 0o077
    ]
    assert loose == []
    assert len(list(data.glob("*.sqlite"))) >= 5  # every store the node opened is checked


def _up(port: int) -> bool:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False
