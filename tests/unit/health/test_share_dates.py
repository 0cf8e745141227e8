"""A link limited to dates serves records whose clinical date R4 places in the range, and
leaves out those it cannot place (not: keeps them, which would share old history silently)."""

from __future__ import annotations

import pytest

from careledger.health.share_links import _clinical_day, _dated_within


@pytest.mark.parametrize(
    ("resource", "day"),
    [
        ({"effectiveDateTime": "2024-03-05T10:15:00+01:00"}, "2024-03-05"),
        ({"effectiveInstant": "2024-03-05T10:15:00Z"}, "2024-03-05"),
        ({"onsetPeriod": {"start": "2010-01-01"}}, "2010-01-01"),
        ({"performedPeriod": {"end": "2011-06"}}, "2011-06"),
        ({"occurrenceDateTime": "2019"}, "2019"),
        ({"onsetString": "childhood"}, None),
        ({}, None),
    ],
)
def test_the_clinical_date_of_a_record(resource: dict, day: str | None) -> None:
    assert _clinical_day(resource) == day


def test_a_date_range_keeps_only_what_it_can_place_inside() -> None:
    assert _dated_within({"onsetPeriod": {"start": "2031-02-01"}}, "2030-01-01", None)
    assert not _dated_within({"onsetPeriod": {"start": "2010-01-01"}}, "2030-01-01", None)
    assert not _dated_within({"onsetString": "childhood"}, "2030-01-01", None)
    assert not _dated_within({}, None, "2020-12-31")
    assert _dated_within({}, None, None)  # no range: everything chosen
    assert _dated_within({"occurrenceDateTime": "2030"}, "2030-01-01", "2030-12-31")
