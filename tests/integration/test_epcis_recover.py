"""A capture the node anchored but did not mark published before it stopped is published on
restart with the transaction that anchored it (the ledger's capture entry names its block; the
node finds its transaction there), not with no transaction id."""

from __future__ import annotations

from pathlib import Path

import pytest

from careledger import store_mac
from careledger.config import EPCIS_FILE, Settings
from careledger.node import Node
from careledger.supply.repository import EpcisRepository
from careledger.supply.service import EpcisService
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration


def test_recovery_keeps_the_anchoring_transaction(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data)
    conn = store_mac.connect(data / EPCIS_FILE)
    capture, tx_id = conn.execute(
        "SELECT id, tx_id FROM captures WHERE status = 'succeeded' AND tx_id IS NOT NULL "
        "ORDER BY id LIMIT 1"
    ).fetchone()
    # as a node that stopped between the ledger's commit and marking the capture succeeded
    conn.execute("UPDATE captures SET status = 'running', tx_id = NULL WHERE id = ?", (capture,))
    conn.commit()
    conn.close()
    node = Node(Settings.load(data))
    repository = EpcisRepository(data / EPCIS_FILE)
    try:
        assert EpcisService(node, repository).recover() == 0
        finished = repository.capture(capture)
    finally:
        repository.close()
        node.ledger.store.close()
    assert finished["success"] is True and finished["ledgerTransaction"] == tx_id
