"""The monitor engine: a window of logged traffic against the version's reference, as the live checks'
Measurements and the alarms they raise.

:func:`watch` takes the last ``window`` logged requests of a model (one version, normally) and runs, against
the :class:`~modelyard.monitor.reference.MonitorReference` the version was registered with:

- input drift (``drift.inputs``): tabular values, or an image's principal components and reconstruction
  error, by the calibrated max-effect detector (:mod:`modelyard.monitor.drift`); an embedder's outputs the
  same way (``drift.embeddings``); beside them a joint MMD test (``drift.mmd_p``, shown only);
- output drift (``drift.outputs``): the predicted class and the confidence;
- the OOD flag rate against the offline rate (``drift.ood_rate``);
- accuracy estimated before labels (``accuracy.estimated``) against the offline accuracy and, where labels
  were posted, the realised accuracy (``accuracy.realised``) and the gap between the two
  (``accuracy.estimate_gap``, shown only).

**False alarms.** ``alpha`` is the false-alarm rate of a whole window: it is split evenly (Bonferroni) among
the signals that can alarm on it, so a window of unchanged traffic raises an alarm with probability at most
``alpha`` when each detector holds its level. A drift detector can alarm only when its reference has at least
``REFERENCE_PER_WINDOW`` times the window's rows (below that, one reference's false-alarm rate strays from the
level asked for); it is then shown, with the reason. The calibrated thresholds are drawn once per reference
and window size and cached (:func:`modelyard.monitor.signals.detectors`).

:func:`history` cuts the log into consecutive windows of ``window`` requests, oldest first, for the same checks
over time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from modelyard.errors import ConfigError
from modelyard.monitor.drift import DEFAULT_RESAMPLES
from modelyard.monitor.drift import FeatureShift as FeatureShift
from modelyard.monitor.drift_inputs import check_alpha, check_int
from modelyard.monitor.log import Labelled, Prediction, PredictionLog
from modelyard.monitor.reference import MonitorReference
from modelyard.monitor.signals import (
    MIN_ROWS,
    REFERENCE_PER_WINDOW,
    Signal,
    detectors,
    drift_signal,
    estimate_signal,
    mmd_signal,
    ood_signal,
    realised_signals,
)
from modelyard.monitor.window import WindowRows

__all__ = ["DEFAULT_WINDOW", "Alarm", "MonitorStatus", "Signal", "history", "status_of_window", "watch"]

DEFAULT_WINDOW = 200


@dataclass(frozen=True)
class Alarm:
    """A signal that crossed its threshold: the live check, one line saying what and by how much, and the
    features that moved (in the data's units, largest first)."""

    check: str
    message: str
    moved: tuple[FeatureShift, ...] = ()


@dataclass(frozen=True)
class MonitorStatus:
    """One window of one model (version) against its reference: every live check computed on it, and the
    alarms. ``requests``: logged requests in the window (at most ``window``); ``rows``: their items."""

    model: str
    version: str | None
    window: int
    requests: int
    rows: int
    first_unix_s: float | None
    last_unix_s: float | None
    alpha: float
    signals: tuple[Signal, ...]
    alarms: tuple[Alarm, ...]
    notes: tuple[str, ...] = ()

    @property
    def alarm(self) -> bool:
        return bool(self.alarms)

    def signal(self, check: str) -> Signal | None:
        return next((s for s in self.signals if s.name == check), None)

    @property
    def label(self) -> str:
        return self.model if self.version is None else f"{self.model}:{self.version}"

    def summary(self) -> str:
        """One line: the verdict and, on an alarm, what moved."""
        head = f"{self.label}: {self.requests} requests"
        if not self.alarms:
            return f"{head}, no alarm (false-alarm rate {self.alpha:g} per window)"
        return f"{head}, ALARM: " + "; ".join(a.message for a in self.alarms)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "version": self.version,
            "window": self.window,
            "requests": self.requests,
            "rows": self.rows,
            "first_unix_s": self.first_unix_s,
            "last_unix_s": self.last_unix_s,
            "alpha": self.alpha,
            "measurements": {s.name: s.measurement.to_dict() for s in self.signals},
            "alarms": [
                {"check": a.check, "message": a.message, "moved": [f.name for f in a.moved]}
                for a in self.alarms
            ],
            "notes": list(self.notes),
        }


def _drift_plan(name: str, rows: Any, reference_rows: int) -> tuple[bool, bool, str]:
    """(run it, may alarm, why not) for a drift detector on ``rows``."""
    if rows is None or rows.shape[0] < MIN_ROWS:
        n = 0 if rows is None else rows.shape[0]
        return False, False, f"{name}: {n} rows in the window, need {MIN_ROWS}"
    if reference_rows < REFERENCE_PER_WINDOW * rows.shape[0]:
        return (
            True,
            False,
            (
                f"the reference has {reference_rows} rows, fewer than {REFERENCE_PER_WINDOW}x the window's "
                f"{rows.shape[0]}: shown, cannot alarm (use a window of at most {reference_rows // REFERENCE_PER_WINDOW} rows)"
            ),
        )
    return True, True, ""


