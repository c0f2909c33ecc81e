"""Accuracy estimated before labels: exact interval arithmetic, coverage of the realised accuracy under covariate
shift (P(y | x) fixed, x moved), recalibration fitted on a separate labelled reference, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.stats import wilson_interval
from modelyard.monitor.estimate import (
    compare,
    estimate_accuracy,
    realised_accuracy,
    softmax_with_temperature,
)

WEIGHTS = np.array([[2.0, 0.0, 1.0, 0.0], [-1.0, 2.0, 0.0, 0.5], [-1.0, -2.0, -1.0, 0.0]])


def _three_class(
    rng: np.random.Generator, n: int, *, scale: float = 1.0, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """A logistic (softmax) model whose probabilities are the true P(y | x); x ~ N(shift, scale^2)."""
    x = rng.standard_normal((n, 4)) * scale + shift
    probs = softmax_with_temperature(x @ WEIGHTS.T)
    y = (rng.random((n, 1)) > np.cumsum(probs, axis=1)).sum(axis=1)
    return probs, y


def _binary_overconfident(
    rng: np.random.Generator, n: int, *, scale: float, shift: float
) -> tuple[np.ndarray, np.ndarray]:
    """True P(y=1 | x) = sigmoid(2x); the model's logits are twice too large (temperature 2 calibrates)."""
    x = rng.standard_normal(n) * scale + shift
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-2.0 * x))).astype(np.int64)
    logits = np.stack([np.zeros(n), 4.0 * x], axis=1)
    return logits, y


def test_poisson_binomial_interval_is_exact() -> None:
    probs = np.tile([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.5, 0.5]], (25, 1))
    result = estimate_accuracy(probs, offline_accuracy=0.8, offline_interval=(0.75, 0.85))
    conf = np.tile([0.9, 0.6, 0.8, 0.5], 25)
    half = 1.959963984540054 * math.sqrt(float(np.sum(conf * (1 - conf)))) / 100
    assert result.estimated_accuracy == pytest.approx(0.7)
    assert result.interval == pytest.approx((0.7 - half, 0.7 + half))
    assert result.n == 100 and result.calibration_bias is None
    assert result.drop_pp == pytest.approx(10.0)
    assert result.offline_interval == (0.75, 0.85)


def test_logits_with_temperature_match_probabilities() -> None:
    logits = np.random.default_rng(0).standard_normal((50, 3)) * 3
    by_logits = estimate_accuracy(logits=logits, temperature=2.0)
    scaled = np.exp(logits / 2.0)
    by_probs = estimate_accuracy(scaled / scaled.sum(axis=1, keepdims=True))
    assert by_logits.estimated_accuracy == pytest.approx(by_probs.estimated_accuracy, rel=1e-12)
    assert by_logits.interval == pytest.approx(by_probs.interval, rel=1e-12)


def test_interval_covers_realised_accuracy_under_covariate_shift() -> None:
    # Windows of 500 rows from x ~ N(0.3, 0.6^2) (the model is less sure there: accuracy 73 % vs 81 %).
    rng = np.random.default_rng(1)
    covered, gaps = [], []
    for _ in range(200):
        probs, y = _three_class(rng, 500, scale=0.6, shift=0.3)
        gap = compare(estimate_accuracy(probs), realised_accuracy(probs.argmax(axis=1) == y))
        covered.append(gap.covered)
        gaps.append(gap.gap_pp)
    assert np.mean(covered) >= 0.90
    assert abs(np.mean(gaps)) < 0.5  # unbiased: mean gap within half a point


