"""Tests for modelyard.evaluate.slices: per-class table, worst class against the baseline, user slices."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest
from sklearn.metrics import precision_recall_fscore_support

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.checks import measurement_table
from modelyard.evaluate.slices import per_class_table, slice_evidence, user_slice_evidence
from modelyard.evaluate.stats import bootstrap_ci


def _wilson(k: int, n: int) -> list[float]:
    ci = binomtest(k, n).proportion_ci(method="wilson")
    return [ci.low, ci.high]


def _logits(pred: np.ndarray, k: int) -> np.ndarray:
    return np.eye(k)[pred] * 3.0


def _accurate_pair(n: int = 1000, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labels and a baseline's logits that are right on every item."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    zb = rng.normal(size=(n, k))
    zb[np.arange(n), y] += 8.0
    return y, zb


# ---------------------------------------------------------------------------------------------------
# per_class_table


Y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3])
PRED = np.array([0, 0, 1, 1, 0, 2, 2, 1, 2, 0])  # class 3 never predicted; class 4 absent from both


def test_per_class_table_hand_values() -> None:
    rows = per_class_table(Y, PRED, num_classes=5)
    assert [r["class"] for r in rows] == ["0", "1", "2", "3", "4"]
    # class 0: TP 2, support 3, predicted 4 -> P 2/4, R 2/3, F1 = 4/7
    assert rows[0] == {
        "class": "0",
        "support": 3,
        "predicted": 4,
        "precision": 0.5,
        "precision_ci": pytest.approx(_wilson(2, 4), abs=1e-12),
        "recall": pytest.approx(2 / 3),
        "recall_ci": pytest.approx(_wilson(2, 3), abs=1e-12),
        "f1": pytest.approx(4 / 7),
    }
    # class 1: TP 1, support 2, predicted 3 -> P 1/3, R 1/2, F1 = 2/5
    assert (rows[1]["precision"], rows[1]["recall"], rows[1]["f1"]) == pytest.approx((1 / 3, 0.5, 0.4))
    # class 2: TP 3, support 4, predicted 3 -> P 1, R 3/4, F1 6/7
    assert rows[2]["precision"] == 1.0
    assert rows[2]["precision_ci"][1] == 1.0
    assert rows[2]["recall"] == 0.75
    assert rows[2]["f1"] == pytest.approx(6 / 7)
    # class 3: never predicted -> precision None, recall 0, F1 0
    assert rows[3]["precision"] is None and rows[3]["precision_ci"] is None
    assert rows[3]["recall"] == 0.0 and rows[3]["recall_ci"][0] == 0.0
    assert rows[3]["f1"] == 0.0
    # class 4: absent from truth and predictions
    assert rows[4]["support"] == rows[4]["predicted"] == 0
    assert rows[4]["precision"] is None and rows[4]["recall"] is None and rows[4]["f1"] is None
    json.dumps(rows, allow_nan=False)


def test_per_class_table_matches_sklearn_and_scipy() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 6, 400)
    pred = np.where(rng.random(400) < 0.7, y, rng.integers(0, 6, 400))
    rows = per_class_table(y, pred, num_classes=6, labels=list("abcdef"))
    p, r, f, s = precision_recall_fscore_support(y, pred, labels=range(6), zero_division=0)
    assert [row["class"] for row in rows] == list("abcdef")
    for c, row in enumerate(rows):
        assert row["precision"] == pytest.approx(p[c])
        assert row["recall"] == pytest.approx(r[c])
        assert row["f1"] == pytest.approx(f[c])
        assert row["support"] == s[c]
        tp = int(np.sum((y == c) & (pred == c)))
        assert row["recall_ci"] == pytest.approx(_wilson(tp, int(s[c])), abs=1e-12)
        assert row["precision_ci"] == pytest.approx(_wilson(tp, int(np.sum(pred == c))), abs=1e-12)


def test_per_class_table_validation() -> None:
    with pytest.raises(ConfigError, match="labels must be a sequence of 5 class names"):
        per_class_table(Y, PRED, num_classes=5, labels=["a", "b"])
    with pytest.raises(DataError, match="pred holds label 2, out of range for 2 classes"):
        per_class_table(np.minimum(Y, 1), PRED, num_classes=2)
    with pytest.raises(DataError, match="y has 10 labels but pred has 9"):
        per_class_table(Y, PRED[:9], num_classes=5)
    with pytest.raises(ConfigError, match="num_classes must be an integer >= 1, got 0"):
        per_class_table(Y, PRED, num_classes=0)


# ---------------------------------------------------------------------------------------------------
# slice_evidence


def test_a_lost_class_keeps_global_accuracy_but_shows_as_the_worst_class() -> None:
    y, zb = _accurate_pair()
    zc = zb.copy()
    lost = zb.argmax(1) == 3
    zc[lost, 5] = zc[lost].max(axis=1) + 1.0  # class 3 is always predicted as class 5
    assert np.mean(zc.argmax(1) == y) == pytest.approx(0.9)  # global accuracy stays high
    out = slice_evidence(y, zb, zc, num_classes=10, n_resamples=300)
    assert list(out) == ["slices.worst_class_recall", "slices.worst_class_drop"]

    drop = out["slices.worst_class_drop"]
    assert drop.unit == measurement_table()["slices.worst_class_drop"][0]
    assert drop.value == pytest.approx(100.0)
    assert drop.details["class"] == "3"
    assert drop.interval == pytest.approx((100.0, 100.0))
    assert drop.details["per_class_drop_points"]["3"] == pytest.approx(100.0)
    assert drop.details["per_class_drop_points"]["5"] == 0.0
    assert drop.details["small_classes"] == []
    assert "note" not in drop.details

    worst = out["slices.worst_class_recall"]
    assert worst.value == 0.0
    assert worst.details["worst_class"] == "3"
    assert worst.interval == pytest.approx(tuple(_wilson(0, 100)), abs=1e-12)
    row3 = worst.details["per_class"][3]
    assert row3["class"] == "3"
    assert row3["baseline_recall"] == 1.0
    assert row3["recall_drop_points"] == pytest.approx(100.0)
    assert worst.details["per_class"][5]["precision"] == pytest.approx(0.5)
    for m in out.values():
        json.dumps(m.to_dict(), allow_nan=False)


def test_worst_class_drop_interval_is_the_paired_bootstrap_of_the_max() -> None:
    rng = np.random.default_rng(2)
    n, k = 150, 4
    y = rng.integers(0, k, n)
    pred_b = np.where(rng.random(n) < 0.85, y, rng.integers(0, k, n))
    pred_c = np.where(rng.random(n) < 0.15, rng.integers(0, k, n), pred_b)

    def max_drop(t: np.ndarray, b: np.ndarray, c: np.ndarray) -> float:
        drops = [
            100.0 * (np.mean(b[t == j] == j) - np.mean(c[t == j] == j)) for j in range(k) if np.any(t == j)
        ]
        return max(drops)

    out = slice_evidence(y, _logits(pred_b, k), _logits(pred_c, k), num_classes=k, n_resamples=250, seed=3)
    m = out["slices.worst_class_drop"]
    assert m.value == pytest.approx(max_drop(y, pred_b, pred_c))
    assert m.interval == pytest.approx(
        bootstrap_ci(max_drop, y, pred_b, pred_c, n_resamples=250, seed=3), abs=1e-9
    )


def test_small_classes_are_listed_and_all_small_is_noted() -> None:
    y = np.array([0] * 40 + [1] * 10 + [2] * 5)
    zb = _logits(y, 3)
    out = slice_evidence(y, zb, zb, num_classes=3, labels=["cat", "dog", "eel"], n_resamples=50)
    d = out["slices.worst_class_drop"].details
    assert d["small_classes"] == ["dog", "eel"]
    assert "note" not in d
    assert out["slices.worst_class_drop"].value == 0.0
    assert out["slices.worst_class_recall"].details["worst_class"] == "cat"  # ties go to the first class
    out = slice_evidence(
        y[40:], zb[40:], zb[40:], num_classes=3, labels=["cat", "dog", "eel"], n_resamples=50
    )
    d = out["slices.worst_class_drop"].details
    assert d["small_classes"] == ["cat", "dog", "eel"]
    assert d["note"] == "classes below min_support: interval is wide"
    assert out["slices.worst_class_drop"].status == "ok"


def test_classes_absent_from_the_test_split_are_ignored() -> None:
    y = np.array([0, 0, 1, 1, 0, 1])
    pred_b = np.array([0, 0, 1, 1, 0, 1])
    pred_c = np.array([0, 2, 1, 1, 0, 2])  # class 2 has no support: it never counts as worst
    out = slice_evidence(y, _logits(pred_b, 3), _logits(pred_c, 3), num_classes=3, n_resamples=20)
    assert out["slices.worst_class_recall"].value == pytest.approx(2 / 3)
    assert out["slices.worst_class_recall"].details["worst_class"] == "0"
    assert out["slices.worst_class_drop"].value == pytest.approx(100 / 3)
    assert set(out["slices.worst_class_drop"].details["per_class_drop_points"]) == {"0", "1"}


def test_many_classes_cap_the_details() -> None:
    y, zb = _accurate_pair(n=1200, k=60)
    out = slice_evidence(y, zb, zb, num_classes=60, n_resamples=20)
    assert len(out["slices.worst_class_recall"].details["per_class"]) == 50
    assert out["slices.worst_class_recall"].details["per_class_truncated_from"] == 60
    assert len(out["slices.worst_class_drop"].details["per_class_drop_points"]) == 50


def test_slice_evidence_validation() -> None:
    y, zb = _accurate_pair(n=100, k=4)
    with pytest.raises(ConfigError, match="min_support must be an integer >= 1, got 0"):
        slice_evidence(y, zb, zb, num_classes=4, min_support=0)
    with pytest.raises(DataError, match="the logits have 4 columns but num_classes is 5"):
        slice_evidence(y, zb, zb, num_classes=5)
    with pytest.raises(ConfigError, match="labels must be a sequence of 4 class names"):
        slice_evidence(y, zb, zb, num_classes=4, labels="abcd")


# ---------------------------------------------------------------------------------------------------
# user_slice_evidence


def test_a_planted_bad_slice_is_the_worst() -> None:
    y, zb = _accurate_pair(n=600, k=3, seed=4)
    region = np.array(["north", "south", "east"])[np.arange(600) // 200]
    zc = zb.copy()
    bad = np.flatnonzero(region == "east")[:120]  # 120 of east's 200 items go wrong: 60 points
    zc[bad] = np.roll(zb[bad], 1, axis=1)
    out = user_slice_evidence(y, zb, zc, {"region": region})
    m = out["slices.worst_slice_drop"]
    assert m.unit == "points"
    assert m.value == pytest.approx(60.0)
    assert m.details["worst"] == {"column": "region", "value": "east"}
    rows = {r["value"]: r for r in m.details["slices"]}
    assert list(rows) == ["east", "north", "south"]
    assert rows["east"]["n"] == 200
    assert rows["east"]["accuracy"] == pytest.approx(0.4)
    assert rows["east"]["accuracy_ci"] == pytest.approx(_wilson(80, 200), abs=1e-12)
    assert rows["east"]["baseline_accuracy"] == 1.0
    assert rows["north"]["drop_points"] == 0.0
    assert all(r["status"] == "ok" for r in rows.values())
    json.dumps(m.to_dict(), allow_nan=False)


def test_numeric_columns_are_binned_by_quartile() -> None:
    y, zb = _accurate_pair(n=400, k=2, seed=5)
    age = np.arange(400, dtype=np.float64)  # 400 distinct values: quartile bins of 100
    zc = zb.copy()
    old = age >= 350
    zc[old] = zb[old][:, ::-1]  # the oldest 50 go wrong: the top bin drops 50 points
    grade = np.arange(400) % 3  # 3 distinct numbers: one slice per value
    out = user_slice_evidence(y, zb, zc, {"age": age, "grade": grade})
    m = out["slices.worst_slice_drop"]
    ages = [r for r in m.details["slices"] if r["column"] == "age"]
    assert [r["value"] for r in ages] == ["[0, 99.75)", "[99.75, 199.5)", "[199.5, 299.2)", "[299.2, 399]"]
    assert [r["n"] for r in ages] == [100, 100, 100, 100]
    assert m.value == pytest.approx(50.0)
    assert m.details["worst"] == {"column": "age", "value": "[299.2, 399]"}
    grades = [r for r in m.details["slices"] if r["column"] == "grade"]
    assert [r["value"] for r in grades] == ["0", "1", "2"]


def test_small_slices_are_unknown_and_missing_values_form_a_slice() -> None:
    y, zb = _accurate_pair(n=100, k=2, seed=6)
    zc = zb.copy()
    zc[:10] = zb[:10][:, ::-1]  # the 10 rare items all go wrong, but 10 < min_support
    kind = np.where(np.arange(100) < 10, "rare", "common")
    score = np.where(np.arange(100) % 4 == 0, np.nan, 1.0)
    out = user_slice_evidence(y, zb, zc, {"kind": kind, "score": score})
    m = out["slices.worst_slice_drop"]
    rows = {(r["column"], r["value"]): r for r in m.details["slices"]}
    assert rows[("kind", "rare")]["status"] == "unknown: n < min_support"
    assert rows[("kind", "rare")]["drop_points"] == 100.0
    assert rows[("score", "missing")]["n"] == 25
    assert rows[("score", "1.0")]["n"] == 75
    assert m.details["worst"] != {"column": "kind", "value": "rare"}
    assert m.value == pytest.approx(max(r["drop_points"] for r in rows.values() if r["status"] == "ok"))


def test_no_slice_reaching_min_support_is_unknown() -> None:
    y, zb = _accurate_pair(n=40, k=2, seed=7)
    out = user_slice_evidence(y, zb, zb, {"site": np.arange(40) % 2}, min_support=30)
    m = out["slices.worst_slice_drop"]
    assert m.status == "unknown" and m.value is None
    assert m.details["reason"].startswith("no slice has at least min_support=30 test items (largest: 20)")
    assert len(m.details["slices"]) == 2
    empty = user_slice_evidence(y, zb, zb, {})["slices.worst_slice_drop"]
    assert empty.status == "unknown"
    assert empty.details["reason"].startswith("no slice columns given")


def test_user_slice_validation() -> None:
    y, zb = _accurate_pair(n=50, k=2, seed=8)
    with pytest.raises(DataError, match=r"slice column 'site' has shape \(49,\) but there are 50 test items"):
        user_slice_evidence(y, zb, zb, {"region": np.zeros(50), "site": np.zeros(49)})
    with pytest.raises(ConfigError, match="slices must map a column name to per-item values, got list"):
        user_slice_evidence(y, zb, zb, [np.zeros(50)])  # type: ignore[arg-type]
