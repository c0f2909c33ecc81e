"""Tests for modelyard.evaluate.ood and modelyard.data.ood_sets: hand values, oracles, edge cases."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

from modelyard.data.ood_sets import LETTERS, builtin_ood, digits_ood, text_ood
from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.ood import (
    SCORES,
    _auroc_weighted,
    aupr_in,
    aupr_out,
    auroc,
    check_ood_inputs,
    detection_error,
    embedding_ood_evidence,
    energy_score,
    fpr_at_tpr,
    knn_score,
    maxlogit_score,
    msp_score,
    ood_evidence,
    ood_threshold,
)

# ---------------------------------------------------------------------------------------------------
# oracles: sklearn, torchmetrics, and torch versions of pytorch-ood's detector formulas


def tm(fn: str, scores: np.ndarray, positive: np.ndarray) -> Any:
    """A torchmetrics binary classification function on float64 scores (1 = positive)."""
    import torch
    from torchmetrics.functional import classification

    return getattr(classification, fn)(torch.tensor(scores), torch.tensor(positive).long())


def random_logits(n: int, k: int = 5, *, scale: float = 3.0, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=(n, k))


# ---------------------------------------------------------------------------------------------------
# scores


def test_scores_match_pytorch_ood_formulas() -> None:
    # pytorch-ood 0.4.0: MaxSoftmax.score = −max softmax(z / t), EnergyBased.score = −t·logsumexp(z / t),
    # MaxLogit.score = −max z; "larger = more OOD". The same formulas in torch are the oracle here.
    import torch

    z = random_logits(40, 7, seed=1)
    t = torch.tensor(z)
    assert msp_score(z) == pytest.approx((-t.softmax(dim=1).max(dim=1).values).numpy(), abs=1e-12)
    assert energy_score(z) == pytest.approx((-torch.logsumexp(t, dim=1)).numpy(), abs=1e-12)
    assert energy_score(z, T=2.5) == pytest.approx(
        (-2.5 * torch.logsumexp(t / 2.5, dim=1)).numpy(), abs=1e-12
    )
    assert maxlogit_score(z) == pytest.approx((-t.max(dim=1).values).numpy(), abs=1e-12)


def test_scores_are_larger_for_flat_logits() -> None:
    # A confident row and a flat row: every score must call the flat row more OOD (metrics.md 5.2 sign).
    z = np.array([[10.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    for fn in SCORES.values():
        s = fn(z)
        assert s.dtype == np.float64 and s.shape == (2,)
        assert s[1] > s[0]
    assert msp_score(z)[1] == pytest.approx(-1.0 / 3.0)
    assert energy_score(z)[1] == pytest.approx(-np.log(3.0))
    assert maxlogit_score(z) == pytest.approx([-10.0, 0.0])


def test_score_validation() -> None:
    with pytest.raises(ConfigError, match="T must be a positive"):
        energy_score(np.zeros((2, 3)), T=0)
    with pytest.raises(DataError, match=r"logits must be an \(n, K\) array"):
        msp_score(np.zeros(3))
    with pytest.raises(DataError, match="NaN or inf in 1 rows"):
        maxlogit_score(np.array([[0.0, np.nan], [0.0, 1.0]]))


def test_knn_score_hand_values_and_validation() -> None:
    ref = np.array([[1.0, 0.0], [0.0, 1.0]])
    emb = np.array([[2.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])
    # nearest cosine: 1, 1/sqrt(2), 0 (to [0, 1]), 0 (zero row)
    assert knn_score(emb, ref) == pytest.approx([-1.0, -1.0 / np.sqrt(2.0), 0.0, 0.0])
    # second nearest: 0, 1/sqrt(2), -1, 0
    assert knn_score(emb, ref, k=2) == pytest.approx([0.0, -1.0 / np.sqrt(2.0), 1.0, 0.0])
    with pytest.raises(ConfigError, match="k=3 is larger than the 2 reference items"):
        knn_score(emb, ref, k=3)
    with pytest.raises(DataError, match="emb has dimension 3 but reference_emb has 2"):
        knn_score(np.ones((2, 3)), ref)


# ---------------------------------------------------------------------------------------------------
# AUROC, AUPR, FPR@95TPR


def test_auroc_with_ties_hand_value_and_oracles() -> None:
    sid, sood = np.array([0.0, 1.0, 1.0]), np.array([1.0, 2.0])
    # OOD 1 beats ID 0 and ties two ID 1s (½ each); OOD 2 beats all three: (1 + ½ + ½ + 3) / 6.
    assert auroc(sid, sood) == pytest.approx(5.0 / 6.0)
    assert float(tm("binary_auroc", np.r_[sid, sood], np.r_[0, 0, 0, 1, 1])) == pytest.approx(5.0 / 6.0)
    assert auroc(sid, sid) == pytest.approx(0.5)  # all ties


def test_metrics_agree_with_oracles_on_continuous_scores() -> None:
    rng = np.random.default_rng(3)
    sid, sood = rng.normal(size=200), rng.normal(loc=1.0, size=150)
    is_ood = np.r_[np.zeros(200, dtype=int), np.ones(150, dtype=int)]
    scores = np.r_[sid, sood]
    assert auroc(sid, sood) == pytest.approx(roc_auc_score(is_ood, scores))
    assert auroc(sid, sood) == pytest.approx(float(tm("binary_auroc", scores, is_ood)))
    assert aupr_out(sid, sood) == pytest.approx(average_precision_score(is_ood, scores))
    assert aupr_out(sid, sood) == pytest.approx(float(tm("binary_average_precision", scores, is_ood)))
    assert aupr_in(sid, sood) == pytest.approx(average_precision_score(1 - is_ood, -scores))
    assert aupr_in(sid, sood) == pytest.approx(float(tm("binary_average_precision", -scores, 1 - is_ood)))
    # FPR95 is the first point of the ROC curve with ID positive and score −s where TPR >= 0.95
    fpr, tpr, thr = roc_curve(1 - is_ood, -scores, drop_intermediate=False)
    i = int(np.argmax(tpr >= 0.95))
    assert fpr_at_tpr(sid, sood) == pytest.approx((fpr[i], -thr[i]))
    tm_fpr, tm_tpr, tm_thr = (v.numpy() for v in tm("binary_roc", -scores, 1 - is_ood))
    j = int(np.argmax(tm_tpr >= 0.95))
    assert fpr_at_tpr(sid, sood)[0] == pytest.approx(tm_fpr[j])
    # torchmetrics squashes scores outside [0, 1] with a sigmoid: its threshold is sigmoid(−τ), not τ
    assert tm_thr[j] == pytest.approx(1.0 / (1.0 + np.exp(fpr_at_tpr(sid, sood)[1])))


def test_aupr_is_step_wise_average_precision_not_trapezoid() -> None:
    sid, sood = np.array([0.0, 1.0]), np.array([2.0, 0.5])
    # OOD positive, descending s: OOD(2) P=1 R=½; ID(1); OOD(0.5) P=2/3 R=1 -> AP = ½·1 + ½·2/3.
    assert aupr_out(sid, sood) == pytest.approx(5.0 / 6.0)
    # ID positive, descending −s: ID(0) P=1 R=½; OOD(−0.5); ID(−1) P=2/3 R=1 -> the same 5/6.
    assert aupr_in(sid, sood) == pytest.approx(5.0 / 6.0)
    assert aupr_in(sid, sood) == pytest.approx(aupr_out(-sood, -sid))
    # the trapezoidal area under the same PR points (pytorch-ood 0.4.0's AUPR) is 19/24, not 5/6
    precision, recall, _ = precision_recall_curve(np.r_[0, 0, 1, 1], np.r_[sid, sood])
    assert auc(recall, precision) == pytest.approx(19.0 / 24.0)


def test_fpr95_is_id_positive_not_ood_positive() -> None:
    sid = np.arange(20.0)
    sood = np.array([5.0, 12.0, 18.0, 19.0, 19.0, 25.0, 30.0, 40.0, 50.0, 60.0])
    # keep 19 of 20 ID items: τ = 18; OOD items with s <= 18 are accepted: 5, 12, 18.
    assert fpr_at_tpr(sid, sood) == pytest.approx((0.3, 18.0))
    # OOD positive (pytorch-ood 0.4.0's FPR95TPR): ID flagged once 95% of OOD is detected, 15/20.
    fpr, tpr, _ = roc_curve(np.r_[np.zeros(20), np.ones(10)], np.r_[sid, sood], drop_intermediate=False)
    assert fpr[int(np.argmax(tpr >= 0.95))] == pytest.approx(0.75)


def test_fpr95_ties_take_the_smallest_tpr_reaching_the_target() -> None:
    sid = np.r_[np.ones(10), np.full(10, 2.0)]
    sood = np.tile([1.5, 2.0, 2.5], 4)
    # no threshold keeps exactly 95%; the smallest TPR >= 0.95 is 1.0 at τ = 2; OOD ties at 2 are accepted.
    assert fpr_at_tpr(sid, sood) == pytest.approx((8.0 / 12.0, 2.0))
    assert fpr_at_tpr(sid, sood, tpr=0.5) == pytest.approx((0.0, 1.0))
    with pytest.raises(ConfigError, match=r"tpr must be a fraction in \(0, 1\]"):
        fpr_at_tpr(sid, sood, tpr=95)


def test_detection_error() -> None:
    assert detection_error([0.0, 1.0], [2.0, 3.0]) == pytest.approx(0.0)
    assert detection_error([0.0, 1.0], [0.0, 1.0]) == pytest.approx(0.5)
    # best threshold flags s >= 1: FNR 0, FPR ½ -> ¼
    assert detection_error([0.0, 1.0], [1.0, 2.0]) == pytest.approx(0.25)


def test_metric_input_validation() -> None:
    with pytest.raises(DataError, match="score_ood must be a non-empty 1-d array"):
        auroc([0.0, 1.0], [])
    with pytest.raises(DataError, match="score_id contains 1 NaN or inf"):
        fpr_at_tpr([0.0, np.nan], [1.0])


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(-20, 20), min_size=1, max_size=60),
    st.floats(0.05, 1.0),
)
def test_threshold_keeps_at_least_tpr_of_id_and_is_minimal(values: list[int], tpr: float) -> None:
    s = np.asarray(values, dtype=np.float64)
    tau = ood_threshold(s, tpr=tpr)
    assert np.mean(s <= tau) >= tpr
    smaller = s[s < tau]
    if smaller.size:  # any lower ID score as threshold would keep fewer than tpr
        assert np.mean(s <= smaller.max()) < tpr
    assert fpr_at_tpr(s, [0.0], tpr=tpr)[1] == tau


# ---------------------------------------------------------------------------------------------------
# evidence


def test_weighted_auroc_equals_auroc_of_repeated_items() -> None:
    rng = np.random.default_rng(0)
    sid, sood = rng.integers(0, 5, size=12).astype(float), rng.integers(2, 8, size=9).astype(float)
    w_id, w_ood = rng.integers(0, 4, size=(3, 12)), rng.integers(1, 4, size=(3, 9))
    w_id[:, 0] = 1  # at least one ID item per row
    got = _auroc_weighted(sid, sood, w_id.astype(float), w_ood.astype(float))
    for r in range(3):
        want = auroc(np.repeat(sid, w_id[r]), np.repeat(sood, w_ood[r]))
        assert got[r] == pytest.approx(want)
    assert _auroc_weighted(sid, sood, np.ones((1, 12)), np.ones((1, 9)))[0] == pytest.approx(auroc(sid, sood))


def synthetic(seed: int = 0) -> tuple[np.ndarray, dict[str, np.ndarray], np.ndarray]:
    """Confident ID logits, two flatter OOD sets and confident validation logits."""
    rng = np.random.default_rng(seed)

    def confident(n: int) -> np.ndarray:
        z = rng.normal(size=(n, 4))
        z[np.arange(n), rng.integers(0, 4, n)] += 6.0
        return z

    return (
        confident(60),
        {"flat": rng.normal(size=(30, 4)), "wide": rng.normal(size=(20, 4)) * 2.0},
        confident(40),
    )


def test_ood_evidence_shapes_values_and_rule() -> None:
    zid, zood, zval = synthetic()
    out, rule = ood_evidence(zid, zood, zid, zood, score="energy", logits_val_cand=zval, n_resamples=200)
    assert set(out) == {"ood.auroc", "ood.fpr95", "ood.auroc_drop"}
    json.dumps({k: m.to_dict() for k, m in out.items()})
    sid = energy_score(zid)
    pooled = energy_score(np.concatenate(list(zood.values())))
    a = out["ood.auroc"]
    assert a.status == "ok" and a.unit == "fraction"
    assert a.value == pytest.approx(auroc(sid, pooled))
    assert a.value is not None and a.interval is not None
    assert a.interval[0] <= a.value <= a.interval[1]
    d = a.details
    assert (d["score"], d["positive"], d["n_id"], d["n_ood"]) == ("energy", "OOD", 60, 50)
    assert set(d["scores"]) == {"msp", "energy", "maxlogit"}
    assert d["scores"]["msp"]["auroc"] == pytest.approx(
        auroc(msp_score(zid), msp_score(np.r_[zood["flat"], zood["wide"]]))
    )
    assert set(d["scores"]["energy"]) == {"auroc", "aupr_in", "aupr_out", "fpr95"}
    assert d["per_set"]["flat"]["n"] == 30
    assert d["per_set"]["wide"]["auroc"] == pytest.approx(auroc(sid, energy_score(zood["wide"])))
    h = d["histogram"]
    assert len(h["edges"]) == 31 and sum(h["id"]) == 60 and sum(h["ood"]) == 50
    f = out["ood.fpr95"]
    assert f.value == pytest.approx(fpr_at_tpr(sid, pooled)[0])
    assert f.details["positive"] == "ID"
    drop = out["ood.auroc_drop"]
    assert drop.value == pytest.approx(0.0) and drop.interval == pytest.approx((0.0, 0.0))
    assert rule == {
        "score": "energy",
        "temperature": 1.0,
        "threshold": pytest.approx(ood_threshold(energy_score(zval))),
        "flag": "score > threshold",
        "tpr_target": 0.95,
        "fitted_on": "calibration split",
        "n_fit": 40,
    }
    # without fit items there is no threshold: it is never fitted on the test items the evidence judges
    _, rule_test = ood_evidence(zid, zood, zid, zood, score="msp", n_resamples=50)
    assert rule_test["fitted_on"] is None and rule_test["threshold"] is None and rule_test["n_fit"] == 0
    assert "test split is never used" in rule_test["reason"]


def test_ood_evidence_drop_is_positive_for_a_worse_candidate_and_deterministic() -> None:
    zid, zood, _ = synthetic()
    worse = {k: v * 0.0 + zid[: len(v)] for k, v in zood.items()}  # OOD inputs now look like ID
    a, _ = ood_evidence(zid, zood, zid, worse, n_resamples=300, seed=1)
    b, _ = ood_evidence(zid, zood, zid, worse, n_resamples=300, seed=1)
    drop = a["ood.auroc_drop"]
    assert drop.value is not None and drop.value > 10.0
    assert drop.interval is not None and drop.interval[0] > 0.0
    assert a["ood.auroc"].value < a["ood.auroc"].details["baseline_auroc"]
    assert drop.to_dict() == b["ood.auroc_drop"].to_dict()
    c, _ = ood_evidence(zid, zood, zid, worse, n_resamples=300, seed=2)
    assert c["ood.auroc"].interval != a["ood.auroc"].interval


def test_ood_evidence_unknown_with_too_few_items() -> None:
    zid, zood, _ = synthetic()
    out, rule = ood_evidence(zid[:9], zood, zid[:9], zood, logits_val_cand=zid[:9])
    for m in out.values():
        assert m.status == "unknown" and m.value is None
        assert "too few items: 9 ID and 50 OOD" in m.details["reason"]
    assert rule["threshold"] is None and "only 9 ID items" in rule["reason"]
    out, _ = ood_evidence(zid, {"tiny": zood["flat"][:9]}, zid, {"tiny": zood["flat"][:9]})
    assert out["ood.auroc"].status == "unknown"
    out, rule = ood_evidence(zid, {}, zid, {}, logits_val_cand=zid)
    assert "no OOD set" in out["ood.fpr95"].details["reason"]
    assert rule["threshold"] is not None


def test_ood_evidence_validation() -> None:
    zid, zood, _ = synthetic()
    with pytest.raises(ConfigError, match="unknown OOD score 'odin'; choose one of: msp, energy, maxlogit"):
        ood_evidence(zid, zood, zid, zood, score="odin")
    with pytest.raises(DataError, match=r"baseline's OOD logits cover sets \['flat', 'wide'\]"):
        ood_evidence(zid, zood, zid, {"flat": zood["flat"]})
    with pytest.raises(DataError, match="OOD set 'wide' has 20 baseline rows but 19 candidate rows"):
        ood_evidence(zid, zood, zid, {**zood, "wide": zood["wide"][:19]})
    with pytest.raises(DataError, match="logits_id_base has 60 rows but logits_id_cand has 59"):
        ood_evidence(zid, zood, zid[:59], zood)
    with pytest.raises(ConfigError, match="n_resamples must be an integer >= 1"):
        ood_evidence(zid, zood, zid, zood, n_resamples=0)


def test_embedding_ood_evidence() -> None:
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 16))
    ref = centers[np.arange(90) % 3] + 0.1 * rng.normal(size=(90, 16))
    eid = centers[np.arange(30) % 3] + 0.1 * rng.normal(size=(30, 16))
    eood = {"far": rng.normal(size=(25, 16))}
    out, rule = embedding_ood_evidence(
        eid, eood, eid, eood, reference_base=ref, reference_cand=ref, n_resamples=100
    )
    a = out["ood.auroc"]
    assert a.details["score"] == "knn_cosine" and set(a.details["scores"]) == {"knn_cosine"}
    assert a.value == pytest.approx(auroc(knn_score(eid, ref), knn_score(eood["far"], ref)))
    assert a.value is not None and a.value > 0.95
    assert out["ood.auroc_drop"].value == pytest.approx(0.0)
    # a bare array (as the suite passes pooled embeddings) is one set named "ood"
    pooled, _ = embedding_ood_evidence(
        eid, eood["far"], eid, eood["far"], reference_base=ref, reference_cand=ref, n_resamples=100
    )
    assert pooled["ood.auroc"].details["per_set"] == {"ood": a.details["per_set"]["far"]}
    assert pooled["ood.auroc"].to_dict()["value"] == a.to_dict()["value"]
    assert (rule["score"], rule["k"], rule["fitted_on"], rule["threshold"]) == ("knn_cosine", 1, None, None)
    # the threshold comes from fit items outside the reference, never from the scored test items
    val = centers[np.arange(20) % 3] + 0.1 * rng.normal(size=(20, 16))
    _, rule = embedding_ood_evidence(
        eid, eood, eid, eood, reference_base=ref, reference_cand=ref, emb_val_cand=val, n_resamples=10
    )
    assert rule["fitted_on"] == "fit items outside the reference" and rule["n_fit"] == 20
    assert rule["threshold"] == pytest.approx(ood_threshold(knn_score(val, ref)))


# ---------------------------------------------------------------------------------------------------
# user OOD sets


def test_check_ood_inputs() -> None:
    example = np.zeros((1, 1, 8, 8), dtype=np.float32)  # a batch of one test item
    ok = check_ood_inputs(np.ones((5, 1, 8, 8)), example)
    assert isinstance(ok, np.ndarray) and ok.dtype == np.float32 and ok.shape == (5, 1, 8, 8)
    msg = (
        "OOD set has items of shape (3, 32, 32) but the model takes (1, 8, 8); "
        "give an OOD set of the same input shape"
    )
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        check_ood_inputs(np.zeros((4, 3, 32, 32)), example)
    with pytest.raises(DataError, match="OOD set holds text but the model takes arrays"):
        check_ood_inputs(["a cat"], example)
    with pytest.raises(DataError, match="contains NaN or inf in 1 items"):
        check_ood_inputs(np.full((2, 1, 8, 8), np.nan)[:1], example)
    with pytest.raises(DataError, match=r"items of shape \(64,\) but the model takes \(1, 8, 8\)"):
        check_ood_inputs(np.zeros((4, 64)), example)
    assert check_ood_inputs(("one", "two"), ["a sentence"]) == ["one", "two"]
    assert check_ood_inputs(["one"], "a sentence") == ["one"]
    with pytest.raises(DataError, match="'noise' item 1 is int, not text"):
        check_ood_inputs(["fine", 3], "a sentence", name="'noise'")
    with pytest.raises(DataError, match="OOD set is empty"):
        check_ood_inputs([], "a sentence")


# ---------------------------------------------------------------------------------------------------
# built-in OOD sets


@pytest.fixture(scope="module")
def sets() -> dict[str, np.ndarray]:
    return digits_ood(n_per_set=40, seed=0)


def test_digits_ood_shapes_range_and_grid(sets: dict[str, np.ndarray]) -> None:
    assert list(sets) == ["noise", "inverted", "shifted", "letters"]
    for name, x in sets.items():
        assert x.shape == (40, 1, 8, 8) and x.dtype == np.float32, name
        assert x.min() >= 0.0 and x.max() <= 1.0, name
        assert np.array_equal(x * 16, np.rint(x * 16)), name  # the digits' 1/16 grey levels
        assert (x.reshape(40, -1).max(axis=1) > 0).all(), name  # no blank frames


def test_digits_ood_construction(sets: dict[str, np.ndarray]) -> None:
    from sklearn.datasets import load_digits

    digits = (load_digits().images / 16.0).reshape(-1, 64)
    inverted = 1.0 - sets["inverted"].reshape(40, -1)
    # every inverted item is 1 - a digit of load_digits
    assert all(np.isclose(digits, row).all(axis=1).any() for row in inverted)
    # shifting by 3-4 px leaves at least 3 zero rows or columns at one edge
    for img in sets["shifted"][:, 0]:
        bands = [img[:3], img[-3:], img[:, :3], img[:, -3:]]
        assert any(not b.any() for b in bands)
    letters = sets["letters"][:, 0]
    assert (letters.reshape(40, -1).mean(axis=1) > 0.1).all()  # letters fill the frame
    assert len(set(LETTERS) & set("ODQILTZSGB")) == 0


def test_digits_ood_is_deterministic_and_validated(sets: dict[str, np.ndarray]) -> None:
    again = digits_ood(n_per_set=40, seed=0)
    assert all(np.array_equal(sets[k], again[k]) for k in sets)
    other = digits_ood(n_per_set=40, seed=1)
    assert not np.array_equal(sets["noise"], other["noise"])
    with pytest.raises(ConfigError, match="n_per_set must be a positive integer, got 0"):
        digits_ood(n_per_set=0)
    with pytest.raises(ConfigError, match="seed must be a non-negative integer"):
        digits_ood(seed=-1)


def test_text_ood_and_builtin_ood() -> None:
    from importlib import resources

    raw = json.loads(resources.files("modelyard.zoo").joinpath("minilm_sentences.json").read_text("utf-8"))
    texts = text_ood()
    assert texts == raw["ood"] and len(texts) > 10 and all(isinstance(t, str) for t in texts)
    assert builtin_ood("modelyard-sentences") == {"off_topic": texts}
    digits_sets = builtin_ood("sklearn-digits")
    assert digits_sets is not None and set(digits_sets) == {"noise", "inverted", "shifted", "letters"}
    assert digits_sets["noise"].shape == (100, 1, 8, 8)
    assert builtin_ood("my-data") is None


# ---------------------------------------------------------------------------------------------------
# the digits demo


def test_digits_baseline_flags_noise_and_letters(digits: Any) -> None:
    from modelyard.runtime.preprocess import predict

    cand = digits.baseline
    runner, pre = cand.load(), cand.preprocessor()
    zid = predict(runner, pre, digits.dataset.x_test)
    zval = predict(runner, pre, digits.dataset.x_cal)
    zood = {name: predict(runner, pre, x) for name, x in digits_ood().items()}  # the built-in sets
    out, rule = ood_evidence(zid, zood, zid, zood, logits_val_cand=zval, n_resamples=200)
    per_set = out["ood.auroc"].details["per_set"]
    # energy AUROC of the baseline per set: noise 0.875, letters 0.763, inverted 0.706, shifted 0.908;
    # 0.813 pooled, FPR95 0.56.
    assert per_set["noise"]["auroc"] > 0.75
    assert per_set["letters"]["auroc"] > 0.65
    pooled = out["ood.auroc"].value
    assert pooled is not None and pooled > 0.7
    assert rule["fitted_on"] == "calibration split"
    served = out["ood.fpr95"].details["at_serving_threshold"]
    assert served["id_flagged"] < 0.15  # about 5% of test ID inputs flagged at the calibration τ
