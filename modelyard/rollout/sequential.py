"""Anytime-valid comparisons for rollouts: confidence sequences that may be checked after every request.

A rollout compares a challenger with the champion on a stream of observations and may look at the result as
often as it likes. A fixed-sample interval re-checked after every request inflates its error rate with every
look; a *confidence sequence* does not: with probability at least 1 - alpha, the true mean lies inside the
interval at every time at once, so a decision taken the first time the interval leaves a region has error
rate at most alpha however often it looks.

Both tests here rest on nonnegative (super)martingales, and Ville's inequality bounds by alpha the chance
that such a process ever reaches 1 / alpha; this is the documented choice for every rollout decision:

- ``Comparison``, for bounded differences (a paired accuracy difference per request), is the predictable
  plug-in empirical-Bernstein confidence sequence (Waudby-Smith and Ramdas, JRSS B 2024), the inversion of
  a mixture of betting martingales: with probability at least 1 - alpha the mean lies inside the interval at
  every time at once, and the interval narrows with the observations' own variance.
- ``RateTest``, for indicators whose allowed rate is small (errors, flips, slow answers), is a
  **beta-binomial mixture SPRT** of "the rate is at most p0" against rates above it (and, for promotion, of
  "at least p0" against rates below): far more powerful than a bounded-difference boundary at rates near 0.

Each signal is a stream of bounded numbers whose mean is "how much worse the challenger is":
- a paired difference per request answered by both (challenger correct minus champion correct, negated so
  that positive is worse; in [-1, 1]);
- an indicator per request (an error, a flip against the champion, a latency over the champion's p99;
  in [0, 1]) compared with a fixed rate.

``OneLook`` is the odd one out: a test taken once on a fixed window (the rollout's input drift), so it needs
no protection against repeated looks; it holds its level as long as it is never taken a second time.

``Comparison.decision`` says "worse" once the lower confidence bound exceeds the margin (roll back),
"non-inferior" once the upper bound is below the margin (eligible for promotion, after a minimum number of
observations), and "continue" otherwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.errors import ConfigError

Decision = Literal["worse", "non-inferior", "continue"]


def _check_alpha(alpha: float) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 < alpha < 1:
        raise ConfigError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


@dataclass
class Comparison:
    """One signal's running comparison as a confidence sequence for its mean. Observations lie in
    [``low``, ``high``]; their mean is how much worse the challenger is (positive = worse). ``margin`` is the
    largest acceptable mean.

    The confidence sequence is the predictable plug-in empirical-Bernstein one of Waudby-Smith and Ramdas
    ("Estimating means of bounded random variables by betting", JRSS B 2024, Theorem 2): it adapts to the
    observations' variance (a paired accuracy difference is mostly zeros), is valid at every look, and costs
    O(1) per observation."""

    name: str
    margin: float
    low: float = -1.0
    high: float = 1.0
    alpha: float = 0.05
    n: int = 0
    total: float = 0.0
    _lam_sum: float = 0.0
    _lam_x_sum: float = 0.0
    _penalty: float = 0.0
    _x_sum: float = 0.0
    _sq_dev_sum: float = 0.0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if not self.high > self.low:
            raise ConfigError(f"{self.name}: the observation range [{self.low}, {self.high}] is empty")
        if not math.isfinite(self.margin):
            raise ConfigError(f"{self.name}: the margin must be a finite number, got {self.margin!r}")

    def _unit(self, value: float) -> float:
        return (value - self.low) / (self.high - self.low)

    def add(self, value: float) -> None:
        if not self.low <= value <= self.high:
            raise ConfigError(f"{self.name}: observation {value!r} is outside [{self.low}, {self.high}]")
        x = self._unit(float(value))
        t = self.n + 1
        mu_prev = (0.5 + self._x_sum) / t
        sigma2_prev = (0.25 + self._sq_dev_sum) / t
        lam = min(math.sqrt(2.0 * math.log(2.0 / self.alpha) / (sigma2_prev * t * math.log(t + 1.0))), 0.5)
        self._lam_sum += lam
        self._lam_x_sum += lam * x
        self._penalty += 4.0 * (x - mu_prev) ** 2 * (-math.log1p(-lam) - lam) / 4.0
        self._x_sum += x
        self._sq_dev_sum += (x - (0.5 + self._x_sum) / (t + 1)) ** 2
        self.n = t
        self.total += float(value)

    def extend(self, values: list[float]) -> None:
        for v in values:
            self.add(v)

    @property
    def mean(self) -> float | None:
        return None if self.n == 0 else self.total / self.n

    def interval(self) -> tuple[float, float]:
        """The confidence sequence's current interval for the mean, in the observations' units."""
        if self.n == 0:
            return self.low, self.high
        center = self._lam_x_sum / self._lam_sum
        r = (math.log(2.0 / self.alpha) + self._penalty) / self._lam_sum
        width = self.high - self.low
        lo, hi = max(0.0, center - r), min(1.0, center + r)
        return self.low + lo * width, self.low + hi * width

    def decision(self, *, min_n: int = 0) -> Decision:
        lo, hi = self.interval()
        if lo > self.margin:
            return "worse"
        if hi < self.margin and self.n >= min_n:
            return "non-inferior"
        return "continue"

    def summary(self) -> dict[str, float | int | str | None]:
        lo, hi = self.interval()
        return {
            "signal": self.name,
            "n": self.n,
            "mean": self.mean,
            "low": lo,
            "high": hi,
            "margin": self.margin,
            "alpha": self.alpha,
            "method": "empirical-Bernstein confidence sequence (Waudby-Smith & Ramdas), valid at every look",
        }


def paired_accuracy(challenger_correct: bool, champion_correct: bool) -> float:
    """How much worse the challenger is on one request both answered: 1 when only the champion was right,
    -1 when only the challenger was, 0 otherwise."""
    return float(champion_correct) - float(challenger_correct)


def excess_rate(indicator: bool, baseline_rate: float) -> float:
    """An indicator (an error, a flip, a slow answer) centred on the rate it is allowed: its mean is the
    excess over ``baseline_rate``; the value lies in [-baseline_rate, 1 - baseline_rate]."""
    return float(indicator) - baseline_rate


def _log_tail_integral(a: float, b: float, p0: float, *, upper: bool) -> float:
    """log of the integral of p^(a-1) (1-p)^(b-1) over (p0, 1) (``upper``) or (0, p0)."""
    from scipy.special import betainc, betaincc, betaln

    part = float(betaincc(a, b, p0) if upper else betainc(a, b, p0))
    return float(betaln(a, b)) + (math.log(part) if part > 0 else -math.inf)


@dataclass
class RateTest:
    """A beta-binomial mixture SPRT on a stream of indicators (1 = the bad event: an error, a flip, a slow
    answer). ``limit`` is the largest acceptable rate. "worse" once the evidence that the rate exceeds
    ``limit`` reaches 1 / alpha; "non-inferior" once the evidence that it is below ``limit`` does (and at
    least ``min_n`` were seen). The mixing prior is Beta(``prior_a``, ``prior_b``) restricted to each side of
    ``limit``; each side's error rate is at most alpha however often it is checked."""

    name: str
    limit: float
    alpha: float = 0.05
    prior_a: float = 1.0
    prior_b: float = 1.0
    n: int = 0
    k: int = 0

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)
        if not 0 < self.limit < 1:
            raise ConfigError(f"{self.name}: the rate limit must be in (0, 1), got {self.limit!r}")

    def add(self, event: bool) -> None:
        self.n += 1
        self.k += int(bool(event))

    def _log_evidence(self, *, upper: bool) -> float:
        """log of the mixture likelihood ratio against the rate ``limit`` (prior on one side of it)."""
        return _log_evidence(self.k, self.n, self.limit, self.prior_a, self.prior_b, upper=upper)

    def decision(self, *, min_n: int = 0) -> Decision:
        k_worse, k_ok = _boundaries(self.n, self.limit, self.alpha, self.prior_a, self.prior_b)
        if self.k >= k_worse:
            return "worse"
        if self.n >= min_n and self.k <= k_ok:
            return "non-inferior"
        return "continue"

    @property
    def rate(self) -> float | None:
        return None if self.n == 0 else self.k / self.n

    def summary(self) -> dict[str, float | int | str | None]:
        return {
            "signal": self.name,
            "n": self.n,
            "events": self.k,
            "rate": self.rate,
            "limit": self.limit,
            "alpha": self.alpha,
            "log_evidence_worse": self._log_evidence(upper=True),
            "log_evidence_non_inferior": self._log_evidence(upper=False),
            "method": "beta-binomial mixture SPRT, valid at every look",
        }


