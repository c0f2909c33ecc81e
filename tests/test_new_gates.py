"""A candidate that keeps its global accuracy but loses one class, or grows overconfident, passes the old
accuracy gate and fails the new ones, with the reason shown. Everything goes through the real checks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from modelyard.config import policy_from_dict
from modelyard.evaluate.compare import apply_holm, paired_comparison
from modelyard.evaluate.evidence import measure
from modelyard.evaluate.quality import classification_evidence
from modelyard.evaluate.schema import Measurement as SchemaMeasurement
from modelyard.evaluate.slices import slice_evidence
from modelyard.gate import verdict

K = 10


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """2000 items, class 3 rare (50 items); a good baseline: right on 96% of items, confident but not certain."""
    rng = np.random.default_rng(seed)
    counts = [217] * K
    counts[3] = 50
    counts[0] += 2000 - sum(counts)
    y = np.repeat(np.arange(K), counts)
    logits = rng.normal(scale=0.5, size=(len(y), K))
    right = rng.random(len(y)) < 0.96
    target = np.where(right, y, (y + 1 + rng.integers(0, K - 1, len(y))) % K)
    logits[np.arange(len(y)), target] += 4.0
    return y, logits


def _measurements(y: np.ndarray, zb: np.ndarray, zc: np.ndarray) -> dict[str, dict[str, Any]]:
    ms = classification_evidence(y, zb, zc, num_classes=K, n_resamples=500)
    ms.update(paired_comparison(y, zb, zc, num_classes=K, n_resamples=500))
    ms.update(slice_evidence(y, zb, zc, num_classes=K, n_resamples=300))
    by_cand = {"cand": ms}
    apply_holm(by_cand)
    return {k: m.to_dict() for k, m in by_cand["cand"].items()}


def _typed(ms: dict[str, dict[str, Any]]) -> dict[str, SchemaMeasurement]:
    """The measurements as evidence.json holds them (the gate reads the typed objects)."""
    return {k: SchemaMeasurement.model_validate(v) for k, v in ms.items()}


def _gates(ms: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    v = verdict(_typed(ms), "classification", policy_from_dict({}))
    return {g.gate: g.model_dump() for g in v.gates}


def test_candidate_that_loses_one_class_passes_old_gate_fails_new() -> None:
    y, zb = _data()
    zc = zb.copy()
    # the candidate misclassifies 15 of the 50 items of class 3 that the baseline got right, as class 5
    lost = np.flatnonzero((y == 3) & (zb.argmax(1) == 3))[:15]
    zc[lost, 5] = zc[lost, 3] + 2.0
    ms = _measurements(y, zb, zc)
    gates = _gates(ms)

    drop = ms["compare.accuracy_drop"]["value"]
    assert drop == 100 * 15 / 2000  # 0.75 points, hand-computed
    assert gates["accuracy_drop"]["passed"], gates["accuracy_drop"]["reason"]  # the old gate is fooled
    assert gates["flip_rate"]["passed"] and gates["negative_flip_rate"]["passed"]

    worst = gates["worst_class_drop"]
    assert not worst["passed"]
    assert ms["slices.worst_class_drop"]["details"]["class"] == "3"
    assert worst["value"] == pytest.approx(
        100 * 15 / 50
    )  # 30 points: class 3's recall fell by 15 of its 50 items
    assert "largest per-class recall drop" in worst["reason"] and "violates <= 10 points" in worst["reason"]
    # the non-inferiority bound also refuses it: the one-sided upper bound of the drop is above the margin
    assert not gates["accuracy_noninferiority"]["passed"]


def test_overconfident_candidate_passes_old_gate_fails_new() -> None:
    y, zb = _data(seed=1)
    zc = zb * 4.0  # same predictions, far more confident
    ms = _measurements(y, zb, zc)
    gates = _gates(ms)
    assert ms["compare.flip_rate"]["value"] == 0.0
    assert gates["accuracy_drop"]["passed"] and gates["accuracy_noninferiority"]["passed"]
    assert not gates["kl_to_baseline"]["passed"]
    assert "mean KL divergence" in gates["kl_to_baseline"]["reason"]


def test_identical_candidate_passes_every_applicable_gate() -> None:
    y, zb = _data(seed=2)
    ms = _measurements(y, zb, zb.copy())
    ms["security.file_scan"] = measure("security.file_scan", 1.0).to_dict()
    ms["robustness.consistency_drop"] = measure("robustness.consistency_drop", 0.0).to_dict()
    ms["ood.auroc_drop"] = measure("ood.auroc_drop", 0.0).to_dict()
    v = verdict(_typed(ms), "classification", policy_from_dict({}))
    assert v.passed, [g for g in v.gates if not g.passed]
