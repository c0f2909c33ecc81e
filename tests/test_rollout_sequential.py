"""The rollout's sequential tests keep their error rate however often they are checked, and catch a worse
challenger within a bounded number of requests (fixed seeds: the rates below are exact for these streams)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelyard.errors import ConfigError
from modelyard.rollout.sequential import Comparison, RateTest, excess_rate, paired_accuracy

ALPHA = 0.05


def _run_comparison(values: np.ndarray, margin: float) -> tuple[str, int]:
    c = Comparison("accuracy", margin=margin, alpha=ALPHA)
    for i, v in enumerate(values):
        c.add(float(v))
        d = c.decision()
        if d != "continue":
            return d, i + 1
    return "continue", len(values)


def _paired(rng: np.random.Generator, only_champion: float, only_challenger: float, n: int) -> np.ndarray:
    p = [only_champion, only_challenger, 1.0 - only_champion - only_challenger]
    return rng.choice([1.0, -1.0, 0.0], p=p, size=n)


def test_an_identical_challenger_is_not_called_worse_at_any_look() -> None:
    rng = np.random.default_rng(0)
    # the hardest case: the true difference sits exactly on the margin (0), checked after every request
    outcomes = [_run_comparison(_paired(rng, 0.02, 0.02, 3000), margin=0.0)[0] for _ in range(200)]
    assert outcomes.count("worse") / len(outcomes) <= ALPHA


def test_a_naive_interval_rechecked_at_every_look_would_cry_wolf() -> None:
    """The reason for a confidence sequence: a fixed-sample 95% interval checked after every request calls an
    identical challenger worse far more often than 5% on the same streams."""
    rng = np.random.default_rng(0)
    naive = 0
    for _ in range(200):
        d = _paired(rng, 0.02, 0.02, 3000)
        n = np.arange(1, len(d) + 1)
        mean = np.cumsum(d) / n
        var = np.maximum(np.cumsum(d * d) / n - mean**2, 1e-12)
        lower = mean - 1.959964 * np.sqrt(var / n)
        naive += bool(np.any((lower > 0) & (n >= 30)))
    assert naive / 200 > 3 * ALPHA


def test_a_three_point_drop_is_caught() -> None:
    rng = np.random.default_rng(1)
    delays = []
    for _ in range(50):
        decision, n = _run_comparison(_paired(rng, 0.05, 0.02, 12_000), margin=0.01)
        assert decision == "worse"
        delays.append(n)
    assert float(np.median(delays)) < 4000  # about 2,100 labelled requests at 7% disagreement (measured)


def test_a_good_challenger_becomes_non_inferior() -> None:
    rng = np.random.default_rng(2)
    decision, n = _run_comparison(_paired(rng, 0.01, 0.01, 20_000), margin=0.01)
    assert decision == "non-inferior" and n < 20_000


def test_rate_test_catches_five_percent_flips_quickly_and_clears_none() -> None:
    rng = np.random.default_rng(3)
    delays = []
    for _ in range(50):
        r = RateTest("flip_rate", limit=0.02, alpha=ALPHA)
        for i, event in enumerate(rng.random(5000) < 0.05):
            r.add(bool(event))
            if r.decision() == "worse":
                delays.append(i + 1)
                break
    assert len(delays) == 50 and float(np.median(delays)) < 600  # about 270 (measured)
    clean = RateTest("flip_rate", limit=0.02, alpha=ALPHA)
    for _ in range(1000):
        clean.add(False)
        if clean.decision(min_n=100) != "continue":
            break
    assert clean.decision(min_n=100) == "non-inferior" and clean.n < 1000


def test_rate_test_keeps_its_error_rate_on_the_boundary() -> None:
    rng = np.random.default_rng(4)
    worse = 0
    for _ in range(100):
        r = RateTest("errors", limit=0.02, alpha=ALPHA)
        for event in rng.random(1500) < 0.02:
            r.add(bool(event))
            if r.decision() == "worse":
                worse += 1
                break
    assert worse / 100 <= ALPHA


def test_summaries_and_helpers() -> None:
    c = Comparison("accuracy", margin=0.01)
    c.extend([paired_accuracy(False, True), paired_accuracy(True, True), paired_accuracy(True, False)])
    s = c.summary()
    assert s["n"] == 3 and s["mean"] == pytest.approx(0.0) and s["low"] < 0 < s["high"]
    assert excess_rate(True, 0.01) == pytest.approx(0.99)
    r = RateTest("errors", limit=0.01)
    r.add(True)
    assert r.summary()["rate"] == 1.0 and math.isfinite(float(r.summary()["log_evidence_worse"]))


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: Comparison("a", margin=0.0, alpha=1.5), "alpha must be a number in"),
        (lambda: Comparison("a", margin=float("nan")), "margin must be a finite number"),
        (lambda: Comparison("a", margin=0.0, low=1, high=1), "observation range"),
        (lambda: RateTest("r", limit=0.0), "rate limit must be in"),
        (lambda: Comparison("a", margin=0.0).add(3.0), "outside"),
    ],
)
def test_bad_settings_are_refused_in_one_line(build: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build()  # type: ignore[operator]
