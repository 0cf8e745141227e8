"""Telemedicine visits: consent before joining, the window, start and end with anchored notes."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain

MINUTE = 60_000
LINK = hashlib.sha256(b"https://video.example/room/abc").hexdigest()


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("visits", k)
    return None if raw is None else orjson.loads(raw)


def run(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> str | None:
    return chain.run(signer, method, args, contract="visits").get("code")


@pytest.fixture
def chain() -> TestChain:
    return TestChain(MemoryStore())


def schedule(chain: TestChain, **kw: Any) -> dict[str, Any]:
    return {
        "id": "v-1",
        "patient": "patient-1",
        "start": chain.time + 30 * MINUTE,
        "end": chain.time + 60 * MINUTE,
        "link_hash": LINK,
        "recording": True,
        **kw,
    }


def test_a_visit_from_schedule_to_note(chain: TestChain) -> None:
    assert run(chain, "hosp-admin", "schedule", schedule(chain)) == "NOT_AUTHORISED"
    assert run(chain, "dr-a", "schedule", schedule(chain, patient="dr-a")) == "UNKNOWN_PATIENT"
    bad = schedule(chain, end=chain.time - 1)
    assert run(chain, "dr-a", "schedule", bad) == "BAD_ARGS"
    assert run(chain, "dr-a", "schedule", schedule(chain)) is None
    assert run(chain, "dr-a", "schedule", schedule(chain)) == "VISIT_EXISTS"
    assert state(chain, "by-patient/patient-1/v-1") == {}
    chain.time += 20 * MINUTE  # ten minutes before the start: the room is open
    assert run(chain, "patient-1", "join", {"id": "v-1"}) == "NO_CONSENT"
    assert run(chain, "dr-a", "consent", {"id": "v-1", "recording": True}) == "NOT_AUTHORISED"
    assert run(chain, "patient-1", "consent", {"id": "v-1", "recording": False}) is None
    assert state(chain, "visit/v-1")["consent"]["recording"] is False
    assert run(chain, "pharm-admin", "join", {"id": "v-1"}) == "NOT_AUTHORISED"
    assert run(chain, "patient-1", "join", {"id": "v-1"}) is None
    assert run(chain, "patient-1", "start", {"id": "v-1"}) == "NOT_AUTHORISED"
    assert run(chain, "dr-a", "end", {"id": "v-1", "notes": []}) == "NOT_STARTED"
    assert run(chain, "dr-a", "start", {"id": "v-1"}) is None
    note = {"record": "enc-1", "type": "Encounter", "patient": "patient-1", "version": 1}
    digest = hashlib.sha256(b"encounter").hexdigest()
    anchor = {**note, "hash": digest}
    anchor.pop("type")
    receipt = chain.run("dr-a", "anchor", {**anchor, "type": "Encounter"}, contract="records")
    assert receipt["result"] == "accepted"
    notes = [{"record": "enc-1", "version": 1, "hash": digest}]
    wrong = [{"record": "enc-1", "version": 1, "hash": "0" * 64}]
    assert run(chain, "dr-a", "end", {"id": "v-1", "notes": wrong}) == "UNKNOWN_RECORD"
    assert run(chain, "dr-a", "end", {"id": "v-1", "notes": notes}) is None
    visit = state(chain, "visit/v-1")
    assert visit["status"] == "ended" and visit["notes"][0]["type"] == "Encounter"
    assert [j["member"] for j in visit["joins"]] == ["patient-1"]
    assert run(chain, "patient-1", "join", {"id": "v-1"}) == "VISIT_CLOSED"


def test_the_room_opens_fifteen_minutes_early_and_closes_at_the_end(chain: TestChain) -> None:
    assert run(chain, "dr-a", "schedule", schedule(chain, recording=False)) is None
    assert run(chain, "patient-1", "consent", {"id": "v-1", "recording": True}) == "BAD_ARGS"
    assert run(chain, "patient-1", "consent", {"id": "v-1", "recording": False}) is None
    assert run(chain, "patient-1", "join", {"id": "v-1"}) == "OUTSIDE_WINDOW"  # 30 min early
    chain.time += 70 * MINUTE
    assert run(chain, "dr-a", "start", {"id": "v-1"}) == "OUTSIDE_WINDOW"
    assert run(chain, "patient-1", "cancel", {"id": "v-1", "reason": "late"}) is None
    assert state(chain, "visit/v-1")["status"] == "cancelled"
