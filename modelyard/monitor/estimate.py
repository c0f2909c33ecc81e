"""Accuracy estimated before labels arrive, from calibrated confidence (the top-label form of NannyML's CBPE,
``/work/shared/reference/monitoring.md`` 3.4), and the realised accuracy to compare it with once they do.

With calibrated probabilities, row i is correct with probability c_i = max_k p_ik, so the expected accuracy of
a window is mean(c_i) and its realised accuracy is a Poisson-binomial mean around it:
Var = sum c_i (1 - c_i) / n^2. The 95 % interval is a prediction interval for the realised accuracy:
``estimate ± z * sqrt(Var + calibration terms)``, clipped to [0, 1].

Calibration is never taken on trust when a labelled reference is given (``reference_probs`` or
``reference_logits`` with ``reference_labels``; the candidate's evaluation split, never the window):

- ``isotonic`` (the default with a reference, as NannyML): confidence is mapped through an isotonic
  regression of correctness on confidence fitted on the reference only;
- ``none``: confidence as given.

Either way the reference's calibration residuals (confidence - correctness; after isotonic, cross-fitted: each
half recalibrated by a map fitted on the other half) are averaged in 10 confidence bins (equal counts on the
reference) with the window's share of each bin: that gives the calibration error b expected for this window's
mix of confidences, with standard error se, and the interval's variance gains ``b^2 + se^2``. A window whose
confidences fall where the reference has few rows gets a wide interval.

With the window's and the reference's input features (``inputs=``, ``reference_inputs=``), the calibration
error is weighted row by row instead: a logistic domain classifier (reference rows against window rows, on
standardised features) gives each reference row's density ratio w = P(window | x) / P(reference | x) x
n_ref / n_window, the window's calibration error is the self-normalised weighted mean of the reference's
cross-fitted residuals, and it is subtracted from the estimate (a doubly robust form: right when calibration
carries over, and when the weights are right); the interval gains that mean's standard error, which grows as
the weights concentrate on few reference rows (the effective size is in ``method``). Confidence bins see a
shift only through the confidences; a shift that moves P(correct | x) at a given confidence (a misspecified
model entering a region it fits badly) needs the inputs. Measured in ``tests/test_monitor_estimate.py``
(4 references x 8 windows of 500 rows, a 1 sd shift along a feature the model misfits) and ``bench/drift.py``.

Assumptions (CBPE's): covariate shift only (P(y | x) fixed), no shift into regions the reference never saw,
and large enough windows. Measured (``tests/test_monitor_estimate.py``, windows of 500 rows under a covariate
shift): the 95 % interval covered the realised accuracy in 95 % of 200 windows for a calibrated 3-class model
(accuracy 73 % in the windows vs 81 % on unshifted data), and in 93 % of 200 windows for an overconfident
binary model recalibrated by isotonic regression on separate references (10 references x 20 windows; mean
gap -0.2 points, interval width 8.8 points), where its raw confidence covered none (12 points too high).
Shifting the estimate by the reference's overall bias, mean(confidence) - accuracy, was tried and dropped: under
covariate shift the bias moves with the mix of confidences, and for an overconfident 3-class model (logits
twice too large) that shift covered only 47-58 % of windows, against 91-97 % for isotonic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy.optimize import isotonic_regression
from scipy.special import ndtri

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate.stats import wilson_interval
from modelyard.monitor.drift_inputs import (
    PROB_ATOL,
    as_flags,
    as_labels,
    as_matrix,
    as_probs,
    check_confidence,
)

__all__ = [
    "AccuracyGap",
    "EstimateResult",
    "RealisedAccuracy",
    "compare",
    "estimate_accuracy",
    "estimate_from_confidences",
    "realised_accuracy",
    "softmax_with_temperature",
]

Recalibration = Literal["auto", "none", "isotonic"]
MIN_REFERENCE_ROWS = 20
_N_BINS = 10


@dataclass(frozen=True)
class EstimateResult:
    """Estimated accuracy of a window before labels: the estimate and a prediction interval for the
    accuracy its labels will show. ``drop_pp``: offline minus estimated accuracy, in percentage points."""

    estimated_accuracy: float
    interval: tuple[float, float]
    n: int
    confidence: float
    method: str
    calibration_bias: (
        float | None
    )  # reference's confidence - correctness, weighted to the window's confidences
    calibration_bias_se: float | None
    offline_accuracy: float | None
    offline_interval: tuple[float, float] | None
    drop_pp: float | None


@dataclass(frozen=True)
class RealisedAccuracy:
    """Accuracy once the labels are in, with its Wilson interval."""

    accuracy: float
    interval: tuple[float, float]
    n: int
    confidence: float
    method: str


@dataclass(frozen=True)
class AccuracyGap:
    """How far the estimate was from the realised accuracy: ``gap_pp`` = realised minus estimated, in
    percentage points; ``covered``: the realised accuracy lies in the estimate's interval."""

    estimated_accuracy: float
    realised_accuracy: float
    gap_pp: float
    covered: bool


