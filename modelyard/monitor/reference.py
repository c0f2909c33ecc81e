"""The monitor reference a version is registered with (``monitor_reference.json``): what served traffic is
compared with, read back as a typed, validated :class:`MonitorReference`.

Plain JSON (schema ``modelyard.monitor_reference/1``), built at registration from the fit part of the dataset
only (:mod:`modelyard.monitor.reference_build`), at most ``MAX_ROWS`` rows per part:

- ``inputs``: the input features in exactly the form the server logs them (:mod:`modelyard.monitor.summary`):
  a tabular input's values (``kind: values``), or an image's (or a wide input's) coordinates on ``k``
  principal components and its reconstruction error (``kind: projection``; the components were fitted on
  other fit items, and the server projects its inputs on the same ``mean`` and ``components``); absent for
  texts;
- ``predictions`` (classifiers): the predicted class, calibrated confidence (the version's temperature) and
  label of each item of the calibration split, as the log keeps them: the output drift reference and the
  labelled reference the accuracy estimate is recalibrated on;
- ``embeddings`` (embedders): the embedding's projection and the projected rows of fit items;
- ``ood``: the served OOD rule (score, threshold), the scores of the calibration items, and the offline flag
  rate with its number of items;
- ``accuracy``: the offline accuracy with its 95 % interval and number of items, from the version's evidence.

:func:`modelyard.monitor.reference_load.load_reference` reads one back, validated (DataError naming every problem
found).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from modelyard.monitor.summary import Projection

__all__ = [
    "FILE_NAME",
    "SCHEMA",
    "EmbeddingsReference",
    "InputReference",
    "MonitorReference",
    "OODReference",
    "OfflineAccuracy",
    "PredictionReference",
    "digest_of",
    "reference_to_dict",
    "write_reference",
]

SCHEMA = "modelyard.monitor_reference/1"
FILE_NAME = "monitor_reference.json"
MAX_ROWS = 2000


@dataclass(frozen=True, eq=False)
class InputReference:
    """Input features of fit items as the server logs them; ``input``: the logged input's name."""

    kind: Literal["values", "projection"]
    input: str
    feature_names: tuple[str, ...]
    rows: NDArray[np.float64]  # (n, d)
    projection: Projection | None
    fitted_on: str


@dataclass(frozen=True, eq=False)
class PredictionReference:
    """A classifier's logged figures on held-out labelled fit items (the calibration split)."""

    classes: tuple[str, ...]
    temperature: float
    predicted: NDArray[np.int64]
    confidence: NDArray[np.float64]
    labels: NDArray[np.int64] | None
    fitted_on: str
    # the same items' input features, as the input reference logs them (values or projected features), so the
    # accuracy estimate can weight their calibration error by the window's density ratio; None when not kept
    features: NDArray[np.float64] | None = None


@dataclass(frozen=True, eq=False)
class EmbeddingsReference:
    """An embedder's projection and the projected embeddings of fit items the projection was not fitted on."""

    projection: Projection
    rows: NDArray[np.float64]  # (n, k + 1)
    fitted_on: str


@dataclass(frozen=True, eq=False)
class OODReference:
    """The served OOD rule, the scores of the calibration items, and the offline flag rate over ``n_offline``
    items (``rate_source`` says which)."""

    score: str
    threshold: float
    scores: NDArray[np.float64]
    offline_rate: float
    n_offline: int
    rate_source: str


@dataclass(frozen=True)
class OfflineAccuracy:
    """The version's offline accuracy (its evidence), with its 95 % interval and number of test items."""

    accuracy: float
    interval: tuple[float, float] | None
    n: int | None


@dataclass(frozen=True, eq=False)
class MonitorReference:
    """What a version's served traffic is compared with (see the module docstring). ``digest``: the SHA-256
    of its canonical JSON, which keys the calibrated detectors' cache."""

    task: Literal["classification", "embedding"]
    modality: str
    candidate: str
    inputs: InputReference | None
    predictions: PredictionReference | None
    embeddings: EmbeddingsReference | None
    ood: OODReference | None
    accuracy: OfflineAccuracy | None
    notes: tuple[str, ...]
    digest: str = ""


# ---------------------------------------------------------------------------------------------- writing


def _floats(a: NDArray[Any]) -> list[Any]:
    return [float(v) for v in np.asarray(a, dtype=np.float64).ravel()]


def _projection_dict(p: Projection) -> dict[str, Any]:
    return {
        "source": p.source,
        "pool": p.pool,
        "mean": _floats(p.mean),
        "components": [_floats(row) for row in p.components],
    }


def reference_to_dict(ref: MonitorReference) -> dict[str, Any]:
    """The JSON document of ``ref`` (every number finite)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "task": ref.task,
        "modality": ref.modality,
        "candidate": ref.candidate,
        "notes": list(ref.notes),
        "inputs": None,
        "predictions": None,
        "embeddings": None,
        "ood": None,
        "accuracy": None,
    }
    if ref.inputs is not None:
        i = ref.inputs
        doc["inputs"] = {
            "kind": i.kind,
            "input": i.input,
            "feature_names": list(i.feature_names),
            "rows": [_floats(r) for r in i.rows],
            "projection": None if i.projection is None else _projection_dict(i.projection),
            "fitted_on": i.fitted_on,
        }
    if ref.predictions is not None:
        p = ref.predictions
        doc["predictions"] = {
            "classes": list(p.classes),
            "temperature": p.temperature,
            "predicted": [int(v) for v in p.predicted],
            "confidence": _floats(p.confidence),
            "labels": None if p.labels is None else [int(v) for v in p.labels],
            "fitted_on": p.fitted_on,
            "features": None if p.features is None else [_floats(r) for r in p.features],
        }
    if ref.embeddings is not None:
        e = ref.embeddings
        doc["embeddings"] = {
            "projection": _projection_dict(e.projection),
            "rows": [_floats(r) for r in e.rows],
            "fitted_on": e.fitted_on,
        }
    if ref.ood is not None:
        o = ref.ood
        doc["ood"] = {
            "score": o.score,
            "threshold": o.threshold,
            "scores": _floats(o.scores),
            "offline_rate": o.offline_rate,
            "n_offline": o.n_offline,
            "rate_source": o.rate_source,
        }
    if ref.accuracy is not None:
        a = ref.accuracy
        doc["accuracy"] = {
            "accuracy": a.accuracy,
            "interval": None if a.interval is None else list(a.interval),
            "n": a.n,
        }
    return doc


def _canonical(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False)


def write_reference(ref: MonitorReference, path: Path | str) -> Path:
    """Write ``ref`` as JSON to ``path`` (its folder is created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(_canonical(reference_to_dict(ref)), encoding="utf-8")
    return path


def digest_of(ref: MonitorReference) -> str:
    return hashlib.sha256(_canonical(reference_to_dict(ref)).encode("utf-8")).hexdigest()
