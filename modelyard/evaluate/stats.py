"""Statistics for evidence: confidence intervals and paired tests, as pure functions.

Conventions (``/work/shared/reference/metrics.md`` 5.1 and 5.4):

- ``wilson_interval``: Wilson score interval for a proportion k/n, the same numbers as
  ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")`` (0 and 1 exactly at k = 0 and k = n).
- ``bootstrap_ci``: percentile bootstrap over example indices, drawn with replacement; the same indices
  are applied to every array passed, so passing both models' arrays gives the paired bootstrap.
- ``mcnemar_exact``: exact two-sided McNemar test, p = min(1, 2·BinomCDF(min(b, c); b + c, 1/2)),
  p = 1 when b + c = 0; matches ``statsmodels`` ``mcnemar(table, exact=True)``.
- ``accuracy_drop``: baseline minus candidate accuracy in percentage points with its paired bootstrap
  interval and the one-sided upper bound used by the non-inferiority gate.

Arrays are validated at the public edge (``DataError``); invalid options raise ``ConfigError``.
Everything is computed in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy.special import ndtri
from scipy.stats import binom

from modelyard.errors import ConfigError, DataError

__all__ = ["accuracy_drop", "bootstrap_ci", "holm", "mcnemar_exact", "wilson_interval"]

# Index matrices are drawn in chunks of at most this many entries, so memory stays bounded for large n.
_MAX_INDEX_ENTRIES = 4_000_000


def _check_confidence(confidence: float) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, (int, float)):
        raise ConfigError(f"confidence must be a number in (0, 1), got {confidence!r}; use e.g. 0.95.")
    value = float(confidence)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}; use e.g. 0.95.")
    return value


def _check_positive_int(value: Any, name: str, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    if int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_seed(seed: Any) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}.")
    return int(seed)


def _as_binary_1d(x: Any, name: str) -> np.ndarray:
    """A non-empty 1-d array of 0/1 (or bool) values, returned as bool."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(
            f"{name} must be a 1-d array of booleans, got shape {arr.shape}; pass one value per sample."
        )
    if arr.size == 0:
        raise DataError(f"{name} is empty; pass at least one sample.")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{name} must hold booleans or 0/1 values, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
        raise DataError(f"{name} contains NaN; pass booleans (True = correct).")
    if not np.isin(arr, (0, 1)).all():
        raise DataError(
            f"{name} must hold only 0/1 or True/False values, found {np.unique(arr)[:5].tolist()}."
        )
    return arr.astype(bool)


