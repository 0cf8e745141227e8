"""A member's write budget: a burst, then a steady rate, in transactions and in bytes."""

from __future__ import annotations

import pytest

from careledger.errors import RateLimited
from careledger.write_budget import Budget, WriteBudget


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_then_the_steady_rate() -> None:
    clock = Clock()
    budget = WriteBudget(Budget(tx_burst=10, tx_per_second=2, bytes_burst=10_000), clock)
    budget.charge([("alice", 100)] * 10)
    with pytest.raises(RateLimited) as refused:
        budget.charge([("alice", 100)])
    assert refused.value.retry_after == 1 and refused.value.http_status == 429
    budget.charge([("bob", 100)])  # another member is not held back
    clock.now += 1.0
    budget.charge([("alice", 100)] * 2)  # two a second come back
    with pytest.raises(RateLimited):
        budget.charge([("alice", 100)])


def test_bytes_are_budgeted_too_and_a_refused_request_takes_nothing() -> None:
    clock = Clock()
    budget = WriteBudget(Budget(tx_burst=1000, bytes_burst=1000, bytes_per_second=100), clock)
    with pytest.raises(RateLimited) as too_big:
        budget.charge([("alice", 600), ("alice", 600)])
    assert "split" in too_big.value.message
    budget.charge([("alice", 1000)])  # the refused request took nothing
    with pytest.raises(RateLimited) as later:
        budget.charge([("alice", 300)])
    assert later.value.retry_after == 3
