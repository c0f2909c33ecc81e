"""Reading a ``monitor_reference.json`` back: :func:`load_reference` gives a typed, validated
:class:`~modelyard.monitor.reference.MonitorReference`, or a DataError naming every problem found."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.errors import DataError
from modelyard.monitor.reference import (
    FILE_NAME,
    SCHEMA,
    EmbeddingsReference,
    InputReference,
    MonitorReference,
    OfflineAccuracy,
    OODReference,
    PredictionReference,
    digest_of,
)
from modelyard.monitor.summary import Projection

__all__ = ["load_reference", "reference_from_dict", "served_projections"]


class _Reader:
    """Reads parts of a reference document, gathering every problem instead of stopping at the first."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.problems: list[str] = []

    def bad(self, what: str) -> None:
        self.problems.append(what)

    def get(self, doc: Any, key: str, kinds: type | tuple[type, ...], *, optional: bool = False) -> Any:
        value = doc.get(key) if isinstance(doc, Mapping) else None
        if value is None and optional:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in _tuple(kinds)):
            self.bad(f"{key!r} must be {_kind_names(kinds)}, got {type(value).__name__}")
            return None
        return value

    def number(self, doc: Any, key: str, *, optional: bool = False, lo: float = -math.inf) -> float | None:
        value = self.get(doc, key, (int, float), optional=optional)
        if value is None:
            return None
        if not math.isfinite(float(value)) or float(value) < lo:
            self.bad(f"{key!r} must be a finite number >= {lo:g}, got {value!r}")
            return None
        return float(value)

    def matrix(self, doc: Any, key: str, *, columns: int | None = None) -> NDArray[np.float64] | None:
        raw = self.get(doc, key, list)
        if raw is None:
            return None
        try:
            arr = np.asarray(raw, dtype=np.float64)
        except (TypeError, ValueError):
            self.bad(f"{key!r} must be a list of rows of numbers")
            return None
        if arr.ndim != 2 or (columns is not None and arr.shape[1] != columns) or not np.isfinite(arr).all():
            want = "" if columns is None else f" of {columns} columns"
            self.bad(f"{key!r} must be rows{want} of finite numbers, got shape {arr.shape}")
            return None
        return arr

    def vector(self, doc: Any, key: str, *, integer: bool = False, optional: bool = False) -> Any:
        raw = self.get(doc, key, list, optional=optional)
        if raw is None:
            return None
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in raw):
            self.bad(f"{key!r} must be a list of numbers")
            return None
        arr = np.asarray(raw, dtype=np.float64)
        if not np.isfinite(arr).all() or (integer and not np.all(arr == np.round(arr))):
            self.bad(f"{key!r} must hold finite {'integers' if integer else 'numbers'}")
            return None
        return arr.astype(np.int64) if integer else arr

    def projection(self, doc: Any) -> Projection | None:
        if not isinstance(doc, Mapping):
            self.bad("'projection' must be an object")
            return None
        mean = self.vector(doc, "mean")
        comps = self.matrix(doc, "components", columns=None if mean is None else mean.size)
        pool = self.get(doc, "pool", int)
        source = self.get(doc, "source", str)
        if mean is None or comps is None or pool is None or source is None:
            return None
        if pool < 1 or comps.shape[0] < 1:
            self.bad("a projection needs pool >= 1 and at least one component")
            return None
        return Projection(source, int(pool), mean, comps)


def _tuple(kinds: type | tuple[type, ...]) -> tuple[type, ...]:
    return kinds if isinstance(kinds, tuple) else (kinds,)


