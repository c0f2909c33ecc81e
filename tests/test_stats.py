"""Tests for modelyard.evaluate.stats: Wilson, bootstrap, McNemar, accuracy drop."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest
from statsmodels.stats.contingency_tables import mcnemar

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.stats import accuracy_drop, bootstrap_ci, mcnemar_exact, wilson_interval

# ---------------------------------------------------------------------------------------------------
# Wilson


@pytest.mark.parametrize(
    ("k", "n", "confidence"),
    [
        (0, 1, 0.95),
        (1, 1, 0.95),
        (0, 10, 0.95),
        (10, 10, 0.95),
        (7, 10, 0.95),
        (812, 1000, 0.95),
        (3, 50, 0.9),
        (49, 50, 0.99),
        (500, 1000, 0.5),
        (1, 20000, 0.95),
    ],
)
def test_wilson_matches_scipy(k: int, n: int, confidence: float) -> None:
    want = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    lo, hi = wilson_interval(k, n, confidence=confidence)
    assert lo == pytest.approx(want.low, abs=1e-12)
    assert hi == pytest.approx(want.high, abs=1e-12)


def test_wilson_hand_value() -> None:
    # k=8, n=10, z=1.959964: center = (8 + z²/2)/(10 + z²) = 9.920729/13.841459 = 0.716740,
    # half = z/(10 + z²)·sqrt(10·0.8·0.2 + z²/4) = 0.141601·sqrt(2.560365) = 0.226578
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.716740 - 0.226578, abs=2e-6)
    assert hi == pytest.approx(0.716740 + 0.226578, abs=2e-6)
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == 1.0


def test_wilson_validation() -> None:
    with pytest.raises(DataError, match="k must be between 0 and n=10, got 11"):
        wilson_interval(11, 10)
    with pytest.raises(DataError, match="n must be at least 1 trial, got 0"):
        wilson_interval(0, 0)
    with pytest.raises(DataError, match=r"k must be an integer count, got 2\.5"):
        wilson_interval(2.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"confidence must be in \(0, 1\), got 95"):
        wilson_interval(5, 10, confidence=95)


# ---------------------------------------------------------------------------------------------------
# bootstrap


def test_bootstrap_is_deterministic_and_seed_dependent() -> None:
    x = np.random.default_rng(1).random(200)
    a = bootstrap_ci(np.mean, x, n_resamples=500, seed=3)
    b = bootstrap_ci(np.mean, x, n_resamples=500, seed=3)
    c = bootstrap_ci(np.mean, x, n_resamples=500, seed=4)
    assert a == b
    assert a != c
    assert a[0] < float(np.mean(x)) < a[1]


def test_bootstrap_applies_the_same_indices_to_every_array() -> None:
    x = np.random.default_rng(2).random(100)
    # Paired: the difference of an array with itself is 0 on every resample.
    assert bootstrap_ci(lambda a, b: float(np.mean(a - b)), x, x.copy(), n_resamples=200) == (0.0, 0.0)
    # Rows of a 2-d array travel together with the 1-d array.
    table = np.stack([x, 2 * x], axis=1)
    assert bootstrap_ci(lambda t, a: float(np.mean(t[:, 1] - 2 * a)), table, x, n_resamples=200) == (0.0, 0.0)


def test_bootstrap_vectorized_matches_loop() -> None:
    x = np.random.default_rng(5).random(300)
    loop = bootstrap_ci(np.mean, x, n_resamples=400, seed=9)
    vec = bootstrap_ci(lambda a: a.mean(axis=-1), x, n_resamples=400, seed=9, vectorized=True)
    assert vec == pytest.approx(loop, abs=1e-12)


def test_bootstrap_percentile_hand_case() -> None:
    # A constant sample gives a constant statistic: the interval collapses to the value.
    assert bootstrap_ci(np.mean, np.full(30, 0.25), n_resamples=50) == (0.25, 0.25)
    # x = [0, 1]: the resampled mean is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4 (drawn with
    # replacement, every index reachable), so the 2.5th and 97.5th percentiles are 0 and 1.
    assert bootstrap_ci(np.mean, np.array([0.0, 1.0]), n_resamples=400) == (0.0, 1.0)
    assert bootstrap_ci(np.mean, np.array([0.0, 1.0]), n_resamples=400, confidence=0.4) == (0.5, 0.5)


def test_bootstrap_coverage_of_a_mean() -> None:
    # 200 datasets of n=300 Bernoulli(0.8); the 95% percentile interval should cover 0.8 ~95% of the time.
    rng = np.random.default_rng(20240601)
    covered = 0
    for i in range(200):
        x = (rng.random(300) < 0.8).astype(np.float64)
        lo, hi = bootstrap_ci(lambda a: a.mean(axis=-1), x, n_resamples=1000, seed=i, vectorized=True)
        covered += lo <= 0.8 <= hi
    assert 0.90 <= covered / 200 <= 0.99


def _paired_predictions(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels and two prediction vectors whose true accuracy drop is 3 points.

    Per sample: both right w.p. 0.80, baseline only w.p. 0.05, candidate only w.p. 0.02, both wrong
    w.p. 0.13, so acc_base = 0.85, acc_cand = 0.82, drop = 3 points.
    """
    y = rng.integers(0, 4, n)
    wrong = (y + 1) % 4
    u = rng.random(n)
    base_right = u < 0.85
    cand_right = (u < 0.80) | ((u >= 0.85) & (u < 0.87))
    return y, np.where(base_right, y, wrong), np.where(cand_right, y, wrong)


