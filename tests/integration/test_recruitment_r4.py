"""Recruitment under rulesets r0 to r4, on a chain that started on r4: counts in the clear, small
cells suppressed and counts that differ from a released one by a small group refused. Chains
that run these rulesets keep this behaviour; r5 replaced it with differential privacy
(test_trials_api)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.nodes import demo_node, login, serving
from tests.support.recruitment import DIABETES, SITES, ask, new_patient

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("recruitment-r4") / "node"
    demo_node(data, with_records=False, with_supply=False, ruleset="r4")
    with serving(data) as server:
        clinician = login(server, data / "keys" / "dr-ana-silva.key")
        sponsor = login(server, data / "keys" / "trialco-admin.key")
        for _ in range(9):
            new_patient(clinician, born="1975-03-01", diabetic=True)
        for _ in range(3):
            new_patient(clinician, born="1950-03-01", diabetic=True)
        for _ in range(6):
            new_patient(clinician, born="1980-03-01", diabetic=False)
        try:
            yield {"sponsor": sponsor}
        finally:
            clinician.close()
            sponsor.close()


def test_counts_per_site_and_a_suppressed_cell_never_leaks_by_differencing(
    world: dict[str, Any],
) -> None:
    sponsor = world["sponsor"]
    everyone = ask(sponsor, {"criteria": DIABETES, "sites": SITES})
    assert everyone["answers"]["st-mary"] == {"count": 12, "reason": None}  # of 18
    assert everyone["pending"] == ["northside-clinic"]  # no node of its own answers here
    younger = ask(sponsor, {"criteria": {**DIABETES, "age": [0, 70]}, "sites": SITES})
    assert younger["answers"]["st-mary"]["count"] is None
    assert younger["answers"]["st-mary"]["reason"] == "overlap"  # 12 - 9 would reveal 3
    over_70 = ask(sponsor, {"criteria": {**DIABETES, "age": [71, 150]}, "sites": ["st-mary"]})
    assert over_70["answers"]["st-mary"]["reason"] == "small_cell"
    everybody = ask(sponsor, {"criteria": {"age": [18, 150]}, "sites": ["st-mary"]})
    assert everybody["answers"]["st-mary"]["count"] == 18  # differs from 12 by 6: a group of 6
    non_diabetic = {"age": [18, 150], "exclude_conditions": DIABETES["conditions"]}
    few = ask(sponsor, {"criteria": non_diabetic, "sites": ["st-mary"]})
    assert few["answers"]["st-mary"]["count"] == 6
    # everyone but the six without diabetes = the 12 already released: no small group either
    counts = [
        a["answers"]["st-mary"]["count"] for a in (everyone, younger, over_70, everybody, few)
    ]
    assert counts == [12, None, None, 18, 6]


def test_everyone_but_a_small_group_is_withheld(world: dict[str, Any]) -> None:
    """The whole population counts as released: 'all but those born in 1950' would reveal 3."""
    sponsor = world["sponsor"]
    but_older = {"age": [0, 70]}
    answer = ask(sponsor, {"criteria": but_older, "sites": ["st-mary"]})
    assert answer["answers"]["st-mary"] == {"count": None, "reason": "overlap"}
