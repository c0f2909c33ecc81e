"""What the dashboard shows, as plain JSON-ready data (the page in ``serve/static/`` only renders it).

Each part reads the same typed sources as the CLI: the registry (``modelyard models``: versions, lineage,
the evidence and verdict each was chosen on, aliases, the audit log of alias moves), the prediction log
through :func:`~modelyard.monitor.watch.watch` and :func:`~modelyard.monitor.watch.history` (``modelyard
monitor status`` / ``report``: drift per feature, estimated and realised accuracy per window), the rollouts
(:func:`modelyard.rollout.rollout_status`) and the server's own Prometheus metrics (:class:`LiveMeter`: request
rate, latency and errors of the inference endpoints over the last seconds).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ModelyardError, first_line
from modelyard.evaluate.schema import VersionEvidence
from modelyard.monitor.log import PredictionLog
from modelyard.monitor.reference import MonitorReference
from modelyard.monitor.status import reference_for
from modelyard.monitor.watch import MonitorStatus, history, watch
from modelyard.registry import Registry
from modelyard.rollout import rollout_status
from modelyard.serve.metrics import ServerMetrics

__all__ = [
    "KEY_EVIDENCE",
    "LiveMeter",
    "MonitorView",
    "clean_json",
    "registry_view",
    "rollout_view",
]

# the measurements a version's row shows, in this order, when its evidence has them
KEY_EVIDENCE = (
    "quality.accuracy",
    "compare.accuracy_drop",
    "compare.flip_rate",
    "calibration.ece",
    "quality.cosine_mean",
    "quality.top10_agreement",
    "ood.auroc",
    "efficiency.latency_p50_ms",
    "efficiency.throughput_best",
    "efficiency.size_bytes",
    "efficiency.cost_usd_per_1m",
)
AUDIT_ROWS = 50  # the newest alias moves shown
ENDED_ROLLOUTS = 10  # the most recent ended rollouts shown
DRIFT_CHECKS = ("drift.inputs", "drift.embeddings", "drift.outputs")


def clean_json(value: Any) -> Any:
    """``value`` as strict JSON data: numpy scalars and arrays as Python numbers and lists, tuples as lists,
    non-finite floats as None, pydantic models dumped, anything else unknown as its string."""
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, np.generic):
        return clean_json(value.item())
    if isinstance(value, np.ndarray):
        return clean_json(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): clean_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean_json(v) for v in value]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return clean_json(dump(mode="json", by_alias=True))
    return str(value)


# ---------------------------------------------------------------------------------------------- registry


def _evidence_part(evidence: VersionEvidence | None) -> dict[str, Any]:
    if evidence is None:
        return {"run_id": None, "verdict": None, "gates": [], "evidence": []}
    m = evidence.measurements
    return {
        "run_id": evidence.run_id,
        "verdict": "pass" if evidence.verdict.passed else "fail",
        "gates": [
            {
                "gate": g.gate,
                "passed": g.passed,
                "value": g.value,
                "threshold": g.threshold,
                "reason": g.reason,
            }
            for g in evidence.verdict.gates
        ],
        "evidence": [
            {"name": k, "value": m[k].value, "unit": m[k].unit, "interval": m[k].interval}
            for k in KEY_EVIDENCE
            if k in m
        ],
    }


def _version_detail(registry: Registry, model: str, version: int) -> dict[str, Any]:
    info = registry.get_version(model, version)
    trust = info.get("trust")
    return {
        "passes": [
            {"pass": p.get("pass"), "config": p.get("config", {})}
            for p in info.get("passes", [])
            if isinstance(p, dict)
        ],
        "trust": None
        if not isinstance(trust, dict)
        else f"{trust.get('kind')} ({trust.get('flag')}, by {trust.get('by')})",
        **_evidence_part(info.get("evidence")),
    }


def registry_view(
    registry: Registry,
    served: Mapping[str, int],
    details: dict[tuple[str, int], dict[str, Any]],
) -> dict[str, Any]:
    """Every model with its versions (lineage, key evidence, verdict, aliases, whether served) and the newest
    alias moves. ``served``: model name -> version this server answers with. ``details`` caches what never
    changes once a version is registered (its passes, evidence and verdict), keyed by (model, version)."""
    models = []
    for m in registry.list_models():
        name = m["name"]
        versions = []
        for v in registry.list_versions(name):
            number = int(v["version"])
            key = (name, number)
            if key not in details:
                details[key] = _version_detail(registry, name, number)
            versions.append(
                {
                    "version": number,
                    "candidate": v["candidate"],
                    "parent_version": v["parent_version"],
                    "parent_candidate": v["parent_candidate"],
                    "created": v["created"],
                    "run_id": v["run_id"],
                    "size_bytes": v["size_bytes"],
                    "aliases": v["aliases"],
                    "served": served.get(name) == number,
                    **details[key],
                }
            )
        models.append(
            {
                "name": name,
                "aliases": m["aliases"],
                "champion": m["aliases"].get("champion"),
                "served_version": served.get(name),
                "versions": versions,
            }
        )
    moves = registry.audit_log()
    return {"models": models, "audit_log": moves[::-1][:AUDIT_ROWS], "audit_total": len(moves)}


# ---------------------------------------------------------------------------------------------- rollouts


def rollout_view(registry: Registry, *, ended: int = ENDED_ROLLOUTS) -> dict[str, Any]:
    """The running rollouts and the ``ended`` most recent ended ones, as :func:`modelyard.rollout.rollout_status`
    (``modelyard rollout status``) gives them: per-signal statistics with their decision boundaries."""
    views = [v.to_dict() for v in rollout_status(registry)]
    running = [v for v in views if v.get("state") == "running"]
    return {"rollouts": running + [v for v in views if v.get("state") != "running"][:ended]}


# ---------------------------------------------------------------------------------------------- monitor


def _signal(status: MonitorStatus, check: str) -> dict[str, Any] | None:
    s = status.signal(check)
    if s is None:
        return None
    m = s.measurement
    return {
        "value": m.value,
        "interval": m.interval,
        "threshold": m.details.get("threshold"),
        "offline": m.details.get("offline_accuracy"),
        "rows": m.details.get("rows") or m.details.get("window_rows"),
        "alarm": s.alarm,
    }


def _window(status: MonitorStatus) -> dict[str, Any]:
    drift = status.signal("drift.inputs")
    features = [] if drift is None else drift.measurement.details.get("features") or []
    return {
        "first_unix_s": status.first_unix_s,
        "last_unix_s": status.last_unix_s,
        "requests": status.requests,
        "alarm": status.alarm,
        "drift": {c: _signal(status, c) for c in DRIFT_CHECKS if status.signal(c) is not None},
        "features": {str(f["name"]): f.get("effect") for f in features if isinstance(f, dict)},
        "estimated": _signal(status, "accuracy.estimated"),
        "realised": _signal(status, "accuracy.realised"),
    }


def _latest(status: MonitorStatus) -> dict[str, Any]:
    drift = status.signal("drift.inputs")
    return {
        "summary": status.summary(),
        "requests": status.requests,
        "alarm": status.alarm,
        "alarms": [{"check": a.check, "message": a.message} for a in status.alarms],
        "notes": list(status.notes),
        "signals": [
            {
                "name": s.name,
                "value": s.measurement.value,
                "unit": s.measurement.unit,
                "interval": s.measurement.interval,
                "alarm": s.alarm,
                "compared_with": s.compared_with,
                "summary": s.summary,
            }
            for s in status.signals
        ],
        "features": [] if drift is None else drift.measurement.details.get("features") or [],
        "drift_threshold": None if drift is None else drift.measurement.details.get("threshold"),
    }


@dataclass
class MonitorView:
    """The monitor part of the dashboard for the versions a server answers with: the last ``window`` requests
    of each (:func:`watch`, as ``modelyard monitor status``) and up to ``max_windows`` consecutive windows
    (:func:`history`, as ``modelyard monitor report``). Computed at most every ``ttl_s`` seconds (the checks
    read the log and run calibrated tests), one computation at a time."""

    registry: Registry
    log_path: Path
    window: int
    alpha: float = 0.05
    max_windows: int = 12
    ttl_s: float = 5.0
    _references: dict[tuple[str, str], MonitorReference | str] = field(default_factory=dict)
    _cached: tuple[float, tuple[tuple[str, str], ...], dict[str, Any]] | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _reference(self, model: str, version: str) -> MonitorReference | str:
        key = (model, version)
        if key not in self._references:
            try:
                self._references[key] = reference_for(self.registry, model, int(version))
            except (ModelyardError, ValueError) as exc:
                self._references[key] = f"not watched: {first_line(exc)}"
        return self._references[key]

    def view(self, served: Iterable[tuple[str, str]]) -> dict[str, Any]:
        """The monitor part (blocking: call it off the event loop)."""
        key = tuple(sorted(served))
        with self._lock:
            now = time.monotonic()
            if self._cached is not None and self._cached[1] == key and now - self._cached[0] < self.ttl_s:
                return self._cached[2]
            out = {
                "enabled": True,
                "window": self.window,
                "alpha": self.alpha,
                "versions": [self._one(model, version) for model, version in key],
            }
            self._cached = (time.monotonic(), key, out)
            return out

    def _one(self, model: str, version: str) -> dict[str, Any]:
        head: dict[str, Any] = {"model": model, "version": version}
        ref = self._reference(model, version)
        if isinstance(ref, str):
            return {**head, "error": ref}
        log = PredictionLog(self.log_path)
        if not log.path.exists():
            return {**head, "error": "no prediction log yet: send the model requests first"}
        try:
            kw: dict[str, Any] = {
                "model": model,
                "version": version,
                "window": self.window,
                "alpha": self.alpha,
            }
            latest = watch(log, ref, **kw)
            windows = history(log, ref, max_windows=self.max_windows, **kw)
        except ModelyardError as exc:
            return {**head, "error": first_line(exc)}
        return {**head, "error": None, "latest": _latest(latest), "history": [_window(w) for w in windows]}


# ---------------------------------------------------------------------------------------------- live metrics


def is_inference(endpoint: str) -> bool:
    """Whether a route answers predictions (OIP infer, with or without a version, and /predict)."""
    return endpoint.endswith("/infer") or endpoint == "/predict"


@dataclass
class _Counts:
    requests: float = 0.0
    errors_4xx: float = 0.0
    errors_5xx: float = 0.0
    latency_sum_s: float = 0.0
    latency_count: float = 0.0
    buckets: dict[float, float] = field(default_factory=dict)  # upper bound (s) -> cumulative count

    def minus(self, other: _Counts) -> _Counts:
        return _Counts(
            self.requests - other.requests,
            self.errors_4xx - other.errors_4xx,
            self.errors_5xx - other.errors_5xx,
            self.latency_sum_s - other.latency_sum_s,
            self.latency_count - other.latency_count,
            {b: c - other.buckets.get(b, 0.0) for b, c in self.buckets.items()},
        )

    def add(self, other: _Counts) -> None:
        self.requests += other.requests
        self.errors_4xx += other.errors_4xx
        self.errors_5xx += other.errors_5xx
        self.latency_sum_s += other.latency_sum_s
        self.latency_count += other.latency_count
        for b, c in other.buckets.items():
            self.buckets[b] = self.buckets.get(b, 0.0) + c


def quantile_ms(buckets: Mapping[float, float], q: float) -> float | None:
    """The ``q`` quantile (ms) of a cumulative histogram, interpolated within its bucket as Prometheus'
    ``histogram_quantile`` does; the largest finite bound when it falls in the +Inf bucket."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for b in bounds:
        count = buckets[b]
        if count >= rank:
            if math.isinf(b):
                return 1000.0 * lower
            share = 0.0 if count == below else (rank - below) / (count - below)
            return 1000.0 * (lower + (b - lower) * share)
        lower, below = b, count
    return 1000.0 * lower


