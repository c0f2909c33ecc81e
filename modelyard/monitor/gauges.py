"""The monitor's latest window as gauges: a server evaluates :func:`~modelyard.monitor.watch.watch` for each
served version every so often and exposes, per live check, its value, its threshold and whether it alarms.

:class:`MonitorGauges` holds what the evaluation needs (the prediction log, the registry, the references,
loaded once per version) and writes to a :class:`GaugeSink` (the server's metrics; kept abstract so the
monitor package does not import the server). :meth:`MonitorGauges.refresh` blocks (it reads the log and runs
the checks): a server calls it off the event loop. A version that fails is logged and counted, never raised:
the other versions are still evaluated.

The threshold of a check is what it is compared with: the calibrated threshold of a drift check
(``drift.inputs``, ``drift.embeddings``, ``drift.outputs``), the offline rate of ``drift.ood_rate``, the
offline accuracy of ``accuracy.estimated`` and ``accuracy.realised``, the false-alarm rate of ``drift.mmd_p``;
none for ``accuracy.estimate_gap``.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from modelyard.errors import ModelyardError, first_line
from modelyard.monitor.log import PredictionLog
from modelyard.monitor.reference import MonitorReference
from modelyard.monitor.signals import Signal
from modelyard.monitor.status import reference_for
from modelyard.monitor.watch import DEFAULT_WINDOW, MonitorStatus, watch
from modelyard.registry import Registry

__all__ = ["GaugeSink", "GaugeValue", "MonitorGauges", "gauge_values"]

log = logging.getLogger(__name__)

_THRESHOLD_KEY = {
    "drift.inputs": "threshold",
    "drift.embeddings": "threshold",
    "drift.outputs": "threshold",
    "drift.ood_rate": "offline_rate",
    "accuracy.estimated": "offline_accuracy",
    "accuracy.realised": "offline_accuracy",
}


class GaugeSink(Protocol):
    """Where the gauges go (the server's :class:`~modelyard.serve.metrics.ServerMetrics`)."""

    def set_monitor_signal(
        self, model: str, version: str, check: str, value: float, threshold: float | None, alarm: bool
    ) -> None: ...

    def remove_monitor_signal(self, model: str, version: str, check: str) -> None: ...

    def monitor_evaluation_failed(self, model: str, version: str) -> None: ...


@dataclass(frozen=True)
class GaugeValue:
    """One live check of the latest window: its value, its threshold (None when it has none) and whether it
    alarms (False when it is shown only)."""

    check: str
    value: float
    threshold: float | None
    alarm: bool


def _number(v: object) -> float | None:
    if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
        return float(v)
    return None


def _threshold(s: Signal, alpha: float) -> float | None:
    if s.name == "drift.mmd_p":
        return alpha
    key = _THRESHOLD_KEY.get(s.name)
    return None if key is None else _number(s.measurement.details.get(key))


def gauge_values(status: MonitorStatus) -> list[GaugeValue]:
    """The gauges of one status: one per signal with a finite value."""
    out = []
    for s in status.signals:
        value = _number(s.measurement.value)
        if value is not None:
            out.append(GaugeValue(s.name, value, _threshold(s, status.alpha), bool(s.alarm)))
    return out


class MonitorGauges:
    """Evaluates the latest window of each served version and writes its gauges to ``sink``."""

    def __init__(
        self,
        sink: GaugeSink,
        registry: Registry,
        log_path: Path | str,
        *,
        window: int = DEFAULT_WINDOW,
        alpha: float = 0.05,
    ) -> None:
        self.sink = sink
        self.registry = registry
        self.log = PredictionLog(log_path)
        self.window = window
        self.alpha = alpha
        self._references: dict[tuple[str, str], MonitorReference | None] = {}
        self._shown: dict[tuple[str, str], set[str]] = {}
        self._lock = threading.Lock()  # one evaluation at a time

    def _reference(self, model: str, version: str) -> MonitorReference | None:
        key = (model, version)
        if key not in self._references:
            try:
                self._references[key] = reference_for(self.registry, model, int(version))
            except (ModelyardError, ValueError) as exc:
                log.info("%s:%s is not watched: %s", model, version, first_line(exc))
                self._references[key] = None
        return self._references[key]

    def refresh(self, served: Iterable[tuple[str, str]]) -> list[MonitorStatus]:
        """Watch the last ``window`` logged requests of each ``(model, version)`` that has a reference and set
        its gauges; returns the statuses computed. Blocking; never raises for one version's failure (it is
        logged and counted). The gauges of a version no longer in ``served`` are removed."""
        served = [(m, str(v)) for m, v in served]
        with self._lock:
            for model, version in set(self._shown) - set(served):
                self.forget(model, version)
            return self._refresh(served)

    def _refresh(self, served: list[tuple[str, str]]) -> list[MonitorStatus]:
        out = []
        for model, version in served:
            try:
                reference = self._reference(model, version)
                if reference is None or not self.log.path.exists():
                    continue
                status = watch(
                    self.log, reference, model=model, version=version, window=self.window, alpha=self.alpha
                )
            except Exception as exc:
                log.warning(
                    "monitor evaluation of %s:%s failed: %s",
                    model,
                    version,
                    first_line(exc),
                    exc_info=not isinstance(exc, ModelyardError),
                )
                self.sink.monitor_evaluation_failed(model, version)
                continue
            self.update(status)
            out.append(status)
        return out

    def update(self, status: MonitorStatus) -> None:
        """Write the gauges of ``status``; a check it no longer has is removed."""
        key = (status.model, str(status.version))
        values = gauge_values(status)
        for v in values:
            self.sink.set_monitor_signal(*key, v.check, v.value, v.threshold, v.alarm)
        now = {v.check for v in values}
        for gone in self._shown.get(key, set()) - now:
            self.sink.remove_monitor_signal(*key, gone)
        self._shown[key] = now

    def forget(self, model: str, version: str) -> None:
        """Remove the gauges of a version no longer served."""
        for check in self._shown.pop((model, version), set()):
            self.sink.remove_monitor_signal(model, version, check)
        self._references.pop((model, version), None)
