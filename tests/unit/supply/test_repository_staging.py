"""Captures are staged before the ledger anchors them: a failed store anchors nothing, and a node
that stopped between anchoring and publishing finishes the capture the ledger's way."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from careledger.errors import CareLedgerError
from careledger.supply.repository import EpcisRepository, EventQuery, StoredEvent


def event(hash_id: str, body: object = None) -> StoredEvent:
    return StoredEvent(
        hash=hash_id,
        type="ObjectEvent",
        event_time="2026-01-01T00:00:00.000Z",
        biz_step="shipping",
        disposition=None,
        biz_location=None,
        epcs=[("urn:epc:id:sgtin:0614141.107346.2017", "epc")],
        body=body if body is not None else {"type": "ObjectEvent", "eventID": hash_id},
    )


def bodies(repo: EpcisRepository) -> list[object]:
    return repo.query(EventQuery())[0]


def test_staged_events_are_invisible_until_published(tmp_path: Path) -> None:
    repo = EpcisRepository(tmp_path / "epcis.sqlite")
    repo.begin_capture("c1", "acme", "t", [event("h1"), event("h2")])
    assert bodies(repo) == []
    assert repo.running_captures() == ["c1"]
    repo.finish_capture("c1", tx_id="tx1")
    assert [b["eventID"] for b in bodies(repo)] == ["h1", "h2"]  # type: ignore[index]
    repo.begin_capture("c2", "acme", "t", [event("h3")])
    repo.finish_capture("c2", errors=[{"code": "NOT_OWNER"}])
    assert len(bodies(repo)) == 2 and repo.capture("c2")["success"] is False
    repo.begin_capture("c3", "acme", "t", [event("h3")])  # a dropped event may come again
    repo.close()


def test_an_unstorable_body_leaves_no_open_transaction(tmp_path: Path) -> None:
    repo = EpcisRepository(tmp_path / "epcis.sqlite")
    deep: object = {"leaf": 1}
    for _ in range(300):
        deep = {"x": deep}
    with pytest.raises(CareLedgerError):
        repo.begin_capture("bad", "acme", "t", [event("h1"), event("h2", deep)])
    with pytest.raises(CareLedgerError) as duplicate:
        repo.begin_capture("dup", "acme", "t", [event("h9"), event("h9")])
    assert duplicate.value.code == "DUPLICATE_EVENT"
    repo.begin_capture("ok", "acme", "t", [event("h1")])  # not locked, nothing half-written
    repo.finish_capture("ok", tx_id="tx")
    assert [b["eventID"] for b in bodies(repo)] == ["h1"]  # type: ignore[index]
    with pytest.raises(CareLedgerError):
        repo.capture("bad")
    assert orjson.loads(orjson.dumps(repo.capture("ok")))["success"] is True
    repo.close()