def softmax_with_temperature(logits: Any, temperature: float = 1.0) -> NDArray[np.float64]:
    """softmax(logits / T) over the last axis, computed stably, for (n, K) logits."""
    z = as_matrix(logits, "logits", what="logits")
    t = _check_temperature(temperature)
    z = z / t
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def estimate_accuracy(
    probs: Any = None,
    *,
    logits: Any = None,
    temperature: float = 1.0,
    reference_probs: Any = None,
    reference_logits: Any = None,
    reference_labels: Any = None,
    recalibration: Recalibration = "auto",
    offline_accuracy: float | None = None,
    offline_interval: tuple[float, float] | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    inputs: Any = None,
    reference_inputs: Any = None,
) -> EstimateResult:
    """Estimate a window's accuracy from its calibrated probabilities (or ``logits`` with the candidate's
    fitted ``temperature``), optionally checking calibration on a labelled reference.

    ``recalibration``: ``auto`` is ``isotonic`` with a labelled reference and ``none`` without; ``seed``
    fixes the reference's cross-fitting split. ``inputs`` and ``reference_inputs``: the window's and the
    labelled reference's input features (one row per row of ``probs`` / ``reference_probs``, the same
    columns): the reference's calibration error is then weighted by how much likelier each of its rows is in
    the window than in the reference (see the module docstring), which corrects the estimate under covariate
    shift and widens its interval as the shift grows.
    """
    window = _probabilities(probs, logits, temperature, "probs", "logits")
    reference = _reference(reference_probs, reference_logits, reference_labels, temperature, window.shape[1])
    weights = _shift_weights(inputs, reference_inputs, window.shape[0], reference, seed)
    options = (recalibration, offline_accuracy, offline_interval, confidence, seed, weights)
    return _estimate(window.max(axis=1), reference, *options)


def estimate_from_confidences(
    confidences: Any,
    *,
    reference_confidences: Any = None,
    reference_correct: Any = None,
    recalibration: Recalibration = "auto",
    offline_accuracy: float | None = None,
    offline_interval: tuple[float, float] | None = None,
    confidence: float = 0.95,
    seed: int = 0,
    inputs: Any = None,
    reference_inputs: Any = None,
) -> EstimateResult:
    """:func:`estimate_accuracy` from each row's largest calibrated probability alone (what the prediction
    log keeps), with a labelled reference given the same way: its confidences and whether each was correct."""
    conf = _as_confidences(confidences, "confidences")
    reference = None
    if reference_confidences is not None or reference_correct is not None:
        ref_conf = _as_confidences(reference_confidences, "reference_confidences")
        correct = as_flags(reference_correct, "reference_correct")
        if correct.size != ref_conf.size or ref_conf.size < MIN_REFERENCE_ROWS:
            raise DataError(
                f"the labelled reference needs one correctness flag per confidence and at least {MIN_REFERENCE_ROWS} "
                f"rows, got {ref_conf.size} confidences and {correct.size} flags."
            )
        reference = (ref_conf, correct.astype(np.float64))
    weights = _shift_weights(inputs, reference_inputs, conf.size, reference, seed)
    options = (recalibration, offline_accuracy, offline_interval, confidence, seed, weights)
    return _estimate(conf, reference, *options)


