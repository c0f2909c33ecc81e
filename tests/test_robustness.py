"""Perturbation generators (images, text, tabular) and the robustness scores computed from predictions."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.corruptions import (
    CORRUPTIONS,
    HOMOGLYPHS,
    SEVERITY_TABLE,
    TEXT_PERTURBATIONS,
    image_corruptions,
    tabular_noise,
    text_perturbations,
)
from modelyard.evaluate.robustness import (
    adversarial_evidence,
    consistency_evidence,
    corruption_evidence,
    embedding_consistency_evidence,
)
from modelyard.evaluate.stats import wilson_interval

SENTENCES = [
    "The movie was surprisingly good and I loved every minute of it.",
    "Terrible acting, awful script, would not recommend this film to anyone.",
    "An ordinary Tuesday afternoon with nothing special happening.",
]


def onehot_logits(pred: list[int], k: int = 2) -> np.ndarray:
    z = np.zeros((len(pred), k))
    z[np.arange(len(pred)), pred] = 1.0
    return z


def _json_ok(ms: dict) -> None:  # type: ignore[type-arg]
    for m in ms.values():
        json.dumps(m.to_dict())


# ---------------------------------------------------------------------------------------------------
# image corruptions


@pytest.mark.parametrize(
    ("shape", "dtype", "value_range"),
    [((4, 1, 8, 8), np.float32, (0.0, 1.0)), ((2, 3, 16, 16), np.float64, (-1.0, 2.0))],
)
def test_image_corruptions_keep_shape_dtype_and_range(shape, dtype, value_range) -> None:  # type: ignore[no-untyped-def]
    lo, hi = value_range
    x = (np.random.default_rng(0).uniform(lo, hi, size=shape)).astype(dtype)
    out = image_corruptions(x, value_range=value_range, seed=0)
    assert list(out) == list(CORRUPTIONS)
    for name, by_sev in out.items():
        assert list(by_sev) == [1, 2, 3, 4, 5]
        for s, xs in by_sev.items():
            assert xs.shape == x.shape and xs.dtype == x.dtype, (name, s)
            assert xs.min() >= lo and xs.max() <= hi, (name, s)
            assert not np.array_equal(xs, x), (name, s)


def test_brightness_and_contrast_follow_the_severity_table() -> None:
    x = np.random.default_rng(1).uniform(0.0, 1.0, size=(3, 1, 8, 8)).astype(np.float32)
    out = image_corruptions(x, value_range=(0.0, 1.0), severities=(1, 3))
    shift = SEVERITY_TABLE["brightness"][0]
    np.testing.assert_allclose(out["brightness"][1], np.clip(x + shift, 0.0, 1.0), atol=1e-6)
    factor = SEVERITY_TABLE["contrast"][2]
    mean = x.astype(np.float64).mean(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(out["contrast"][3], (x - mean) * factor + mean, atol=1e-6)


def test_image_corruptions_are_deterministic_per_severity() -> None:
    x = np.random.default_rng(2).uniform(0.0, 1.0, size=(3, 1, 8, 8)).astype(np.float32)
    full = image_corruptions(x, value_range=(0.0, 1.0), seed=3)
    again = image_corruptions(x, value_range=(0.0, 1.0), seed=3)
    only_4 = image_corruptions(x, value_range=(0.0, 1.0), severities=(4,), seed=3)
    other = image_corruptions(x, value_range=(0.0, 1.0), seed=4)
    for name in CORRUPTIONS:
        for s in range(1, 6):
            np.testing.assert_array_equal(full[name][s], again[name][s])
        np.testing.assert_array_equal(full[name][4], only_4[name][4])
    assert not np.array_equal(full["gaussian_noise"][2], other["gaussian_noise"][2])


def test_image_corruptions_reject_bad_input() -> None:
    x = np.zeros((2, 1, 8, 8), dtype=np.float32)
    with pytest.raises(ConfigError, match="lo < hi"):
        image_corruptions(x, value_range=(1.0, 0.0))
    with pytest.raises(DataError, match=r"\(N, C, H, W\)"):
        image_corruptions(x[:, 0], value_range=(0.0, 1.0))
    with pytest.raises(ConfigError, match="severities"):
        image_corruptions(x, value_range=(0.0, 1.0), severities=(0, 6))


@pytest.fixture(scope="module")
def digits_corrupted(digits):  # type: ignore[no-untyped-def]
    """The digits baseline's logits on the clean test split and on every corruption and severity."""
    import torch

    module = digits.baseline.torch_module().eval()
    x, y = digits.dataset.x_test, digits.dataset.y_test

    def logits(a: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.as_tensor(a)).double().numpy()

    table = image_corruptions(x, value_range=(0.0, 1.0), seed=0)
    corrupted = {c: {s: logits(a) for s, a in by.items()} for c, by in table.items()}
    return y, logits(x), corrupted