def test_isotonic_recalibration_on_a_separate_reference_restores_coverage() -> None:
    # An overconfident model: raw confidence misses by about 12 points, so its interval almost never covers.
    # Isotonic regression fitted on labelled reference samples (x ~ N(0, 1.5^2)), never on the windows
    # (x ~ N(0.3, 0.7^2)), restores coverage; 10 references x 20 windows.
    rng = np.random.default_rng(2)
    raw, recalibrated = [], []
    for _ in range(10):
        ref_logits, ref_y = _binary_overconfident(rng, 2000, scale=1.5, shift=0.0)
        for _ in range(20):
            logits, y = _binary_overconfident(rng, 500, scale=0.7, shift=0.3)
            realised = realised_accuracy(logits.argmax(axis=1) == y)
            raw.append(compare(estimate_accuracy(logits=logits), realised).covered)
            estimate = estimate_accuracy(logits=logits, reference_logits=ref_logits, reference_labels=ref_y)
            recalibrated.append(compare(estimate, realised).covered)
    assert np.mean(raw) < 0.2
    assert np.mean(recalibrated) >= 0.90
    assert "isotonic" in estimate.method and estimate.calibration_bias is not None


def test_isotonic_map_comes_from_the_reference_only() -> None:
    # On the reference, confidence 0.9 is right 60 % of the time: the window's 0.9 must be read as 0.6.
    ref_probs = np.tile([[0.9, 0.1]], (1000, 1))
    ref_labels = (np.arange(1000) % 5 >= 3).astype(np.int64)  # 60 % class 0
    window = np.tile([[0.9, 0.1]], (200, 1))
    result = estimate_accuracy(window, reference_probs=ref_probs, reference_labels=ref_labels)
    assert result.estimated_accuracy == pytest.approx(0.6)
    plain = estimate_accuracy(
        window, reference_probs=ref_probs, reference_labels=ref_labels, recalibration="none"
    )
    assert plain.estimated_accuracy == pytest.approx(0.9)
    assert plain.calibration_bias == pytest.approx(0.3)
    assert plain.interval[0] < 0.6  # the measured miscalibration widens the interval to cover it


def test_realised_accuracy_and_compare() -> None:
    correct = np.arange(200) < 150
    realised = realised_accuracy(correct)
    assert realised.accuracy == 0.75 and realised.n == 200
    assert realised.interval == pytest.approx(wilson_interval(150, 200))
    estimate = estimate_accuracy(np.tile([[0.8, 0.2]], (200, 1)))
    gap = compare(estimate, realised)
    assert gap.gap_pp == pytest.approx(-5.0)
    assert gap.covered == (estimate.interval[0] <= 0.75 <= estimate.interval[1])