def status_of_window(
    predictions: Sequence[Prediction],
    labelled: Sequence[Labelled],
    reference: MonitorReference,
    *,
    model: str,
    version: str | None = None,
    window: int = DEFAULT_WINDOW,
    alpha: float = 0.05,
) -> MonitorStatus:
    """The live checks of the logged ``predictions`` (with the ``labelled`` ones among them) against
    ``reference``; :func:`watch` and :func:`history` read the log and call this."""
    a = check_alpha(alpha)
    rows = WindowRows.of(predictions, labelled, reference)
    det = detectors(reference)
    notes = list(reference.notes) + ([] if predictions else ["no logged requests in the window"])
    plans: dict[str, tuple[bool, bool, str]] = {}
    for name, detector, data in (
        ("drift.inputs", det.inputs, rows.inputs),
        ("drift.embeddings", det.embeddings, rows.embeddings),
        ("drift.outputs", det.outputs, rows.confidence[:, None] if rows.confidence.size else None),
    ):
        if detector is not None:
            plans[name] = _drift_plan(name, data, detector.n_rows)
    if reference.ood is not None and rows.ood_rows:
        plans["drift.ood_rate"] = (True, True, "")
    if reference.task == "classification" and rows.confidence.size:
        plans["accuracy.estimated"] = (True, reference.accuracy is not None, "no offline accuracy")
    if reference.task == "classification" and rows.labelled_correct.size:
        plans["accuracy.realised"] = (True, reference.accuracy is not None, "no offline accuracy")
    m = sum(1 for run, may, _ in plans.values() if run and may)
    level = a / max(m, 1)
    if level * (DEFAULT_RESAMPLES + 1) < 1:
        raise ConfigError(
            f"alpha={a:g} shared among {m} signals is {level:.2g} per signal, below what {DEFAULT_RESAMPLES} "
            f"null draws resolve; use alpha >= {m / (DEFAULT_RESAMPLES + 1):.2g}"
        )
    signals: list[Signal] = []
    for name, (run, may, why) in plans.items():
        if not run or not may:
            notes.append(f"{name}: {why}" if run else why)
        if not run:
            continue
        lvl = level if may else None
        if name == "drift.inputs" and det.inputs is not None and rows.inputs is not None:
            signals.append(drift_signal(name, det.inputs, rows.inputs, lvl, a, why))
            signals.append(mmd_signal(det, "inputs", rows.inputs, a))
        elif name == "drift.embeddings" and det.embeddings is not None and rows.embeddings is not None:
            signals.append(drift_signal(name, det.embeddings, rows.embeddings, lvl, a, why))
            signals.append(mmd_signal(det, "embeddings", rows.embeddings, a))
        elif name == "drift.outputs" and det.outputs is not None:
            outputs = _outputs(rows)
            signals.append(drift_signal(name, det.outputs, outputs, lvl, a, why))
        elif name == "drift.ood_rate" and reference.ood is not None:
            signals.append(ood_signal(rows, reference.ood, level))
        elif name == "accuracy.estimated":
            signals.append(estimate_signal(rows, reference, det, lvl))
        elif name == "accuracy.realised":
            signals.extend(realised_signals(rows, reference, det, lvl))
    alarms = tuple(Alarm(s.name, s.summary, s.moved) for s in signals if s.alarm)
    times = [p.at_unix_s for p in predictions]
    return MonitorStatus(
        model=model,
        version=version,
        window=window,
        requests=len(predictions),
        rows=sum(p.rows for p in predictions),
        first_unix_s=min(times) if times else None,
        last_unix_s=max(times) if times else None,
        alpha=a,
        signals=tuple(signals),
        alarms=alarms,
        notes=tuple(notes),
    )


def _outputs(rows: WindowRows) -> Any:
    return np.column_stack([rows.predicted.astype(np.float64), rows.confidence])


def _labelled_in(
    log: PredictionLog, model: str, version: str | None, preds: Sequence[Prediction]
) -> list[Labelled]:
    if not preds:
        return []
    ids = {p.request_id for p in preds}
    times = [p.at_unix_s for p in preds]  # capture times: not in log order when requests overlap
    lo, hi = min(times), max(times)
    found = log.labelled(model, version=version, since=lo, until=math.nextafter(hi, math.inf))
    return [item for item in found if item.prediction.request_id in ids]


def watch(
    log: PredictionLog,
    reference: MonitorReference,
    *,
    model: str,
    version: str | int | None = None,
    window: int = DEFAULT_WINDOW,
    alpha: float = 0.05,
) -> MonitorStatus:
    """The live checks of the last ``window`` logged requests of ``model`` (of ``version`` when given; the
    reference is that version's) at a false-alarm rate of ``alpha`` per window (see the module docstring)."""
    n = check_int(window, "window", minimum=1)
    v = None if version is None else str(version)
    preds = log.window(model, version=v, last_n=n)
    return status_of_window(
        preds, _labelled_in(log, model, v, preds), reference, model=model, version=v, window=n, alpha=alpha
    )


def history(
    log: PredictionLog,
    reference: MonitorReference,
    *,
    model: str,
    version: str | int | None = None,
    window: int = DEFAULT_WINDOW,
    alpha: float = 0.05,
    max_windows: int | None = None,
) -> list[MonitorStatus]:
    """The live checks of consecutive, disjoint windows of ``window`` requests, oldest first; the newest
    window ends with the last logged request, and an incomplete oldest one is left out. ``max_windows``
    keeps the most recent ones."""
    n = check_int(window, "window", minimum=1)
    v = None if version is None else str(version)
    last_n = None if max_windows is None else n * check_int(max_windows, "max_windows", minimum=1)
    preds = log.window(model, version=v, last_n=last_n)
    labelled = {item.prediction.request_id: item for item in _labelled_in(log, model, v, preds)}
    out = []
    for end in range(len(preds), n - 1, -n):
        chunk = preds[end - n : end]
        marked = [labelled[p.request_id] for p in chunk if p.request_id in labelled]
        out.append(status_of_window(chunk, marked, reference, model=model, version=v, window=n, alpha=alpha))
    return out[::-1]
