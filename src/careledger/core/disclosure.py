"""Statistical disclosure control for recruitment counts. Pure.

A count below ``MIN_CELL`` (other than zero) could single people out, so it is never released.
Suppression alone is not enough: a sponsor who learns 12 patients match "diabetes" and 9 match
"diabetes, aged 70 or less" has learnt that 3 diabetics are over 70, a cell that was never
released. So a site also keeps the populations behind the counts it has released, and refuses
a new count whenever it would differ from any of them by a small group, in either direction:
``0 < |P minus Q| < MIN_CELL`` or ``0 < |Q minus P| < MIN_CELL``. Then the difference of any two
released counts is made of groups of at least ``MIN_CELL`` people, or of none.

Every released population is kept, whoever asked: sponsors may pool what they learn. The
check is pairwise, which is what two queries can reveal; attacks combining three or more
counts are bounded by the same rule only in part (see docs/trials.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass

MIN_CELL = 5
SMALL_CELL = "small_cell"
OVERLAP = "overlap"
SUPPRESSED = frozenset({SMALL_CELL, OVERLAP, "not_computable"})


@dataclass(frozen=True)
class Release:
    """What a site may say: a count, or nothing and why."""

    count: int | None
    reason: str | None


def small(n: int, min_cell: int = MIN_CELL) -> bool:
    return 0 < n < min_cell


def decide(matched: Set[int], released: Iterable[Set[int]], *, min_cell: int = MIN_CELL) -> Release:
    """Whether ``matched`` may be released as a count, given what was released before."""
    if small(len(matched), min_cell):
        return Release(None, SMALL_CELL)
    for prior in released:
        if small(len(prior - matched), min_cell) or small(len(matched - prior), min_cell):
            return Release(None, OVERLAP)
    return Release(len(matched), None)
