"""A candidate against the baseline on the same test items: paired intervals, flips, KL, Holm.

Conventions are ``/work/shared/reference/metrics.md`` 5.4: every interval is a paired percentile
bootstrap (the same resampled example indices for both models, drawn exactly as ``stats.bootstrap_ci``
draws them for the same seed), negative flip rate NFR = b / n with a Wilson interval, KL(p_base ‖ p_cand)
in nats, and Holm–Bonferroni across the candidates' McNemar tests. ECE follows 5.1 (15 equal-width bins).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from modelyard.errors import DataError
from modelyard.evaluate import metrics as M
from modelyard.evaluate.checkspec import CLASSIFIERS, CheckSpec, GateSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.stats import (
    _MAX_INDEX_ENTRIES,
    _as_labels_1d,
    _check_positive_int,
    _check_seed,
    holm,
    wilson_interval,
)

__all__ = ["apply_holm", "paired_comparison"]

_CLS = CLASSIFIERS
CHECKS = declare(
    CheckSpec(
        "compare.accuracy_drop_upper95",
        "points",
        "upper bound of the one-sided 95% paired bootstrap interval of the accuracy drop (non-inferiority)",
        "lower",
        _CLS,
        ("labels",),
        gate=GateSpec(
            "accuracy_noninferiority",
            "quality.max_accuracy_drop_points",
            1.0,
            "<",
            "upper bound of the one-sided 95% interval of the accuracy drop (non-inferiority margin)",
            unit="points",
        ),
    ),
    CheckSpec(
        "compare.macro_f1_drop",
        "points",
        "baseline macro-F1 minus candidate macro-F1, percentage points, paired 95% bootstrap interval",
        "lower",
        _CLS,
        ("labels",),
    ),
    CheckSpec(
        "compare.negative_flip_rate",
        "fraction",
        "fraction of test items the baseline got right and the candidate gets wrong",
        "lower",
        _CLS,
        ("labels",),
        gate=GateSpec(
            "negative_flip_rate",
            "quality.max_negative_flip_rate",
            0.01,
            "<=",
            "share of items the baseline got right and the candidate gets wrong",
            kind="fraction",
            meaning="share the baseline got right and the candidate gets wrong",
        ),
    ),
    CheckSpec(
        "compare.kl_mean",
        "nats",
        "mean KL divergence from the baseline's class probabilities",
        "lower",
        _CLS,
        gate=GateSpec(
            "kl_to_baseline",
            "quality.max_kl_nats",
            0.05,
            "<=",
            "mean KL divergence from the baseline's probabilities",
            unit="nats",
            meaning="mean KL divergence from the baseline's probabilities",
        ),
    ),
    CheckSpec(
        "compare.mcnemar_p_holm",
        "p-value",
        "McNemar p-value after Holm correction across every candidate of the run",
        "higher",
        _CLS,
        ("labels", "holm"),
        gate=GateSpec(
            "accuracy_drop_significance",
            "quality.significance_alpha",
            0.05,
            ">=",
            "a drop that McNemar's exact test finds significant after Holm correction",
            unit="p",
            kind="fraction",
            meaning="... and a drop must not be significant (McNemar exact, Holm-corrected)",
            only_if=("compare.accuracy_drop", ">", 0.0),
        ),
    ),
)

# Below this many test items a bootstrap interval is not trusted: interval-based checks are UNKNOWN.
MIN_BOOTSTRAP_N = 30
_N_BINS = 15
_TOO_FEW = "too few samples"
_NONINFERIORITY_RULE = "non-inferior when this bound is below the policy's margin"


# ---------------------------------------------------------------------------------------------------
# shared helpers (also used by slices)


def _paired_inputs(
    y: Any, logits_base: Any, logits_cand: Any, *, num_classes: int | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated labels (int64) and both models' logits (float64, shape (n, K)) for the same items."""
    zb = M._as_float_2d(logits_base, "logits_base", what="an (n, K) array of logits")
    zc = M._as_float_2d(logits_cand, "logits_cand", what="an (n, K) array of logits")
    if zb.shape != zc.shape:
        raise DataError(
            f"logits_base has shape {zb.shape} but logits_cand has shape {zc.shape}; "
            "pass both models' logits for the same items and classes."
        )
    k = zb.shape[1] if num_classes is None else _check_positive_int(num_classes, "num_classes")
    if zb.shape[1] != k:
        raise DataError(
            f"the logits have {zb.shape[1]} columns but num_classes is {k}; pass one logit per class."
        )
    labels = _as_labels_1d(y, "y")
    if labels.max() >= k:
        raise DataError(
            f"y holds label {int(labels.max())}, out of range for {k} classes (labels must be in [0, {k - 1}])."
        )
    if len(labels) != zb.shape[0]:
        raise DataError(
            f"the logits have {zb.shape[0]} rows but y has {len(labels)} labels; pass one row per item."
        )
    return labels, zb, zc


