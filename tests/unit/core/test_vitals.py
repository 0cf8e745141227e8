"""Vital-sign readings: compact batches and FHIR Observations map one to one."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger.core.vitals import (
    BP_PANEL,
    VITALS,
    Reading,
    ReadingError,
    from_compact,
    from_json,
    from_observation,
    parse_readings,
    to_observation,
)
from careledger.fhir.validate import validate_resource

T0 = 1_764_000_000_000


def test_a_compact_batch_maps_to_vital_signs_observations() -> None:
    batch = {
        "t0": T0,
        "codes": ["8867-4", "59408-5", BP_PANEL],
        "rows": [[0, 72, 97.5, [121, 79]], [60_000, 75, None, None]],
    }
    readings = from_compact(batch)
    assert readings == [
        Reading("8867-4", T0, 72.0),
        Reading("59408-5", T0, 97.5),
        Reading(BP_PANEL, T0, (121.0, 79.0)),
        Reading("8867-4", T0 + 60_000, 75.0),
    ]
    for reading in readings:
        obs = to_observation(reading, patient="pt-1", device="dev-1")
        validate_resource(obs)  # a valid FHIR R4 Observation
        assert from_observation(obs) == reading
    bp = to_observation(readings[2], patient="pt-1", device="dev-1")
    assert [c["code"]["coding"][0]["code"] for c in bp["component"]] == ["8480-6", "8462-4"]
    assert parse_readings({"compact": batch}) == readings
    assert parse_readings(
        {"observations": [to_observation(readings[0], patient="p", device="d")]}
    ) == [readings[0]]


@pytest.mark.parametrize(
    ("batch", "code"),
    [
        ({"t0": T0, "codes": ["1234-5"], "rows": [[0, 1]]}, "UNKNOWN_CODE"),
        ({"t0": T0, "codes": ["8867-4"], "rows": [[0, 1, 2]]}, "BAD_BATCH"),
        ({"t0": T0, "codes": ["8867-4"], "rows": [[-5, 60]]}, "BAD_BATCH"),
        ({"t0": T0, "codes": ["8867-4"], "rows": [[0, 900]]}, "IMPLAUSIBLE"),
        ({"t0": T0, "codes": ["59408-5"], "rows": [[0, "97"]]}, "BAD_READING"),
        ({"t0": T0, "codes": [BP_PANEL], "rows": [[0, [120]]]}, "BAD_READING"),
        ({"t0": "now", "codes": ["8867-4"], "rows": [[0, 60]]}, "BAD_READING"),
        ({"t0": T0, "codes": ["8867-4"], "rows": []}, "BAD_BATCH"),
    ],
)
def test_bad_batches_are_refused_with_a_code(batch: dict[str, Any], code: str) -> None:
    with pytest.raises(ReadingError) as err:
        from_compact(batch)
    assert err.value.code == code


def test_observations_need_loinc_time_zone_and_both_pressures() -> None:
    obs = to_observation(Reading("8867-4", T0, 60.0), patient="p", device="d")
    with pytest.raises(ReadingError):
        from_observation({**obs, "effectiveDateTime": "2026-01-01T10:00:00"})
    with pytest.raises(ReadingError):
        from_observation(
            {**obs, "code": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]}}
        )
    bp = to_observation(Reading(BP_PANEL, T0, (120.0, 80.0)), patient="p", device="d")
    with pytest.raises(ReadingError):
        from_observation({**bp, "component": bp["component"][:1]})
    with pytest.raises(ReadingError):
        parse_readings({"compact": {}, "observations": []})


codes = st.sampled_from(sorted(VITALS))


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    code = draw(codes)
    low, high = VITALS[code][2], VITALS[code][3]
    value = st.floats(low, high, allow_nan=False)
    when = draw(st.integers(0, 2**42))
    if code == BP_PANEL:
        return Reading(code, when, (draw(value), draw(value)))
    return Reading(code, when, draw(value))


@given(st.lists(readings(), min_size=1, max_size=20))
def test_readings_round_trip_through_fhir_json_and_leaf_bytes(items: list[Reading]) -> None:
    for reading in items:
        assert from_observation(to_observation(reading, patient="p", device="d")) == reading
    assert from_json([r.as_json() for r in items]) == items
    leaves = {r.leaf_bytes("d") for r in items}
    assert len(leaves) == len(set(items))  # distinct readings, distinct leaves
