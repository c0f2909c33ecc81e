"""Robustness evidence from predictions already computed: corruptions, perturbation consistency, attacks.

Pure scoring (logits or predicted classes in, Measurements out); the perturbed inputs come from
``corruptions`` and the adversarials from ``attacks``, built once and replayed on every candidate.
Conventions: ``/work/shared/reference/metrics.md`` 5.3 (corruption robustness, relative mCE with the
baseline as the reference model, perturbation consistency, robust accuracy, attack success rate) and 5.4
(paired comparison with the baseline). Intervals are 95%: Wilson for a single proportion, paired percentile
bootstrap over items (``stats.bootstrap_ci``) for means over several perturbed sets and for differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.checkspec import CLASSIFIERS, EMBEDDERS, CheckSpec, GateSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.metrics import _as_float_2d, _as_labels, cosine_to_reference
from modelyard.evaluate.stats import (
    _check_positive_int,
    _check_seed,
    _mean_last_axis,
    accuracy_drop,
    bootstrap_ci,
    wilson_interval,
)

__all__ = [
    "adversarial_evidence",
    "consistency_evidence",
    "corruption_evidence",
    "embedding_consistency_evidence",
]

# Per-feature arrays in details are listed up to this many entries, summarised beyond.
_MAX_LIST = 50

_CLS = CLASSIFIERS
_ADV = ("labels", "tensor_inputs", "gradients")
CHECKS = declare(
    CheckSpec(
        "robustness.corruption_accuracy",
        "fraction",
        "mean accuracy over corruptions and severities 1-5",
        "higher",
        _CLS,
        ("labels", "images"),
    ),
    CheckSpec(
        "robustness.relative_mce",
        "ratio",
        "relative mean corruption error against the baseline (Hendrycks & Dietterich); 1 = as robust",
        "lower",
        _CLS,
        ("labels", "images"),
        gate=GateSpec(
            "corruption_mce",
            "robustness.max_relative_mce",
            1.2,
            "<=",
            "corruption error relative to the baseline's",
            meaning="corruption error relative to the baseline's (images; 1 = as robust)",
        ),
    ),
    CheckSpec(
        "robustness.consistency",
        "fraction",
        "fraction of items whose prediction is unchanged under label-preserving perturbations",
        "higher",
        _CLS,
        ("perturbations",),
    ),
    CheckSpec(
        "robustness.consistency_drop",
        "points",
        "baseline consistency minus candidate consistency",
        "lower",
        _CLS,
        ("perturbations",),
        gate=GateSpec(
            "consistency_drop",
            "robustness.max_consistency_drop_points",
            5.0,
            "<=",
            "drop in prediction consistency under perturbations",
            unit="points",
            meaning="prediction consistency under noise / typos / small perturbations",
        ),
    ),
    CheckSpec(
        "robustness.perturbation_cosine",
        "cosine",
        "mean cosine between an item's embedding and its perturbed copy's (embedders)",
        "higher",
        EMBEDDERS,
        ("perturbations",),
    ),
    CheckSpec(
        "robustness.adversarial_accuracy",
        "fraction",
        "accuracy on PGD adversarials crafted on the baseline and replayed (transfer robustness)",
        "higher",
        _CLS,
        _ADV,
    ),
    CheckSpec(
        "robustness.attack_success_rate",
        "fraction",
        "of items classified correctly when clean, the fraction the PGD adversarials flip",
        "lower",
        _CLS,
        _ADV,
    ),
    CheckSpec(
        "robustness.adversarial_accuracy_drop",
        "points",
        "baseline adversarial accuracy minus candidate adversarial accuracy",
        "lower",
        _CLS,
        _ADV,
        gate=GateSpec(
            "adversarial_drop",
            "robustness.max_adversarial_drop_points",
            5.0,
            "<=",
            "drop in accuracy under PGD adversarials crafted on the baseline",
            unit="points",
            meaning="accuracy on PGD adversarials crafted on the baseline, replayed",
        ),
    ),
)


def _boot_mean(per_item: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    return bootstrap_ci(_mean_last_axis, per_item, n_resamples=n_resamples, seed=seed, vectorized=True)


def _logits(z: Any, name: str, n: int, k: int | None = None) -> np.ndarray:
    arr = _as_float_2d(z, name, what="an (n, K) array of logits")
    if arr.shape[0] != n:
        raise DataError(f"{name} has {arr.shape[0]} rows but y has {n} labels; pass the same items.")
    if k is not None and arr.shape[1] != k:
        raise DataError(f"{name} has {arr.shape[1]} classes but the clean logits have {k}.")
    return arr


def _same_keys(base: Any, cand: Any, what: str) -> list[str]:
    if not isinstance(base, Mapping) or not isinstance(cand, Mapping):
        raise DataError(
            f"the {what} must be dicts keyed by name, got {type(base).__name__} and {type(cand).__name__}."
        )
    if not base:
        raise DataError(f"the {what} are empty; pass at least one perturbed set.")
    if set(base) != set(cand):
        raise DataError(
            f"the baseline's and the candidate's {what} must have the same keys, got {sorted(base)} and "
            f"{sorted(cand)}."
        )
    return sorted(base)


def _options(n_resamples: int, seed: int) -> tuple[int, int]:
    return _check_positive_int(n_resamples, "n_resamples"), _check_seed(seed)


# ---------------------------------------------------------------------------------------------------
# corruptions


def corruption_evidence(
    y: Any,
    clean_logits_base: Any,
    clean_logits_cand: Any,
    corrupted_logits_base: Mapping[str, Mapping[int, Any]],
    corrupted_logits_cand: Mapping[str, Mapping[int, Any]],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Measurement]:
    """Mean corruption accuracy and relative mCE against the baseline (metrics.md 5.3).

    ``corrupted_logits_*`` map corruption -> severity -> (n, K) logits on the corrupted copies of the same
    n items as ``y``; every corruption must have the same severities.

    - ``robustness.corruption_accuracy``: candidate accuracy averaged over corruptions and severities,
      with a bootstrap interval over items; details ``table`` {corruption: [accuracy per severity]},
      ``severities``, ``clean_accuracy``, ``baseline_table``, ``baseline_corruption_accuracy``, ``n``.
    - ``robustness.relative_mce``: mean over corruptions c of
      Σ_s (E_cand,s,c − E_cand,clean) / Σ_s (E_base,s,c − E_base,clean), E = error rate. A corruption whose
      baseline denominator is ≤ 0 (the corruption does not hurt the baseline) is excluded and listed in
      ``excluded``; with none left the value is UNKNOWN. Details ``per_corruption`` {c: {relative_ce, ce,
      error_increase, baseline_error_increase}} (ce = Σ_s E_cand / Σ_s E_base, the non-relative CE) and
      ``mce`` (mean ce). The baseline compared with itself gives exactly 1.
    """
    truth = _as_labels(y, "y")
    n = len(truth)
    zb = _logits(clean_logits_base, "clean_logits_base", n)
    zc = _logits(clean_logits_cand, "clean_logits_cand", n, zb.shape[1])
    reps, rng_seed = _options(n_resamples, seed)
    names = _same_keys(corrupted_logits_base, corrupted_logits_cand, "corrupted logits")
    sevs: list[int] = []
    correct_b: dict[str, np.ndarray] = {}  # corruption -> (S, n) correctness
    correct_c: dict[str, np.ndarray] = {}
    for c in names:
        by_b, by_c = corrupted_logits_base[c], corrupted_logits_cand[c]
        if (
            not isinstance(by_b, Mapping)
            or not isinstance(by_c, Mapping)
            or set(by_b) != set(by_c)
            or not by_b
        ):
            raise DataError(
                f"corruption {c!r} must map the same severities to logits for both models, got "
                f"{sorted(by_b) if isinstance(by_b, Mapping) else by_b!r} and "
                f"{sorted(by_c) if isinstance(by_c, Mapping) else by_c!r}."
            )
        s_list = sorted(int(s) for s in by_b)
        if not sevs:
            sevs = s_list
        elif s_list != sevs:
            raise DataError(
                f"every corruption must have the same severities; {c!r} has {s_list}, others {sevs}."
            )
        correct_b[c] = np.stack(
            [_logits(by_b[s], f"{c}/{s} (baseline)", n, zb.shape[1]).argmax(1) == truth for s in sorted(by_b)]
        )
        correct_c[c] = np.stack(
            [
                _logits(by_c[s], f"{c}/{s} (candidate)", n, zb.shape[1]).argmax(1) == truth
                for s in sorted(by_c)
            ]
        )
    clean_b = float(np.mean(zb.argmax(1) == truth))
    clean_c = float(np.mean(zc.argmax(1) == truth))
    all_c = np.concatenate([correct_c[c] for c in names]).astype(np.float64)  # (C·S, n)
    all_b = np.concatenate([correct_b[c] for c in names]).astype(np.float64)
    table = {c: [float(v) for v in correct_c[c].mean(axis=1)] for c in names}
    baseline_table = {c: [float(v) for v in correct_b[c].mean(axis=1)] for c in names}
    out: dict[str, Measurement] = {
        "robustness.corruption_accuracy": measure(
            "robustness.corruption_accuracy",
            float(all_c.mean()),
            _boot_mean(all_c.mean(axis=0), reps, rng_seed),
            table=table,
            severities=sevs,
            clean_accuracy=clean_c,
            baseline_table=baseline_table,
            baseline_corruption_accuracy=float(all_b.mean()),
            baseline_clean_accuracy=clean_b,
            n=n,
        )
    }
    per: dict[str, dict[str, float | None]] = {}
    ratios: list[float] = []
    excluded: list[str] = []
    for c in names:
        err_c = 1.0 - correct_c[c].mean(axis=1)
        err_b = 1.0 - correct_b[c].mean(axis=1)
        num = float(np.sum(err_c - (1.0 - clean_c)))
        den = float(np.sum(err_b - (1.0 - clean_b)))
        rel = num / den if den > 0 else None
        if rel is None:
            excluded.append(c)
        else:
            ratios.append(rel)
        per[c] = {
            "relative_ce": rel,
            "ce": float(err_c.sum() / err_b.sum()) if err_b.sum() > 0 else None,
            "error_increase": num,
            "baseline_error_increase": den,
        }
    ces = [v["ce"] for v in per.values() if v["ce"] is not None]
    extra: dict[str, Any] = {
        "per_corruption": per,
        "excluded": excluded,
        "mce": float(np.mean(ces)) if ces else None,
        "reference": "baseline",
        "n": n,
    }
    if ratios:
        out["robustness.relative_mce"] = measure("robustness.relative_mce", float(np.mean(ratios)), **extra)
    else:
        out["robustness.relative_mce"] = measure(
            "robustness.relative_mce",
            None,
            reason="no corruption raises the baseline's error above its clean error, so the relative "
            "corruption error has no denominator",
            **extra,
        )
    return out


# ---------------------------------------------------------------------------------------------------
# perturbation consistency


def _unchanged(clean: np.ndarray, pert: Mapping[str, Any], names: list[str], who: str) -> np.ndarray:
    rows = []
    for p in names:
        pred = _as_labels(pert[p], f"{p} ({who})")
        if len(pred) != len(clean):
            raise DataError(
                f"perturbation {p!r} ({who}) has {len(pred)} predictions but there are {len(clean)} clean ones."
            )
        rows.append(pred == clean)
    return np.stack(rows)  # (P, n)


def consistency_evidence(
    pred_clean_base: Any,
    pred_pert_base: Mapping[str, Any],
    pred_clean_cand: Any,
    pred_pert_cand: Mapping[str, Any],
    *,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Measurement]:
    """Fraction of predictions unchanged under label-preserving perturbations (metrics.md 5.3).

    Arguments are predicted class indices: clean (n,) and per perturbation name (n,), for both models.

    - ``robustness.consistency``: candidate's unchanged fraction averaged over perturbations, bootstrap
      interval over items; details ``per_perturbation`` {name: {value, interval (Wilson), changed, n,
      baseline_value}}, ``baseline_consistency``, ``n``.
    - ``robustness.consistency_drop``: 100·(baseline consistency − candidate consistency), percentage
      points, paired bootstrap interval over items.
    """
    cb = _as_labels(pred_clean_base, "pred_clean_base")
    cc = _as_labels(pred_clean_cand, "pred_clean_cand")
    if len(cb) != len(cc):
        raise DataError(f"pred_clean_base has {len(cb)} items but pred_clean_cand has {len(cc)}.")
    reps, rng_seed = _options(n_resamples, seed)
    names = _same_keys(pred_pert_base, pred_pert_cand, "perturbed predictions")
    ub = _unchanged(cb, pred_pert_base, names, "baseline")
    uc = _unchanged(cc, pred_pert_cand, names, "candidate")
    n = len(cc)
    per = {}
    for i, p in enumerate(names):
        k = int(uc[i].sum())
        per[p] = {
            "value": k / n,
            "interval": list(wilson_interval(k, n)),
            "changed": n - k,
            "n": n,
            "baseline_value": float(ub[i].mean()),
        }
    item_c = uc.mean(axis=0)
    item_b = ub.mean(axis=0)
    cons_c, cons_b = float(item_c.mean()), float(item_b.mean())
    lo, hi = _boot_mean(item_b - item_c, reps, rng_seed)
    return {
        "robustness.consistency": measure(
            "robustness.consistency",
            cons_c,
            _boot_mean(item_c, reps, rng_seed),
            per_perturbation=per,
            baseline_consistency=cons_b,
            n=n,
        ),
        "robustness.consistency_drop": measure(
            "robustness.consistency_drop",
            100.0 * (cons_b - cons_c),
            (100.0 * lo, 100.0 * hi),
            baseline_consistency=cons_b,
            candidate_consistency=cons_c,
            n=n,
        ),
    }


def embedding_consistency_evidence(
    emb_clean: Any, emb_pert: Mapping[str, Any], *, n_resamples: int = 2000, seed: int = 0
) -> dict[str, Measurement]:
    """``robustness.perturbation_cosine``: mean cosine between each item's embedding and its perturbed
    copy's, averaged over perturbations, with a bootstrap interval over items; details
    ``per_perturbation`` {name: {mean, p5, min}} and ``n``."""
    clean = _as_float_2d(emb_clean, "emb_clean", what="an (n, d) array of embeddings")
    reps, rng_seed = _options(n_resamples, seed)
    if not isinstance(emb_pert, Mapping) or not emb_pert:
        raise DataError("emb_pert must be a non-empty dict of perturbation name -> (n, d) embeddings.")
    names = sorted(emb_pert)
    cos = np.stack([cosine_to_reference(emb_pert[p], clean) for p in names])  # (P, n)
    per = {
        p: {
            "mean": float(cos[i].mean()),
            "p5": float(np.percentile(cos[i], 5)),
            "min": float(cos[i].min()),
        }
        for i, p in enumerate(names)
    }
    item = cos.mean(axis=0)
    return {
        "robustness.perturbation_cosine": measure(
            "robustness.perturbation_cosine",
            float(item.mean()),
            _boot_mean(item, reps, rng_seed),
            per_perturbation=per,
            n=len(item),
        )
    }


# ---------------------------------------------------------------------------------------------------
# adversarial (transfer) robustness


def _json_size(value: Any) -> float | dict[str, Any]:
    arr = np.asarray(value, dtype=np.float64)
    if arr.size == 1:
        return float(arr.reshape(-1)[0])
    flat = arr.reshape(-1)
    out: dict[str, Any] = {"mean": float(flat.mean()), "min": float(flat.min()), "max": float(flat.max())}
    if flat.size <= _MAX_LIST:
        out["per_feature"] = [float(v) for v in flat]
    return out


def _budget(value: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(
            f"{name} must be a number or per-feature array in input units, got {value!r}."
        ) from None
    if arr.size == 0 or not np.isfinite(arr).all() or (arr < 0).any():
        raise ConfigError(f"{name} must be finite and >= 0, got {value!r}.")
    return arr


def _attack_stats(truth: np.ndarray, clean: np.ndarray, adv: np.ndarray) -> dict[str, Any]:
    ok = clean.argmax(1) == truth
    ok_adv = adv.argmax(1) == truth
    d = int(ok.sum())
    flipped = int(np.sum(ok & ~ok_adv))
    return {
        "robust_accuracy": float(ok_adv.mean()),
        "asr": flipped / d if d else None,
        "flipped": flipped,
        "n": len(truth),
        "n_clean_correct": d,
        "clean_accuracy": d / len(truth),
    }


def adversarial_evidence(
    y: Any,
    logits_clean_base: Any,
    adv_logits_base: Mapping[str, Any],
    logits_clean_cand: Any,
    adv_logits_cand: Mapping[str, Any],
    *,
    epsilon: Any,
    epsilon_text: str,
    steps: int,
    alpha: Any = None,
    crafted_on: str = "baseline",
    transfer: bool | None = None,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Measurement]:
    """Robust accuracy, attack success rate and the drop against the baseline (metrics.md 5.3, 5.4).

    ``adv_logits_*`` map attack name ("fgsm", "pgd", ...; "pgd" required) to (n, K) logits on adversarials
    of the same items as ``y``, crafted on ``crafted_on`` and replayed on both models. ``epsilon`` is the
    budget in input units (number or per-feature array), ``alpha`` the PGD step (default 2.5·ε/steps).
    ``transfer`` says the adversarials were crafted on another model than the candidate; None infers it:
    False only when the candidate's logits equal the baseline's on every set (the baseline scored itself).

    - ``robustness.adversarial_accuracy``: candidate accuracy on the PGD adversarials, Wilson interval.
    - ``robustness.attack_success_rate``: of the items the candidate classifies correctly when clean
      (the ``denominator``), the fraction the PGD adversarials make it misclassify; Wilson interval;
      UNKNOWN when it gets none right.
    - ``robustness.adversarial_accuracy_drop``: 100·(baseline − candidate PGD robust accuracy), points,
      paired bootstrap interval.

    Details of each: ``attacks`` {name: {robust_accuracy, asr, flipped, n, n_clean_correct,
    clean_accuracy}} for the candidate, ``baseline_attacks`` the same for the baseline, ``epsilon``,
    ``epsilon_text``, ``steps``, ``alpha``, ``crafted_on``, ``transfer``, ``denominator`` (of the ASR).
    """
    truth = _as_labels(y, "y")
    n = len(truth)
    zb = _logits(logits_clean_base, "logits_clean_base", n)
    k = zb.shape[1]
    zc = _logits(logits_clean_cand, "logits_clean_cand", n, k)
    reps, rng_seed = _options(n_resamples, seed)
    names = _same_keys(adv_logits_base, adv_logits_cand, "adversarial logits")
    if "pgd" not in names:
        raise DataError(
            f"the adversarial logits must include 'pgd', got {names}; craft them with attacks.pgd."
        )
    n_steps = _check_positive_int(steps, "steps")
    adv_b = {a: _logits(adv_logits_base[a], f"{a} (baseline)", n, k) for a in names}
    adv_c = {a: _logits(adv_logits_cand[a], f"{a} (candidate)", n, k) for a in names}
    if transfer is None:
        transfer = not (np.array_equal(zb, zc) and all(np.array_equal(adv_b[a], adv_c[a]) for a in names))
    eps = _budget(epsilon, "epsilon")
    step = 2.5 * eps / n_steps if alpha is None else _budget(alpha, "alpha")
    stats_c = {a: _attack_stats(truth, zc, adv_c[a]) for a in names}
    stats_b = {a: _attack_stats(truth, zb, adv_b[a]) for a in names}
    common: dict[str, Any] = {
        "attacks": stats_c,
        "baseline_attacks": stats_b,
        "epsilon": _json_size(eps),
        "epsilon_text": str(epsilon_text),
        "steps": n_steps,
        "alpha": _json_size(step),
        "crafted_on": str(crafted_on),
        "transfer": bool(transfer),
        "denominator": (
            f"the {stats_c['pgd']['n_clean_correct']} of {n} items the candidate classifies correctly when clean"
        ),
    }
    pgd_c, pgd_b = stats_c["pgd"], stats_b["pgd"]
    k_robust = int(np.sum(adv_c["pgd"].argmax(1) == truth))
    out = {
        "robustness.adversarial_accuracy": measure(
            "robustness.adversarial_accuracy",
            pgd_c["robust_accuracy"],
            wilson_interval(k_robust, n),
            **common,
        )
    }
    if pgd_c["n_clean_correct"]:
        out["robustness.attack_success_rate"] = measure(
            "robustness.attack_success_rate",
            pgd_c["asr"],
            wilson_interval(pgd_c["flipped"], pgd_c["n_clean_correct"]),
            baseline_asr=pgd_b["asr"],
            **common,
        )
    else:
        out["robustness.attack_success_rate"] = measure(
            "robustness.attack_success_rate",
            None,
            reason="the candidate classifies no item correctly when clean, so the success rate has no denominator",
            **common,
        )
    drop = accuracy_drop(
        truth, adv_b["pgd"].argmax(1), adv_c["pgd"].argmax(1), n_resamples=reps, seed=rng_seed
    )
    out["robustness.adversarial_accuracy_drop"] = measure(
        "robustness.adversarial_accuracy_drop",
        drop["drop_points"],
        tuple(drop["interval"]),
        upper_one_sided_95=drop["upper_one_sided_95"],
        baseline_adversarial_accuracy=pgd_b["robust_accuracy"],
        **common,
    )
    return out