def _as_labels_1d(x: Any, name: str) -> np.ndarray:
    """A non-empty 1-d array of non-negative integer class indices, returned as int64."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-d array of class indices, got shape {arr.shape}.")
    if arr.size == 0:
        raise DataError(f"{name} is empty; pass at least one sample.")
    if np.issubdtype(arr.dtype, np.floating):
        if np.isnan(arr).any():
            raise DataError(f"{name} contains NaN; pass integer class indices.")
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise DataError(f"{name} must hold integer class indices, got non-integer floats.")
    elif not (np.issubdtype(arr.dtype, np.integer) or arr.dtype == np.bool_):
        raise DataError(f"{name} must hold integer class indices, got dtype {arr.dtype}.")
    labels = arr.astype(np.int64)
    if labels.min() < 0:
        raise DataError(f"{name} must hold class indices >= 0, found {int(labels.min())}.")
    return labels


def _same_length(arrays: dict[str, np.ndarray]) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise DataError(f"arrays must have the same number of samples, got {shown}; pass paired arrays.")
    return next(iter(lengths.values()))


def wilson_interval(k: int, n: int, *, confidence: float = 0.95) -> tuple[float, float]:
    """Two-sided Wilson score interval for the proportion ``k / n``.

    ``k`` successes out of ``n`` trials; returns ``(lo, hi)`` in [0, 1], with ``lo = 0`` exactly when
    ``k = 0`` and ``hi = 1`` exactly when ``k = n`` (as scipy's ``proportion_ci(method="wilson")``).
    """
    for name, value in (("k", k), ("n", n)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"{name} must be an integer count, got {value!r}.")
    k, n = int(k), int(n)
    if n < 1:
        raise DataError(f"n must be at least 1 trial, got {n}.")
    if not 0 <= k <= n:
        raise DataError(f"k must be between 0 and n={n}, got {k}.")
    conf = _check_confidence(confidence)
    z = float(ndtri(0.5 + 0.5 * conf))
    p = k / n
    z2 = z * z
    denom = n + z2
    center = (k + z2 / 2.0) / denom
    half = (z / denom) * math.sqrt(n * p * (1.0 - p) + z2 / 4.0)
    lo = 0.0 if k == 0 else max(0.0, center - half)
    hi = 1.0 if k == n else min(1.0, center + half)
    return lo, hi


def _bootstrap_replicates(
    statistic: Callable[..., Any],
    arrays: list[np.ndarray],
    *,
    n_resamples: int,
    seed: int,
    vectorized: bool,
) -> np.ndarray:
    """The statistic on ``n_resamples`` index resamples, as a float64 array of shape (n_resamples,)."""
    n = len(arrays[0])
    rng = np.random.default_rng(seed)
    chunk = max(1, min(n_resamples, _MAX_INDEX_ENTRIES // n))
    out = np.empty(n_resamples, dtype=np.float64)
    done = 0
    while done < n_resamples:
        r = min(chunk, n_resamples - done)
        idx = rng.integers(0, n, size=(r, n))
        if vectorized:
            values = np.asarray(statistic(*(a[idx] for a in arrays)), dtype=np.float64)
            if values.shape != (r,):
                raise DataError(
                    f"a vectorized statistic must return one value per resample, shape ({r},), got "
                    f"shape {values.shape}; reduce over the last sample axis (axis=-1 for 1-d inputs)."
                )
            out[done : done + r] = values
        else:
            for j in range(r):
                out[done + j] = float(statistic(*(a[idx[j]] for a in arrays)))
        done += r
    bad = int(np.count_nonzero(~np.isfinite(out)))
    if bad:
        raise DataError(
            f"the statistic was not finite on {bad} of {n_resamples} bootstrap resamples; use a statistic "
            "that is defined on every resample (e.g. guard divisions by zero)."
        )
    return out


def _bootstrap_inputs(arrays: tuple[Any, ...]) -> list[np.ndarray]:
    if not arrays:
        raise DataError("bootstrap_ci needs at least one array to resample; pass e.g. the correctness array.")
    out: list[np.ndarray] = []
    for i, a in enumerate(arrays):
        arr = np.asarray(a)
        if arr.ndim == 0:
            raise DataError(f"array {i} is a scalar; pass arrays with one row per sample.")
        if arr.shape[0] == 0:
            raise DataError(f"array {i} is empty; pass at least one sample.")
        if np.issubdtype(arr.dtype, np.floating) and np.isnan(arr).any():
            raise DataError(f"array {i} contains NaN; remove or impute those samples first.")
        out.append(arr)
    _same_length({f"array {i}": a for i, a in enumerate(out)})
    return out


def bootstrap_ci(
    statistic: Callable[..., Any],
    *arrays: Any,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    vectorized: bool = False,
) -> tuple[float, float]:
    """Two-sided percentile bootstrap interval of ``statistic(*arrays)``.

    Each resample draws n example indices with replacement (n = length of the first axis, which must be
    the same for every array) and applies the same indices to every array, so passing both models'
    arrays gives the paired bootstrap. ``statistic(*resampled_arrays)`` must return a float. With
    ``vectorized=True`` the statistic instead receives arrays with an extra leading resample axis
    (shape (r, n, ...)) and must return r values; this is much faster for means.

    The interval is the (α/2, 1 − α/2) percentiles of the replicates (numpy's linear interpolation),
    α = 1 − confidence. The result depends only on the inputs, ``n_resamples`` and ``seed``.
    """
    if not callable(statistic):
        raise ConfigError(f"statistic must be a callable returning a float, got {type(statistic).__name__}.")
    data = _bootstrap_inputs(arrays)
    reps = _check_positive_int(n_resamples, "n_resamples")
    conf = _check_confidence(confidence)
    rng_seed = _check_seed(seed)
    replicates = _bootstrap_replicates(
        statistic, data, n_resamples=reps, seed=rng_seed, vectorized=vectorized
    )
    alpha = 1.0 - conf
    lo, hi = np.percentile(replicates, [100.0 * alpha / 2.0, 100.0 * (1.0 - alpha / 2.0)])
    return float(lo), float(hi)


def mcnemar_exact(correct_base: Any, correct_cand: Any) -> dict[str, Any]:
    """Exact two-sided McNemar test on paired correctness (True = the model was right on that sample).

    Returns ``{"b", "c", "n", "n11", "n00", "p_value"}``: b = baseline right and candidate wrong,
    c = baseline wrong and candidate right, n11 = both right, n00 = both wrong, n = samples.
    p = min(1, 2·BinomCDF(min(b, c); b + c, 1/2)), and p = 1 when b + c = 0.
    """
    base = _as_binary_1d(correct_base, "correct_base")
    cand = _as_binary_1d(correct_cand, "correct_cand")
    n = _same_length({"correct_base": base, "correct_cand": cand})
    b = int(np.count_nonzero(base & ~cand))
    c = int(np.count_nonzero(~base & cand))
    n11 = int(np.count_nonzero(base & cand))
    p_value = 1.0 if b + c == 0 else min(1.0, 2.0 * float(binom.cdf(min(b, c), b + c, 0.5)))
    return {"b": b, "c": c, "n": n, "n11": n11, "n00": n - b - c - n11, "p_value": p_value}


def _mean_last_axis(d: np.ndarray) -> np.ndarray:
    return np.asarray(d.mean(axis=-1), dtype=np.float64)


def accuracy_drop(
    y: Any, pred_base: Any, pred_cand: Any, *, n_resamples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Baseline accuracy minus candidate accuracy, in percentage points, with paired bootstrap bounds.

    Returns a dict:

    - ``drop_points``: 100·(acc_base − acc_cand); positive means the candidate is worse.
    - ``interval``: (lo, hi), the two-sided 95% paired percentile bootstrap interval of the drop.
    - ``upper_one_sided_95``: the 95th percentile of the same bootstrap replicates, i.e. the upper bound
      of the one-sided 95% interval; the non-inferiority gate passes when it is below the margin.
    - ``baseline_accuracy``, ``candidate_accuracy`` (fractions), ``n``, ``n_resamples``, ``seed``.

    The replicates are the same as ``bootstrap_ci`` draws with the same ``seed`` on the per-sample
    difference of correctness, so the interval equals ``bootstrap_ci(np.mean, d, seed=seed)`` × 100.
    """
    y_arr = _as_labels_1d(y, "y")
    base = _as_labels_1d(pred_base, "pred_base")
    cand = _as_labels_1d(pred_cand, "pred_cand")
    n = _same_length({"y": y_arr, "pred_base": base, "pred_cand": cand})
    reps = _check_positive_int(n_resamples, "n_resamples")
    rng_seed = _check_seed(seed)
    correct_base = (base == y_arr).astype(np.float64)
    correct_cand = (cand == y_arr).astype(np.float64)
    diff = correct_base - correct_cand
    replicates = 100.0 * _bootstrap_replicates(
        _mean_last_axis, [diff], n_resamples=reps, seed=rng_seed, vectorized=True
    )
    lo, hi, upper = np.percentile(replicates, [2.5, 97.5, 95.0])
    return {
        "drop_points": float(100.0 * diff.mean()),
        "interval": (float(lo), float(hi)),
        "upper_one_sided_95": float(upper),
        "baseline_accuracy": float(correct_base.mean()),
        "candidate_accuracy": float(correct_cand.mean()),
        "n": n,
        "n_resamples": reps,
        "seed": rng_seed,
    }


def holm(pvalues: Sequence[float | None] | np.ndarray) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values (metrics.md 5.4, multiplicity), in the input order.

    With the m non-None p-values sorted ascending, p_(1) <= ... <= p_(m), the adjusted value is
    max_{j <= i} min(1, (m − j + 1)·p_(j)): monotone in p and capped at 1, the same numbers as
    ``statsmodels.stats.multitest.multipletests(p, method="holm")[1]``. None entries (unknown
    p-values) are not counted in m and stay None.
    """
    if isinstance(pvalues, (str, bytes)) or not isinstance(pvalues, Sequence | np.ndarray):
        raise DataError(f"pvalues must be a sequence of p-values or None, got {type(pvalues).__name__}.")
    known: list[tuple[int, float]] = []
    for i, p in enumerate(pvalues):
        if p is None:
            continue
        if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)):
            raise DataError(f"p-value {i} must be a number in [0, 1] or None, got {p!r}.")
        value = float(p)
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            raise DataError(f"p-value {i} must be in [0, 1], got {p!r}; pass None for an unknown p-value.")
        known.append((i, value))
    out: list[float | None] = [None] * len(pvalues)
    m = len(known)
    running = 0.0
    for rank, (i, value) in enumerate(sorted(known, key=lambda t: t[1])):
        running = max(running, min(1.0, (m - rank) * value))
        out[i] = running
    return out
