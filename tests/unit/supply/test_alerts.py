"""The alert watcher: events and refused receipts become alerts, once each, across restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from careledger.errors import ValidationError
from careledger.storage.memory import MemoryStore
from careledger.supply import alerts
from careledger.supply.alerts import AlertStore, AlertWatcher
from tests.support.chain import TestChain
from tests.unit.contracts.test_supply import (
    GTIN,
    MAKER_GLN,
    PHARM_GLN,
    PREFIX,
    code,
    commission,
    dispense,
    ok,
    run,
    to_pharmacy,
)
from tests.unit.contracts.test_supply_epcis import capture, object_event, sgtin


@pytest.fixture
def setup(tmp_path: Path) -> tuple[TestChain, AlertStore]:
    chain = TestChain(MemoryStore())
    ok(run(chain, "maker-admin", "register_prefix", {"prefix": PREFIX}))
    ok(run(chain, "maker-admin", "register_location", {"gln": MAKER_GLN, "name": "Plant"}))
    ok(run(chain, "pharm-admin", "register_location", {"gln": PHARM_GLN, "name": "Pharmacy"}))
    store = AlertStore(tmp_path / "alerts.sqlite")
    return chain, store


def kinds(store: AlertStore, org: str | None = None) -> list[tuple[str, str | None]]:
    items, _ = store.list(org=org)
    return [(a["kind"], a["serial"]) for a in items]


def test_refusals_and_events_become_alerts(setup: tuple[TestChain, AlertStore]) -> None:
    chain, store = setup
    watcher = AlertWatcher(chain.ledger, store)
    watcher.attach()
    try:
        ok(commission(chain, "S1"))
        to_pharmacy(chain, "S1")
        ok(dispense(chain, "S1"))
        assert code(dispense(chain, "S1")) == "ALREADY_DISPENSED"
        assert code(dispense(chain, "NEVER")) == "UNKNOWN_SERIAL"
        ghost = object_event("inspecting", "OBSERVE", [sgtin("GHOST2")], PHARM_GLN)
        ok(capture(chain, "pharm-admin", [ghost]))
        ok(
            run(
                chain,
                "pharm-admin",
                "determine",
                {"gtin": GTIN, "serial": "S1", "determination": "illegitimate"},
            )
        )
    finally:
        watcher.detach()
    assert kinds(store) == [
        ("dispensed_twice", "S1"),
        ("never_commissioned", "NEVER"),
        ("never_commissioned", "GHOST2"),
        ("illegitimate", "S1"),
    ]
    items, _ = store.list(org=None)
    twice = items[0]
    assert twice["code"] == "ALREADY_DISPENSED" and twice["location"] == PHARM_GLN
    assert (twice["org"], twice["brand_owner"]) == ("pharm", "maker")
    assert "notify_by" in items[3]["detail"]
    # the brand owner and the acting organisation see them; others do not
    assert len(kinds(store, "maker")) == 4
    assert len(kinds(store, "pharm")) == 4
    assert kinds(store, "hosp") == []
    with pytest.raises(ValidationError):
        store.list(org=None, kinds=["bogus"])


def test_catch_up_after_a_restart_stores_each_alert_once(
    setup: tuple[TestChain, AlertStore], tmp_path: Path
) -> None:
    chain, store = setup
    ok(commission(chain, "S1"))
    assert code(dispense(chain, "NOPE")) == "UNKNOWN_SERIAL"  # no watcher running
    watcher = AlertWatcher(chain.ledger, store)
    watcher.attach()
    watcher.detach()
    assert kinds(store) == [("never_commissioned", "NOPE")]
    assert store.height() == chain.ledger.head.height
    store.add([], height=0)  # forget progress: a second catch-up must not duplicate
    watcher.catch_up()
    assert kinds(store) == [("never_commissioned", "NOPE")]
    store.close()


def test_blocks_without_alerts_leave_the_height_behind_and_a_restart_finds_what_came_after(
    setup: tuple[TestChain, AlertStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The recorded height moves with each alert, and at most HEIGHT_EVERY blocks apart
    otherwise (a durable write per block delayed every receipt); nothing is missed across a
    restart, nothing stored twice."""
    monkeypatch.setattr(alerts, "HEIGHT_EVERY", 3)
    chain, store = setup
    watcher = AlertWatcher(chain.ledger, store)
    watcher.attach()
    start = store.height()
    assert start == chain.ledger.head.height
    ok(commission(chain, "S1"))
    ok(commission(chain, "S2"))  # two blocks, no alert: nothing written
    assert store.height() == start
    assert code(dispense(chain, "NOPE")) == "UNKNOWN_SERIAL"  # an alert: written with its height
    assert store.height() == chain.ledger.head.height == start + 3
    for serial in ("S3", "S4", "S5"):
        ok(commission(chain, serial))
    assert store.height() == start + 6  # the third block without an alert records it
    ok(commission(chain, "S6"))
    chain.ledger.commit_listeners.remove(watcher.on_commit)  # a crash: no detach
    assert store.height() == start + 6 < chain.ledger.head.height
    assert code(dispense(chain, "GONE")) == "UNKNOWN_SERIAL"  # while the watcher is down
    for serial in ("S7", "S8", "S9", "S10"):
        ok(commission(chain, serial))
    restarted = AlertWatcher(chain.ledger, store)
    restarted.attach()
    restarted.detach()
    assert kinds(store) == [("never_commissioned", "NOPE"), ("never_commissioned", "GONE")]
    assert store.height() == chain.ledger.head.height
    # a clean stop records the height reached, alerts or not
    again = AlertWatcher(chain.ledger, store)
    again.attach()
    ok(commission(chain, "S11"))
    assert store.height() < chain.ledger.head.height
    again.detach()
    assert store.height() == chain.ledger.head.height
    store.close()


def test_the_first_block_seen_records_the_height_row(tmp_path: Path) -> None:
    """A watcher started on a chain with no block yet writes its height row with the first
    block, alert or not: the node audit expects the row once a block was committed."""
    chain = TestChain(MemoryStore())
    store = AlertStore(tmp_path / "fresh.sqlite")
    watcher = AlertWatcher(chain.ledger, store)
    watcher.attach()
    assert chain.ledger.head.height == 0 and store.height() == 0
    ok(run(chain, "maker-admin", "register_prefix", {"prefix": PREFIX}))
    assert store.height() == chain.ledger.head.height == 1
    watcher.detach()
    store.close()


def test_paging(setup: tuple[TestChain, AlertStore]) -> None:
    chain, store = setup
    watcher = AlertWatcher(chain.ledger, store)
    watcher.attach()
    for i in range(5):
        assert code(dispense(chain, f"N{i}")) == "UNKNOWN_SERIAL"
    watcher.detach()
    first, nxt = store.list(org="maker", limit=2)
    assert [a["serial"] for a in first] == ["N0", "N1"] and nxt is not None
    rest, end = store.list(org="maker", after=nxt, limit=10)
    assert [a["serial"] for a in rest] == ["N2", "N3", "N4"] and end is None
