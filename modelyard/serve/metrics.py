"""Prometheus metrics of one server, in a registry of its own (never the process-global one).

Names follow Prometheus conventions: one prefix (``modelyard_``), base units (seconds), ``_total`` on
counters, histograms for latency, labels of bounded cardinality (model, version, endpoint, status code)::

    modelyard_inference_requests_total{model,version,endpoint,code}      counter
    modelyard_inference_request_duration_seconds{model,version,endpoint} histogram, whole request
    modelyard_inference_queue_duration_seconds{model,version}            histogram, waiting for a batch
    modelyard_inference_compute_duration_seconds{model,version}          histogram, one run of a batch
    modelyard_batch_size{model,version}                                  histogram, rows per batch
    modelyard_cache_hits_total{model,version}, modelyard_cache_misses_total{model,version}
    modelyard_inflight_requests                                          gauge
    modelyard_model_ready{model,version}                                 gauge, 1 when serving
    modelyard_monitor_logged_records_total                               counter, prediction log rows written
    modelyard_monitor_dropped_records_total{reason}                      counter, records not logged
    modelyard_monitor_queued_records                                     gauge, records waiting to be written
    modelyard_monitor_signal_value{model,version,check}                  gauge, latest window's live check
    modelyard_monitor_signal_threshold{model,version,check}              gauge, what that check is compared with
    modelyard_monitor_alarm{model,version,check}                         gauge, 1 when the check alarms, else 0
    modelyard_monitor_evaluation_errors_total{model,version}             counter, failed monitor evaluations

``reason`` is one of queue_full, error, duplicate_id, closed (see :mod:`modelyard.monitor.writer`). The
``modelyard_monitor_signal_*`` and ``modelyard_monitor_alarm`` gauges are set by the server's periodic monitor
evaluation (:mod:`modelyard.monitor.gauges`); ``check`` is a live check's name (``drift.inputs``, ...).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, choose_encoder, generate_latest

from modelyard.monitor.writer import DROP_REASONS

PREFIX = "modelyard"

# 0.1 ms .. 10 s, roughly 1-2.5-5 per decade
LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
BATCH_SIZE_BUCKETS: tuple[float, ...] = tuple(float(2**i) for i in range(9))  # 1, 2, 4, ..., 256

MODEL_LABELS = ("model", "version")


class ServerMetrics:
    """Every metric of one server. ``registry`` is private to this instance, so two servers (or two tests)
    in one process never share or collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests_total = Counter(
            f"{PREFIX}_inference_requests",
            "Requests answered, by model, version, endpoint and HTTP status code.",
            ("model", "version", "endpoint", "code"),
            registry=r,
        )
        self.request_duration_seconds = Histogram(
            f"{PREFIX}_inference_request_duration_seconds",
            "Time from receiving a request to its response, in seconds.",
            ("model", "version", "endpoint"),
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.queue_duration_seconds = Histogram(
            f"{PREFIX}_inference_queue_duration_seconds",
            "Time a request waited in the batching queue before its batch started, in seconds.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.inference_duration_seconds = Histogram(
            f"{PREFIX}_inference_compute_duration_seconds",
            "Time one batch spent in the model, in seconds.",
            MODEL_LABELS,
            buckets=LATENCY_BUCKETS_S,
            registry=r,
        )
        self.batch_size = Histogram(
            f"{PREFIX}_batch_size",
            "Rows per batch run by the model.",
            MODEL_LABELS,
            buckets=BATCH_SIZE_BUCKETS,
            registry=r,
        )
        self.cache_hits_total = Counter(
            f"{PREFIX}_cache_hits", "Predictions answered from the cache.", MODEL_LABELS, registry=r
        )
        self.cache_misses_total = Counter(
            f"{PREFIX}_cache_misses", "Cache lookups that found nothing.", MODEL_LABELS, registry=r
        )
        self.inflight_requests = Gauge(
            f"{PREFIX}_inflight_requests", "Requests being handled now.", registry=r
        )
        self.model_ready = Gauge(
            f"{PREFIX}_model_ready",
            "1 when the model version is loaded and serving, else 0.",
            MODEL_LABELS,
            registry=r,
        )

        self.monitor_logged_records_total = Counter(
            f"{PREFIX}_monitor_logged_records",
            "Requests written to the prediction log.",
            registry=r,
        )
        self.monitor_dropped_records_total = Counter(
            f"{PREFIX}_monitor_dropped_records",
            "Requests that were to be logged and were not, by reason (queue_full, error, duplicate_id, closed).",
            ("reason",),
            registry=r,
        )
        for reason in DROP_REASONS:
            self.monitor_dropped_records_total.labels(reason)
        self.monitor_queued_records = Gauge(
            f"{PREFIX}_monitor_queued_records",
            "Prediction log records waiting to be written.",
            registry=r,
        )

        check_labels = (*MODEL_LABELS, "check")
        self.monitor_signal_value = Gauge(
            f"{PREFIX}_monitor_signal_value",
            "The latest monitor window's value of a live check (drift statistic, rate, accuracy).",
            check_labels,
            registry=r,
        )
        self.monitor_signal_threshold = Gauge(
            f"{PREFIX}_monitor_signal_threshold",
            "What the live check is compared with: the drift threshold, the offline rate or accuracy.",
            check_labels,
            registry=r,
        )
        self.monitor_alarm = Gauge(
            f"{PREFIX}_monitor_alarm",
            "1 when the live check alarms on the latest monitor window, else 0.",
            check_labels,
            registry=r,
        )
        self.monitor_evaluation_errors_total = Counter(
            f"{PREFIX}_monitor_evaluation_errors",
            "Periodic monitor evaluations of a served version that failed.",
            MODEL_LABELS,
            registry=r,
        )

    def set_monitor_signal(
        self, model: str, version: str, check: str, value: float, threshold: float | None, alarm: bool
    ) -> None:
        self.monitor_signal_value.labels(model, version, check).set(value)
        if threshold is not None:
            self.monitor_signal_threshold.labels(model, version, check).set(threshold)
        else:
            with contextlib.suppress(KeyError):
                self.monitor_signal_threshold.remove(model, version, check)
        self.monitor_alarm.labels(model, version, check).set(1 if alarm else 0)

    def remove_monitor_signal(self, model: str, version: str, check: str) -> None:
        for gauge in (self.monitor_signal_value, self.monitor_signal_threshold, self.monitor_alarm):
            with contextlib.suppress(KeyError):
                gauge.remove(model, version, check)

    def monitor_evaluation_failed(self, model: str, version: str) -> None:
        self.monitor_evaluation_errors_total.labels(model, version).inc()

    def monitor_dropped(self, reason: str, n: int = 1) -> None:
        self.monitor_dropped_records_total.labels(reason).inc(n)

    def monitor_written(self, n: int) -> None:
        self.monitor_logged_records_total.inc(n)

    def batch_callbacks(
        self, model: str, version: str
    ) -> tuple[Callable[[int, float], None], Callable[[float], None]]:
        """``(on_batch, on_queue)`` for :class:`~modelyard.serve.batcher.DynamicBatcher`, recording batch size,
        compute time and queue time under this model and version."""
        sizes = self.batch_size.labels(model, version)
        compute = self.inference_duration_seconds.labels(model, version)
        queue = self.queue_duration_seconds.labels(model, version)

        def on_batch(rows: int, seconds: float) -> None:
            sizes.observe(rows)
            compute.observe(seconds)

        def on_queue(seconds: float) -> None:
            queue.observe(seconds)

        return on_batch, on_queue

    def observe_request(self, model: str, version: str, endpoint: str, code: int, seconds: float) -> None:
        """Count one answered request and its duration."""
        self.requests_total.labels(model, version, endpoint, str(code)).inc()
        self.request_duration_seconds.labels(model, version, endpoint).observe(seconds)

    def observe_cache(self, model: str, version: str, *, hit: bool) -> None:
        (self.cache_hits_total if hit else self.cache_misses_total).labels(model, version).inc()

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type: Prometheus text, or OpenMetrics when ``accept`` (the
        request's Accept header) asks for it."""
        if accept:
            encoder, content_type = choose_encoder(accept)
            return encoder(self.registry), content_type
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
