"""GS1 element strings as scanners send them, to the identifiers verification needs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger.errors import ValidationError
from careledger.supply.identifiers import GS, parse_element_string

GTIN = "00312345100018"


def test_bracketed_and_raw_forms_agree() -> None:
    human = f"(01){GTIN}(21)AMX26010010(10)AMX2601(17)271130"
    raw = f"]d201{GTIN}17271130" + f"10AMX2601{GS}21AMX26010010"
    expected = {"01": GTIN, "21": "AMX26010010", "10": "AMX2601", "17": "271130"}
    assert parse_element_string(human) == expected
    assert parse_element_string(raw) == expected


@pytest.mark.parametrize(
    "bad", ["", "(01)123", "(99)x", "01123", f"01{GTIN}21", f"01{GTIN}99abc", "(01)1(21"]
)
def test_malformed_element_strings_are_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as refused:
        parse_element_string(bad)
    assert refused.value.code == "MALFORMED_ELEMENT_STRING"


serials = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ0123456789-", min_size=1, max_size=20)


@given(serial=serials, lot=serials, expiry=st.from_regex(r"\A[0-9]{6}\Z"))
def test_raw_and_bracketed_round_trip(serial: str, lot: str, expiry: str) -> None:
    raw = f"01{GTIN}17{expiry}10{lot}{GS}21{serial}"
    human = f"(01){GTIN}(17){expiry}(10){lot}(21){serial}"
    assert parse_element_string(raw) == parse_element_string(human)
    assert parse_element_string(raw)["21"] == serial
