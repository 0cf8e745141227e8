"""The node's own transactions from many threads at once: every nonce reaches admission in order."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.errors import Conflict
from careledger.keyfile import generate_keypair
from careledger.node import Node
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration


def test_concurrent_execute_commits_every_call(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data, with_records=False, with_supply=False)
    node = Node(Settings.load(data))
    node.start()
    try:

        def register(i: int) -> str:
            args = {
                "id": f"pt-load-{i}",
                "name": f"pt-load-{i}",
                "roles": ["patient"],
                "public_key": generate_keypair().public_b64,
            }
            (receipt,) = node.execute([("identity", "add_member", args)])
            return str(receipt["result"])

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(register, range(200)))
        assert results == ["accepted"] * 200
        with pytest.raises(Conflict) as busy:
            Node(Settings.load(data))  # a second process (or object) may not open the node
        assert busy.value.code == "NODE_BUSY"
    finally:
        node.stop()
