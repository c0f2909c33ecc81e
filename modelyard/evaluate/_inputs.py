"""What the efficiency measurements and the memory probe share: reading sample inputs, tiling them to a batch,
and checking numbers and describing errors the same way."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from modelyard.errors import ConfigError, DataError, first_line


def as_texts(x: Any) -> list[str] | None:
    """The inputs as a list of texts, or None when they are numeric."""
    if isinstance(x, np.ndarray):
        return [str(t) for t in x.tolist()] if x.dtype.kind in "US" else None
    if isinstance(x, Sequence) and not isinstance(x, str | bytes) and len(x) and isinstance(x[0], str):
        return [str(t) for t in x]
    return None


def normalize_inputs(sample_inputs: Any) -> np.ndarray | list[str]:
    """Raw sample inputs as a list of texts or an array with at least one example on axis 0 (DataError
    otherwise)."""
    if isinstance(sample_inputs, str | bytes):
        raise DataError(
            "sample_inputs must be an array or a list of texts, got a single string; wrap it in a list"
        )
    texts = as_texts(sample_inputs)
    if texts is not None:
        return texts
    try:
        arr = np.asarray(sample_inputs)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"sample_inputs must be an array or a list of texts; numpy cannot read it: {exc}"
        ) from None
    if arr.ndim == 0 or arr.shape[0] == 0:
        raise DataError(
            f"sample_inputs must hold at least one example along axis 0, got shape {arr.shape}; "
            "pass a few test examples"
        )
    return arr


def tile(inputs: np.ndarray | list[str], n: int, start: int = 0) -> np.ndarray | list[str]:
    """``n`` examples taken cyclically from ``inputs``, beginning at index ``start``."""
    idx = (start + np.arange(n)) % len(inputs)
    if isinstance(inputs, list):
        return [inputs[int(i)] for i in idx]
    return np.take(inputs, idx, axis=0)


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """ConfigError unless ``value`` is finite and > 0 (>= 0 with ``allow_zero``)."""
    ok = math.isfinite(value) and (value >= 0 if allow_zero else value > 0)
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{name} must be a finite number {bound}, got {value!r}")


def error_line(exc: BaseException) -> str:
    """The exception's type and the first line of its message, for a measurement's reason."""
    return f"{type(exc).__name__}: {first_line(exc)}" if str(exc).strip() else type(exc).__name__
