"""Recruitment counts under differential privacy (ruleset r5 and later). Pure.

Suppressing small cells and refusing counts that differ from earlier ones by a small group
(``careledger.core.disclosure``, rulesets r0 to r4) was defeated from outside: one query about
a known person told a small cell from zero, three released counts combined (A + B - C) isolated
one patient, and the withholding reason itself ("small cell" or "overlap") pinned a target's age.

Here a site adds noise from the two-sided geometric distribution (the discrete Laplace
mechanism of Ghosh, Roughgarden and Sundararajan) with parameter ``alpha = exp(-epsilon)`` to
the true count, then withholds any noisy value below ``THRESHOLD`` with one uniform answer.
Whatever the rest of the population, a patient's presence changes the probability of every
possible answer by a factor of at most ``exp(epsilon)``: a single probe, any combination of
answers and the withheld answer itself are all covered, because post-processing cannot undo
the guarantee and epsilons add up over queries. The ledger charges each query's epsilon to a
budget per sponsor and site, so the total a sponsor can learn about anyone at a site is bounded
and auditable.

The noise is drawn by Bernoulli trials rather than by inverting a floating-point logarithm,
whose rounding leaks (Mironov, 2012); the loop is bounded, and reaching its bound (probability
below ``alpha ** MAX_TRIALS``) withholds the answer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

Uniform = Callable[[], float]
"""A source of uniform draws in [0, 1): ``random.SystemRandom().random`` on a node."""

EPSILON_MILLI = 500
"""The epsilon charged for one count, in thousandths (0.5)."""
DEFAULT_BUDGET_MILLI = 10_000
"""What a sponsor may spend at a site until the site's admin sets another limit (10.0)."""
THRESHOLD = 10
"""Noisy counts below this are withheld."""
WITHHELD = "withheld"
MAX_TRIALS = 100_000


@dataclass(frozen=True)
class Answer:
    """What a site says: a noisy count, or ``WITHHELD`` (and never why)."""

    count: int | None
    status: str  # "released" or WITHHELD

    def as_dict(self) -> dict[str, object]:
        return {"count": self.count, "status": self.status}


def alpha(epsilon_milli: int) -> float:
    if epsilon_milli <= 0:
        raise ValueError("epsilon must be positive")
    return math.exp(-epsilon_milli / 1000)


def _geometric(a: float, uniform: Uniform) -> int | None:
    """Failures before the first success of Bernoulli(1 - a) trials (None: bound reached)."""
    for failures in range(MAX_TRIALS):
        if uniform() >= a:
            return failures
    return None


def noise(epsilon_milli: int, uniform: Uniform) -> int | None:
    """A draw of the two-sided geometric distribution: the difference of two geometric ones."""
    a = alpha(epsilon_milli)
    up, down = _geometric(a, uniform), _geometric(a, uniform)
    if up is None or down is None:
        return None
    return up - down


def release(
    true_count: int, epsilon_milli: int, uniform: Uniform, *, threshold: int = THRESHOLD
) -> Answer:
    """The answer a site gives for ``true_count`` matching patients (``uniform``: its
    randomness, which must be unpredictable to the sponsor: a node passes the system's)."""
    drawn = noise(epsilon_milli, uniform)
    if drawn is None or true_count + drawn < threshold:
        return Answer(None, WITHHELD)
    return Answer(true_count + drawn, "released")


def probability(
    true_count: int, answer: int | None, epsilon_milli: int, *, threshold: int = THRESHOLD
) -> float:
    """The exact probability that ``release`` answers ``answer`` (None: withheld).

    Used to check the guarantee itself: for neighbouring counts n and n + 1, every answer's
    probabilities differ by a factor of at most exp(epsilon).
    """
    a = alpha(epsilon_milli)
    scale = (1 - a) / (1 + a)
    if answer is not None:
        if answer < threshold:
            return 0.0
        return scale * a ** abs(answer - true_count)
    # P(true_count + Z < threshold) = P(Z <= k) with k = threshold - true_count - 1
    k = threshold - true_count - 1
    if k < 0:
        return a ** (-k) / (1 + a)  # P(Z <= -m) = a^m / (1 + a) for m >= 0
    return 1 - a ** (k + 1) / (1 + a)  # 1 - P(Z >= k + 1)