def test_severity_1_keeps_digits_accuracy_and_5_hurts(digits_corrupted) -> None:  # type: ignore[no-untyped-def]
    y, clean, corrupted = digits_corrupted
    clean_acc = float(np.mean(clean.argmax(1) == y))
    by_sev = np.zeros(5)
    for c, by in corrupted.items():
        acc = [float(np.mean(by[s].argmax(1) == y)) for s in range(1, 6)]
        assert acc[0] >= clean_acc - 0.03, (c, acc)
        assert acc[4] <= clean_acc - 0.08, (c, acc)
        assert acc[4] >= 0.5, (c, acc)  # harmful, not destructive
        assert all(b <= a + 0.015 for a, b in itertools.pairwise(acc)), (c, acc)
        by_sev += acc
    assert np.all(np.diff(by_sev) < 0)


def test_baseline_against_itself_has_relative_mce_one(digits_corrupted) -> None:  # type: ignore[no-untyped-def]
    y, clean, corrupted = digits_corrupted
    ms = corruption_evidence(y, clean, clean, corrupted, corrupted)
    rel = ms["robustness.relative_mce"]
    assert rel.value == 1.0 and rel.details["excluded"] == [] and rel.details["mce"] == pytest.approx(1.0)
    acc = ms["robustness.corruption_accuracy"]
    assert acc.value == pytest.approx(acc.details["baseline_corruption_accuracy"])
    assert acc.value is not None and acc.interval is not None
    assert acc.interval[0] <= acc.value <= acc.interval[1]
    assert acc.details["severities"] == [1, 2, 3, 4, 5] and set(acc.details["table"]) == set(CORRUPTIONS)
    _json_ok(ms)


# ---------------------------------------------------------------------------------------------------
# corruption scores, by hand


def test_corruption_evidence_hand_computed() -> None:
    y = [0, 0, 1, 1]
    clean_b, clean_c = onehot_logits([0, 0, 1, 1]), onehot_logits([0, 0, 1, 0])  # errors 0 and 0.25
    base = {
        "a": {1: onehot_logits([1, 0, 1, 1]), 2: onehot_logits([1, 1, 1, 1])},  # errors 0.25, 0.5
        "b": {1: onehot_logits([0, 0, 1, 1]), 2: onehot_logits([0, 0, 1, 1])},  # no harm: excluded
    }
    cand = {
        "a": {1: onehot_logits([1, 0, 1, 0]), 2: onehot_logits([1, 1, 0, 0])},  # errors 0.5, 1.0
        "b": {1: onehot_logits([0, 0, 1, 0]), 2: onehot_logits([1, 0, 1, 0])},  # errors 0.25, 0.5
    }
    ms = corruption_evidence(y, clean_b, clean_c, base, cand)
    acc = ms["robustness.corruption_accuracy"]
    assert acc.value == pytest.approx((0.5 + 0.0 + 0.75 + 0.5) / 4)
    assert acc.details["table"] == {"a": [0.5, 0.0], "b": [0.75, 0.5]}
    assert acc.details["clean_accuracy"] == 0.75 and acc.details["baseline_clean_accuracy"] == 1.0
    rel = ms["robustness.relative_mce"]
    # a: Σ(E_cand − 0.25) = 0.25 + 0.75 = 1.0 over Σ(E_base − 0) = 0.75
    assert rel.value == pytest.approx(1.0 / 0.75)
    assert rel.details["excluded"] == ["b"]
    assert rel.details["per_corruption"]["a"]["ce"] == pytest.approx(1.5 / 0.75)
    assert rel.details["per_corruption"]["b"]["relative_ce"] is None
    assert rel.details["mce"] == pytest.approx(2.0)
    _json_ok(ms)