def _misspecified(rng: np.random.Generator, n: int, shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x ~ N(shift, I) in 4-d; the true log-odds have a square the linear model below cannot fit."""
    x = rng.standard_normal((n, 4)) + shift
    logit = 2.0 * x[:, 0] - 1.5 * x[:, 1] + 1.0 * (x[:, 2] ** 2 - 1.0)
    return x, (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)


def test_input_weighting_corrects_the_estimate_under_covariate_shift() -> None:
    """A shift along the square's axis moves the calibration of a misspecified model; confidence bins cannot
    see that, the inputs' density ratio can. Over several references (one reference's own luck moves any
    estimate), the weighted estimate is closer to the realised accuracy and its interval covers it."""
    from sklearn.linear_model import LogisticRegression

    errors: dict[str, list[float]] = {"bins": [], "inputs": []}
    covered: dict[str, list[bool]] = {"bins": [], "inputs": []}
    for seed in range(4):
        rng = np.random.default_rng(seed)
        zero = np.zeros(4)
        model = LogisticRegression().fit(*_misspecified(rng, 3000, zero))
        x_ref, y_ref = _misspecified(rng, 3000, zero)  # the labelled reference, apart from the training rows
        p_ref = model.predict_proba(x_ref)
        for _ in range(8):
            x, y = _misspecified(rng, 500, np.array([0.0, 0.0, 1.0, 0.0]))
            p = model.predict_proba(x)
            real = realised_accuracy(p.argmax(axis=1) == y)
            common = {"probs": p, "reference_probs": p_ref, "reference_labels": y_ref}
            for key, est in (
                ("bins", estimate_accuracy(**common)),
                ("inputs", estimate_accuracy(**common, inputs=x, reference_inputs=x_ref)),
            ):
                errors[key].append(abs(est.estimated_accuracy - real.accuracy))
                covered[key].append(compare(est, real).covered)
                assert ("density ratio" in est.method) == (key == "inputs")
    assert np.mean(errors["inputs"]) < 0.7 * np.mean(errors["bins"])
    assert np.mean(covered["inputs"]) >= 0.85 > np.mean(covered["bins"])


def test_input_weighting_changes_little_without_shift() -> None:
    rng = np.random.default_rng(12)
    x_ref, y_ref = _misspecified(rng, 2000, np.zeros(4))
    x, _ = _misspecified(rng, 500, np.zeros(4))
    p_ref = np.stack([1 - 1 / (1 + np.exp(-x_ref[:, 0])), 1 / (1 + np.exp(-x_ref[:, 0]))], axis=1)
    p = np.stack([1 - 1 / (1 + np.exp(-x[:, 0])), 1 / (1 + np.exp(-x[:, 0]))], axis=1)
    common = {"probs": p, "reference_probs": p_ref, "reference_labels": y_ref}
    a = estimate_accuracy(**common)
    b = estimate_accuracy(**common, inputs=x, reference_inputs=x_ref)
    assert b.estimated_accuracy == pytest.approx(a.estimated_accuracy, abs=0.02)
    assert b.interval[1] - b.interval[0] < 1.5 * (a.interval[1] - a.interval[0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"inputs": np.zeros((2, 3))}, "pass both inputs"),
        ({"inputs": np.zeros((2, 3)), "reference_inputs": np.zeros((30, 3))}, "has 2 rows for 1 window rows"),
        (
            {"inputs": np.zeros((1, 3)), "reference_inputs": np.zeros((30, 2))},
            "3 columns and reference_inputs 2",
        ),
        (
            {"inputs": np.zeros((1, 3)), "reference_inputs": np.zeros((29, 3))},
            "29 rows for 30 reference rows",
        ),
    ],
)
def test_bad_inputs_for_weighting(kwargs: dict[str, object], match: str) -> None:
    ref = {"reference_probs": np.tile([[0.4, 0.6]], (30, 1)), "reference_labels": np.ones(30, dtype=int)}
    with pytest.raises((ConfigError, DataError), match=match) as info:
        estimate_accuracy(probs=np.array([[0.4, 0.6]]), **ref, **kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"probs": np.array([[0.5, 0.6]])}, DataError, "must sum to 1"),
        ({"probs": np.array([[np.nan, 1.0]])}, DataError, "contains NaN"),
        ({"probs": np.zeros((0, 2))}, DataError, "empty"),
        ({"probs": np.array([[0.5, 0.5]]), "logits": np.zeros((1, 2))}, ConfigError, "exactly one"),
        ({"probs": np.array([[0.5, 0.5]]), "temperature": 2.0}, ConfigError, "applies to logits"),
        ({"logits": np.zeros((1, 2)), "temperature": 0.0}, ConfigError, "temperature must be > 0"),
        ({"probs": np.array([[0.5, 0.5]]), "recalibration": "isotonic"}, ConfigError, "needs a labelled"),
        (
            {"probs": np.array([[0.5, 0.5]]), "reference_probs": np.tile([[0.5, 0.5]], (30, 1))},
            ConfigError,
            "reference_labels",
        ),
        (
            {
                "probs": np.array([[0.5, 0.5]]),
                "reference_probs": np.tile([[0.5, 0.5]], (30, 1)),
                "reference_labels": np.zeros(29, dtype=int),
            },
            DataError,
            "has 29 rows",
        ),
        (
            {
                "probs": np.array([[0.5, 0.5]]),
                "reference_probs": np.tile([[0.2, 0.3, 0.5]], (30, 1)),
                "reference_labels": np.zeros(30, dtype=int),
            },
            DataError,
            "3 classes but the window has 2",
        ),
        ({"probs": np.array([[0.5, 0.5]]), "offline_accuracy": 1.2}, ConfigError, "offline_accuracy"),
    ],
)
def test_bad_input_raises_one_line_error(
    kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match) as info:
        estimate_accuracy(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)