def test_accuracy_drop_coverage_with_known_drop() -> None:
    rng = np.random.default_rng(7)
    covered = 0
    upper_above = 0
    for i in range(150):
        y, base, cand = _paired_predictions(rng, 500)
        out = accuracy_drop(y, base, cand, n_resamples=1000, seed=i)
        lo, hi = out["interval"]
        covered += lo <= 3.0 <= hi
        upper_above += out["upper_one_sided_95"] >= 3.0
    assert 0.88 <= covered / 150 <= 0.995
    assert 0.88 <= upper_above / 150 <= 0.995


def test_accuracy_drop_hand_values() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    base = y.copy()  # 10/10 right
    cand = y.copy()
    cand[[0, 1]] = [1, 2]  # 8/10 right
    out = accuracy_drop(y, base, cand, n_resamples=500, seed=1)
    assert out["drop_points"] == pytest.approx(20.0)
    assert out["baseline_accuracy"] == 1.0
    assert out["candidate_accuracy"] == pytest.approx(0.8)
    assert out["n"] == 10
    lo, hi = out["interval"]
    assert 0.0 <= lo <= 20.0 <= hi <= 100.0
    assert lo <= out["upper_one_sided_95"] <= hi
    # Same replicates as bootstrap_ci on the per-sample difference of correctness.
    d = (base == y).astype(float) - (cand == y).astype(float)
    want_lo, want_hi = bootstrap_ci(np.mean, d, n_resamples=500, seed=1)
    assert lo == pytest.approx(100 * want_lo)
    assert hi == pytest.approx(100 * want_hi)
    # Identical models: zero drop and a zero-width interval.
    same = accuracy_drop(y, base, base, n_resamples=100)
    assert same["drop_points"] == 0.0
    assert same["interval"] == (0.0, 0.0)
    assert same["upper_one_sided_95"] == 0.0