def _kind_names(kinds: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return " or ".join(names.get(k, k.__name__) for k in _tuple(kinds))


def _inputs(r: _Reader, doc: Any) -> InputReference | None:
    kind = r.get(doc, "kind", str)
    if kind not in ("values", "projection"):
        r.bad(f"inputs 'kind' must be values or projection, got {kind!r}")
        return None
    names = r.get(doc, "feature_names", list)
    rows = r.matrix(doc, "rows", columns=None if names is None else len(names))
    projection = r.projection(doc.get("projection")) if kind == "projection" else None
    name, fitted = r.get(doc, "input", str), r.get(doc, "fitted_on", str)
    if names is None or rows is None or name is None or fitted is None:
        return None
    if kind == "projection" and (projection is None or len(projection.names) != len(names)):
        r.bad("inputs of kind projection need a projection naming one feature per column")
        return None
    return InputReference(kind, name, tuple(str(n) for n in names), rows, projection, fitted)


def _predictions(r: _Reader, doc: Any) -> PredictionReference | None:
    classes = r.get(doc, "classes", list)
    temperature = r.number(doc, "temperature", lo=1e-12)
    predicted = r.vector(doc, "predicted", integer=True)
    confidence = r.vector(doc, "confidence")
    labels = r.vector(doc, "labels", integer=True, optional=True)
    fitted = r.get(doc, "fitted_on", str)
    if classes is None or temperature is None or predicted is None or confidence is None or fitted is None:
        return None
    k = len(classes)
    sizes = {predicted.size, confidence.size, *(() if labels is None else (labels.size,))}
    if len(sizes) != 1 or k < 2:
        r.bad("predictions need at least 2 classes and as many predicted, confidence and labels values")
        return None
    outside = [a for a in (predicted, labels) if a is not None and a.size and (a.min() < 0 or a.max() >= k)]
    if outside or (confidence.size and (confidence.min() < 0 or confidence.max() > 1)):
        r.bad(f"predicted classes and labels must lie in [0, {k}) and confidences in [0, 1]")
        return None
    features = None
    if isinstance(doc, Mapping) and doc.get("features") is not None:  # older references have none
        features = r.matrix(doc, "features")
        if features is not None and features.shape[0] != confidence.size:
            r.bad("predictions' features need one row per calibration item")
            return None
    return PredictionReference(
        tuple(str(c) for c in classes), temperature, predicted, confidence, labels, fitted, features
    )


def _embeddings(r: _Reader, doc: Any) -> EmbeddingsReference | None:
    projection = r.projection(doc.get("projection") if isinstance(doc, Mapping) else None)
    rows = r.matrix(doc, "rows", columns=None if projection is None else len(projection.names))
    fitted = r.get(doc, "fitted_on", str)
    if projection is None or rows is None or fitted is None:
        return None
    return EmbeddingsReference(projection, rows, fitted)


def _ood(r: _Reader, doc: Any) -> OODReference | None:
    score, source = r.get(doc, "score", str), r.get(doc, "rate_source", str)
    threshold = r.number(doc, "threshold")
    scores = r.vector(doc, "scores")
    rate = r.number(doc, "offline_rate", lo=0.0)
    n = r.get(doc, "n_offline", int)
    if any(v is None for v in (score, source, threshold, scores, rate, n)):
        return None
    if (rate is not None and rate > 1) or (n is not None and n < 1):
        r.bad(f"ood needs offline_rate in [0, 1] and n_offline >= 1, got {rate!r} and {n!r}")
        return None
    return OODReference(
        str(score), float(threshold or 0.0), scores, float(rate or 0.0), int(n or 0), str(source)
    )


def _accuracy(r: _Reader, doc: Any) -> OfflineAccuracy | None:
    acc = r.number(doc, "accuracy", lo=0.0)
    raw = r.get(doc, "interval", list, optional=True)
    n = r.get(doc, "n", int, optional=True)
    interval: tuple[float, float] | None = None
    if raw is not None:
        ok = len(raw) == 2 and all(isinstance(v, int | float) and math.isfinite(v) for v in raw)
        if not ok or acc is None or not 0.0 <= raw[0] <= acc <= raw[1] <= 1.0:
            r.bad(f"accuracy 'interval' must be [lo, hi] in [0, 1] around the accuracy, got {raw!r}")
            return None
        interval = (float(raw[0]), float(raw[1]))
    if acc is None or acc > 1:
        r.bad(f"'accuracy' must be a fraction in [0, 1], got {acc!r}")
        return None
    return OfflineAccuracy(acc, interval, None if n is None else int(n))


def reference_from_dict(doc: Any, *, where: str = "the monitor reference") -> MonitorReference:
    """A validated :class:`MonitorReference` from its JSON document; DataError lists every problem."""
    r = _Reader(where)
    if not isinstance(doc, Mapping):
        raise DataError(
            f"{where} must be a JSON object, got {type(doc).__name__}; rebuild it by re-registering"
        )
    if doc.get("schema") != SCHEMA:
        raise DataError(
            f"{where} has schema {doc.get('schema')!r}, expected {SCHEMA!r}; it was written by another "
            "release or is not a monitor reference"
        )
    task = doc.get("task")
    if task not in ("classification", "embedding"):
        r.bad(f"'task' must be classification or embedding, got {task!r}")
    parts: dict[str, Any] = {}
    for key, read in (
        ("inputs", _inputs),
        ("predictions", _predictions),
        ("embeddings", _embeddings),
        ("ood", _ood),
        ("accuracy", _accuracy),
    ):
        value = doc.get(key)
        before = len(r.problems)
        parts[key] = None if value is None else read(r, value)
        if len(r.problems) > before:
            r.problems[before:] = [f"{key}: {p}" for p in r.problems[before:]]
    notes = doc.get("notes")
    modality, candidate = r.get(doc, "modality", str), r.get(doc, "candidate", str)
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        r.bad("'notes' must be a list of strings")
    if r.problems:
        raise DataError(f"{where} is not a valid monitor reference: {'; '.join(r.problems)}")
    ref = MonitorReference(
        task="embedding" if task == "embedding" else "classification",
        modality=str(modality),
        candidate=str(candidate),
        notes=tuple(notes or ()),
        **parts,
    )
    return replace(ref, digest=digest_of(ref))


def load_reference(path: Path | str) -> MonitorReference:
    """Read and validate a ``monitor_reference.json``; DataError (what is wrong, how to fix) on a bad file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"no monitor reference at {path}; versions registered by this release carry one "
            f"({FILE_NAME}), re-register the model to get it"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read the monitor reference {path}: {exc}") from None
    return reference_from_dict(doc, where=str(path))


def served_projections(folder: Path | None) -> tuple[Projection | None, Projection | None, str | None]:
    """The projections a server logs features with (input, embedding), from the reference in a version's
    materialized ``folder``; (None, None, why) when there is none or it does not load."""
    path = None if folder is None else Path(folder) / FILE_NAME
    if path is None or not path.is_file():
        return None, None, None
    try:
        ref = load_reference(path)
    except DataError as exc:
        return None, None, f"its monitor reference is not used ({exc})"
    return (
        None if ref.inputs is None else ref.inputs.projection,
        None if ref.embeddings is None else ref.embeddings.projection,
        None,
    )
