"""The input contract a served model enforces, derived from its Runner spec (metrics.md 5.7, input
validation): names, dtypes, shapes with dynamic axes, value ranges and finite values.

The contract is plain JSON::

    {"inputs": [{"name": str, "dtype": str, "shape": [int | None, ...], "value_range": [lo, hi] | None,
                 "finite": bool, "observed_range": [lo, hi]  (only when observed data was given)}],
     "text": bool, "max_length": int  (only for text models)}

``None`` in a shape is a dynamic axis. ``finite`` is true for float inputs (NaN and infinities are
refused). ``observed_range`` is what the evaluation data spanned: shown, never enforced.
:func:`check_inputs` lists every violation of a feed as one line naming the input, so a server can
answer 4xx with all of them at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from modelyard.errors import ConfigError
from modelyard.runtime.base import RunnerSpec

__all__ = ["check_inputs", "input_contract"]

TOKEN_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
TOKEN_TYPE_IDS = "token_type_ids"


def _is_float(dtype: str) -> bool:
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.floating))
    except TypeError:
        return False


def _is_int(dtype: str) -> bool:
    try:
        return bool(np.issubdtype(np.dtype(dtype), np.integer))
    except TypeError:
        return False


def _range(value: Any, what: str) -> list[float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a pair [lo, hi] of numbers, got {value!r}.") from None
    if not (np.isfinite(lo) and np.isfinite(hi)) or lo > hi:
        raise ConfigError(f"{what} must be finite with lo <= hi, got [{lo:g}, {hi:g}].")
    return [lo, hi]


def _positive_int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        return None
    return int(value)


def _token_range(name: str, extra: Mapping[str, Any]) -> list[float] | None:
    if name == TOKEN_IDS:
        vocab = _positive_int(extra.get("vocab_size"))
        return [0.0, float(vocab - 1)] if vocab else None
    if name == ATTENTION_MASK:
        return [0.0, 1.0]
    if name == TOKEN_TYPE_IDS:
        types = _positive_int(extra.get("type_vocab_size"))
        return [0.0, float(types - 1)] if types else None
    return None


def _observed(arr: Any, name: str) -> list[float] | None:
    try:
        a = np.asarray(arr, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError(f"observed data for input {name!r} must be numeric.") from None
    a = a[np.isfinite(a)]
    return [float(a.min()), float(a.max())] if a.size else None


def input_contract(
    spec: RunnerSpec,
    *,
    value_range: tuple[float, float] | None = None,
    observed: Mapping[str, Any] | None = None,
    max_length: int | None = None,
) -> dict[str, Any]:
    """The JSON input contract of a Runner spec (see the module docstring for its shape).

    Float inputs get ``value_range`` (or ``spec.value_range``) and ``finite: true``. Token inputs get
    ``[0, vocab_size - 1]`` for ``input_ids`` when ``spec.extra`` records ``vocab_size``, and ``[0, 1]``
    for ``attention_mask``. A model whose inputs include integer ``input_ids`` takes raw texts
    through its tokenizer: ``"text": true`` with ``max_length`` (this argument, else
    ``spec.extra["max_length"]``, else None). ``observed`` maps input names to sample data whose
    range is recorded as ``observed_range``.
    """
    if not spec.inputs:
        raise ConfigError("the Runner spec declares no inputs; a contract needs at least one.")
    override = _range(value_range, "value_range") if value_range is not None else None
    declared = _range(spec.value_range, "spec.value_range") if spec.value_range is not None else None
    observed = dict(observed or {})
    unknown = sorted(set(observed) - {t.name for t in spec.inputs})
    if unknown:
        raise ConfigError(
            f"observed data names inputs the spec does not declare: {unknown}; "
            f"the inputs are {[t.name for t in spec.inputs]}."
        )
    inputs = []
    for t in spec.inputs:
        is_float = _is_float(t.dtype)
        if is_float:
            rng = override if override is not None else declared
        elif _is_int(t.dtype):
            rng = _token_range(t.name, spec.extra)
        else:
            rng = None
        entry: dict[str, Any] = {
            "name": t.name,
            "dtype": t.dtype,
            "shape": [None if d is None else int(d) for d in t.shape],
            "value_range": rng,
            "finite": is_float,
        }
        if t.name in observed:
            entry["observed_range"] = _observed(observed[t.name], t.name)
        inputs.append(entry)
    text = any(t.name == TOKEN_IDS and _is_int(t.dtype) for t in spec.inputs)
    contract: dict[str, Any] = {"inputs": inputs, "text": text}
    if text:
        limit = max_length if max_length is not None else spec.extra.get("max_length")
        contract["max_length"] = _positive_int(limit)
    return contract


# ---------------------------------------------------------------------------------------------------
# enforcement


def _shape_text(shape: list[Any]) -> str:
    dims = ["N" if d is None and i == 0 else "?" if d is None else str(d) for i, d in enumerate(shape)]
    return "(" + ", ".join(dims) + (",)" if len(dims) == 1 else ")")


def _entries(contract: Any) -> list[dict[str, Any]]:
    if not isinstance(contract, Mapping) or not isinstance(contract.get("inputs"), list):
        raise ConfigError("contract must be a dict with an 'inputs' list, as made by input_contract().")
    entries = []
    for e in contract["inputs"]:
        if not isinstance(e, Mapping) or not isinstance(e.get("name"), str) or "dtype" not in e:
            raise ConfigError(
                f"contract input {e!r} lacks a name or dtype; rebuild it with input_contract()."
            )
        if not isinstance(e.get("shape"), list):
            raise ConfigError(
                f"contract input {e['name']!r} has no shape list; rebuild it with input_contract()."
            )
        entries.append(dict(e))
    return entries


def _as_array(value: Any) -> np.ndarray | None:
    try:
        return np.asarray(value)
    except (TypeError, ValueError):  # ragged nested lists
        return None


def _check_one(entry: dict[str, Any], arr: np.ndarray) -> list[str]:
    where = f"input {entry['name']!r}"
    problems = []
    if str(arr.dtype) != str(entry["dtype"]):
        problems.append(f"{where}: expected dtype {entry['dtype']}, got {arr.dtype}")
    shape = entry["shape"]
    if arr.ndim != len(shape) or any(
        d is not None and int(d) != s for d, s in zip(shape, arr.shape, strict=False)
    ):
        problems.append(f"{where}: expected shape {_shape_text(shape)}, got {tuple(arr.shape)}")
    elif arr.ndim and arr.shape[0] == 0:
        problems.append(f"{where}: empty batch (0 items)")
    kind = arr.dtype.kind
    if kind not in "biuf":
        problems.append(f"{where}: values are {arr.dtype}, not real numbers")
        return problems
    finite = np.isfinite(arr) if kind == "f" else np.ones(arr.shape, dtype=bool)
    n_bad = int(arr.size - finite.sum())
    if n_bad and entry.get("finite", False):
        problems.append(f"{where}: NaN or infinite values ({n_bad} of {arr.size})")
    rng = entry.get("value_range")
    if rng is not None:
        lo, hi = float(rng[0]), float(rng[1])
        vals = arr[finite]
        outside = int(np.count_nonzero((vals < lo) | (vals > hi)))
        if outside:
            problems.append(f"{where}: {outside} values outside [{lo:g}, {hi:g}]")
    return problems


def check_inputs(contract: Mapping[str, Any], feeds: Mapping[str, Any]) -> list[str]:
    """Every way ``feeds`` break ``contract``, one line each naming the input; empty when they comply.

    Checks missing and unexpected inputs, dtype (exact), shape (``None`` axes match any size), an
    empty batch, NaN or infinite values where ``finite`` is set, values outside ``value_range``, and
    that all inputs agree on the batch size.
    """
    entries = _entries(contract)
    if not isinstance(feeds, Mapping):
        raise ConfigError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}.")
    problems = [f"missing input {e['name']!r}" for e in entries if e["name"] not in feeds]
    known = {e["name"] for e in entries}
    problems += [f"unexpected input {k!r}" for k in feeds if k not in known]
    batch: dict[str, int] = {}
    for e in entries:
        if e["name"] not in feeds:
            continue
        arr = _as_array(feeds[e["name"]])
        if arr is None:
            problems.append(f"input {e['name']!r}: not an array of numbers (ragged or not numeric)")
            continue
        problems += _check_one(e, arr)
        if arr.ndim and e["shape"] and e["shape"][0] is None:
            batch[e["name"]] = int(arr.shape[0])
    if len(set(batch.values())) > 1:
        shown = ", ".join(f"{k!r} has {n}" for k, n in batch.items())
        problems.append(f"inputs disagree on the batch size: {shown}")
    return problems
