"""Building a version's monitor reference at registration, from the fit part of its dataset only.

Nothing here sees a test item: input features come from the train and calibration splits, predictions from
the calibration split (``Dataset.calibration_split``, the items the temperature and the OOD threshold were
fitted on), embeddings from fit items. The offline accuracy and OOD flag rate are read from the version's
evidence, which is where the figures measured on the test items live.

- inputs: a tabular input of at most ``summary.MAX_VALUES_PER_ROW`` values keeps its values; an image (or a
  wider input) is projected on ``n_components`` principal components fitted on a third of the fit items (at
  most ``MAX_FIT_ROWS``), and the reference rows are the other fit items (at most ``MAX_ROWS``), so the
  reference does not share rows with what the components were fitted on (fitted components overstate the
  variance of their own rows along them);
- predictions: ``serve.outputs.classifier_outputs``, the function the server answers with, on the
  calibration items (the version's temperature and OOD rule), logged as the server logs them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset
from modelyard.errors import DataError
from modelyard.monitor.drift import MIN_REFERENCE_ROWS
from modelyard.monitor.drift_embed import principal_components
from modelyard.monitor.reference import (
    MAX_ROWS,
    EmbeddingsReference,
    InputReference,
    MonitorReference,
    OfflineAccuracy,
    OODReference,
    PredictionReference,
    digest_of,
)
from modelyard.monitor.summary import (
    MAX_VALUES_PER_ROW,
    Projection,
    logged_predictions,
    logged_rows,
    pooled,
)
from modelyard.runtime.base import Runner
from modelyard.runtime.preprocess import Preprocessor, predict
from modelyard.serve.outputs import OOD_SCORES, classifier_outputs

__all__ = ["DEFAULT_COMPONENTS", "build_reference", "fit_projection"]

DEFAULT_COMPONENTS = 8
MAX_FIT_ROWS = 1000  # rows the principal components are fitted on, at most


def fit_projection(source: str, arr: Any, n_components: int) -> Projection:
    """A :class:`~modelyard.monitor.summary.Projection` of ``arr``'s rows on their top principal components
    (at most ``n_components``, fewer when the rows or their values are fewer)."""
    x = np.asarray(arr)
    pool = Projection.pool_for(tuple(int(d) for d in x.shape[1:]))
    rows = pooled(x, pool)
    k = max(1, min(int(n_components), rows.shape[1], rows.shape[0] - 1))
    mean = rows.mean(axis=0)
    components, _ = principal_components(rows - mean, k)
    return Projection(source, pool, mean, np.asarray(components, dtype=np.float64))


def _take(items: Any, idx: NDArray[np.intp]) -> Any:
    return items[idx] if isinstance(items, np.ndarray) else [items[int(i)] for i in idx]


class _FitItems:
    """The train and calibration items as one pool of fit items, gathered by index without copying the
    whole pool (``fit_inputs()`` alone when the two parts do not stack)."""

    def __init__(self, dataset: Dataset) -> None:
        parts = [p for p in (dataset.x_train, dataset.x_cal) if p is not None and len(p)]
        arrays = all(isinstance(p, np.ndarray) for p in parts)
        stack = (arrays and len({p.shape[1:] for p in parts}) == 1) or all(isinstance(p, list) for p in parts)
        self.parts = parts if parts and stack else [dataset.fit_inputs()]
        self.array = all(isinstance(p, np.ndarray) for p in self.parts)
        self.bounds = np.cumsum([0, *(len(p) for p in self.parts)])

    def __len__(self) -> int:
        return int(self.bounds[-1])

    def take(self, idx: NDArray[np.intp]) -> Any:
        chosen = np.sort(np.asarray(idx))
        pieces = []
        for part, lo, hi in zip(self.parts, self.bounds[:-1], self.bounds[1:], strict=True):
            local = chosen[(chosen >= lo) & (chosen < hi)] - lo
            pieces.append(_take(part, local))
        if self.array:
            return np.concatenate(pieces)
        return [item for piece in pieces for item in piece]


def _split(n: int, k: int, rng: np.random.Generator) -> tuple[NDArray[np.intp], NDArray[np.intp]] | None:
    """Rows to fit the components on and rows to keep as the reference (disjoint), or None when too few."""
    n_fit = min(max(n // 3, 2 * k + 2), MAX_FIT_ROWS)
    if n - n_fit < MIN_REFERENCE_ROWS:
        return None
    order = rng.permutation(n)
    return order[:n_fit], order[n_fit : n_fit + MAX_ROWS]


def _input_reference(
    pre: Preprocessor, dataset: Dataset, k: int, rng: np.random.Generator, notes: list[str]
) -> InputReference | None:
    items = _FitItems(dataset)
    if not items.array or len(items) < MIN_REFERENCE_ROWS:
        notes.append("no input features: the fit items are not a numeric array of at least 20 rows")
        return None
    feeds = pre(items.take(np.arange(2)))
    if len(feeds) != 1:
        notes.append(f"no input features: the model takes {len(feeds)} inputs; the reference covers one")
        return None
    name = next(iter(feeds))
    width = int(np.prod(feeds[name].shape[1:]))
    split = "fit items (train and calibration splits)"
    if dataset.modality == "tabular" and width <= MAX_VALUES_PER_ROW:
        idx = rng.permutation(len(items))[:MAX_ROWS]
        rows = logged_rows(pre(items.take(idx))[name])
        names = tuple(f"{name}[{j}]" for j in range(rows.shape[1]))
        return InputReference("values", name, names, rows, None, f"{len(idx)} {split}, values as logged")
    parts = _split(len(items), k, rng)
    if parts is None:
        notes.append(
            f"no input features: {len(items)} fit items are too few to fit components and keep a reference"
        )
        return None
    fit, keep = parts
    projection = fit_projection(name, pre(items.take(fit))[name], k)
    rows = projection.logged(pre(items.take(keep))[name])
    fitted_on = (
        f"{len(keep)} {split}, projected on {len(projection.names) - 1} principal components fitted on "
        f"{len(fit)} other fit items"
    )
    return InputReference("projection", name, projection.names, rows, projection, fitted_on)


def _embeddings(
    runner: Runner, pre: Preprocessor, dataset: Dataset, k: int, rng: np.random.Generator, notes: list[str]
) -> EmbeddingsReference | None:
    items = _FitItems(dataset)
    parts = _split(len(items), k, rng)
    if parts is None:
        notes.append(f"no embedding reference: {len(items)} fit items are too few")
        return None
    fit, keep = parts
    projection = fit_projection("embedding", predict(runner, pre, items.take(fit)), k)
    rows = projection.logged(predict(runner, pre, items.take(keep)))
    fitted_on = (
        f"embeddings of {len(keep)} fit items, projected on {len(projection.names) - 1} principal components "
        f"fitted on the embeddings of {len(fit)} other fit items"
    )
    return EmbeddingsReference(projection, rows, fitted_on)


def _get(m: Any, key: str) -> Any:
    return m.get(key) if isinstance(m, Mapping) else getattr(m, key, None)


def _offline_accuracy(measurements: Mapping[str, Any]) -> OfflineAccuracy | None:
    m = measurements.get("quality.accuracy")
    value = None if m is None else _get(m, "value")
    if not isinstance(value, int | float) or not math.isfinite(value):
        return None
    iv = _get(m, "interval")
    n = (_get(m, "details") or {}).get("n")
    interval = (float(iv[0]), float(iv[1])) if iv and None not in iv else None
    return OfflineAccuracy(float(value), interval, int(n) if isinstance(n, int) else None)


def _usable_rule(serving: Mapping[str, Any]) -> dict[str, Any] | None:
    rule = serving.get("ood")
    if not isinstance(rule, Mapping) or rule.get("score") not in OOD_SCORES:
        return None
    threshold = rule.get("threshold")
    ok = isinstance(threshold, int | float) and not isinstance(threshold, bool) and math.isfinite(threshold)
    return dict(rule) if ok else None


def _ood(
    rule: Mapping[str, Any], scores: NDArray[np.float64], measurements: Mapping[str, Any], how: str
) -> OODReference:
    """The OOD reference: the offline flag rate from the evidence (the test items, at the serving threshold)
    when recorded there, else the calibration items' own rate (biased low: the threshold was fitted there)."""
    m = measurements.get("ood.fpr95")
    details = (_get(m, "details") or {}) if m is not None else {}
    served = details.get("at_serving_threshold") or {}
    rate, n = served.get("id_flagged"), details.get("n_id")
    threshold = float(rule["threshold"])
    if (
        isinstance(rate, int | float)
        and isinstance(n, int)
        and n > 0
        and served.get("threshold") == threshold
    ):
        source = f"the evidence: ID test items flagged at the serving threshold ({n} items)"
        return OODReference(str(rule["score"]), threshold, scores, float(rate), n, source)
    flagged = float(np.mean(scores > threshold)) if scores.size else 0.0
    source = f"the calibration items ({how}), where the threshold was fitted: biased low"
    return OODReference(str(rule["score"]), threshold, scores, flagged, max(int(scores.size), 1), source)