def _log_evidence(k: int, n: int, p0: float, a: float, b: float, *, upper: bool) -> float:
    num = _log_tail_integral(a + k, b + n - k, p0, upper=upper)
    den = _log_tail_integral(a, b, p0, upper=upper)
    null = k * math.log(p0) + (n - k) * math.log1p(-p0)
    return num - den - null


@functools.lru_cache(maxsize=262_144)
def _boundaries(n: int, p0: float, alpha: float, a: float, b: float) -> tuple[int, int]:
    """After ``n`` indicators: the fewest events that make the "worse" evidence reach 1 / alpha (n + 1 when
    none do), and the most events that still make the "non-inferior" evidence reach it (-1 when none do).
    The first evidence grows with the events, the second shrinks, so both are found by bisection; cached,
    since every rollout with the same limit and alpha meets the same boundaries."""
    threshold = math.log(1.0 / alpha)

    def worse(k: int) -> bool:
        return _log_evidence(k, n, p0, a, b, upper=True) >= threshold

    def ok(k: int) -> bool:
        return _log_evidence(k, n, p0, a, b, upper=False) >= threshold

    # Neither evidence can reach 1 / alpha on the wrong side of n * p0 (every likelihood ratio there is at most
    # 1, the binomial likelihood being unimodal at k / n), so each search keeps to its own side, where the
    # tail integrals hold the bulk of the mass and do not underflow.
    split = n * p0
    lo, hi = max(0, math.ceil(split)), n + 1  # smallest k with worse(k); n + 1 when none
    while lo < hi:
        mid = (lo + hi) // 2
        if worse(mid):
            hi = mid
        else:
            lo = mid + 1
    k_worse = lo
    lo, hi = -1, min(n, math.floor(split))  # largest k with ok(k); -1 when none
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return k_worse, lo