def _index_chunks(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Bootstrap index matrices of shape (r, n), chunked; the draws equal ``stats.bootstrap_ci``'s."""
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _MAX_INDEX_ENTRIES // n))
    done = 0
    while done < n_resamples:
        r = min(chunk, n_resamples - done)
        yield rng.integers(0, n, size=(r, n))
        done += r


def _grouped_sums(idx: np.ndarray, groups: np.ndarray, weights: np.ndarray | None, size: int) -> np.ndarray:
    """Per resample (row of ``idx``) and group, the sum of ``weights`` (or the count); shape (r, size)."""
    r = idx.shape[0]
    keys = (np.arange(r)[:, None] * size + groups[idx]).ravel()
    w = None if weights is None else weights[idx].ravel()
    return np.bincount(keys, weights=w, minlength=r * size).reshape(r, size).astype(np.float64)


def _percentile_interval(replicates: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(replicates, [2.5, 97.5])
    return float(lo), float(hi)


# ---------------------------------------------------------------------------------------------------
# per-replicate statistics


def _macro_f1_rows(tp: np.ndarray, true_count: np.ndarray, pred_count: np.ndarray) -> np.ndarray:
    """Macro-F1 per row over the classes present in the truth or the predictions (as ``M.macro_f1``)."""
    denom = true_count + pred_count
    present = denom > 0
    f1 = np.divide(2.0 * tp, denom, out=np.zeros_like(denom), where=present)
    return np.asarray(f1.sum(axis=1) / present.sum(axis=1))


def _per_item_kl(pb: np.ndarray, pc: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """KL(p_base,i ‖ p_cand,i) per item, with the same flooring as ``M.mean_kl``."""
    terms = np.where(pb > 0.0, pb * (np.log(np.maximum(pb, eps)) - np.log(np.maximum(pc, eps))), 0.0)
    return np.asarray(np.maximum(terms.sum(axis=1), 0.0))


def _bootstrap(
    y: np.ndarray,
    pb: np.ndarray,
    pc: np.ndarray,
    kl: np.ndarray,
    *,
    n_resamples: int,
    seed: int,
) -> dict[str, np.ndarray]:
    """Paired replicates of the macro-F1 drop (points), the ECE increase and the mean KL."""
    n, k = pb.shape
    yb, yc = pb.argmax(axis=1), pc.argmax(axis=1)
    correct_b, correct_c = (yb == y).astype(np.float64), (yc == y).astype(np.float64)
    conf_b, conf_c = pb.max(axis=1), pc.max(axis=1)
    bin_b, bin_c = M._bin_index(conf_b, _N_BINS), M._bin_index(conf_c, _N_BINS)
    f1_drop = np.empty(n_resamples)
    ece_inc = np.empty(n_resamples)
    kl_mean = np.empty(n_resamples)
    done = 0
    for idx in _index_chunks(n, n_resamples, seed):
        r = idx.shape[0]
        sl = slice(done, done + r)
        true_count = _grouped_sums(idx, y, None, k)
        f1 = []
        for pred, correct in ((yb, correct_b), (yc, correct_c)):
            tp = _grouped_sums(idx, y, correct, k)
            f1.append(_macro_f1_rows(tp, true_count, _grouped_sums(idx, pred, None, k)))
        f1_drop[sl] = 100.0 * (f1[0] - f1[1])
        eces = []
        for bins, conf, correct in ((bin_b, conf_b, correct_b), (bin_c, conf_c, correct_c)):
            gap = _grouped_sums(idx, bins, correct, _N_BINS) - _grouped_sums(idx, bins, conf, _N_BINS)
            eces.append(np.abs(gap).sum(axis=1) / n)
        ece_inc[sl] = eces[1] - eces[0]
        kl_mean[sl] = kl[idx].mean(axis=1)
        done += r
    return {"macro_f1_drop": f1_drop, "ece_increase": ece_inc, "kl_mean": kl_mean}


# ---------------------------------------------------------------------------------------------------
# public


def paired_comparison(
    y: Any,
    logits_base: Any,
    logits_cand: Any,
    *,
    num_classes: int,
    n_resamples: int = 2000,
    seed: int = 0,
) -> dict[str, Measurement]:
    """The candidate against the baseline on the same items (metrics.md 5.4), as Measurements.

    Returns ``compare.accuracy_drop_upper95`` (upper bound of the one-sided 95% paired bootstrap
    interval of the accuracy drop, points), ``compare.macro_f1_drop`` (100·(F1_base − F1_cand)),
    ``compare.negative_flip_rate`` (b / n, Wilson interval), ``compare.kl_mean`` (mean
    KL(p_base ‖ p_cand), nats) and ``calibration.ece_increase`` (ECE_cand − ECE_base, 15 bins).
    Two-sided intervals are 2.5/97.5 percentiles of ``n_resamples`` paired replicates; every
    resampling uses the same indices (those ``stats.accuracy_drop`` draws for ``seed``).

    With fewer than 30 items the bootstrap-based checks are UNKNOWN (reason "too few samples");
    the negative flip rate and the KL keep their values (the KL without an interval).
    """
    labels, zb, zc = _paired_inputs(y, logits_base, logits_cand, num_classes=num_classes)
    reps = _check_positive_int(n_resamples, "n_resamples")
    rng_seed = _check_seed(seed)
    n = len(labels)
    pb, pc = M.softmax(zb), M.softmax(zc)
    yb, yc = pb.argmax(axis=1), pc.argmax(axis=1)
    kl = _per_item_kl(pb, pc)
    out: dict[str, Measurement] = {}

    b = int(np.count_nonzero((yb == labels) & (yc != labels)))
    out["compare.negative_flip_rate"] = measure(
        "compare.negative_flip_rate", b / n, wilson_interval(b, n), b=b, n=n
    )
    kl_details: dict[str, Any] = {"max_abs_logit_diff": float(np.max(np.abs(zb - zc))), "n": n}

    if n < MIN_BOOTSTRAP_N:
        why = f"{_TOO_FEW}: {n} test items, a bootstrap interval needs at least {MIN_BOOTSTRAP_N}"
        for name in ("compare.accuracy_drop_upper95", "compare.macro_f1_drop", "calibration.ece_increase"):
            out[name] = measure(name, None, reason=why, n=n)
        out["compare.kl_mean"] = measure(
            "compare.kl_mean", M.mean_kl(pb, pc), interval_note=why, **kl_details
        )
        return _ordered(out)

    drop = M.accuracy_drop(labels, yb, yc, n_resamples=reps, seed=rng_seed)
    out["compare.accuracy_drop_upper95"] = measure(
        "compare.accuracy_drop_upper95",
        drop["upper_one_sided_95"],
        drop_points=drop["drop_points"],
        n=n,
        n_resamples=reps,
        rule=_NONINFERIORITY_RULE,
    )
    reps_by_metric = _bootstrap(labels, pb, pc, kl, n_resamples=reps, seed=rng_seed)
    f1_b = M.macro_f1(labels, yb, num_classes=num_classes)
    f1_c = M.macro_f1(labels, yc, num_classes=num_classes)
    out["compare.macro_f1_drop"] = measure(
        "compare.macro_f1_drop",
        100.0 * (f1_b - f1_c),
        _percentile_interval(reps_by_metric["macro_f1_drop"]),
        n=n,
        baseline_macro_f1=f1_b,
        candidate_macro_f1=f1_c,
    )
    out["compare.kl_mean"] = measure(
        "compare.kl_mean", M.mean_kl(pb, pc), _percentile_interval(reps_by_metric["kl_mean"]), **kl_details
    )
    ece_b, ece_c = M.ece(pb, labels, n_bins=_N_BINS), M.ece(pc, labels, n_bins=_N_BINS)
    out["calibration.ece_increase"] = measure(
        "calibration.ece_increase",
        ece_c - ece_b,
        _percentile_interval(reps_by_metric["ece_increase"]),
        baseline_ece=ece_b,
        candidate_ece=ece_c,
        n_bins=_N_BINS,
        n=n,
        n_resamples=reps,
    )
    return _ordered(out)


def _ordered(out: dict[str, Measurement]) -> dict[str, Measurement]:
    order = (
        "compare.accuracy_drop_upper95",
        "compare.macro_f1_drop",
        "compare.negative_flip_rate",
        "compare.kl_mean",
        "calibration.ece_increase",
    )
    return {name: out[name] for name in order}


def apply_holm(measurements_by_candidate: dict[str, dict[str, Measurement]]) -> None:
    """Add ``compare.mcnemar_p_holm`` next to every candidate's ``compare.mcnemar_p``, in place.

    The family is every candidate holding ``compare.mcnemar_p`` (pass the non-baseline candidates
    only); candidates without it are skipped. The adjusted p is Holm–Bonferroni (``stats.holm``) over
    the m known p-values; a candidate whose raw p is UNKNOWN gets an UNKNOWN adjusted p.
    """
    if not isinstance(measurements_by_candidate, dict):
        raise DataError(
            "measurements_by_candidate must map candidate name -> {measurement name: Measurement}, "
            f"got {type(measurements_by_candidate).__name__}."
        )
    names = [c for c, ms in measurements_by_candidate.items() if "compare.mcnemar_p" in ms]
    raw = [measurements_by_candidate[c]["compare.mcnemar_p"].value for c in names]
    adjusted = holm(raw)
    m = sum(p is not None for p in raw)
    for cand, p_raw, p_adj in zip(names, raw, adjusted, strict=True):
        if p_adj is None:
            holm_m = measure("compare.mcnemar_p_holm", None, reason="the raw McNemar p-value is unknown", m=m)
        else:
            holm_m = measure("compare.mcnemar_p_holm", p_adj, raw_p=p_raw, m=m, method="Holm-Bonferroni")
        measurements_by_candidate[cand]["compare.mcnemar_p_holm"] = holm_m