def _row(c: _Counts) -> dict[str, Any]:
    n = c.latency_count
    return {
        "requests": round(c.requests),
        "errors_4xx": round(c.errors_4xx),
        "errors_5xx": round(c.errors_5xx),
        "latency_mean_ms": 1000.0 * c.latency_sum_s / n if n > 0 else None,
        "latency_p50_ms": quantile_ms(c.buckets, 0.5),
        "latency_p99_ms": quantile_ms(c.buckets, 0.99),
    }


@dataclass
class LiveMeter:
    """Request rate, latency and errors of the inference endpoints, from the server's metrics.

    A snapshot of the counters is taken when the meter is made and at each :meth:`view` (at most one per
    ``min_step_s``); the last ``keep`` are kept. The recent figures are the difference between now and the snapshot about ``window_s``
    ago, the series the differences between consecutive snapshots. Latency percentiles are estimated from the
    request-duration histogram's buckets; the mean is exact."""

    metrics: ServerMetrics
    window_s: float = 10.0
    min_step_s: float = 1.0
    keep: int = 300
    _snapshots: deque[tuple[float, float, dict[tuple[str, str], _Counts]]] = field(init=False)

    def __post_init__(self) -> None:
        self._snapshots = deque(maxlen=self.keep)
        self._snapshots.append(
            (time.monotonic(), time.time(), self.snapshot())
        )  # the start: rates since then

    def snapshot(self) -> dict[tuple[str, str], _Counts]:
        """Cumulative counts per (model, version) of the inference endpoints ("" for requests refused before a
        model was named)."""
        out: dict[tuple[str, str], _Counts] = {}
        for family in self.metrics.requests_total.collect():
            for s in family.samples:
                if not s.name.endswith("_total") or not is_inference(s.labels["endpoint"]):
                    continue
                c = out.setdefault((s.labels["model"], s.labels["version"]), _Counts())
                code = s.labels["code"]
                c.requests += s.value
                if code.startswith("4"):
                    c.errors_4xx += s.value
                elif code.startswith("5"):
                    c.errors_5xx += s.value
        for family in self.metrics.request_duration_seconds.collect():
            for s in family.samples:
                if not is_inference(s.labels.get("endpoint", "")):
                    continue
                c = out.setdefault((s.labels["model"], s.labels["version"]), _Counts())
                if s.name.endswith("_bucket"):
                    bound = float(s.labels["le"])
                    c.buckets[bound] = c.buckets.get(bound, 0.0) + s.value
                elif s.name.endswith("_sum"):
                    c.latency_sum_s += s.value
                elif s.name.endswith("_count"):
                    c.latency_count += s.value
        return out

    def view(self) -> dict[str, Any]:
        t_now, wall, now = time.monotonic(), time.time(), self.snapshot()
        earlier = [snap for snap in self._snapshots if snap[0] < t_now]
        within = [snap for snap in earlier if t_now - snap[0] <= self.window_s]
        past = within[0] if within else earlier[-1] if earlier else (t_now, wall, now)
        if t_now - self._snapshots[-1][0] >= self.min_step_s:
            self._snapshots.append((t_now, wall, now))
        span = t_now - past[0]
        total, recent_total = _Counts(), _Counts()
        rows = []
        for key in sorted(now):
            c = now[key]
            recent = c.minus(past[2].get(key, _Counts()))
            total.add(c)
            recent_total.add(recent)
            rows.append(
                {
                    "model": key[0] or None,
                    "version": key[1] or None,
                    **_row(c),
                    "recent": _recent(recent, span),
                }
            )
        return {
            "window_s": span if span > 0 else None,
            "totals": {**_row(total), "recent": _recent(recent_total, span)},
            "by_version": rows,
            "inflight": _gauge_value(self.metrics),  # this poll included
            "series": self._series(),
        }

    def _series(self) -> list[dict[str, Any]]:
        out = []
        snaps = list(self._snapshots)
        for (t0, _, a), (t1, wall, b) in itertools.pairwise(snaps):
            step, diff = t1 - t0, _Counts()
            for key, c in b.items():
                diff.add(c.minus(a.get(key, _Counts())))
            out.append({"t_unix_s": wall, **_recent(diff, step)})
        return out


def _recent(c: _Counts, span_s: float) -> dict[str, Any]:
    row = _row(c)
    errors = c.errors_4xx + c.errors_5xx
    return {
        **row,
        "rate_per_s": c.requests / span_s if span_s > 0 else None,
        "error_rate": errors / c.requests if c.requests > 0 else None,
    }


def _gauge_value(metrics: ServerMetrics) -> float | None:
    for family in metrics.inflight_requests.collect():
        for s in family.samples:
            return float(s.value)
    return None
