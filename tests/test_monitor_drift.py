"""Drift detectors: calibrated false-alarm rate, power and naming, exact effect sizes, embeddings, MMD, output
drift, OOD rate, and bad input. Fixed seeds throughout, so every rate below is deterministic; the bounds are
wide enough for a correct implementation at any seed and narrow enough to catch a wrong calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import jensenshannon
from scipy.stats import binomtest, fisher_exact, wasserstein_distance

from modelyard.errors import ConfigError, DataError
from modelyard.monitor.drift import Reference
from modelyard.monitor.drift_embed import EmbeddingReference, mmd_test
from modelyard.monitor.drift_null import Pool, _w1_by_ranks, plan_null
from modelyard.monitor.drift_output import OutputReference, ood_rate_test

N_NUMERIC = 28
CATS_A = (0.0, 1.0, 2.0)
P_A = (0.5, 0.3, 0.2)


def _tabular(rng: np.random.Generator, n: int) -> np.ndarray:
    """28 standard-normal columns (five correlated pairs, r = 0.7), then two categorical ones."""
    z = rng.standard_normal((n, N_NUMERIC))
    for k in range(5):
        z[:, 2 * k + 1] = 0.7 * z[:, 2 * k] + np.sqrt(1 - 0.49) * z[:, 2 * k + 1]
    a = rng.choice(CATS_A, size=n, p=P_A)
    b = (rng.random(n) < 0.1).astype(np.float64)
    return np.column_stack([z, a, b])


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(_tabular(np.random.default_rng(0), 8000), n_resamples=500, seed=0)


def test_detects_categorical_columns(reference: Reference) -> None:
    assert reference.categorical == (28, 29)
    assert reference.numeric == tuple(range(28))
    assert reference.feature_names[:2] == ("x0", "x1")


@pytest.mark.parametrize("n", [500, 2000])
def test_false_alarm_rate_on_fresh_unshifted_windows(reference: Reference, n: int) -> None:
    # 200 windows at alpha = 5 %: a calibrated detector alarms on about 10 (binomial sd 3); comparing null
    # windows with a reference that contains them gives 15-20 % at n = 500 and about 100 % at n = 2000.
    rng = np.random.default_rng(100 + n)
    threshold = reference.threshold(n)
    alarms = [reference.effect_sizes(_tabular(rng, n)).max() > threshold for _ in range(200)]
    assert 0.01 <= np.mean(alarms) <= 0.10


def test_half_sd_shift_in_one_of_thirty_features_alarms_and_is_named(reference: Reference) -> None:
    rng = np.random.default_rng(7)
    alarms, named = [], []
    for i in range(40):
        window = _tabular(rng, 500)
        j = i % N_NUMERIC
        window[:, j] += 0.5
        result = reference.check(window)
        alarms.append(result.alarm)
        named.append(bool(result.moved) and result.moved[0].name == f"x{j}" and len(result.moved) == 1)
        if result.alarm:
            assert result.moved[0].mean_shift == pytest.approx(0.5, abs=0.15)
            assert "sd" in result.moved[0].detail
    assert np.mean(alarms) >= 0.9
    assert np.mean(named) >= 0.9


def test_small_shift_at_two_thousand_rows_is_caught(reference: Reference) -> None:
    # 0.15 sd in 1 of 30 features at n = 2000 against 8000 reference rows.
    rng = np.random.default_rng(8)
    hits = 0
    for i in range(30):
        window = _tabular(rng, 2000)
        window[:, (3 * i) % N_NUMERIC] += 0.15
        hits += reference.check(window).alarm
    assert hits / 30 >= 0.9


def test_numeric_effect_is_exact_standardised_wasserstein(reference: Reference) -> None:
    rng = np.random.default_rng(3)
    ref = _tabular(np.random.default_rng(0), 8000)
    window = _tabular(rng, 321)
    window[:, 4] = window[:, 4] * 1.5 + 0.2
    effects = reference.effect_sizes(window)
    for j in (0, 4, 27):
        expected = wasserstein_distance(window[:, j], ref[:, j]) / ref[:, j].std()
        assert effects[j] == pytest.approx(expected, rel=1e-9)


def test_categorical_effect_is_jensen_shannon_base_2_with_unseen_values() -> None:
    ref = np.column_stack([np.repeat([0.0, 1.0, 2.0], [50, 30, 20]), np.arange(100.0)])
    detector = Reference(ref, ["colour", "size"], n_resamples=99)
    window = np.column_stack([np.repeat([0.0, 1.0, 2.0, 7.0], [20, 30, 30, 20]), np.arange(100.0)])
    effect = detector.effect_sizes(window)[0]
    assert effect == pytest.approx(
        jensenshannon([0.5, 0.3, 0.2, 0.0], [0.2, 0.3, 0.3, 0.2], base=2), rel=1e-9
    )
    assert detector.categorical == (0,)


def test_categorical_shift_names_the_category(reference: Reference) -> None:
    rng = np.random.default_rng(5)
    window = _tabular(rng, 500)
    window[:, 28] = rng.choice(CATS_A, size=500, p=(0.3, 0.3, 0.4))
    result = reference.check(window)
    assert result.alarm
    assert result.moved[0].name == "x28"
    assert result.moved[0].kind == "categorical"
    assert "value 0:" in result.moved[0].detail or "value 2:" in result.moved[0].detail


def test_declared_categorical_and_labels() -> None:
    rng = np.random.default_rng(11)
    ref = np.column_stack([rng.integers(0, 8, 400).astype(float), rng.standard_normal(400)])
    detector = Reference(ref, ["city", "z"], categorical=["city"], category_labels={"city": list("ABCDEFGH")})
    window = ref[:200].copy()
    window[:, 0] = 3.0
    result = detector.check(window)
    assert detector.categorical == (0,)
    assert result.moved[0].detail.startswith("D: ")


def test_null_rows_are_disjoint_and_w1_from_ranks_is_exact() -> None:
    rng = np.random.default_rng(2)
    x = rng.standard_normal((300, 3)) * [1.0, 2.0, 0.5] + [0.0, 5.0, -1.0]
    x[:, 2] = np.round(x[:, 2], 1)  # ties
    mean, sd = x.mean(axis=0), x.std(axis=0)
    pool = Pool.build(x, mean, sd, np.zeros((300, 0), dtype=np.intp), ())
    chosen = np.stack([rng.choice(300, 40, replace=False) for _ in range(5)])
    got = _w1_by_ranks(pool, chosen)
    for d in range(5):
        for j in range(3):
            expected = wasserstein_distance(x[chosen[d], j], x[:, j]) / sd[j]
            assert got[d, j] == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_threshold_is_cached_per_window_size_and_notes_a_small_reference(reference: Reference) -> None:
    first = reference.null_distribution(500)
    drawn = len(reference._null)
    assert np.array_equal(reference.null_distribution(500), first)
    nearby = reference.null_distribution(505)  # same size bucket: rescaled, not drawn again
    assert len(reference._null) == drawn
    assert nearby == pytest.approx(first * np.sqrt((1 / 505 + 1 / 8000) / (1 / 500 + 1 / 8000)))
    assert reference.threshold(500, alpha=0.01) > reference.threshold(500, alpha=0.05)
    assert plan_null(10_000, 5000).note.startswith("the reference (5000 rows) is less than 4x the window")
    assert plan_null(2000, 5000).note.endswith("at least 8000 rows")
    assert plan_null(1000, 5000).note == ""
    assert plan_null(100, 5000).scale == pytest.approx(np.sqrt((1 / 100 + 1 / 5000) / (1 / 100 + 1 / 3900)))


def test_result_is_data(reference: Reference) -> None:
    window = _tabular(np.random.default_rng(9), 300)
    window[:, 2] += 1.0
    result = reference.check(window)
    assert result.alarm and result.window_size == 300 and result.reference_size == 8000
    assert [f.effect for f in result.features] == sorted((f.effect for f in result.features), reverse=True)
    assert result.statistic == result.features[0].effect
    assert 0 < result.p_value < 0.01
    assert "x2" in result.summary()
    json.dumps(result.to_dict())


def _cloud(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """64-dim embeddings: 6 strong latent directions plus noise."""
    basis = np.random.default_rng(42).standard_normal((6, 64))
    latent = rng.standard_normal((n, 6)) * [3.0, 2.5, 2.0, 1.5, 1.2, 1.0]
    latent[:, 1] += shift
    return latent @ basis + 0.3 * rng.standard_normal((n, 64))


def test_embedding_detector_alarms_on_a_shifted_cloud_only() -> None:
    detector = EmbeddingReference(_cloud(np.random.default_rng(0), 3000), n_components=8, n_resamples=400)
    rng = np.random.default_rng(1)
    fresh = [detector.check(_cloud(rng, 300)).alarm for _ in range(20)]
    shifted = [detector.check(_cloud(rng, 300, shift=1.0)) for _ in range(5)]
    assert sum(fresh) <= 3
    assert all(r.alarm for r in shifted)
    assert shifted[0].moved[0].name.startswith("pc")
    assert "principal components" in shifted[0].method


def test_mmd_p_value_small_for_shifted_not_for_same() -> None:
    rng = np.random.default_rng(4)
    ref = _cloud(rng, 600)
    same = mmd_test(ref, _cloud(rng, 300), seed=1)
    moved = mmd_test(ref, _cloud(rng, 300, shift=1.5), seed=1)
    assert same.p_value > 0.05 and not same.alarm
    assert moved.p_value < 0.01 and moved.alarm
    assert moved.statistic > same.statistic > 0
    capped = mmd_test(ref, _cloud(rng, 300), max_rows=200, n_permutations=50)
    assert capped.n_reference == 200 and capped.n_window == 200


def _probs(rng: np.random.Generator, n: int, *, bias: float = 0.0, temperature: float = 1.0) -> np.ndarray:
    logits = rng.standard_normal((n, 4)) * 2.0
    logits[:, 0] += bias
    e = np.exp(logits / temperature)
    return np.asarray(e / e.sum(axis=1, keepdims=True))


def test_output_drift_on_class_mix_and_confidence() -> None:
    detector = OutputReference(
        _probs(np.random.default_rng(0), 4000), class_names=["cat", "dog", "emu", "yak"]
    )
    rng = np.random.default_rng(1)
    fresh = [detector.check(_probs(rng, 500)).alarm for _ in range(20)]
    assert sum(fresh) <= 3
    mix = detector.check(_probs(rng, 500, bias=1.5))
    assert mix.alarm and mix.moved[0].name == "predicted_class" and mix.moved[0].detail.startswith("cat: ")
    flat = detector.check(_probs(rng, 500, temperature=2.5))
    assert flat.alarm and "confidence" in [f.name for f in flat.moved]
    assert flat.features[0].mean_shift < 0 if flat.features[0].name == "confidence" else True


def test_ood_rate_test_alarms_on_a_higher_rate() -> None:
    up = ood_rate_test(np.arange(500) < 30, 0.02, 2000)
    same = ood_rate_test(np.arange(500) < 11, 0.02, 2000)
    assert up.alarm and not same.alarm
    assert up.window_rate == pytest.approx(0.06) and up.offline_rate == 0.02
    assert up.p_value == pytest.approx(fisher_exact([[30, 470], [40, 1960]], alternative="greater").pvalue)
    exact = ood_rate_test(np.arange(500) < 30, 0.02, None)
    assert exact.p_value == pytest.approx(binomtest(30, 500, 0.02, alternative="greater").pvalue)
    assert "6.0% of 500" in up.summary()


@pytest.mark.parametrize(
    ("window", "match"),
    [
        (np.zeros((10, 29)), "has 29 columns but the reference has 30"),
        (np.zeros((0, 30)), "empty"),
        (np.full((5, 30), np.nan), "contains NaN in 5 rows"),
        (np.zeros(30), "must be a 2-d array"),
        ([["a"] * 30], "could not convert"),
    ],
)
def test_bad_window_raises_one_line_data_error(reference: Reference, window: object, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        reference.check(window)
    assert "\n" not in str(info.value)


def test_bad_reference_and_options() -> None:
    with pytest.raises(DataError, match="pass at least 20"):
        Reference(np.zeros((5, 2)))
    with pytest.raises(DataError, match="one name per column"):
        Reference(np.random.default_rng(0).standard_normal((50, 2)), ["a"])
    detector = Reference(np.random.default_rng(0).standard_normal((50, 2)), n_resamples=19)
    with pytest.raises(ConfigError, match="alpha"):
        detector.check(np.zeros((3, 2)), alpha=1.5)
    with pytest.raises(ConfigError, match="n_resamples >= 100"):
        detector.threshold(10, alpha=0.01)
    with pytest.raises(ConfigError, match="unknown feature"):
        Reference(np.zeros((50, 2)), ["a", "b"], categorical=["c"])
    with pytest.raises(ConfigError, match="n_components"):
        EmbeddingReference(np.zeros((100, 4)), n_components=5)
    with pytest.raises(DataError, match="sum to 1"):
        OutputReference(np.ones((30, 3)))
    with pytest.raises(ConfigError, match="offline_rate"):
        ood_rate_test([True, False], 1.5, 10)


def test_conditional_residuals_see_a_shift_against_a_correlate_and_need_a_large_reference() -> None:
    rng = np.random.default_rng(21)

    def pairs(n: int) -> np.ndarray:
        z = rng.standard_normal((n, 4))
        z[:, 1] = 0.8 * z[:, 0] + 0.6 * z[:, 1]  # x0 and x1 correlated at 0.8; x2, x3 independent
        return z

    ref = Reference(pairs(4000), conditional=True, seed=1)
    assert ref.conditioned == ("x0", "x1")  # the independent features have nothing to be given
    window = pairs(1000)
    window[:, 1] += 0.15  # x1 moves, x0 does not: against what x0 predicts, x1 moved 0.15 / 0.6 sd
    result = ref.check(window)
    effects = {f.name: f.effect for f in result.features}
    assert effects["x1 | others"] > 1.3 * effects["x1"]
    assert result.alarm and result.moved[0].name == "x1 | others"
    assert "residuals given the others" in result.method
    plain = Reference(pairs(4000), seed=1)
    assert plain.conditioned == () and len(plain.check(window).features) == 4
    # in-sample residuals would be too small on a small reference: left out there
    assert Reference(pairs(300), conditional=True).conditioned == ()
