"""The rollout's input drift signal: the inputs of its first requests against the challenger's own reference,
looked at once.

A challenger registered with a monitor reference (``monitor_reference.json`` with an ``inputs`` part) knows the
inputs it was chosen on. Once ``min_requests`` of the rollout's requests have logged inputs (their rows in the
prediction log's ``predictions``, joined by request id: the champion's row of a shadowed request, the
challenger's of a canary one), :func:`look` runs the calibrated max-effect drift check of
:mod:`modelyard.monitor.drift` (:func:`modelyard.monitor.signals.drift_signal`) on those rows, once, at the
signal's share of the rollout's alpha. One look needs no correction for repeated looks; it is taken again
only to rebuild the same result (same rows, seeded null draws) after a restart that lost it, and the server
stores it with the rollout's statistics so that even that is rare.

Which logged rows are in the reference's terms (:func:`plan`): a tabular reference (``kind: values``) reads the
logged values of its input, whoever logged them; a projected one (images, wide inputs) reads the logged
principal-component features, which are those of the version that logged them: the challenger's own, or the
champion's when its projection is the same. Otherwise the signal is left out, with the reason.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from modelyard.errors import DataError
from modelyard.monitor.drift import DEFAULT_RESAMPLES
from modelyard.monitor.reference import FILE_NAME, InputReference, MonitorReference
from modelyard.monitor.reference_load import load_reference
from modelyard.monitor.signals import MIN_ROWS, REFERENCE_PER_WINDOW, detectors, drift_signal
from modelyard.monitor.summary import Projection
from modelyard.rollout.observations import logged_inputs

__all__ = ["DETAIL_KEYS", "DriftPlan", "look", "plan", "restore"]

log = logging.getLogger(__name__)

# the figures a look leaves in the rollout's statistics (and a restarted server reads back)
DETAIL_KEYS = (
    "statistic",
    "threshold",
    "p_value",
    "level",
    "window_rows",
    "window_requests",
    "reference_rows",
    "features",
    "moved",
    "test",
)


@dataclass(frozen=True)
class DriftPlan:
    """How a rollout's drift look reads the log: the challenger's reference, the versions whose logged rows
    are in its terms, and the most window rows it can be compared on at its calibrated level."""

    reference: MonitorReference
    inputs: InputReference
    versions: frozenset[str]
    max_rows: int


def _same(a: Projection | None, b: Projection | None) -> bool:
    return (
        a is not None
        and b is not None
        and a.source == b.source
        and a.pool == b.pool
        and a.mean.shape == b.mean.shape
        and a.components.shape == b.components.shape
        and bool(np.array_equal(a.mean, b.mean))
        and bool(np.array_equal(a.components, b.components))
    )


def plan(
    folder: Path | None,
    *,
    mode: str,
    champion_version: int,
    challenger_version: int,
    champion_projection: Projection | None,
    alpha_share: float,
) -> tuple[DriftPlan | None, str]:
    """The drift look of a rollout whose challenger's files are in ``folder``, or (None, why it is left out).
    ``alpha_share``: the level the look would be taken at."""
    path = None if folder is None else Path(folder) / FILE_NAME
    if path is None or not path.is_file():
        return None, "the challenger has no monitor reference"
    try:
        ref = load_reference(path)
    except DataError as exc:
        return None, f"the challenger's monitor reference does not load ({exc})"
    inputs = ref.inputs
    if inputs is None:
        return None, "the challenger's monitor reference has no inputs"
    max_rows = inputs.rows.shape[0] // REFERENCE_PER_WINDOW
    if max_rows < MIN_ROWS:
        return None, (
            f"the challenger's input reference has {inputs.rows.shape[0]} rows, too few for a window of "
            f"{MIN_ROWS} rows at its calibrated level"
        )
    if alpha_share * (DEFAULT_RESAMPLES + 1) < 1:
        return None, f"the drift signal's alpha share {alpha_share:.2g} is below what the drift test resolves"
    versions = {str(challenger_version)}
    if inputs.kind == "values" or (mode == "shadow" and _same(champion_projection, inputs.projection)):
        versions.add(str(champion_version))
    elif mode == "shadow":
        return None, "the champion logs its inputs' features on another projection than the challenger's"
    return DriftPlan(ref, inputs, frozenset(versions), max_rows), ""


def _rows(doc: dict[str, Any], inputs: InputReference) -> list[list[float]] | None:
    """The reference-comparable rows of one logged inputs summary, or None."""
    width = len(inputs.feature_names)
    if inputs.kind == "values":
        entry = (doc.get("inputs") or {}).get(inputs.input)
        got = entry.get("values") if isinstance(entry, dict) and entry.get("kind") == "values" else None
    else:
        got = doc.get("features")
    if not isinstance(got, list) or not got:
        return None
    rows: list[list[float]] = []
    for row in got:
        flat = np.asarray(row, dtype=np.float64).ravel() if isinstance(row, list) else None
        if flat is None or flat.size != width or not np.isfinite(flat).all():
            return None
        rows.append(flat.tolist())
    return rows


def window(
    path: Path, rollout_id: int, p: DriftPlan, *, requests: int
) -> tuple[NDArray[np.float64], int] | None:
    """The rows of the rollout's first ``requests`` requests with usable logged inputs (at most
    ``p.max_rows``) and how many requests they came from; None while fewer have been logged."""
    rows: list[list[float]] = []
    n = 0
    with contextlib.closing(logged_inputs(path, rollout_id)) as found:
        for version, doc in found:
            if version not in p.versions:
                continue
            got = _rows(doc, p.inputs)
            if got is None:
                continue
            n += 1
            rows.extend(got[: max(0, p.max_rows - len(rows))])
            if n >= requests:
                break
    if n < requests:
        return None
    return np.asarray(rows, dtype=np.float64), n


def look(path: Path, rollout_id: int, p: DriftPlan, *, requests: int, alpha: float) -> dict[str, Any] | None:
    """The one look, once ``requests`` of the rollout's requests have logged inputs (None before): ``alarm``,
    ``n`` (window rows) and the figures of :data:`DETAIL_KEYS`. Slow (a calibration): run it off the event
    loop."""
    got = window(path, rollout_id, p, requests=requests)
    if got is None:
        return None
    rows, n_requests = got
    detector = detectors(p.reference).inputs
    if detector is None:
        raise DataError("the challenger's input reference is too small for a drift check")
    signal = drift_signal("drift.inputs", detector, rows, alpha, alpha)
    d = signal.measurement.details
    ranked = ", ".join(f"{f['name']} {f['effect']:.3g}" for f in d.get("features", [])[:5])
    out: dict[str, Any] = {
        "alarm": bool(signal.alarm),
        "n": int(rows.shape[0]),
        "statistic": signal.measurement.value,
        "threshold": float(d["threshold"]),
        "p_value": float(d["p_value"]),
        "level": float(alpha),
        "window_rows": int(rows.shape[0]),
        "window_requests": n_requests,
        "reference_rows": int(d["reference_rows"]),
        "features": f"{len(p.inputs.feature_names)} compared; largest effects: {ranked}",
        "test": str(d["method"]),
    }
    if signal.moved:
        out["moved"] = "; ".join(f"{f.name} {f.effect:.3g} ({f.detail})" for f in signal.moved[:5])
    return out


def restore(statistics: list[dict[str, Any]]) -> dict[str, Any] | None:
    """A look stored with a rollout's statistics (``signal_statistics``), as :func:`look` returned it; None
    when it was not taken."""
    for entry in statistics:
        if (
            isinstance(entry, dict)
            and entry.get("name") == "drift"
            and entry.get("decision") in ("worse", "non-inferior")
        ):
            out = {k: entry[k] for k in DETAIL_KEYS if k in entry}
            out.update(alarm=entry["decision"] == "worse", n=int(entry.get("n") or 0))
            return out
    return None
