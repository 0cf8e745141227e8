"""Monitoring: devices bound by the patient's consent, ordered windows, rules, alerts, time."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from careledger.storage.memory import MemoryStore
from tests.support.chain import TestChain, key

MINUTE = 60_000
SPO2_LOW = {"id": "spo2-low", "kind": "threshold", "code": "59408-5", "op": "<", "value": 90}


def state(chain: TestChain, k: str) -> Any:
    raw = chain.store.get_state("monitoring", k)
    return None if raw is None else orjson.loads(raw)


def run(chain: TestChain, signer: str, method: str, args: dict[str, Any]) -> str | None:
    return chain.run(signer, method, args, contract="monitoring").get("code")


@pytest.fixture
def chain() -> TestChain:
    chain = TestChain(MemoryStore())
    device = {"id": "oxi-1", "model": "PulseOx 3", "public_key": key("oxi-1").public_b64}
    assert run(chain, "hosp-admin", "register_device", device) is None
    return chain


def window(chain: TestChain, seq: int, **kw: Any) -> dict[str, Any]:
    args = {
        "device": "oxi-1",
        "patient": "patient-1",
        "window": seq,
        "root": f"{seq:064x}",
        "count": 10,
        "first": chain.time,
        "last": chain.time + 500,
        "rules_version": (state(chain, "rules/oxi-1") or {"version": 0})["version"],
        "alerts": [],
        **kw,
    }
    return args


def test_devices_are_registered_by_their_organisation(chain: TestChain) -> None:
    again = {"id": "oxi-1", "model": "x", "public_key": key("other").public_b64}
    assert run(chain, "hosp-admin", "register_device", again) == "DEVICE_EXISTS"
    same_key = {"id": "oxi-2", "model": "x", "public_key": key("oxi-1").public_b64}
    assert run(chain, "hosp-admin", "register_device", same_key) == "DEVICE_EXISTS"
    by_clinician = {"id": "oxi-3", "model": "x", "public_key": key("o3").public_b64}
    assert run(chain, "dr-a", "register_device", by_clinician) == "NOT_AUTHORISED"
    bad_key = {"id": "oxi-4", "model": "x", "public_key": "nope"}
    assert run(chain, "hosp-admin", "register_device", bad_key) == "BAD_ARGS"
    assert state(chain, "device/oxi-1")["org"] == "hosp"


def test_readings_need_a_binding_the_patient_signed_and_stop_when_it_ends(
    chain: TestChain,
) -> None:
    assert run(chain, "hosp-node", "anchor_window", window(chain, 0)) == "NOT_BOUND"
    assert run(chain, "dr-a", "bind", {"device": "oxi-1"}) == "NOT_AUTHORISED"
    assert run(chain, "patient-1", "bind", {"device": "oxi-1"}) is None
    assert run(chain, "patient-1", "bind", {"device": "oxi-1"}) == "DEVICE_BOUND"
    assert run(chain, "dr-a", "anchor_window", window(chain, 0)) == "NOT_AUTHORISED"
    assert run(chain, "pharm-admin", "anchor_window", window(chain, 0)) == "NOT_AUTHORISED"
    assert run(chain, "hosp-node", "anchor_window", window(chain, 1)) == "WINDOW_ORDER"
    assert run(chain, "hosp-node", "anchor_window", window(chain, 0)) is None
    assert run(chain, "hosp-node", "anchor_window", window(chain, 0)) == "WINDOW_ORDER"
    assert state(chain, "window/oxi-1/000000000000")["patient"] == "patient-1"
    assert run(chain, "pharm-admin", "unbind", {"device": "oxi-1", "reason": "x"}) == (
        "NOT_AUTHORISED"
    )
    assert (
        run(chain, "patient-1", "unbind", {"device": "oxi-1", "reason": "patient_request"}) is None
    )
    later = chain.time + 10 * MINUTE  # readings taken after the binding ended (beyond skew)
    after = window(chain, 1, first=later, last=later)
    assert run(chain, "hosp-node", "anchor_window", after) == "NOT_BOUND"
    assert state(chain, "binding/oxi-1")["status"] == "revoked"


def test_rules_alerts_acknowledgement(chain: TestChain) -> None:
    assert run(chain, "patient-1", "bind", {"device": "oxi-1"}) is None
    rules = {
        "patient": "patient-1",
        "device": "oxi-1",
        "rules": [{**SPO2_LOW, "escalate_after": 5}],
    }
    assert run(chain, "hosp-admin", "set_rules", rules) == "NOT_AUTHORISED"  # not care staff
    bad = {**rules, "rules": [{**SPO2_LOW, "op": "!"}]}
    assert run(chain, "dr-a", "set_rules", bad) == "BAD_RULE"
    assert run(chain, "dr-a", "set_rules", rules) is None
    assert run(chain, "hosp-node", "anchor_window", window(chain, 0, rules_version=1)) == (
        "STALE_RULES"  # the binding's empty rules were version 1, the clinician's are 2
    )
    alert = {"rule": "spo2-low", "index": 3, "at": chain.time}
    with_value = window(chain, 0, rules_version=2, alerts=[{**alert, "value": 86.0}])
    assert run(chain, "hosp-node", "anchor_window", with_value) == "BAD_ARGS"  # no PHI
    unknown = window(chain, 0, rules_version=2, alerts=[{**alert, "rule": "nope"}])
    assert run(chain, "hosp-node", "anchor_window", unknown) == "BAD_ARGS"
    beyond = window(chain, 0, rules_version=2, alerts=[{**alert, "index": 10}])
    assert run(chain, "hosp-node", "anchor_window", beyond) == "BAD_ARGS"
    receipt = chain.run(
        "hosp-node", "anchor_window", window(chain, 0, rules_version=2, alerts=[alert]),
        contract="monitoring",
    )  # fmt: skip
    assert receipt["result"] == "accepted"
    raised = state(chain, "alert/oxi-1:0:0")
    assert raised["status"] == "open" and raised["patient"] == "patient-1"
    assert "value" not in raised and state(chain, "open/hosp") == ["oxi-1:0:0"]
    assert run(chain, "pharm-admin", "acknowledge", {"alert": "oxi-1:0:0"}) == "NOT_AUTHORISED"
    assert run(chain, "dr-a", "acknowledge", {"alert": "oxi-1:0:0", "note": "x"}) == "BAD_ARGS"
    assert run(chain, "dr-a", "acknowledge", {"alert": "oxi-1:0:0"}) is None
    assert run(chain, "dr-a", "acknowledge", {"alert": "oxi-1:0:0"}) == "ALREADY_ACKNOWLEDGED"
    assert state(chain, "open/hosp") == []
    assert state(chain, "alert/oxi-1:0:0")["acknowledged"]["by"] == "dr-a"


def test_time_is_judged_on_block_time_silence_once_and_escalation(chain: TestChain) -> None:
    assert run(chain, "patient-1", "bind", {"device": "oxi-1"}) is None
    silent = {"id": "silent", "kind": "no_data", "minutes": 10, "escalate_after": 5}
    rules = {
        "patient": "patient-1",
        "device": "oxi-1",
        "rules": [{**SPO2_LOW, "escalate_after": 5}, silent],
    }
    assert run(chain, "dr-a", "set_rules", rules) is None
    assert state(chain, "watched/hosp") == ["oxi-1"]
    assert run(chain, "dr-a", "tick", {}) == "NOT_AUTHORISED"
    assert run(chain, "hosp-node", "tick", {}) is None
    assert not state(chain, "open/hosp")  # not silent for 10 minutes yet
    chain.time += 11 * MINUTE
    assert run(chain, "hosp-node", "tick", {}) is None
    (opened,) = state(chain, "open/hosp")
    assert state(chain, f"alert/{opened}")["kind"] == "no_data"
    chain.time += 2 * MINUTE
    assert run(chain, "hosp-node", "tick", {}) is None
    assert len(state(chain, "open/hosp")) == 1  # the same silence is announced once
    chain.time += 4 * MINUTE  # the alert is now older than escalate_after
    assert run(chain, "hosp-node", "tick", {}) is None
    assert state(chain, f"alert/{opened}")["status"] == "escalated"
    # data arrives, then silence again: a new episode
    assert run(chain, "hosp-node", "anchor_window", window(chain, 0)) is None
    chain.time += 11 * MINUTE
    assert run(chain, "hosp-node", "tick", {}) is None
    assert len(state(chain, "open/hosp")) == 2


def test_a_window_lands_only_on_its_own_patients_binding(chain: TestChain) -> None:
    assert run(chain, "patient-1", "bind", {"device": "oxi-1"}) is None
    other = window(chain, 0, patient="patient-2")
    assert run(chain, "hosp-node", "anchor_window", other) == "NOT_BOUND"
    future = window(chain, 0, last=chain.time + 2 * 86_400_000)
    assert run(chain, "hosp-node", "anchor_window", future) == "BAD_ARGS"  # a device clock ahead
    pending = window(chain, 0)
    assert run(chain, "patient-1", "unbind", {"device": "oxi-1", "reason": "done"}) is None
    # readings taken before the binding ended are still anchored for that patient
    assert run(chain, "hosp-node", "anchor_window", pending) is None
    rules = {"patient": "patient-1", "device": "oxi-1", "rules": [SPO2_LOW]}
    assert run(chain, "dr-a", "set_rules", rules) == "NOT_BOUND"


def test_rules_are_per_device_and_reset_by_a_new_binding(chain: TestChain) -> None:
    assert run(chain, "patient-1", "bind", {"device": "oxi-1"}) is None
    rules = {"patient": "patient-1", "device": "oxi-1", "rules": [SPO2_LOW]}
    assert run(chain, "dr-a", "set_rules", rules) is None
    other = {"id": "oxi-p", "model": "x", "public_key": key("oxi-p").public_b64}
    assert run(chain, "pharm-admin", "register_device", other) is None
    assert run(chain, "patient-1", "bind", {"device": "oxi-p"}) is None
    mine = {"patient": "patient-1", "device": "oxi-1", "rules": []}
    assert run(chain, "pharm-admin", "set_rules", mine) == "NOT_AUTHORISED"  # not hosp's staff
    assert state(chain, "rules/oxi-1")["rules"][0]["id"] == "spo2-low"
    assert run(chain, "patient-1", "unbind", {"device": "oxi-1", "reason": "x"}) is None
    assert run(chain, "patient-1", "bind", {"device": "oxi-1"}) is None
    reset = state(chain, "rules/oxi-1")
    assert reset["rules"] == [] and reset["version"] == 3  # 1 bind, 2 rules, 3 the new bind
