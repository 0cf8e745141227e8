"""The pharmacist's verdict: never "OK to dispense" for a pack that must not be dispensed,
whatever the standard LMS answer says of its identifiers."""

from __future__ import annotations

from typing import Any

import pytest

from careledger.supply.verdict import dispense_verdict
from careledger.supply.verification import verify_unit

NOW = 1_796_000_000_000  # Dec 2026
UNIT = {"status": "in_stock", "flags": [], "lot": "AMX2601", "expiry": "281231"}


def verdict(unit: dict[str, Any] | None, **kw: Any) -> Any:
    expiry = unit["expiry"] if unit else "281231"
    data = verify_unit(unit, lot="AMX2601", expiry=expiry, time_ms=NOW)
    return dispense_verdict(unit, data, time_ms=NOW, **kw)


def test_a_genuine_pack_in_circulation_may_be_dispensed() -> None:
    assert verdict(dict(UNIT)).dispense is True


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"flags": ["recalled"]}, "Recalled by Acme Pharmaceuticals on 3 Dec 2026: lot AMX2601"),
        ({"flags": ["suspect"]}, "quarantined"),
        ({"flags": ["illegitimate"]}, "illegitimate"),
        ({"expiry": "240101"}, "expired"),
        ({"status": "dispensed", "holder_location": "0614141000012"}, "already dispensed on"),
        ({"status": "decommissioned"}, "out of circulation"),
        ({"status": "destroyed"}, "out of circulation"),
    ],
)
def test_a_pack_that_must_not_be_dispensed_never_is(change: dict[str, Any], words: str) -> None:
    unit = {**UNIT, **change}
    recall = {"lots": ["AMX2601"], "by": "acme-pharma", "time": 1_796_300_000_000}
    said = verdict(unit, recall=recall, recalled_by="Acme Pharmaceuticals", dispensed_ms=NOW)
    assert said.dispense is False
    assert words in said.reason
    assert said.as_dict()["headline"] == "Do not dispense"


def test_the_standard_answer_may_say_verified_while_the_verdict_says_no() -> None:
    recalled = {**UNIT, "flags": ["recalled"]}
    data = verify_unit(recalled, lot="AMX2601", expiry="281231", time_ms=NOW)
    assert data == {"verified": True, "additionalInfo": "Recalled"}  # as GS1 defines it
    assert dispense_verdict(recalled, data, time_ms=NOW).dispense is False


def test_unknown_and_mismatched_packs() -> None:
    assert "counterfeit" in verdict(None).reason
    mismatch = verify_unit(UNIT, lot="OTHER", expiry="281231", time_ms=NOW)
    said = dispense_verdict({**UNIT, "status": "dispensed"}, mismatch, time_ms=NOW)
    assert not said.dispense and "does not match" in said.reason  # nothing about the pack
