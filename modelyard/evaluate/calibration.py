"""Temperature scaling after optimization: fit T on a calibration split, report ECE on test after T.

Convention ``/work/shared/reference/metrics.md`` 5.1 (temperature scaling): p = softmax(z / T), T > 0
fitted by minimizing the NLL of the calibration split over log T ∈ [−3, 3] with
``scipy.optimize.minimize_scalar(method="bounded")``. T is never fitted on the test split: the fitting
function only ever receives calibration labels. ECE is top-label with 15 equal-width bins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import logsumexp

from modelyard.errors import ConfigError, DataError
from modelyard.evaluate import metrics as M
from modelyard.evaluate.checkspec import CLASSIFIERS, CheckSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.stats import _as_labels_1d

__all__ = ["apply_temperature", "calibration_evidence", "fit_temperature"]

MIN_CALIBRATION_N = 20
LOG_T_BOUNDS = (-3.0, 3.0)
_N_BINS = 15

CHECKS = declare(
    CheckSpec(
        "calibration.temperature",
        "T",
        "softmax temperature fitted on the calibration split (never the test split)",
        None,
        CLASSIFIERS,
        ("calibration",),
    ),
    CheckSpec(
        "calibration.ece_calibrated",
        "fraction",
        "ECE on the test split after the fitted temperature",
        "lower",
        CLASSIFIERS,
        ("labels", "calibration"),
    ),
)
_NO_SPLIT = (
    "give a calibration split: pass held-out labelled items (not the test split), at least "
    f"{MIN_CALIBRATION_N}, to fit the temperature on"
)


def _logits_and_labels(
    logits: Any, y: Any, *, logits_name: str, y_name: str
) -> tuple[np.ndarray, np.ndarray]:
    z = M._as_float_2d(logits, logits_name, what="an (n, K) array of logits")
    labels = _as_labels_1d(y, y_name)
    if labels.max() >= z.shape[1]:
        raise DataError(
            f"{y_name} holds label {int(labels.max())}, out of range for the {z.shape[1]} logit columns "
            f"(labels must be in [0, {z.shape[1] - 1}])."
        )
    if len(labels) != z.shape[0]:
        raise DataError(
            f"{logits_name} has {z.shape[0]} rows but {y_name} has {len(labels)} labels; pass one row per item."
        )
    return z, labels


def _nll(z: np.ndarray, y: np.ndarray, temperature: float) -> float:
    """Mean NLL in nats of softmax(z / T) (stable log-sum-exp; same value as ``M.nll``)."""
    s = z / temperature
    return float(np.mean(logsumexp(s, axis=1) - s[np.arange(len(y)), y]))


def apply_temperature(logits: Any, temperature: float) -> np.ndarray:
    """``logits / T`` in float64: what the server applies before its softmax once T is stored."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise ConfigError(f"temperature must be a positive number, got {temperature!r}.")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0.0):
        raise ConfigError(
            f"temperature must be a positive finite number, got {temperature!r}; T = 1 is a no-op."
        )
    return M._as_logits(logits) / t


def fit_temperature(logits_cal: Any, y_cal: Any) -> dict[str, Any]:
    """Fit the softmax temperature on a calibration split by minimizing its NLL over log T ∈ [−3, 3].

    Returns ``{"temperature": T, "nll_before": NLL at T = 1, "nll_after": NLL at T, "n": items}``
    (NLL in nats on the calibration split). T > 1 softens an overconfident model. Raises DataError with
    fewer than 20 items or a label outside the logit columns.
    """
    z, y = _logits_and_labels(logits_cal, y_cal, logits_name="logits_cal", y_name="y_cal")
    n = len(y)
    if n < MIN_CALIBRATION_N:
        raise DataError(
            f"the calibration split has {n} items, fitting a temperature needs at least {MIN_CALIBRATION_N}; "
            "pass a larger held-out split."
        )
    res = minimize_scalar(
        lambda log_t: _nll(z, y, math.exp(log_t)),
        bounds=LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-6},
    )
    nll_before = _nll(z, y, 1.0)
    temperature, nll_after = math.exp(float(res.x)), float(res.fun)
    if nll_after > nll_before:  # the bounded search can stop a rounding error away from T = 1
        temperature, nll_after = 1.0, nll_before
    return {"temperature": temperature, "nll_before": nll_before, "nll_after": nll_after, "n": n}


def calibration_evidence(
    logits_cal: Any | None, y_cal: Any | None, logits_test: Any, y_test: Any
) -> dict[str, Measurement]:
    """``calibration.temperature`` (fitted on the calibration split) and ``calibration.ece_calibrated``.

    The temperature's details hold the calibration split's size and NLL before/after; the calibrated
    ECE is measured on the test split after softmax(z / T), with its reliability bins and the raw test
    ECE (``ece_before``). Without a calibration split (``logits_cal`` None) or with fewer than 20 items
    both are UNKNOWN, with a reason saying how to provide one.
    """
    z_test, y = _logits_and_labels(logits_test, y_test, logits_name="logits_test", y_name="y_test")
    n_cal = 0 if logits_cal is None else int((np.shape(logits_cal) or (0,))[0])
    if logits_cal is None or y_cal is None or n_cal < MIN_CALIBRATION_N:
        why = _NO_SPLIT if logits_cal is None or y_cal is None else f"{_NO_SPLIT} (got {n_cal} items)"
        return {
            "calibration.temperature": measure("calibration.temperature", None, reason=why, n_cal=n_cal),
            "calibration.ece_calibrated": measure("calibration.ece_calibrated", None, reason=why),
        }
    z_cal = M._as_float_2d(logits_cal, "logits_cal", what="an (n, K) array of logits")
    if z_cal.shape[1] != z_test.shape[1]:
        raise DataError(
            f"logits_cal has {z_cal.shape[1]} columns but logits_test has {z_test.shape[1]}; "
            "pass the same model's logits for both splits."
        )
    fit = fit_temperature(z_cal, y_cal)
    t = fit["temperature"]
    lo, hi = (math.exp(b) for b in LOG_T_BOUNDS)
    p_before = M.softmax(z_test)
    p_after = M.softmax(apply_temperature(z_test, t))
    return {
        "calibration.temperature": measure(
            "calibration.temperature",
            t,
            n_cal=fit["n"],
            nll_before=fit["nll_before"],
            nll_after=fit["nll_after"],
            fitted_on="calibration split",
            at_bound=bool(math.isclose(t, lo, rel_tol=1e-4) or math.isclose(t, hi, rel_tol=1e-4)),
        ),
        "calibration.ece_calibrated": measure(
            "calibration.ece_calibrated",
            M.ece(p_after, y, n_bins=_N_BINS),
            bins=M.reliability_bins(p_after, y, n_bins=_N_BINS),
            ece_before=M.ece(p_before, y, n_bins=_N_BINS),
            temperature=t,
            n=len(y),
            n_bins=_N_BINS,
        ),
    }
