"""Recruitment counts: a suppressed cell never leaks through differencing two queries."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from careledger.core.disclosure import MIN_CELL, OVERLAP, SMALL_CELL, Release, decide, small


@dataclass(frozen=True)
class Person:
    age: int
    diabetic: bool
    smoker: bool


def population(people: list[Person], query: tuple[int, int, bool | None, bool | None]) -> set[int]:
    low, high, diabetic, smoker = query
    return {
        i
        for i, p in enumerate(people)
        if low <= p.age <= high
        and (diabetic is None or p.diabetic == diabetic)
        and (smoker is None or p.smoker == smoker)
    }


class Site:
    """A custodian answering queries, keeping every population it released."""

    def __init__(self, *, audit: bool = True) -> None:
        self.audit = audit
        self.released: list[tuple[int, set[int]]] = []

    def ask(self, matched: set[int]) -> Release:
        if self.audit:
            answer = decide(matched, (p for _, p in self.released))
        else:  # suppression alone
            answer = (
                Release(None, SMALL_CELL) if small(len(matched)) else Release(len(matched), None)
            )
        if answer.count is not None:
            self.released.append((answer.count, matched))
        return answer


def leaked_cells(released: list[tuple[int, set[int]]]) -> list[int]:
    """Small groups an attacker isolates by subtracting one released count from another."""
    leaks = []
    for a, pa in released:
        for b, pb in released:
            if pb < pa and small(a - b):  # pb nested in pa: a - b people are exactly pa - pb
                leaks.append(a - b)
            for part in (pa - pb, pb - pa):
                if small(len(part)):
                    leaks.append(len(part))
    return leaks


def test_the_classic_differencing_attack_is_refused() -> None:
    people = (
        [Person(50, True, False)] * 9
        + [Person(75, True, False)] * 3
        + [Person(40, False, True)] * 8
    )
    diabetic = population(people, (0, 150, True, None))
    diabetic_under_71 = population(people, (0, 70, True, None))
    naive = Site(audit=False)
    assert naive.ask(diabetic).count == 12 and naive.ask(diabetic_under_71).count == 9
    assert set(leaked_cells(naive.released)) == {3}, "suppression alone leaks the 3 over-70s"
    site = Site()
    assert site.ask(diabetic) == Release(12, None)
    assert site.ask(diabetic_under_71) == Release(None, OVERLAP)
    assert site.ask(population(people, (71, 150, True, None))) == Release(None, SMALL_CELL)
    assert site.ask(population(people, (0, 150, None, None))) == Release(20, None)
    # 20 - 12 = 8 non-diabetics: a group of at least MIN_CELL may be learnt
    assert leaked_cells(site.released) == []


people_strategy = st.lists(
    st.builds(Person, st.integers(0, 100), st.booleans(), st.booleans()), min_size=0, max_size=60
)
queries = st.lists(
    st.tuples(
        st.integers(0, 100),
        st.integers(0, 100),
        st.none() | st.booleans(),
        st.none() | st.booleans(),
    ),
    min_size=1,
    max_size=25,
)


@settings(max_examples=300, deadline=None)
@given(people_strategy, queries)
def test_no_two_released_counts_isolate_a_small_group(
    people: list[Person], asked: list[tuple[int, int, bool | None, bool | None]]
) -> None:
    site = Site()
    for query in asked:
        matched = population(people, query)
        answer = site.ask(matched)
        assert answer.count is None or not small(answer.count)
        assert answer.count is None or answer.count == len(matched)
    assert leaked_cells(site.released) == []


@settings(max_examples=200, deadline=None)
@given(people_strategy, queries)
def test_without_the_audit_the_same_queries_can_leak(
    people: list[Person], asked: list[tuple[int, int, bool | None, bool | None]]
) -> None:
    """The property above is not vacuous: suppression alone fails it whenever a leak exists."""
    naive, site = Site(audit=False), Site()
    for query in asked:
        matched = population(people, query)
        naive.ask(matched)
        site.ask(matched)
    assert leaked_cells(site.released) == []
    if leaked_cells(naive.released):
        assert len(site.released) < len(naive.released)


def test_min_cell_is_five() -> None:
    assert MIN_CELL == 5 and small(1) and small(4) and not small(0) and not small(5)