@dataclass
class OneLook:
    """A test taken once, on one fixed window, at level ``alpha`` (the rollout's input drift check): "continue"
    until :meth:`record` gives its result, then "worse" on an alarm and "non-inferior" otherwise, for good.
    ``n`` is the window's size (0 before the look); ``details`` the test's figures (statistic, threshold, ...)."""

    name: str
    alpha: float = 0.05
    n: int = 0
    alarm: bool | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_alpha(self.alpha)

    @property
    def looked(self) -> bool:
        return self.alarm is not None

    def record(self, *, alarm: bool, n: int, **details: Any) -> None:
        """The look's result; a second look is refused (it would spend the level again)."""
        if self.alarm is not None:
            raise ConfigError(f"{self.name}: the one look was taken already; a second would void its level")
        self.alarm, self.n, self.details = bool(alarm), int(n), dict(details)

    def decision(self, *, min_n: int = 0) -> Decision:
        if self.alarm is None:
            return "continue"
        return "worse" if self.alarm else "non-inferior"

    def summary(self) -> dict[str, Any]:
        return {
            "signal": self.name,
            "n": self.n,
            "alarm": self.alarm,
            "alpha": self.alpha,
            **self.details,
            "method": "one look at a fixed window (no repeated looks to correct for)",
        }
