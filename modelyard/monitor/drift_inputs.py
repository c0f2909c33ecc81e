"""Validation at the public edge of ``modelyard.monitor``: arrays become float64, options are checked.

Every problem with an array raises ``DataError`` and every problem with an option raises ``ConfigError``,
each in one line that says what was wrong, what was received and how to fix it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.errors import ConfigError, DataError

# Probabilities may stray from [0, 1], and rows from summing to 1, by this much (float16 model outputs).
PROB_ATOL = 1e-3


def as_matrix(
    x: Any, name: str, *, n_columns: int | None = None, what: str = "features"
) -> NDArray[np.float64]:
    """A non-empty, finite 2-d float64 array, with ``n_columns`` columns when given."""
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{name} must be a 2-d array of numbers, could not convert it: {exc}") from exc
    expect = f"(rows, {n_columns})" if n_columns is not None else "(rows, columns)"
    if arr.ndim != 2:
        raise DataError(f"{name} must be a 2-d array {expect} of {what}, got shape {arr.shape}; reshape it.")
    if arr.shape[0] == 0:
        raise DataError(f"{name} is empty (shape {arr.shape}); pass at least one row.")
    if n_columns is not None and arr.shape[1] != n_columns:
        raise DataError(
            f"{name} has {arr.shape[1]} columns but the reference has {n_columns}; "
            f"pass the same {what} in the same order as the reference."
        )
    if arr.shape[1] == 0:
        raise DataError(f"{name} has no columns (shape {arr.shape}); pass at least one column.")
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        cols = np.flatnonzero(bad.any(axis=0))
        kind = "NaN" if np.isnan(arr).any() else "inf"
        raise DataError(
            f"{name} contains {kind} in {rows.size} rows (first row {int(rows[0])}, columns "
            f"{cols[:5].tolist()}); drop or impute those rows before checking drift."
        )
    return arr


def as_probs(x: Any, name: str) -> NDArray[np.float64]:
    """An (n, K) array of class probabilities, K >= 2, rows summing to 1."""
    probs = as_matrix(x, name, what="class probabilities")
    if probs.shape[1] < 2:
        raise DataError(f"{name} must have at least 2 classes (columns), got shape {probs.shape}.")
    if probs.min() < -PROB_ATOL or probs.max() > 1.0 + PROB_ATOL:
        raise DataError(
            f"{name} must hold probabilities in [0, 1], got values in [{probs.min():.4g}, {probs.max():.4g}]; "
            "pass softmax(logits), or pass logits= with a temperature."
        )
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if worst > PROB_ATOL:
        raise DataError(
            f"each row of {name} must sum to 1 (within {PROB_ATOL}), the worst row is off by {worst:.4g}; "
            "pass softmax(logits), not logits."
        )
    return np.clip(probs, 0.0, 1.0)


def as_flags(x: Any, name: str) -> NDArray[np.bool_]:
    """A non-empty 1-d array of booleans (or 0/1)."""
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise DataError(f"{name} must be a 1-d array of booleans, got shape {arr.shape}; pass one per row.")
    if arr.size == 0:
        raise DataError(f"{name} is empty; pass at least one row.")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{name} must hold booleans or 0/1 values, got dtype {arr.dtype}.")
    if not np.isin(arr, (0, 1)).all():
        shown = np.unique(arr[~np.isin(arr, (0, 1))])[:5].tolist()
        raise DataError(f"{name} must hold only 0/1 or True/False values, found {shown}.")
    return arr.astype(bool)


def as_labels(x: Any, name: str, *, n_classes: int) -> NDArray[np.int64]:
    """A non-empty 1-d array of class indices in [0, n_classes)."""
    arr = np.asarray(x)
    if arr.ndim != 1 or arr.size == 0:
        raise DataError(f"{name} must be a non-empty 1-d array of class indices, got shape {arr.shape}.")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise DataError(f"{name} must hold integer class indices, got dtype {arr.dtype}.")
    if np.issubdtype(arr.dtype, np.floating) and (
        not np.isfinite(arr).all() or not np.all(arr == np.round(arr))
    ):
        raise DataError(f"{name} must hold integer class indices, got NaN, inf or fractional values.")
    labels = arr.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        raise DataError(
            f"{name} must hold class indices in [0, {n_classes}), found [{labels.min()}, {labels.max()}]; "
            "labels and probability columns must use the same class order."
        )
    return labels


def check_alpha(alpha: Any, *, n_resamples: int | None = None) -> float:
    """A false-alarm rate in (0, 0.5], resolvable with ``n_resamples`` null draws when given."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise ConfigError(f"alpha must be a number in (0, 0.5], got {alpha!r}; use e.g. 0.05.")
    value = float(alpha)
    if not 0.0 < value <= 0.5:
        raise ConfigError(f"alpha must be in (0, 0.5], got {alpha!r}; use e.g. 0.05.")
    if n_resamples is not None and value * (n_resamples + 1) < 1.0:
        raise ConfigError(
            f"alpha={value} is below 1/(n_resamples + 1) = {1 / (n_resamples + 1):.3g}; "
            f"build the reference with n_resamples >= {int(np.ceil(1 / value))} or raise alpha."
        )
    return value


def check_int(value: Any, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or int(value) < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def check_confidence(confidence: Any) -> float:
    if isinstance(confidence, bool) or not isinstance(confidence, int | float):
        raise ConfigError(f"confidence must be a number in (0, 1), got {confidence!r}; use e.g. 0.95.")
    value = float(confidence)
    if not 0.0 < value < 1.0:
        raise ConfigError(f"confidence must be in (0, 1), got {confidence!r}; use e.g. 0.95.")
    return value
