"""Tests for modelyard.evaluate.compare (paired comparison, Holm) and stats.holm."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import binomtest
from statsmodels.stats.multitest import multipletests

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate import metrics as M
from modelyard.evaluate.checks import measurement_table
from modelyard.evaluate.compare import apply_holm, paired_comparison
from modelyard.evaluate.evidence import measure
from modelyard.evaluate.quality import classification_evidence
from modelyard.evaluate.stats import accuracy_drop, bootstrap_ci, holm

NAMES = [
    "compare.accuracy_drop_upper95",
    "compare.macro_f1_drop",
    "compare.negative_flip_rate",
    "compare.kl_mean",
    "calibration.ece_increase",
]


def _pair(n: int = 300, k: int = 5, seed: int = 0, noise: float = 0.8) -> tuple[np.ndarray, ...]:
    """Labels, a decent baseline's logits and a noisier candidate's."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    zb = rng.normal(size=(n, k))
    zb[np.arange(n), y] += 2.5
    zc = zb + rng.normal(scale=noise, size=(n, k))
    return y, zb, zc


# ---------------------------------------------------------------------------------------------------
# holm


@pytest.mark.parametrize(
    "p",
    [
        [0.01],
        [0.01, 0.04, 0.03, 0.2, 0.01],
        [0.0, 1.0, 0.5, 0.5, 0.5],
        [0.049, 0.02, 0.9, 0.001, 0.3, 0.3, 0.04],
        [0.6, 0.7, 0.8],
    ],
)
def test_holm_matches_statsmodels(p: list[float]) -> None:
    want = multipletests(p, method="holm")[1]
    assert holm(p) == pytest.approx(want.tolist(), abs=1e-15)


def test_holm_hand_value_and_none() -> None:
    # m = 3 known: sorted 0.01, 0.02, 0.04 -> 0.03, max(0.03, 0.04), max(0.04, 0.04) = 0.03, 0.04, 0.04
    assert holm([0.04, None, 0.01, 0.02]) == pytest.approx([0.04, None, 0.03, 0.04])
    assert holm([None, None]) == [None, None]
    assert holm([]) == []
    assert holm(np.array([0.4, 0.3])) == pytest.approx([0.6, 0.6])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=12))
def test_holm_monotone_capped_and_not_below_raw(p: list[float]) -> None:
    adj = holm(p)
    order = np.argsort(p, kind="stable")
    m = len(p)
    brute = [max(min(1.0, (m - j) * p[order[j]]) for j in range(i + 1)) for i in range(m)]
    assert [adj[i] for i in order] == pytest.approx(brute, abs=1e-15)
    sorted_adj = [adj[i] for i in order]
    assert all(a <= b for a, b in itertools.pairwise(sorted_adj))
    assert all(raw <= a <= 1.0 for raw, a in zip(p, adj, strict=True))  # type: ignore[operator]


def test_holm_validation() -> None:
    with pytest.raises(DataError, match=r"p-value 1 must be in \[0, 1\], got 1.5"):
        holm([0.1, 1.5])
    with pytest.raises(DataError, match=r"p-value 0 must be in \[0, 1\], got nan"):
        holm([float("nan")])
    with pytest.raises(DataError, match="p-value 0 must be a number in"):
        holm(["0.1"])  # type: ignore[list-item]
    with pytest.raises(DataError, match="pvalues must be a sequence"):
        holm(0.1)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# paired_comparison


def test_names_units_and_json() -> None:
    y, zb, zc = _pair()
    out = paired_comparison(y, zb, zc, num_classes=5, n_resamples=200)
    assert list(out) == NAMES
    for name, m in out.items():
        assert m.name == name
        assert m.unit == measurement_table()[name][0]
        assert m.status == "ok"
        json.dumps(m.to_dict(), allow_nan=False)


def test_accuracy_drop_upper95_is_the_one_sided_bound() -> None:
    y, zb, zc = _pair(seed=1)
    out = paired_comparison(y, zb, zc, num_classes=5, n_resamples=500, seed=7)
    want = accuracy_drop(y, zb.argmax(1), zc.argmax(1), n_resamples=500, seed=7)
    m = out["compare.accuracy_drop_upper95"]
    assert m.value == pytest.approx(want["upper_one_sided_95"], abs=1e-12)
    assert m.interval is None
    assert m.details["drop_points"] == pytest.approx(want["drop_points"])
    assert m.details["n"] == 300
    assert m.details["n_resamples"] == 500
    assert m.details["rule"] == "non-inferior when this bound is below the policy's margin"
    assert m.value > want["drop_points"]


