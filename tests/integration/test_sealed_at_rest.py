"""Visit reasons and room links, alert values and rule state are sealed in the node's stores
(they were in clear in visits.sqlite and monitoring.sqlite), and read back through the node."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from careledger.config import Settings
from careledger.keyfile import read_key_file
from careledger.monitoring.store import MONITORING_FILE, ReadingsStore
from careledger.monitoring.visits import VISITS_FILE
from careledger.vault.at_rest import MARK, AtRest
from tests.support.nodes import demo_node

pytestmark = pytest.mark.integration


def test_phi_beside_the_vault_is_sealed_on_disk(tmp_path: Path) -> None:
    data = tmp_path / "node"
    demo_node(data)
    node_key = read_key_file(Settings.load(data).node_key_file)[1]
    visits = sqlite3.connect(data / VISITS_FILE)
    reasons = visits.execute("SELECT visit, reason FROM reasons").fetchall()
    links = visits.execute("SELECT visit, link FROM links").fetchall()
    visits.close()
    assert reasons and links
    assert all(bytes(r).startswith(MARK) for _, r in reasons + links)
    raw = (data / VISITS_FILE).read_bytes()
    sealed = AtRest.for_node(node_key, "visits")
    for visit, reason in reasons:
        text = sealed.open(bytes(reason), f"reasons:{visit}")
        assert text and text not in raw  # the reason is nowhere in the file in clear
    for visit, link in links:
        assert sealed.open(bytes(link), f"links:{visit}").startswith(b"https://")
    monitoring = sqlite3.connect(data / MONITORING_FILE)
    alerts = monitoring.execute("SELECT alerts FROM windows").fetchall()
    states = monitoring.execute("SELECT state FROM devices").fetchall()
    monitoring.close()
    assert alerts and states
    assert all(bytes(a).startswith(MARK) for (a,) in alerts + states)
    assert b'"value"' not in (data / MONITORING_FILE).read_bytes()
    store = ReadingsStore.for_node(data / MONITORING_FILE, node_key)
    try:
        fired = [a for w in store.anchored_windows(store.devices()[0]) for a in w.alerts]
        assert fired and all(a["value"] < 90 for a in fired)  # read back through the node
    finally:
        store.close()
    # A sealed value moved to another row does not open.
    moved = AtRest.for_node(node_key, "visits")
    with pytest.raises(Exception, match="does not open"):
        moved.open(bytes(reasons[0][1]), "reasons:another-visit")
