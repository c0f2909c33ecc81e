"""Tests for modelyard.evaluate.metrics: hand-computed values, oracles, invariants, validation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from sklearn.metrics import f1_score

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate import metrics
from modelyard.evaluate.metrics import (
    accuracy,
    brier,
    cosine_to_reference,
    ece,
    flip_rate,
    log_softmax,
    macro_f1,
    mean_kl,
    negative_flip_rate,
    nll,
    paraphrase_recall_at_1,
    reliability_bins,
    softmax,
    topk_agreement,
    topk_neighbours,
)

# ---------------------------------------------------------------------------------------------------
# softmax


def test_softmax_hand_values_and_stability() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]; shifting every logit by 1000 changes nothing.
    z = np.array([[0.0, math.log(3.0)], [1000.0, 1000.0 + math.log(3.0)], [-1000.0, -1000.0 + math.log(3.0)]])
    p = softmax(z)
    assert p == pytest.approx(np.array([[0.25, 0.75]] * 3), abs=1e-12)
    assert log_softmax(z) == pytest.approx(np.log(p), abs=1e-12)
    assert softmax([1e6, 0.0]) == pytest.approx([1.0, 0.0])
    assert log_softmax([1e6, 0.0]) == pytest.approx([0.0, -1e6])
    assert softmax(np.zeros((2, 3, 4))).shape == (2, 3, 4)


@settings(max_examples=50, deadline=None)
@given(arrays(np.float64, (4, 5), elements=st.floats(-500, 500)))
def test_softmax_rows_sum_to_one(z: np.ndarray) -> None:
    p = softmax(z)
    assert np.all(p >= 0)
    assert p.sum(axis=1) == pytest.approx(np.ones(4))
    assert np.exp(log_softmax(z)) == pytest.approx(p, abs=1e-12)


def test_softmax_validation() -> None:
    with pytest.raises(DataError, match="logits contain NaN or inf"):
        softmax([[0.0, np.nan]])
    with pytest.raises(DataError, match=r"at least one class on the last axis, got shape \(\)"):
        log_softmax(1.0)


# ---------------------------------------------------------------------------------------------------
# accuracy and macro-F1


def test_accuracy_hand_value() -> None:
    assert accuracy([0, 1, 2, 2], [0, 2, 2, 2]) == 0.75
    assert accuracy(np.array([1.0, 0.0]), np.array([1, 1])) == 0.5  # integral floats are labels


def test_macro_f1_hand_value() -> None:
    # class 0: TP 1, FP 0, FN 1 -> F1 = 2/3; class 1: TP 1, FP 1, FN 0 -> 2/3; class 2 absent -> excluded.
    assert macro_f1([0, 0, 1], [0, 1, 1], num_classes=3) == pytest.approx(2 / 3)
    # class 2 present in truth only: F1 0, included.
    assert macro_f1([0, 1, 2], [0, 1, 1], num_classes=3) == pytest.approx((1 + 2 / 3 + 0) / 3)


@pytest.mark.parametrize("seed", range(6))
def test_macro_f1_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    num_classes = 7
    n = int(rng.integers(5, 300))
    used = rng.choice(num_classes, size=int(rng.integers(2, num_classes + 1)), replace=False)
    y = rng.choice(used, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.choice(used, n))
    want = f1_score(y, pred, average="macro", zero_division=0)
    assert macro_f1(y, pred, num_classes=num_classes) == pytest.approx(want, abs=1e-12)


def test_label_validation() -> None:
    with pytest.raises(
        DataError, match=r"y_pred holds label 3, out of range for 3 classes \(labels must be in \[0, 2\]\)"
    ):
        macro_f1([0, 1, 2], [0, 1, 3], num_classes=3)
    with pytest.raises(DataError, match="y_true must hold class indices >= 0, found -1"):
        accuracy([-1, 0], [0, 0])
    with pytest.raises(DataError, match="y_true contains NaN"):
        accuracy([np.nan, 0], [0, 0])
    with pytest.raises(DataError, match="y_true must hold integer class indices, got non-integer floats"):
        accuracy([0.5, 0], [0, 0])
    with pytest.raises(DataError, match="y_true must hold integer class indices, got dtype <U1"):
        accuracy(["a", "b"], [0, 0])
    with pytest.raises(DataError, match="y_true is empty"):
        accuracy([], [])
    with pytest.raises(DataError, match=r"y_true must be a 1-d array of class indices, got shape \(2, 1\)"):
        accuracy([[0], [1]], [0, 1])
    with pytest.raises(DataError, match="same number of samples, got y_true=2, y_pred=3"):
        accuracy([0, 1], [0, 1, 1])
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1, got 0"):
        macro_f1([0], [0], num_classes=0)


# ---------------------------------------------------------------------------------------------------
# calibration

# Five samples, two classes. Confidence c = max p, correct = argmax == y.
#   sample  probs        y   c     correct
#   0       [1.0, 0.0]   0   1.00  yes      (c = 1 exactly: must land in the last bin)
#   1       [0.9, 0.1]   1   0.90  no
#   2       [0.6, 0.4]   0   0.60  yes      (on the edge 3/5 with M = 5, 9/15 with M = 15)
#   3       [0.3, 0.7]   0   0.70  no
#   4       [0.55, 0.45] 0   0.55  yes
HAND_PROBS = np.array([[1.0, 0.0], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.55, 0.45]])
HAND_Y = np.array([0, 1, 0, 0, 0])


def test_ece_hand_value_four_bins() -> None:
    # M = 4: bins (0, .25], (.25, .5], (.5, .75], (.75, 1].
    # bin 4 holds c = 1.0, 0.9: conf 0.95, acc 0.5, gap 0.45, weight 2/5 -> 0.18
    # bin 3 holds c = 0.6, 0.7, 0.55: conf 1.85/3 = 0.61667, acc 2/3, gap 0.05, weight 3/5 -> 0.03
    # ECE = 0.21
    assert ece(HAND_PROBS, HAND_Y, n_bins=4) == pytest.approx(0.21, abs=1e-12)
    bins = reliability_bins(HAND_PROBS, HAND_Y, n_bins=4)
    assert [b["count"] for b in bins] == [0, 0, 3, 2]
    assert bins[0] == {"lo": 0.0, "hi": 0.25, "count": 0, "confidence": None, "accuracy": None}
    assert bins[2]["confidence"] == pytest.approx(1.85 / 3)
    assert bins[2]["accuracy"] == pytest.approx(2 / 3)
    assert bins[3] == {"lo": 0.75, "hi": 1.0, "count": 2, "confidence": pytest.approx(0.95), "accuracy": 0.5}


def test_ece_hand_value_default_fifteen_bins() -> None:
    # M = 15: c = 1.0 -> bin 15 (14/15, 1], alone and correct: gap 0.
    #         c = 0.9 -> bin 14 (13/15, 14/15], wrong: gap 0.9.
    #         c = 0.7 -> bin 11 (10/15, 11/15], wrong: gap 0.7.
    #         c = 0.6 (= 9/15, closed right edge) and 0.55 -> bin 9 (8/15, 9/15], both correct:
    #         conf 0.575, acc 1, gap 0.425, two samples.
    # ECE = (0 + 0.9 + 0.7 + 2·0.425) / 5 = 2.45 / 5 = 0.49
    assert ece(HAND_PROBS, HAND_Y) == pytest.approx(0.49, abs=1e-12)
    bins = reliability_bins(HAND_PROBS, HAND_Y)
    assert len(bins) == 15
    counts = {i + 1: b["count"] for i, b in enumerate(bins) if b["count"]}
    assert counts == {9: 2, 11: 1, 14: 1, 15: 1}
    assert bins[14]["hi"] == 1.0
    assert bins[14]["confidence"] == 1.0
    assert bins[14]["accuracy"] == 1.0


def test_ece_confidence_on_a_bin_edge_goes_left() -> None:
    # M = 5: c = 0.6 is the right edge of (0.4, 0.6], so it is in the third bin, not the fourth.
    bins = reliability_bins([[0.6, 0.4]], [0], n_bins=5)
    assert [b["count"] for b in bins] == [0, 0, 1, 0, 0]
    assert ece([[0.6, 0.4]], [0], n_bins=5) == pytest.approx(0.4)


def test_bin_index_edges_c0_and_c1() -> None:
    # c = 0 cannot come from valid probabilities (c >= 1/K), so the binning rule is pinned directly:
    # c = 0 in the first bin, c = 1 in the last, c = m/M in bin m (closed right edge), just above it in m+1.
    conf = np.array([0.0, 1.0, 0.2, 0.2 + 1e-12, 1 / 15, 1e-300])
    assert metrics._bin_index(conf, 5).tolist() == [0, 4, 0, 1, 0, 0]
    assert metrics._bin_index(conf, 15).tolist() == [0, 14, 2, 3, 0, 0]
    assert metrics._bin_index(np.arange(16) / 15, 15).tolist() == [0, *range(15)]


def _ece_reference(probs: np.ndarray, y: np.ndarray, n_bins: int) -> float:
    """A slow, loop-by-loop ECE straight from the definition, for comparison."""
    total = 0.0
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    for m in range(1, n_bins + 1):
        lo, hi = (m - 1) / n_bins, m / n_bins
        members = [i for i in range(len(y)) if (lo < conf[i] <= hi) or (m == 1 and conf[i] == 0.0)]
        if members:
            gap = abs(np.mean(correct[members]) - np.mean(conf[members]))
            total += len(members) / len(y) * gap
    return total


@pytest.mark.parametrize("seed", range(4))
def test_ece_matches_reference_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(scale=3.0, size=(400, 4)))
    y = rng.integers(0, 4, 400)
    for n_bins in (1, 7, 15):
        assert ece(probs, y, n_bins=n_bins) == pytest.approx(_ece_reference(probs, y, n_bins), abs=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), num_classes=st.integers(2, 10), concentration=st.floats(0.1, 3.0))
def test_ece_of_a_calibrated_sampler_is_small(seed: int, num_classes: int, concentration: float) -> None:
    # Labels drawn from the predicted probabilities: P(correct | c) = c, so ECE -> 0 as n grows.
    rng = np.random.default_rng(seed)
    n = 20_000
    probs = rng.dirichlet(np.full(num_classes, concentration), size=n)
    y = (rng.random((n, 1)) > probs.cumsum(axis=1)).sum(axis=1).clip(max=num_classes - 1)
    assert ece(probs, y) < 0.03


@settings(max_examples=50, deadline=None)
@given(
    logits=arrays(np.float64, st.tuples(st.integers(1, 30), st.integers(2, 6)), elements=st.floats(-20, 20)),
    data=st.data(),
)
def test_calibration_scores_stay_in_range(logits: np.ndarray, data: st.DataObject) -> None:
    n, k = logits.shape
    y = np.array(data.draw(st.lists(st.integers(0, k - 1), min_size=n, max_size=n)))
    probs = softmax(logits)
    assert 0.0 <= ece(probs, y) <= 1.0
    assert sum(b["count"] for b in reliability_bins(probs, y)) == n
    assert 0.0 <= brier(probs, y) <= 2.0
    assert nll(logits, y) >= 0.0
    assert nll(logits, y) == pytest.approx(nll(probs, y, from_logits=False), rel=1e-9, abs=1e-9)


# Three samples, three classes.
#   probs               y   Brier row                               log p_y
#   [0.7, 0.2, 0.1]     0   0.3² + 0.2² + 0.1² = 0.14               ln 0.7
#   [0.1, 0.8, 0.1]     1   0.1² + 0.2² + 0.1² = 0.06               ln 0.8
#   [0.2, 0.3, 0.5]     0   0.8² + 0.3² + 0.5² = 0.98               ln 0.2
# Brier = 1.18 / 3 = 0.393333; NLL = −(ln 0.7 + ln 0.8 + ln 0.2) / 3 = 2.189256 / 3 = 0.729752
THREE_PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.3, 0.5]])
THREE_Y = np.array([0, 1, 0])


def test_low_precision_probabilities_are_accepted() -> None:
    # A float32 softmax can give 1.0000001; that is a rounding error, not a wrong input.
    probs = np.array([[1.0000001, 0.0], [0.5, 0.5]], dtype=np.float32)
    assert ece(probs, [0, 1]) == pytest.approx(0.25, abs=1e-6)  # bins 15 and 8: gaps 0 and 0.5
    assert brier(probs, [0, 1]) == pytest.approx(0.25, abs=1e-6)


def test_brier_hand_value() -> None:
    assert brier(THREE_PROBS, THREE_Y) == pytest.approx(1.18 / 3, abs=1e-12)
    # Extremes: certain and right is 0, certain and wrong is 2.
    assert brier([[1.0, 0.0]], [0]) == 0.0
    assert brier([[1.0, 0.0, 0.0]], [2]) == 2.0


def test_nll_hand_values() -> None:
    want = -(math.log(0.7) + math.log(0.8) + math.log(0.2)) / 3
    assert want == pytest.approx(0.729752, abs=1e-6)
    assert nll(THREE_PROBS, THREE_Y, from_logits=False) == pytest.approx(want, abs=1e-12)
    assert nll(np.log(THREE_PROBS), THREE_Y) == pytest.approx(want, abs=1e-12)
    # logits [0, 0] -> p = 1/2; [ln 3, 0] -> 3/4; [0, ln 3] -> 1/4 for class 0:
    # NLL = (ln 2 + ln 4/3 + ln 4) / 3 = ln(32/3) / 3
    logits = np.array([[0.0, 0.0], [math.log(3), 0.0], [0.0, math.log(3)]])
    assert nll(logits, [0, 0, 0]) == pytest.approx(math.log(32 / 3) / 3, abs=1e-12)


def test_nll_floors_at_eps() -> None:
    # p_y = 0 -> −ln(1e-12) = 27.631021; from logits, log p_y = −1000 is floored the same way.
    assert nll([[1.0, 0.0]], [1], from_logits=False) == pytest.approx(-math.log(1e-12))
    assert nll([[0.0, -1000.0]], [1]) == pytest.approx(-math.log(1e-12))
    assert nll([[1.0, 0.0]], [1], from_logits=False, eps=1e-6) == pytest.approx(-math.log(1e-6))


def test_calibration_validation() -> None:
    with pytest.raises(
        DataError, match=r"probs must be an \(n, K\) array of class probabilities, got shape \(3,\)"
    ):
        ece([0.2, 0.3, 0.5], [0, 1, 2])
    with pytest.raises(DataError, match="probs contains NaN in 1 rows"):
        ece([[0.5, 0.5], [np.nan, 0.5]], [0, 1])
    with pytest.raises(DataError, match=r"probs is empty \(shape \(0, 2\)\)"):
        brier(np.zeros((0, 2)), [])
    with pytest.raises(DataError, match="probs has 2 rows but y_true has 3 labels"):
        brier([[0.5, 0.5], [0.5, 0.5]], [0, 1, 1])
    with pytest.raises(DataError, match="y_true holds label 2, out of range for 2 classes"):
        ece([[0.5, 0.5]], [2])
    with pytest.raises(DataError, match=r"pass softmax\(logits\), not logits"):
        ece([[2.0, -1.0]], [0])
    with pytest.raises(DataError, match="each row of probs must sum to 1"):
        brier([[0.5, 0.4]], [0])
    with pytest.raises(DataError, match=r"probs must have at least 2 classes \(columns\)"):
        ece([[1.0]], [0])
    with pytest.raises(DataError, match="logits contains inf in 1 rows"):
        nll([[0.0, np.inf]], [0])
    with pytest.raises(DataError, match="logits has 1 rows but y_true has 2 labels"):
        nll([[0.0, 1.0]], [0, 1])
    with pytest.raises(ConfigError, match="n_bins must be an integer >= 1, got 0"):
        ece([[0.5, 0.5]], [0], n_bins=0)
    with pytest.raises(ConfigError, match="eps must be a small positive number below 1, got 0"):
        nll([[0.0, 1.0]], [0], eps=0)


# ---------------------------------------------------------------------------------------------------
# comparing with the baseline


def test_flip_rates_hand_values() -> None:
    y = [0, 1, 2, 0, 1]
    base = [0, 1, 2, 1, 1]  # right on 0, 1, 2, 4
    cand = [0, 2, 2, 2, 0]  # right on 0, 2; flips on 1, 3, 4; negative flips (right -> wrong) on 1, 4
    assert flip_rate(base, cand) == pytest.approx(3 / 5)
    assert negative_flip_rate(y, base, cand) == pytest.approx(2 / 5)
    assert negative_flip_rate(y, cand, base) == 0.0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=50))
def test_flip_rate_is_symmetric(rows: list[tuple[int, int, int]]) -> None:
    y, a, b = (np.array(v) for v in zip(*rows, strict=True))
    assert flip_rate(a, b) == flip_rate(b, a)
    assert flip_rate(a, a) == 0.0
    # every negative flip (either direction) is a flip; the rest are wrong -> other wrong changes
    assert negative_flip_rate(y, a, b) + negative_flip_rate(y, b, a) <= flip_rate(a, b) + 1e-12
    assert negative_flip_rate(y, a, a) == 0.0


def test_mean_kl_hand_value() -> None:
    # KL([1/2, 1/2] ‖ [1/4, 3/4]) = ½ ln 2 + ½ ln(2/3); KL([1, 0] ‖ [1/2, 1/2]) = ln 2 (the 0 term is 0).
    p = np.array([[0.5, 0.5], [1.0, 0.0]])
    q = np.array([[0.25, 0.75], [0.5, 0.5]])
    want = (0.5 * math.log(2) + 0.5 * math.log(2 / 3) + math.log(2)) / 2
    assert mean_kl(p, q) == pytest.approx(want, abs=1e-12)
    assert mean_kl(p, p) == 0.0
    # q = 0 where p > 0 is floored at eps: KL([1/2, 1/2] ‖ [1, 0]) = ½ ln(1/2 / 1) + ½ ln(1/2 / 1e-12)
    assert mean_kl([[0.5, 0.5]], [[1.0, 0.0]]) == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5e12))


def test_comparison_validation() -> None:
    with pytest.raises(DataError, match="same number of samples, got pred_base=2, pred_cand=1"):
        flip_rate([0, 1], [0])
    with pytest.raises(DataError, match="same number of samples, got y=1, pred_base=2, pred_cand=2"):
        negative_flip_rate([0], [0, 1], [0, 1])
    with pytest.raises(DataError, match=r"p_base has shape \(1, 2\) but p_cand has shape \(1, 3\)"):
        mean_kl([[0.5, 0.5]], [[0.2, 0.3, 0.5]])


# ---------------------------------------------------------------------------------------------------
# embedding fidelity


def _unit_vectors(degrees: list[float]) -> np.ndarray:
    rad = np.deg2rad(degrees)
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


def test_cosine_to_reference_hand_values() -> None:
    emb = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0], [0.0, 0.0]])
    ref = np.array([[3.0, 0.0], [0.0, -1.0], [1.0, 0.0], [1.0, 0.0]])
    got = cosine_to_reference(emb, ref)
    assert got.dtype == np.float64
    assert got == pytest.approx([1.0, -1.0, 1 / math.sqrt(2), 0.0], abs=1e-12)


def test_topk_neighbours_hand_example() -> None:
    # Points on the unit circle at 0°, 10°, 30° and 90°.
    emb = _unit_vectors([0, 10, 30, 90]) * np.array([[1.0], [5.0], [0.1], [2.0]])  # norms do not matter
    assert topk_neighbours(emb, k=2).tolist() == [[1, 2], [0, 2], [1, 0], [2, 1]]
    assert topk_neighbours(emb, k=3)[3].tolist() == [2, 1, 0]


def test_topk_neighbours_match_brute_force_across_blocks() -> None:
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(1100, 8))  # more rows than one similarity block
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    want = np.argsort(-sim, axis=1, kind="stable")[:, :5]
    assert np.array_equal(topk_neighbours(emb, k=5), want)


def test_topk_agreement_hand_example() -> None:
    emb = _unit_vectors([0, 10, 30, 90])
    # ref swaps the roles of items 2 and 3: 0 -> [1, 3], 1 -> [0, 3], 2 -> [3, 1], 3 -> [1, 0]
    ref = _unit_vectors([0, 10, 90, 30])
    # overlaps with emb's [[1, 2], [0, 2], [1, 0], [2, 1]]: {1}, {0}, {1}, {1} -> mean 1/2
    assert topk_agreement(emb, ref, k=2) == pytest.approx(0.5)
    # different dimensions are fine as long as the items are the same
    assert topk_agreement(emb, np.hstack([emb, np.zeros((4, 3))]), k=2) == 1.0


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.float64, st.tuples(st.integers(3, 25), st.integers(1, 6)), elements=st.floats(-10, 10)),
    st.integers(1, 10),
)
def test_topk_agreement_with_itself_is_one(x: np.ndarray, k: int) -> None:
    k = min(k, x.shape[0] - 1)
    assert topk_agreement(x, x, k=k) == 1.0
    nb = topk_neighbours(x, k=k)
    assert not np.any(nb == np.arange(x.shape[0])[:, None])  # never itself
    assert all(len(set(row)) == k for row in nb.tolist())


def test_paraphrase_recall_hand_example() -> None:
    # 0° & 5° are a tight pair; 40° is nearer to 60° (20°) than to 5° (35°); 60°'s nearest is 40°.
    emb = _unit_vectors([0, 5, 40, 60])
    # pair (0, 1): 0 -> 1 yes, 1 -> 0 yes. pair (1, 2): 1 -> 0 no, 2 -> 3 no. pair (2, 3): both yes.
    assert paraphrase_recall_at_1(emb, [(0, 1)]) == 1.0
    assert paraphrase_recall_at_1(emb, [(0, 1), (1, 2)]) == pytest.approx(2 / 4)
    assert paraphrase_recall_at_1(emb, np.array([[0, 1], [1, 2], [2, 3]])) == pytest.approx(4 / 6)


def test_embedding_validation() -> None:
    emb = _unit_vectors([0, 10, 30])
    with pytest.raises(DataError, match=r"emb has shape \(3, 2\) but ref has shape \(2, 2\)"):
        cosine_to_reference(emb, emb[:2])
    with pytest.raises(DataError, match="emb has 3 items but ref has 2"):
        topk_agreement(emb, emb[:2], k=1)
    with pytest.raises(DataError, match=r"emb must be an \(n, d\) array of embeddings, got shape \(2,\)"):
        topk_neighbours(np.array([1.0, 2.0]))
    with pytest.raises(DataError, match="emb contains NaN in 1 rows"):
        cosine_to_reference(np.array([[np.nan, 1.0]]), np.array([[1.0, 1.0]]))
    with pytest.raises(ConfigError, match="k=3 is too large for 3 items; k must be at most n - 1 = 2"):
        topk_neighbours(emb, k=3)
    with pytest.raises(ConfigError, match="k must be an integer >= 1, got 0"):
        topk_agreement(emb, emb, k=0)
    with pytest.raises(DataError, match="item paired with itself"):
        paraphrase_recall_at_1(emb, [(1, 1)])
    with pytest.raises(DataError, match="pairs hold index 3, out of range for 3 items"):
        paraphrase_recall_at_1(emb, [(0, 3)])
    with pytest.raises(DataError, match="pairs is empty"):
        paraphrase_recall_at_1(emb, [])
    with pytest.raises(DataError, match=r"pairs must be a list of \(i, j\) integer index pairs"):
        paraphrase_recall_at_1(emb, [(0, 1, 2)])
    with pytest.raises(DataError, match="at least 2 items, got 1"):
        paraphrase_recall_at_1(emb[:1], [(0, 1)])