def _as_confidences(x: Any, name: str) -> NDArray[np.float64]:
    arr = np.asarray(x, dtype=np.float64)
    if (
        arr.ndim != 1
        or not arr.size
        or not np.isfinite(arr).all()
        or not 0 <= arr.min() <= arr.max() <= 1 + PROB_ATOL
    ):
        raise DataError(
            f"{name} must be a non-empty 1-d array of probabilities in [0, 1], got shape {arr.shape}."
        )
    return np.clip(arr, 0.0, 1.0)


def _estimate(
    conf: NDArray[np.float64],
    reference: tuple[NDArray[np.float64], NDArray[np.float64]] | None,
    recalibration: Recalibration,
    offline_accuracy: float | None,
    offline_interval: tuple[float, float] | None,
    confidence: float,
    seed: int,
    weights: NDArray[np.float64] | None = None,
) -> EstimateResult:
    conf_level = check_confidence(confidence)
    mode = _mode(recalibration, reference is not None)
    z = float(ndtri(0.5 + 0.5 * conf_level))
    bias: float | None = None
    bias_se: float | None = None
    extra_var = 0.0
    correction = 0.0
    if reference is None:
        if weights is not None:
            raise ConfigError("inputs= and reference_inputs= weight a labelled reference: pass one as well.")
        method = "mean max-probability; Poisson-binomial interval; assumes calibrated probabilities (no labelled reference)"
    else:
        ref_conf, ref_correct = reference
        residual = _residuals(ref_conf, ref_correct, isotonic=mode == "isotonic", seed=seed)
        if weights is None:
            bias, bias_se = _window_bias(ref_conf, residual, conf)
            extra_var = bias_se**2 + bias**2
            how = (
                f"the reference's calibration error over {_N_BINS} confidence bins, weighted by the window's "
                "confidences"
            )
        else:
            bias, bias_se = _weighted_bias(residual, weights)
            correction = bias
            extra_var = bias_se**2
            ess = float(weights.sum() ** 2 / (weights**2).sum())
            how = (
                "the reference's calibration error weighted by the window-to-reference density ratio of the inputs "
                f"(a logistic domain classifier; effective reference size {ess:.0f} of {ref_conf.size}), "
                "subtracted from the estimate"
            )
        if mode == "isotonic":
            conf = _isotonic(ref_conf, ref_correct)(conf)
        method = (
            f"mean max-probability, {_MODE_TEXT[mode]} on a labelled reference of {ref_conf.size} rows; interval: "
            f"Poisson-binomial sampling plus {how}"
        )
    estimate = min(1.0, max(0.0, float(conf.mean()) - correction))
    sampling_var = float(np.sum(conf * (1.0 - conf))) / conf.size**2
    half = z * math.sqrt(sampling_var + extra_var)
    offline = _offline(offline_accuracy, offline_interval)
    return EstimateResult(
        estimated_accuracy=estimate,
        interval=(max(0.0, estimate - half), min(1.0, estimate + half)),
        n=int(conf.size),
        confidence=conf_level,
        method=method,
        calibration_bias=bias,
        calibration_bias_se=bias_se,
        offline_accuracy=offline[0],
        offline_interval=offline[1],
        drop_pp=None if offline[0] is None else 100.0 * (offline[0] - estimate),
    )


def realised_accuracy(correct: Any, *, confidence: float = 0.95) -> RealisedAccuracy:
    """Accuracy of ``correct`` (one boolean per labelled row) with its Wilson score interval."""
    flags = as_flags(correct, "correct")
    conf_level = check_confidence(confidence)
    k, n = int(flags.sum()), int(flags.size)
    return RealisedAccuracy(
        k / n, wilson_interval(k, n, confidence=conf_level), n, conf_level, "Wilson score interval"
    )


def compare(estimate: EstimateResult, realised: RealisedAccuracy) -> AccuracyGap:
    """The gap between an estimate made before labels and the accuracy the labels showed."""
    lo, hi = estimate.interval
    return AccuracyGap(
        estimated_accuracy=estimate.estimated_accuracy,
        realised_accuracy=realised.accuracy,
        gap_pp=100.0 * (realised.accuracy - estimate.estimated_accuracy),
        covered=lo <= realised.accuracy <= hi,
    )


_MODE_TEXT = {
    "none": "confidence as given, its calibration error measured",
    "isotonic": "confidence recalibrated by isotonic regression fitted",
}