def _features_as_logged(
    inputs: InputReference | None, pre: Preprocessor, items: Any
) -> NDArray[np.float64] | None:
    """``items``' input features as the server logs them for ``inputs`` (values or projected features)."""
    if inputs is None:
        return None
    try:
        arr = pre(items)[inputs.input]
        return logged_rows(arr) if inputs.projection is None else inputs.projection.logged(arr)
    except (KeyError, ValueError, DataError):
        return None


def _classes(runner: Runner, candidate: Candidate, k: int) -> tuple[str, ...]:
    labels = runner.spec.labels or candidate.spec.labels
    return tuple(labels) if labels and len(labels) == k else tuple(str(i) for i in range(k))


def build_reference(
    candidate: Candidate,
    dataset: Dataset,
    *,
    serving: Mapping[str, Any] | None = None,
    measurements: Mapping[str, Any] | None = None,
    n_components: int = DEFAULT_COMPONENTS,
    threads: int | None = None,
    seed: int = 0,
) -> MonitorReference:
    """The monitor reference of ``candidate`` (see the module docstring). ``serving``: its serving rules
    (``temperature``, ``ood``); ``measurements``: its evidence (offline accuracy, OOD flag rate)."""
    serving, measurements = serving or {}, measurements or {}
    rng = np.random.default_rng(seed)
    notes: list[str] = []
    runner = candidate.load(threads=threads)
    pre = candidate.preprocessor()
    task = candidate.spec.task
    inputs = None
    if dataset.modality != "text":
        inputs = _input_reference(pre, dataset, n_components, rng, notes)
    predictions = embeddings = ood = None
    if task == "classification":
        t = serving.get("temperature")
        temperature = float(t) if isinstance(t, int | float) and math.isfinite(t) and t > 0 else 1.0
        cal = dataset.calibration_split()
        if cal is None:
            notes.append(
                "no calibration items: no output reference, and the accuracy estimate is not recalibrated"
            )
        else:
            x, y, how = cal
            idx = np.sort(rng.permutation(len(x))[:MAX_ROWS])
            rule = _usable_rule(serving)
            logits = predict(runner, pre, _take(x, idx))
            outputs = classifier_outputs(logits, temperature=temperature, ood_rule=rule)
            predicted, confidence = logged_predictions(outputs["probabilities"])
            labels = None if y is None else np.asarray(y, dtype=np.int64)[idx]
            k = int(logits.shape[1])
            fitted_on = f"{len(idx)} calibration items ({how}), temperature {temperature:.4g}"
            predictions = PredictionReference(
                _classes(runner, candidate, k),
                temperature,
                predicted,
                confidence,
                labels,
                fitted_on,
                _features_as_logged(inputs, pre, _take(x, idx)),
            )
            if rule is not None:
                scores = np.asarray(outputs["ood_score"], dtype=np.float64)
                ood = _ood(rule, scores, measurements, how)
    else:
        embeddings = _embeddings(runner, pre, dataset, n_components, rng, notes)
    ref = MonitorReference(
        task=task,
        modality=dataset.modality,
        candidate=candidate.name,
        inputs=inputs,
        predictions=predictions,
        embeddings=embeddings,
        ood=ood,
        accuracy=_offline_accuracy(measurements) if task == "classification" else None,
        notes=tuple(notes),
    )
    return replace(ref, digest=digest_of(ref))
