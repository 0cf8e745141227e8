"""Golden replay: recorded chains re-execute to the very header hashes they were committed with.

The vectors in ``tests/vectors/chains/`` were written once by the ruleset they name and are never
regenerated. Any edit of an old ruleset that changes what a transaction accepts, writes, emits or
answers changes a header hash here and fails CI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from careledger.core.tx import decode_envelope
from careledger.ledger.engine import Ledger
from careledger.storage.memory import MemoryStore
from tests.support.chain import key
from tests.support.vectors import vector_path

CHAINS = vector_path("chains")
VECTORS = sorted(CHAINS.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(path.read_bytes())
    return doc


@pytest.mark.parametrize("path", VECTORS, ids=[p.stem for p in VECTORS])
def test_recorded_chain_replays_to_the_same_headers(path: Path) -> None:
    doc = load(path)
    store = MemoryStore()
    Ledger.create(store, doc["genesis"])
    assert store.header_hash(0) == doc["genesis_hash"]
    ledger = Ledger(store, node_name="replay", node_key=key("replay"))
    for height, block in enumerate(doc["blocks"], start=1):
        txs = [decode_envelope(env) for env in block["envelopes"]]
        executed = ledger.commit(txs, block["time"])
        assert executed is not None, f"block {height} committed nothing"
        codes = [executed.receipts[tx.tx_id].get("code") for tx in txs]
        assert codes == block["codes"], f"block {height}: outcomes differ"
        assert executed.block.header_hash == block["header_hash"], f"block {height} differs"


def test_every_vector_names_its_ruleset_and_is_not_empty() -> None:
    assert VECTORS, "no golden chains"
    for path in VECTORS:
        doc = load(path)
        assert doc["ruleset"] and doc["blocks"], path.name