def test_bootstrap_intervals_equal_paired_bootstrap_ci_with_the_same_seed() -> None:
    # stats.bootstrap_ci draws the same indices for the same seed, so it is an exact oracle
    y, zb, zc = _pair(n=120, seed=2)
    pb, pc = M.softmax(zb), M.softmax(zc)
    yb, yc = pb.argmax(1), pc.argmax(1)
    out = paired_comparison(y, zb, zc, num_classes=5, n_resamples=300, seed=4)

    def f1_drop(t: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        return 100.0 * (M.macro_f1(t, b, num_classes=5) - M.macro_f1(t, c, num_classes=5))

    m = out["compare.macro_f1_drop"]
    assert m.value == pytest.approx(f1_drop(y, yb, yc), abs=1e-12)
    assert m.interval == pytest.approx(bootstrap_ci(f1_drop, y, yb, yc, n_resamples=300, seed=4), abs=1e-9)

    m = out["calibration.ece_increase"]
    assert m.value == pytest.approx(M.ece(pc, y) - M.ece(pb, y), abs=1e-15)
    want = bootstrap_ci(lambda t, b, c: M.ece(c, t) - M.ece(b, t), y, pb, pc, n_resamples=300, seed=4)
    assert m.interval == pytest.approx(want, abs=1e-12)

    m = out["compare.kl_mean"]
    assert m.value == pytest.approx(M.mean_kl(pb, pc), abs=1e-15)
    assert m.interval == pytest.approx(bootstrap_ci(M.mean_kl, pb, pc, n_resamples=300, seed=4), abs=1e-12)
    assert m.details["max_abs_logit_diff"] == pytest.approx(float(np.abs(zb - zc).max()))


def test_ece_increase_replaces_quality_with_the_same_value() -> None:
    y, zb, zc = _pair(seed=3)
    q = classification_evidence(y, zb, zc, num_classes=5, n_resamples=50)
    out = paired_comparison(y, zb, zc, num_classes=5, n_resamples=200)
    assert out["calibration.ece_increase"].value == q["calibration.ece_increase"].value
    lo, hi = out["calibration.ece_increase"].interval  # type: ignore[misc]
    assert lo <= out["calibration.ece_increase"].value <= hi  # type: ignore[operator]


def test_negative_flip_rate_hand_counts_and_wilson() -> None:
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    pred_b = np.array([0, 1, 2, 0, 1, 0, 0, 2])  # right on 0..4 and 6
    pred_c = np.array([0, 2, 2, 1, 1, 2, 0, 1])  # wrong on 1, 3 where the baseline was right: b = 2
    eye = np.eye(3) * 4.0
    out = paired_comparison(y, eye[pred_b], eye[pred_c], num_classes=3)
    m = out["compare.negative_flip_rate"]
    assert m.value == pytest.approx(2 / 8)
    assert m.details == {"b": 2, "n": 8}
    ci = binomtest(2, 8).proportion_ci(method="wilson")
    assert m.interval == pytest.approx((ci.low, ci.high), abs=1e-12)
    assert m.value == pytest.approx(M.negative_flip_rate(y, pred_b, pred_c))


def test_few_samples_make_bootstrap_checks_unknown() -> None:
    y, zb, zc = _pair(n=29, seed=5)
    out = paired_comparison(y, zb, zc, num_classes=5)
    for name in ("compare.accuracy_drop_upper95", "compare.macro_f1_drop", "calibration.ece_increase"):
        assert out[name].status == "unknown"
        assert out[name].value is None
        assert out[name].details["reason"].startswith("too few samples")
    assert out["compare.negative_flip_rate"].status == "ok"
    assert out["compare.kl_mean"].value == pytest.approx(M.mean_kl(M.softmax(zb), M.softmax(zc)))
    assert out["compare.kl_mean"].interval is None
    # a single item still gives the flip rate and the KL
    one = paired_comparison(y[:1], zb[:1], zc[:1], num_classes=5)
    assert one["compare.negative_flip_rate"].status == "ok"
    assert one["compare.kl_mean"].status == "ok"
    assert (
        paired_comparison(*_pair(n=30), num_classes=5, n_resamples=50)["compare.macro_f1_drop"].status == "ok"
    )


def test_identical_candidate_is_zero_everywhere() -> None:
    y, zb, _ = _pair(seed=6)
    out = paired_comparison(y, zb, zb.copy(), num_classes=5, n_resamples=200)
    assert out["compare.accuracy_drop_upper95"].value == 0.0
    assert out["compare.macro_f1_drop"].value == 0.0
    assert out["compare.macro_f1_drop"].interval == (0.0, 0.0)
    assert out["calibration.ece_increase"].interval == (0.0, 0.0)
    assert out["compare.negative_flip_rate"].value == 0.0
    assert out["compare.kl_mean"].value == 0.0
    assert out["compare.kl_mean"].details["max_abs_logit_diff"] == 0.0


def test_seed_determinism() -> None:
    y, zb, zc = _pair(seed=8)
    a = paired_comparison(y, zb, zc, num_classes=5, n_resamples=200, seed=1)
    b = paired_comparison(y, zb, zc, num_classes=5, n_resamples=200, seed=1)
    c = paired_comparison(y, zb, zc, num_classes=5, n_resamples=200, seed=2)
    assert {k: m.to_dict() for k, m in a.items()} == {k: m.to_dict() for k, m in b.items()}
    assert a["compare.kl_mean"].interval != c["compare.kl_mean"].interval


def test_large_n_uses_several_index_chunks() -> None:
    # 4,000,000 index entries per chunk: n = 30,000 and 300 resamples make three chunks, drawn as
    # bootstrap_ci draws them
    y, zb, zc = _pair(n=30_000, k=3, seed=9, noise=0.3)
    out = paired_comparison(y, zb, zc, num_classes=3, n_resamples=300, seed=0)
    pb, pc = M.softmax(zb), M.softmax(zc)
    want = bootstrap_ci(M.mean_kl, pb, pc, n_resamples=300, seed=0)
    assert out["compare.kl_mean"].interval == pytest.approx(want, abs=1e-12)


def test_validation_errors() -> None:
    y, zb, zc = _pair(n=40)
    with pytest.raises(
        DataError, match=r"logits_base has shape \(40, 5\) but logits_cand has shape \(40, 4\)"
    ):
        paired_comparison(y, zb, zc[:, :4], num_classes=5)
    with pytest.raises(DataError, match="the logits have 5 columns but num_classes is 6"):
        paired_comparison(y, zb, zc, num_classes=6)
    with pytest.raises(DataError, match="y holds label 7, out of range for 5 classes"):
        paired_comparison(np.where(y == 0, 7, y), zb, zc, num_classes=5)
    with pytest.raises(DataError, match="the logits have 40 rows but y has 39 labels"):
        paired_comparison(y[:39], zb, zc, num_classes=5)
    with pytest.raises(DataError, match="logits_cand contains NaN in 1 rows"):
        zn = zc.copy()
        zn[3, 1] = np.nan
        paired_comparison(y, zb, zn, num_classes=5)
    with pytest.raises(ConfigError, match="n_resamples must be an integer >= 1, got 0"):
        paired_comparison(y, zb, zc, num_classes=5, n_resamples=0)
    with pytest.raises(ConfigError, match="seed must be a non-negative integer, got -1"):
        paired_comparison(y, zb, zc, num_classes=5, seed=-1)


# ---------------------------------------------------------------------------------------------------
# apply_holm


def test_apply_holm_adds_adjusted_p_to_each_tested_candidate() -> None:
    raw = {"int8": 0.01, "prune": 0.04, "fp16": 0.03}
    by_cand = {c: {"compare.mcnemar_p": measure("compare.mcnemar_p", p)} for c, p in raw.items()}
    by_cand["no-test"] = {"compare.flip_rate": measure("compare.flip_rate", 0.0)}
    apply_holm(by_cand)
    want = dict(zip(raw, multipletests(list(raw.values()), method="holm")[1], strict=True))
    for cand, p in raw.items():
        m = by_cand[cand]["compare.mcnemar_p_holm"]
        assert m.value == pytest.approx(want[cand])
        assert m.unit == "p-value"
        assert m.details == {"raw_p": p, "m": 3, "method": "Holm-Bonferroni"}
    assert "compare.mcnemar_p_holm" not in by_cand["no-test"]
    assert by_cand["int8"]["compare.mcnemar_p_holm"].value == pytest.approx(0.03)


def test_apply_holm_unknown_raw_p_stays_unknown_and_is_not_counted() -> None:
    by_cand = {
        "a": {"compare.mcnemar_p": measure("compare.mcnemar_p", 0.02)},
        "b": {"compare.mcnemar_p": measure("compare.mcnemar_p", None, reason="no labels")},
    }
    apply_holm(by_cand)
    assert by_cand["a"]["compare.mcnemar_p_holm"].value == pytest.approx(0.02)
    assert by_cand["a"]["compare.mcnemar_p_holm"].details["m"] == 1
    assert by_cand["b"]["compare.mcnemar_p_holm"].status == "unknown"
    apply_holm({})  # nothing to correct
    with pytest.raises(DataError, match="measurements_by_candidate must map candidate name"):
        apply_holm([])  # type: ignore[arg-type]