def test_relative_mce_is_unknown_when_no_corruption_hurts_the_baseline() -> None:
    y = [0, 1]
    z = onehot_logits([0, 1])
    ms = corruption_evidence(y, z, z, {"a": {1: z}}, {"a": {1: onehot_logits([1, 1])}})
    rel = ms["robustness.relative_mce"]
    assert rel.value is None and rel.status == "unknown"
    assert "no corruption raises the baseline's error" in rel.details["reason"]
    assert rel.details["excluded"] == ["a"]


def test_corruption_evidence_rejects_mismatched_sets() -> None:
    y, z = [0, 1], onehot_logits([0, 1])
    with pytest.raises(DataError, match="same keys"):
        corruption_evidence(y, z, z, {"a": {1: z}}, {"b": {1: z}})
    with pytest.raises(DataError, match="same severities"):
        corruption_evidence(y, z, z, {"a": {1: z}, "b": {2: z}}, {"a": {1: z}, "b": {2: z}})
    with pytest.raises(DataError, match="rows but y has 2"):
        corruption_evidence(y, z, z, {"a": {1: z[:1]}}, {"a": {1: z}})


# ---------------------------------------------------------------------------------------------------
# consistency


def test_consistency_evidence_hand_computed() -> None:
    base_clean = [0, 1, 2, 0]
    base_pert = {"p": [0, 1, 2, 1], "q": [0, 1, 2, 0]}  # unchanged 3/4 and 4/4
    cand_clean = [0, 1, 1, 0]
    cand_pert = {"p": [0, 2, 1, 0], "q": [1, 2, 1, 0]}  # unchanged 3/4 and 2/4
    ms = consistency_evidence(base_clean, base_pert, cand_clean, cand_pert)
    cons = ms["robustness.consistency"]
    assert cons.value == pytest.approx(0.625)
    assert cons.details["baseline_consistency"] == pytest.approx(0.875)
    per = cons.details["per_perturbation"]
    assert per["q"]["value"] == 0.5 and per["q"]["changed"] == 2 and per["p"]["baseline_value"] == 0.75
    assert per["q"]["interval"] == pytest.approx(list(wilson_interval(2, 4)))
    drop = ms["robustness.consistency_drop"]
    assert drop.value == pytest.approx(25.0) and drop.unit == "points"
    assert drop.interval is not None and drop.interval[0] <= 25.0 <= drop.interval[1]
    _json_ok(ms)


def test_consistency_evidence_rejects_mismatched_keys() -> None:
    with pytest.raises(DataError, match="same keys"):
        consistency_evidence([0, 1], {"p": [0, 1]}, [0, 1], {"q": [0, 1]})
    with pytest.raises(DataError, match="has 1 predictions"):
        consistency_evidence([0, 1], {"p": [0]}, [0, 1], {"p": [0, 1]})


def test_embedding_consistency_hand_computed() -> None:
    clean = np.array([[1.0, 0.0], [0.0, 1.0]])
    pert = {"a": np.array([[1.0, 1.0], [0.0, 2.0]]), "b": clean.copy()}
    m = embedding_consistency_evidence(clean, pert)["robustness.perturbation_cosine"]
    assert m.details["per_perturbation"]["a"]["mean"] == pytest.approx((1 / math.sqrt(2) + 1) / 2)
    assert m.details["per_perturbation"]["b"]["min"] == pytest.approx(1.0)
    assert m.value == pytest.approx(((1 / math.sqrt(2) + 1) / 2 + 1.0) / 2)
    assert m.unit == "cosine" and m.details["n"] == 2


# ---------------------------------------------------------------------------------------------------
# adversarial scores