def _check_temperature(temperature: Any) -> float:
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not math.isfinite(temperature)
    ):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}; use the fitted T.")
    if temperature <= 0:
        raise ConfigError(f"temperature must be > 0, got {temperature!r}; use the candidate's fitted T.")
    return float(temperature)


def _probabilities(
    probs: Any, logits: Any, temperature: float, p_name: str, z_name: str
) -> NDArray[np.float64]:
    if (probs is None) == (logits is None):
        raise ConfigError(
            f"pass exactly one of {p_name}= (calibrated probabilities) or {z_name}= (with temperature=)."
        )
    if logits is not None:
        return softmax_with_temperature(logits, temperature)
    if _check_temperature(temperature) != 1.0:
        raise ConfigError(
            f"temperature={temperature} applies to logits, but {p_name}= holds probabilities; pass {z_name}= or "
            "leave temperature at 1."
        )
    return as_probs(probs, p_name)


def _reference(
    probs: Any, logits: Any, labels: Any, temperature: float, n_classes: int
) -> tuple[NDArray[np.float64], NDArray[np.float64]] | None:
    if probs is None and logits is None and labels is None:
        return None
    if labels is None or (probs is None and logits is None):
        raise ConfigError(
            "a labelled reference needs both reference_labels= and reference_probs= (or reference_logits=)."
        )
    ref = _probabilities(probs, logits, temperature, "reference_probs", "reference_logits")
    if ref.shape[1] != n_classes:
        raise DataError(
            f"the reference has {ref.shape[1]} classes but the window has {n_classes}; pass outputs of the same model."
        )
    y = as_labels(labels, "reference_labels", n_classes=n_classes)
    if y.size != ref.shape[0]:
        raise DataError(
            f"reference_labels has {y.size} rows but the reference outputs have {ref.shape[0]}; pass one label per row."
        )
    if y.size < MIN_REFERENCE_ROWS:
        raise DataError(
            f"the labelled reference has {y.size} rows; pass at least {MIN_REFERENCE_ROWS} (ideally 1000+)."
        )
    return ref.max(axis=1), (ref.argmax(axis=1) == y).astype(np.float64)


def _mode(recalibration: Any, has_reference: bool) -> Literal["none", "isotonic"]:
    if recalibration not in ("auto", "none", "isotonic"):
        raise ConfigError(f"recalibration must be auto, none or isotonic, got {recalibration!r}.")
    if recalibration == "auto":
        return "isotonic" if has_reference else "none"
    if not has_reference and recalibration != "none":
        raise ConfigError(
            f"recalibration={recalibration!r} needs a labelled reference: pass reference_probs= and reference_labels=."
        )
    mode: Literal["none", "isotonic"] = recalibration
    return mode


