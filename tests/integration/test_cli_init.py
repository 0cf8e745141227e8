"""`careledger keygen` and `init` from a genesis document, as an operator would run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.nodes import run_cli

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