def test_adversarial_evidence_hand_computed() -> None:
    y = [0, 1, 0, 1, 0]
    clean_b = onehot_logits([0, 1, 0, 1, 0])  # 5 right
    adv_b = {"fgsm": onehot_logits([0, 1, 0, 1, 1]), "pgd": onehot_logits([1, 1, 0, 1, 0])}
    clean_c = onehot_logits([0, 1, 0, 0, 0])  # right on items 0, 1, 2, 4
    adv_c = {"fgsm": onehot_logits([0, 1, 0, 0, 1]), "pgd": onehot_logits([1, 1, 0, 0, 1])}
    eps = np.array([0.1, 0.2, 0.3])
    ms = adversarial_evidence(
        y, clean_b, adv_b, clean_c, adv_c, epsilon=eps, epsilon_text="per-feature", steps=10
    )
    acc = ms["robustness.adversarial_accuracy"]
    assert acc.value == pytest.approx(0.4) and acc.interval == pytest.approx(wilson_interval(2, 5))
    asr = ms["robustness.attack_success_rate"]
    # of the 4 items right when clean, items 0 and 4 are flipped; item 3 was wrong already
    assert asr.value == pytest.approx(0.5) and asr.interval == pytest.approx(wilson_interval(2, 4))
    assert asr.details["denominator"] == "the 4 of 5 items the candidate classifies correctly when clean"
    assert asr.details["baseline_asr"] == pytest.approx(0.2)
    assert acc.details["denominator"] == asr.details["denominator"]
    drop = ms["robustness.adversarial_accuracy_drop"]
    assert drop.value == pytest.approx(40.0) and drop.details["baseline_adversarial_accuracy"] == 0.8
    d = acc.details
    assert d["attacks"]["fgsm"] == {
        "robust_accuracy": 0.6,
        "asr": 0.25,
        "flipped": 1,
        "n": 5,
        "n_clean_correct": 4,
        "clean_accuracy": 0.8,
    }
    assert d["transfer"] is True and d["crafted_on"] == "baseline" and d["steps"] == 10
    assert d["epsilon"]["per_feature"] == pytest.approx([0.1, 0.2, 0.3])
    assert d["alpha"]["per_feature"] == pytest.approx([0.025, 0.05, 0.075])
    _json_ok(ms)


def test_adversarial_evidence_of_the_baseline_on_itself() -> None:
    y = [0, 1, 1]
    clean = onehot_logits([0, 1, 0])
    adv = {"pgd": onehot_logits([1, 1, 0])}
    ms = adversarial_evidence(y, clean, adv, clean, adv, epsilon=0.1, epsilon_text="0.1", steps=4)
    assert ms["robustness.adversarial_accuracy"].details["transfer"] is False
    assert ms["robustness.adversarial_accuracy"].details["alpha"] == pytest.approx(0.0625)
    assert ms["robustness.adversarial_accuracy_drop"].value == 0.0
    assert ms["robustness.attack_success_rate"].value == pytest.approx(0.5)


def test_attack_success_rate_is_unknown_without_correct_items() -> None:
    y = [0, 1]
    wrong = onehot_logits([1, 0])
    ms = adversarial_evidence(
        y, onehot_logits([0, 1]), {"pgd": wrong}, wrong, {"pgd": wrong}, epsilon=0.1, epsilon_text="", steps=1
    )
    asr = ms["robustness.attack_success_rate"]
    assert asr.value is None and "no denominator" in asr.details["reason"]
    assert ms["robustness.adversarial_accuracy"].value == 0.0


def test_adversarial_evidence_needs_pgd() -> None:
    z = onehot_logits([0, 1])
    with pytest.raises(DataError, match="must include 'pgd'"):
        adversarial_evidence([0, 1], z, {"fgsm": z}, z, {"fgsm": z}, epsilon=0.1, epsilon_text="", steps=1)
    with pytest.raises(ConfigError, match="epsilon must be finite and >= 0"):
        adversarial_evidence([0, 1], z, {"pgd": z}, z, {"pgd": z}, epsilon=-0.1, epsilon_text="", steps=1)


# ---------------------------------------------------------------------------------------------------
# text perturbations