def _isotonic(conf: NDArray[np.float64], correct: NDArray[np.float64]) -> Any:
    """P(correct | confidence) as a nondecreasing map fitted on (conf, correct); linear between the fitted
    confidences and constant beyond them."""
    x, inverse, counts = np.unique(conf, return_inverse=True, return_counts=True)
    means = np.bincount(inverse, weights=correct) / counts
    fitted = isotonic_regression(means, weights=counts.astype(np.float64), increasing=True).x

    def apply(values: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(np.interp(values, x, fitted), dtype=np.float64)

    return apply


def _residuals(
    conf: NDArray[np.float64], correct: NDArray[np.float64], *, isotonic: bool, seed: int
) -> NDArray[np.float64]:
    """Calibration residuals (confidence - correctness) on the reference; with ``isotonic``, each half's
    confidence recalibrated by a map fitted on the other half (out of sample)."""
    if not isotonic:
        return conf - correct
    fold = np.random.default_rng(seed).permutation(conf.size) % 2 == 0
    residual = np.empty(conf.size)
    for part in (fold, ~fold):
        residual[part] = _isotonic(conf[~part], correct[~part])(conf[part]) - correct[part]
    return residual


def _window_bias(
    ref_conf: NDArray[np.float64], residual: NDArray[np.float64], window_conf: NDArray[np.float64]
) -> tuple[float, float]:
    """The reference's mean residual in each of ``_N_BINS`` confidence bins (equal counts on the reference),
    averaged with the window's share of each bin, and its standard error: the calibration error expected
    for this window's mix of confidences. A window in a bin the reference barely covers gets a wide error."""
    edges = np.unique(np.quantile(ref_conf, np.linspace(0.0, 1.0, _N_BINS + 1)[1:-1]))
    ref_bin = np.searchsorted(edges, ref_conf, side="right")
    win_bin = np.searchsorted(edges, window_conf, side="right")
    bins = edges.size + 1
    counts = np.bincount(ref_bin, minlength=bins).astype(np.float64)
    share = np.bincount(win_bin, minlength=bins) / window_conf.size
    total = np.bincount(ref_bin, weights=residual, minlength=bins)
    squares = np.bincount(ref_bin, weights=residual**2, minlength=bins)
    seen = counts > 0
    mean = np.where(seen, total / np.maximum(counts, 1.0), 0.0)
    var = np.where(counts > 1, (squares - counts * mean**2) / np.maximum(counts - 1.0, 1.0), 0.25)
    se2 = np.where(seen, np.maximum(var, 0.0) / np.maximum(counts, 1.0), 0.25)
    return float(share @ mean), float(math.sqrt(share**2 @ se2))


def _weighted_bias(residual: NDArray[np.float64], weights: NDArray[np.float64]) -> tuple[float, float]:
    """The window's expected calibration error as the reference's residuals weighted by the density ratio
    (self-normalised), and its standard error (the weighted residuals' spread over the effective size)."""
    w = weights / weights.sum()
    bias = float(w @ residual)
    return bias, float(math.sqrt(float((w * w) @ (residual - bias) ** 2)))


def _shift_weights(
    inputs: Any,
    reference_inputs: Any,
    n_window: int,
    reference: tuple[NDArray[np.float64], NDArray[np.float64]] | None,
    seed: int,
) -> NDArray[np.float64] | None:
    """Density-ratio weights of the labelled reference's rows, window over reference, from a logistic domain
    classifier on standardised input features (L2, C = 1); None when no inputs are given."""
    if inputs is None and reference_inputs is None:
        return None
    if inputs is None or reference_inputs is None:
        raise ConfigError(
            "pass both inputs= (the window's) and reference_inputs= (the labelled reference's), or neither."
        )
    win = as_matrix(inputs, "inputs", what="input features")
    ref = as_matrix(reference_inputs, "reference_inputs", what="input features")
    problems = []
    if win.shape[0] != n_window:
        problems.append(f"inputs has {win.shape[0]} rows for {n_window} window rows")
    if reference is not None and ref.shape[0] != reference[0].size:
        problems.append(f"reference_inputs has {ref.shape[0]} rows for {reference[0].size} reference rows")
    if win.shape[1] != ref.shape[1]:
        problems.append(f"inputs has {win.shape[1]} columns and reference_inputs {ref.shape[1]}")
    if problems:
        raise DataError("; ".join(problems) + "; pass one feature row per probability row, the same columns.")
    from sklearn.linear_model import LogisticRegression

    mean, sd = ref.mean(axis=0), ref.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    x = (np.vstack([ref, win]) - mean) / sd
    y = np.r_[np.zeros(ref.shape[0]), np.ones(win.shape[0])]
    clf = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(x, y)
    logit = np.clip(clf.decision_function(x[: ref.shape[0]]), -30.0, 30.0)
    return np.asarray(np.exp(logit) * (ref.shape[0] / win.shape[0]), dtype=np.float64)


def _offline(
    accuracy: float | None, interval: tuple[float, float] | None
) -> tuple[float | None, tuple[float, float] | None]:
    if accuracy is None:
        if interval is not None:
            raise ConfigError("offline_interval was given without offline_accuracy; pass both or neither.")
        return None, None
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not 0.0 <= accuracy <= 1.0:
        raise ConfigError(f"offline_accuracy must be a fraction in [0, 1], got {accuracy!r}.")
    if interval is None:
        return float(accuracy), None
    lo, hi = (float(v) for v in interval)
    if not 0.0 <= lo <= accuracy <= hi <= 1.0:
        raise ConfigError(
            f"offline_interval must be (lo, hi) in [0, 1] around offline_accuracy, got {interval!r}."
        )
    return float(accuracy), (lo, hi)
