"""DSCSA verification answers, from ledger unit state, in the GS1 LMS shape."""

from __future__ import annotations

from typing import Any

import pytest

from careledger.supply.verification import verify_unit
from tests.support.chain import GENESIS_TIME

UNIT = {
    "gtin": "00614141123452",
    "serial": "S1",
    "lot": "L1",
    "expiry": "271231",
    "status": "commissioned",
    "flags": [],
}


def answer(
    unit: dict[str, Any] | None = UNIT,
    *,
    lot: str | None = "L1",
    expiry: str | None = "271231",
    time_ms: int = GENESIS_TIME,
) -> dict[str, Any]:
    return verify_unit(unit, lot=lot, expiry=expiry, time_ms=time_ms)


def test_genuine_pack_verifies() -> None:
    assert answer() == {"verified": True}


def test_verified_only_when_all_four_match() -> None:
    """GTIN and serial alone do not verify a pack: a copied serial on a pack of another lot
    would pass (the attack); the standard's product identifier is all four."""
    assert answer(lot=None, expiry=None) == {
        "verified": False,
        "verificationFailureReason": "No_match_GTIN_Serial_Lot_Expiry",
    }
    assert answer(lot=None)["verificationFailureReason"] == "No_match_GTIN_Serial_Lot"
    assert answer(expiry=None)["verificationFailureReason"] == "No_match_GTIN_Serial_Expiry"


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"unit": None}, "No_match_GTIN_Serial"),
        ({"lot": "L2"}, "No_match_GTIN_Serial_Lot"),
        ({"expiry": "280101"}, "No_match_GTIN_Serial_Expiry"),
        ({"lot": "L2", "expiry": "280101"}, "No_match_GTIN_Serial_Lot_Expiry"),
        ({"unit": {**UNIT, "status": "decommissioned"}}, "No_reason_provided"),
        ({"unit": {**UNIT, "status": "destroyed"}}, "No_reason_provided"),
    ],
)
def test_failure_reasons(kw: dict[str, Any], reason: str) -> None:
    data = answer(**kw)
    assert data == {"verified": False, "verificationFailureReason": reason}


@pytest.mark.parametrize(
    ("flags", "verified", "info"),
    [
        (["recalled"], True, "Recalled"),
        (["suspect"], True, "Suspect"),
        (["illegitimate"], False, "Illegitimate"),
        (["illegitimate", "recalled"], False, "Illegitimate"),
        (["recalled", "suspect"], True, "Recalled"),
    ],
)
def test_flags_as_additional_info(flags: list[str], verified: bool, info: str) -> None:
    assert answer({**UNIT, "flags": flags}) == {"verified": verified, "additionalInfo": info}


def test_expired_pack() -> None:
    past = {**UNIT, "expiry": "200101"}
    assert answer(past, expiry="200101") == {"verified": True, "additionalInfo": "Expired"}
    end_of_month = {**UNIT, "expiry": "231100"}  # day 00: valid through the end of November 2023
    assert answer(end_of_month, expiry="231100")["verified"] is True
    assert "additionalInfo" not in answer(end_of_month, expiry="231100")
