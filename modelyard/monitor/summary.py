"""Bounded JSON summaries of a request's inputs and outputs, as the prediction log stores them.

Arrays in, a small JSON-able dict out; never the raw tensor of an image or the text itself. At most
``MAX_ROWS`` rows of a request are summarized (``rows`` says how many it had), and an encoded summary is at most
``MAX_SUMMARY_BYTES`` bytes: fewer rows are kept until it fits, then only statistics, then only the row count.

Inputs (``{"rows": N, "inputs": {name: ...}}``), per input:

- ``{"kind": "values", "dtype", "shape", "values": [[...], ...]}``: tabular inputs (at most
  ``MAX_VALUES_PER_ROW`` values per row): the values of the first rows, floats to 7 significant digits;
- ``{"kind": "stats", "dtype", "shape", "mean": [...], "std": [...], "min": [...], "max": [...]}``: larger
  tensors (images, sequences): four numbers per row;
- ``{"kind": "text", "chars": [...], "words": [...]}``: texts: their lengths in characters and words;
- ``{"kind": "projected", "dtype", "shape"}``: the input the served version's projection reads (below).

When the served version's monitor reference holds a :class:`Projection` of its input (images, wide tabular
inputs), the inputs summary also has ``"features": [[pc1, ..., pck, residual] per row]``: each row's
coordinates on the reference's principal components and its reconstruction error, the features the input
drift check compares with the reference (that input's own values are then not kept) (:mod:`modelyard.monitor.reference` computes the reference's rows with
the same :meth:`Projection.logged`, and tabular rows with :func:`logged_rows`).

Outputs of a classifier: ``{"rows", "predicted": [class per row], "confidence": [largest calibrated
probability per row], "top": [[[class, probability], ...] per row] (the ``TOP_K`` largest), "ood_score": [...],
"ood_flag": [...], "ood_flagged": rows flagged in the whole request}``; of an embedder: ``{"rows", "dim",
"norm": [...], "mean": [...], "std": [...]}``, plus ``"features"`` (principal components and reconstruction
error of each row) when the reference holds a projection of the embedding.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.errors import DataError

MAX_ROWS = 8
MAX_VALUES_PER_ROW = 64
MAX_SUMMARY_BYTES = 4096
TOP_K = 5
DIGITS = 7
# A projected tensor is average-pooled (its last two axes, or its last axis) to at most this many values first.
MAX_PROJECTED_VALUES = 1024


@dataclass(frozen=True)
class OutputSummary:
    """An encoded output summary and the per-request figures the log keeps in columns."""

    json: str
    confidence: float | None
    ood_score: float | None
    ood_flag: bool | None


def _rounded(a: np.ndarray) -> list[Any]:
    """``a`` as nested lists, floats rounded to ``DIGITS`` significant digits (short JSON). Small arrays (a
    request's few numbers) take a plain-Python path with the same formula: numpy's per-call cost dominates there."""
    if a.dtype.kind not in "f":
        return a.tolist()  # type: ignore[no-any-return]
    if a.size <= _SMALL:
        return _round_nested(a.astype(np.float64).tolist())  # type: ignore[no-any-return]
    return rounded_array(a).tolist()  # type: ignore[no-any-return]


def rounded_array(a: np.ndarray) -> NDArray[np.float64]:
    """A float array rounded to ``DIGITS`` significant digits as float64 (zeros, infinities and NaN as they are):
    the numbers :func:`_rounded` writes, computed for the whole array at once."""
    x = np.asarray(a, dtype=np.float64)
    ok = np.isfinite(x) & (x != 0)
    with np.errstate(all="ignore"):
        mag = np.floor(np.log10(np.abs(np.where(ok, x, 1.0))))
        scale = 10.0 ** (DIGITS - 1 - mag)
        return np.asarray(np.where(ok, np.round(x * scale) / scale, x), dtype=np.float64)


# Arrays of at most this many values are rounded in plain Python (measured crossover: numpy's path costs about
# as much as 30 values rounded in Python; both give the same numbers).
_SMALL = 32


def _round_nested(x: Any) -> Any:
    if isinstance(x, list):
        return [_round_nested(v) for v in x]
    if x == 0 or not math.isfinite(x):
        return x
    scale = 10.0 ** (DIGITS - 1 - math.floor(math.log10(abs(x))))
    return round(x * scale) / scale


@dataclass(frozen=True, eq=False)
class Projection:
    """``k`` principal directions of a tensor, fitted on reference rows: each row (average-pooled by ``pool``
    along its last two axes, or its last axis, to at most ``MAX_PROJECTED_VALUES`` values, then flattened) is
    described by its coordinates on the components and its reconstruction error (the root mean square of what
    the components leave out, in the data's units). ``source``: the input name, or ``embedding``."""

    source: str
    pool: int
    mean: NDArray[np.float64]  # (d,) of the pooled rows
    components: NDArray[np.float64]  # (k, d), orthonormal rows

    @property
    def names(self) -> tuple[str, ...]:
        return (*(f"pc{i + 1}" for i in range(self.components.shape[0])), "residual")

    @staticmethod
    def pool_for(row_shape: tuple[int, ...]) -> int:
        """The smallest block size that pools a row of ``row_shape`` to at most MAX_PROJECTED_VALUES values."""
        size = int(np.prod(row_shape)) if row_shape else 1
        pooled = row_shape[-2:] if len(row_shape) >= 2 else row_shape[-1:]
        rest = size // max(int(np.prod(pooled)), 1)
        block = 1
        while rest * int(np.prod([d // block for d in pooled])) > MAX_PROJECTED_VALUES and block < min(
            pooled
        ):
            block += 1
        return block

    def reduce(self, arr: np.ndarray) -> NDArray[np.float64]:
        """Rows of ``arr`` (rows, ...) pooled and flattened: (rows, d)."""
        x = pooled(arr, self.pool)
        if x.shape[1] != self.mean.size:
            raise DataError(
                f"{self.source}: a row has {x.shape[1]} values after pooling, the reference's projection "
                f"{self.mean.size}; the input shape differs from the reference's"
            )
        return x

    def features(self, arr: np.ndarray) -> NDArray[np.float64]:
        """(rows, k + 1): each row's coordinates on the components, then its reconstruction error."""
        z = self.reduce(arr) - self.mean
        coords = z @ self.components.T
        left = z - coords @ self.components
        residual = np.sqrt(np.mean(left * left, axis=1))
        return np.asarray(np.column_stack([coords, residual]), dtype=np.float64)

    def logged(self, arr: np.ndarray) -> NDArray[np.float64]:
        """:meth:`features` as the prediction log keeps them (``DIGITS`` significant digits)."""
        return np.asarray(_rounded(self.features(arr)), dtype=np.float64)


def pooled(arr: np.ndarray, pool: int) -> NDArray[np.float64]:
    """Rows of ``arr`` (rows, ...) average-pooled in blocks of ``pool`` along their last two axes (their last
    axis when a row is a vector), then flattened: (rows, d)."""
    x = np.asarray(arr, dtype=np.float64)
    x = x.reshape(1) if x.ndim == 0 else x
    if pool > 1 and x.ndim >= 3:
        h, w = (x.shape[-2] // pool) * pool, (x.shape[-1] // pool) * pool
        x = x[..., :h, :w].reshape(*x.shape[:-2], h // pool, pool, w // pool, pool).mean(axis=(-3, -1))
    elif pool > 1:
        x = x.reshape(len(x), -1)
        d = (x.shape[1] // pool) * pool
        x = x[:, :d].reshape(len(x), d // pool, pool).mean(axis=-1)
    return np.asarray(x.reshape(len(x), -1), dtype=np.float64)


def logged_rows(arr: np.ndarray) -> NDArray[np.float64]:
    """The rows of a tabular input as the log's ``values`` keep them: flattened, ``DIGITS`` significant digits."""
    a = np.asarray(arr)
    return np.asarray(_rounded(_per_row(a, len(a) if a.ndim else 1)), dtype=np.float64)


def logged_predictions(probabilities: np.ndarray) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Each row's predicted class and confidence (largest probability) as the log keeps them."""
    p = np.asarray(probabilities, dtype=np.float64).reshape(len(probabilities), -1)
    if not p.size:
        return np.zeros(len(p), dtype=np.int64), np.zeros(len(p))
    predicted = np.argsort(-p, axis=1, kind="stable")[:, 0].astype(np.int64)
    return predicted, np.asarray(_rounded(p.max(axis=1)), dtype=np.float64)


def _projected(projection: Projection | None, arr: Any, k: int) -> list[Any] | None:
    """The first ``k`` rows' projected features, or None (no projection, or an input it does not fit)."""
    if projection is None or arr is None:
        return None
    try:
        return _rounded(projection.features(np.asarray(arr)[:k]))
    except (DataError, ValueError):
        return None


def encode_summary(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def _per_row(arr: np.ndarray, k: int) -> np.ndarray:
    head = arr[:k] if arr.ndim else arr.reshape(1)
    return head.reshape(head.shape[0], -1)


def _input_entry(arr: np.ndarray, k: int, *, stats: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"dtype": str(arr.dtype), "shape": list(arr.shape)}
    flat = _per_row(arr, k)
    if not stats and flat.shape[1] <= MAX_VALUES_PER_ROW and arr.dtype.kind in "biuf":
        entry.update(kind="values", values=_rounded(flat))
        return entry
    if arr.dtype.kind not in "biuf" or flat.shape[1] == 0:
        entry["kind"] = "none"
        return entry
    x = flat.astype(np.float64)
    entry.update(
        kind="stats",
        mean=_rounded(x.mean(axis=1)),
        std=_rounded(x.std(axis=1)),
        min=_rounded(x.min(axis=1)),
        max=_rounded(x.max(axis=1)),
    )
    return entry


def summarize_inputs(
    feeds: Mapping[str, np.ndarray] | None,
    texts: Sequence[str] | None,
    *,
    rows: int,
    projection: Projection | None = None,
    features: list[list[float]] | None = None,
) -> str:
    """The encoded input summary of one request (see the module docstring); with ``projection`` (from the
    served version's monitor reference) also each summarized row's projected ``features``. ``features``: those
    of the first ``MAX_ROWS`` rows, rounded as the log keeps them, when the caller computed them already (the
    writer does, a batch at once)."""

    def build(k: int, stats: bool) -> dict[str, Any]:
        inputs: dict[str, Any] = {}
        if texts is not None:
            head = list(texts[:k])
            inputs["text"] = {
                "kind": "text",
                "chars": [len(t) for t in head],
                "words": [len(t.split()) for t in head],
            }
        if features is not None:
            projected: list[Any] | None = features[:k]
        else:
            source = (feeds or {}).get(projection.source) if projection else None
            projected = _projected(projection, source, k)
        for name, arr in (feeds or {}).items():
            a = np.asarray(arr)
            if projected is not None and projection is not None and name == projection.source:
                # its projected features are what the drift check reads: its values would only cost time
                inputs[name] = {"dtype": str(a.dtype), "shape": list(a.shape), "kind": "projected"}
            else:
                inputs[name] = _input_entry(a, k, stats=stats)
        doc: dict[str, Any] = {"rows": rows, "inputs": inputs}
        if projected is not None:
            doc["features"] = projected
        return doc

    return _bounded(build)


def summarize_outputs(
    outputs: Mapping[str, np.ndarray], *, projection: Projection | None = None
) -> OutputSummary:
    """The encoded output summary of one request and its confidence / OOD columns; an embedder's with
    ``projection`` (from the version's monitor reference) also has each summarized row's ``features``."""
    probs = outputs.get("probabilities")
    scores = outputs.get("ood_score")
    flags = outputs.get("ood_flag")
    if probs is not None:
        # ndarray methods, not np.max / np.mean: on a request's few rows the wrappers cost more than the sums
        p = np.asarray(probs, dtype=np.float64).reshape(len(probs), -1)
        top = p.max(axis=1) if p.size else np.zeros(len(p))
        confidence = float(top.sum()) / len(top) if len(top) else None
        k_top = min(TOP_K, p.shape[1])
        order = np.argsort(-p, axis=1, kind="stable")[:, :k_top]  # column 0: as logged_predictions
        ood_score = float(np.asarray(scores).max()) if scores is not None and len(scores) else None
        ood_flag = bool(np.asarray(flags).any()) if flags is not None else None

        def build(k: int, stats: bool) -> dict[str, Any]:
            doc: dict[str, Any] = {
                "rows": len(p),
                "predicted": order[:k, 0].tolist() if k_top else [],
                "confidence": _rounded(top[:k]),
            }
            if not stats:
                doc["top"] = [
                    [[int(c), v] for c, v in zip(row, _rounded(p[i, row]), strict=True)]
                    for i, row in enumerate(order[:k])
                ]
            if scores is not None:
                doc["ood_score"] = _rounded(np.asarray(scores)[:k])
            if flags is not None:
                doc["ood_flag"] = [bool(f) for f in np.asarray(flags)[:k]]
                doc["ood_flagged"] = int(np.count_nonzero(flags))
            return doc

        return OutputSummary(_bounded(build), confidence, ood_score, ood_flag)
    emb = outputs.get("embedding")
    if emb is None:
        return OutputSummary(encode_summary({"rows": None}), None, None, None)
    e = np.asarray(emb, dtype=np.float64)
    e = e.reshape(len(e), -1) if e.ndim else e.reshape(1, 1)

    def build_embedding(k: int, stats: bool) -> dict[str, Any]:
        head = e[:k]
        doc: dict[str, Any] = {
            "rows": len(e),
            "dim": int(e.shape[1]),
            "norm": _rounded(np.linalg.norm(head, axis=1)),
            "mean": _rounded(head.mean(axis=1)) if head.shape[1] else [],
            "std": _rounded(head.std(axis=1)) if head.shape[1] else [],
        }
        features = _projected(projection, e, k)
        if features is not None:
            doc["features"] = features
        return doc

    return OutputSummary(_bounded(build_embedding), None, None, None)


def _bounded(build: Callable[[int, bool], dict[str, Any]]) -> str:
    """The largest summary ``build(rows, stats)`` that encodes within MAX_SUMMARY_BYTES: fewer rows first,
    then statistics instead of values, then nothing but the row count."""
    k = MAX_ROWS
    doc: dict[str, Any] = {}
    for stats in (False, True):
        k = MAX_ROWS
        while k >= 1:
            doc = build(k, stats)
            text = encode_summary(doc)
            if len(text.encode("utf-8")) <= MAX_SUMMARY_BYTES:
                return text
            k //= 2
    return encode_summary({"rows": doc.get("rows"), "truncated": True})
