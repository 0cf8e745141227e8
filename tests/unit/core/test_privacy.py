"""Recruitment counts under differential privacy: the guarantee itself, and the three attacks
that defeated suppression (a single probe, A + B - C, the withholding reason)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from careledger.core import disclosure, privacy

EPS = privacy.EPSILON_MILLI
ANSWERS = [None, *range(privacy.THRESHOLD, 200)]


def test_probabilities_are_a_distribution() -> None:
    for n in (0, 1, 5, 9, 10, 11, 40):
        total = sum(privacy.probability(n, answer, EPS) for answer in [*ANSWERS, *range(200, 600)])
        assert total == pytest.approx(1.0, abs=1e-9)


@given(st.integers(min_value=0, max_value=150), st.sampled_from(ANSWERS))
def test_one_patient_changes_no_answer_by_more_than_e_to_the_epsilon(
    n: int, answer: int | None
) -> None:
    bound = math.exp(EPS / 1000) * (1 + 1e-9)
    with_them = privacy.probability(n + 1, answer, EPS)
    without = privacy.probability(n, answer, EPS)
    assert with_them <= bound * without
    assert without <= bound * with_them


def test_sampling_follows_the_exact_distribution() -> None:
    rng = random.Random(7)
    draws = [privacy.release(12, EPS, rng.random) for _ in range(20_000)]
    withheld = sum(d.count is None for d in draws) / len(draws)
    assert withheld == pytest.approx(privacy.probability(12, None, EPS), abs=0.01)
    exact = sum(d.count == 12 for d in draws) / len(draws)
    assert exact == pytest.approx(privacy.probability(12, 12, EPS), abs=0.01)


def test_the_single_query_probe_cannot_tell_one_person_from_none() -> None:
    """The old rule answered "withheld: small cell" for a cell of one and 0 for an empty one."""
    assert disclosure.decide(frozenset({1}), []) != disclosure.decide(frozenset(), [])
    rng = random.Random(11)
    one = [privacy.release(1, EPS, rng.random) for _ in range(5_000)]
    none = [privacy.release(0, EPS, rng.random) for _ in range(5_000)]
    # both are "withheld" all but a handful of times, and the rates differ by at most e^epsilon
    withheld_one = sum(a.count is None for a in one) / len(one)
    withheld_none = sum(a.count is None for a in none) / len(none)
    assert min(withheld_one, withheld_none) > 0.99
    assert withheld_none / withheld_one <= math.exp(EPS / 1000)


def test_a_plus_b_minus_c_no_longer_isolates_a_patient() -> None:
    """A = diabetics, B = over-70s, C = diabetics or over-70s: A + B - C counts the diabetic
    over-70s. With one target in that cell or none, the attacker guesses from the released
    counts; exactly it would always be right, here it is barely better than a coin."""
    rng = random.Random(2026)
    trials, right = 2_000, 0
    for i in range(trials):
        target_in_cell = i % 2 == 0
        a, b = 120 + target_in_cell, 80 + target_in_cell
        c = 200 + target_in_cell  # the union counts the target once
        counts = [privacy.release(n, EPS, rng.random).count for n in (a, b, c)]
        assert None not in counts  # large counts are released...
        guess = counts[0] + counts[1] - counts[2] >= 1  # ...yet do not add up to the truth
        right += guess == target_in_cell
    three_queries = math.exp(3 * EPS / 1000)
    assert right / trials <= three_queries / (1 + three_queries)  # the DP bound on guessing
    assert right / trials < 0.6


def test_withholding_never_says_why() -> None:
    """The old rule's reasons (small_cell or overlap) pinned a target's age."""
    rng = random.Random(3)
    reasons = {privacy.release(n, EPS, rng.random).status for n in range(0, 15) for _ in range(50)}
    assert reasons == {privacy.WITHHELD, "released"}
    assert disclosure.SMALL_CELL not in reasons and disclosure.OVERLAP not in reasons


def test_the_noise_loop_is_bounded() -> None:
    class Always(random.Random):
        def random(self) -> float:
            return 0.0  # every trial fails: the bound stops the loop and the answer is withheld

    assert privacy.release(500, EPS, Always().random) == privacy.Answer(None, privacy.WITHHELD)
    with pytest.raises(ValueError):
        privacy.alpha(0)