def test_bootstrap_validation() -> None:
    x = np.arange(5.0)
    with pytest.raises(DataError, match="needs at least one array"):
        bootstrap_ci(np.mean)
    with pytest.raises(DataError, match="array 0 is empty"):
        bootstrap_ci(np.mean, np.array([]))
    with pytest.raises(DataError, match="array 1 contains NaN"):
        bootstrap_ci(lambda a, b: 0.0, x, np.array([1, np.nan, 0, 0, 0]))
    with pytest.raises(DataError, match="same number of samples, got array 0=5, array 1=4"):
        bootstrap_ci(lambda a, b: 0.0, x, x[:4])
    with pytest.raises(DataError, match="not finite on 10 of 10 bootstrap resamples"):
        bootstrap_ci(lambda a: float("nan"), x, n_resamples=10)
    with pytest.raises(DataError, match=r"one value per resample, shape \(10,\)"):
        bootstrap_ci(lambda a: a.mean(), x, n_resamples=10, vectorized=True)
    with pytest.raises(ConfigError, match="n_resamples must be an integer >= 1, got 0"):
        bootstrap_ci(np.mean, x, n_resamples=0)
    with pytest.raises(ConfigError, match=r"confidence must be in \(0, 1\), got 1.0"):
        bootstrap_ci(np.mean, x, confidence=1.0)
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        bootstrap_ci(np.mean, x, seed=-1)
    with pytest.raises(ConfigError, match="statistic must be a callable"):
        bootstrap_ci(x, x)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# McNemar


def test_mcnemar_hand_example() -> None:
    base = [1, 1, 1, 1, 0, 0, 1, 0]
    cand = [1, 0, 0, 0, 1, 0, 1, 0]
    # b (base right, cand wrong) = samples 1, 2, 3; c = sample 4; both right 0, 6; both wrong 5, 7.
    # p = 2·P(Bin(4, 1/2) <= 1) = 2·(1 + 4)/16 = 0.625
    out = mcnemar_exact(base, cand)
    assert out == {"b": 3, "c": 1, "n": 8, "n11": 2, "n00": 2, "p_value": pytest.approx(0.625)}


def test_mcnemar_no_discordant_pairs() -> None:
    out = mcnemar_exact(np.array([True, False]), np.array([True, False]))
    assert (out["b"], out["c"], out["p_value"]) == (0, 0, 1.0)


@pytest.mark.parametrize("seed", range(8))
def test_mcnemar_matches_statsmodels(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    base = rng.random(n) < rng.uniform(0.3, 0.95)
    cand = np.where(rng.random(n) < rng.uniform(0.0, 0.3), ~base, base)
    out = mcnemar_exact(base, cand)
    table = [[out["n11"], out["b"]], [out["c"], out["n00"]]]
    assert sum(map(sum, table)) == n
    assert out["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue, rel=1e-12, abs=1e-15)


def test_mcnemar_validation() -> None:
    with pytest.raises(DataError, match="correct_base must hold only 0/1"):
        mcnemar_exact([0, 2, 1], [0, 1, 1])
    with pytest.raises(DataError, match="correct_cand contains NaN"):
        mcnemar_exact([0, 1, 1], [0.0, np.nan, 1.0])
    with pytest.raises(DataError, match="same number of samples, got correct_base=3, correct_cand=2"):
        mcnemar_exact([0, 1, 1], [0, 1])
    with pytest.raises(DataError, match="correct_base is empty"):
        mcnemar_exact([], [])
    with pytest.raises(DataError, match=r"must be a 1-d array of booleans, got shape \(2, 2\)"):
        mcnemar_exact([[0, 1], [1, 0]], [0, 1])


def test_accuracy_drop_validation() -> None:
    with pytest.raises(DataError, match="same number of samples, got y=3, pred_base=3, pred_cand=2"):
        accuracy_drop([0, 1, 2], [0, 1, 2], [0, 1])
    with pytest.raises(DataError, match="pred_cand must hold class indices >= 0, found -1"):
        accuracy_drop([0, 1, 2], [0, 1, 2], [0, 1, -1])
    with pytest.raises(DataError, match="y contains NaN"):
        accuracy_drop([0, np.nan, 2], [0, 1, 2], [0, 1, 2])
    with pytest.raises(ConfigError, match="n_resamples must be an integer >= 1"):
        accuracy_drop([0, 1, 2], [0, 1, 2], [0, 1, 2], n_resamples=0)