def test_text_perturbations_change_every_long_text_and_are_deterministic() -> None:
    out = text_perturbations(SENTENCES, seed=0)
    assert list(out) == list(TEXT_PERTURBATIONS)
    for name, texts in out.items():
        assert len(texts) == len(SENTENCES)
        for orig, new in zip(SENTENCES, texts, strict=True):
            assert new != orig, name
    assert text_perturbations(SENTENCES, seed=0) == out
    reordered = text_perturbations(SENTENCES[::-1], seed=0)
    assert all(reordered[n] == out[n][::-1] for n in TEXT_PERTURBATIONS)
    other = text_perturbations(SENTENCES, seed=1)
    assert any(other[n] != out[n] for n in TEXT_PERTURBATIONS)


def test_text_perturbations_preserve_the_words() -> None:
    out = text_perturbations(SENTENCES, seed=0)
    back = {v: k for k, v in HOMOGLYPHS.items()}
    for i, orig in enumerate(SENTENCES):
        assert "".join(back.get(ch, ch) for ch in out["homoglyph"][i]) == orig
        assert not out["homoglyph"][i].isascii()
        assert out["case"][i].lower() == orig.lower()
        assert "".join(out["whitespace"][i].split()) == "".join(orig.split())
        swapped = out["char_swap"][i]
        assert sorted(swapped) == sorted(orig) and len(swapped) == len(orig)
        assert [(w[0], w[-1]) for w in swapped.split()] == [(w[0], w[-1]) for w in orig.split()]
        n_interior = sum(max(0, len(w.strip(".,")) - 2) for w in orig.split() if len(w.strip(".,")) >= 4)
        edits = max(1, round(0.05 * n_interior))
        assert len(out["char_drop"][i]) == len(orig) - edits
        assert len(out["char_insert"][i]) == len(orig) + edits


def test_short_text_without_sites_is_unchanged() -> None:
    out = text_perturbations(["ok", ""], seed=0)
    assert out["char_swap"] == ["ok", ""] and out["char_drop"] == ["ok", ""]
    assert out["whitespace"] == ["ok", ""]
    assert out["case"][0] != "ok"  # every letter is a site for case flips


def test_text_perturbations_reject_bad_input() -> None:
    with pytest.raises(DataError, match="list of strings"):
        text_perturbations("one string", seed=0)  # type: ignore[arg-type]
    with pytest.raises(DataError, match="item 1 is int"):
        text_perturbations(["a", 3], seed=0)  # type: ignore[list-item]
    with pytest.raises(ConfigError, match="rate"):
        text_perturbations(["a"], rate=0.0)


# ---------------------------------------------------------------------------------------------------
# tabular noise


def test_tabular_noise_scales_with_each_feature_spread() -> None:
    rng = np.random.default_rng(0)
    ref = np.column_stack([rng.normal(0, 1, 500), rng.normal(5, 10, 500), np.full(500, 3.0)])
    x = ref[:400].astype(np.float32)
    out = tabular_noise(np.repeat(x, 25, axis=0), reference=ref, seed=0)
    assert list(out) == ["noise_0.05_std", "noise_0.1_std"]
    std = ref.std(axis=0)
    for key, scale in (("noise_0.05_std", 0.05), ("noise_0.1_std", 0.1)):
        noisy = out[key]
        assert noisy.dtype == np.float32 and noisy.shape == (10_000, 3)
        delta = noisy.astype(np.float64) - np.repeat(x, 25, axis=0)
        np.testing.assert_allclose(delta[:, :2].std(axis=0), scale * std[:2], rtol=0.05)
        assert np.all(delta[:, 2] == 0.0)  # constant feature untouched
    again = tabular_noise(np.repeat(x, 25, axis=0), reference=ref, seed=0)
    np.testing.assert_array_equal(again["noise_0.1_std"], out["noise_0.1_std"])


def test_tabular_noise_rejects_bad_input() -> None:
    with pytest.raises(DataError, match="x has 2 features but reference has 3"):
        tabular_noise(np.zeros((4, 2)), reference=np.zeros((4, 3)))
    with pytest.raises(ConfigError, match="scales"):
        tabular_noise(np.zeros((4, 2)), reference=np.zeros((4, 2)), scales=(-1.0,))
