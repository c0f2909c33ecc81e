"""Evidence: measured facts about candidates, as plain JSON-serialisable data with units.

The shape of ``evidence.json`` (schema ``modelyard.evidence/2``) is defined by the typed models in
``modelyard.evaluate.schema`` (``RunEvidence`` and its parts), exported as the JSON Schema
``modelyard/evaluate/evidence.schema.json``; ``load_evidence`` there reads version 2 and migrates
version 1. This module builds the parts that checks produce: ``Measurement`` (``to_dict`` gives the
``schema.Measurement`` shape) and ``measure``.

Measurement names are stable dotted names (``quality.accuracy``, ``calibration.ece``, ...); see
``MEASUREMENTS`` for the list with units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "unknown"]

# name -> (unit, one-line meaning). The report, the card and the gate read units from here.
MEASUREMENTS: dict[str, tuple[str, str]] = {
    "quality.accuracy": ("fraction", "top-1 accuracy on the test split, 95% bootstrap interval"),
    "quality.macro_f1": ("fraction", "macro-averaged F1 on the test split, 95% bootstrap interval"),
    "quality.cosine_mean": ("cosine", "mean cosine similarity to the baseline's embeddings"),
    "quality.cosine_p5": ("cosine", "5th percentile of cosine similarity to the baseline's embeddings"),
    "quality.top10_agreement": (
        "fraction",
        "mean overlap of each item's 10 nearest neighbours with the baseline's",
    ),
    "quality.paraphrase_recall_at_1": (
        "fraction",
        "fraction of paraphrase pairs whose partner is the nearest neighbour",
    ),
    "compare.accuracy_drop": (
        "points",
        "baseline accuracy minus candidate accuracy, percentage points, paired 95% interval",
    ),
    "compare.flip_rate": (
        "fraction",
        "fraction of test items whose predicted class differs from the baseline's",
    ),
    "compare.mcnemar_p": ("p-value", "McNemar's exact test on paired correctness against the baseline"),
    "calibration.ece": ("fraction", "expected calibration error, 15 equal-width bins, top label"),
    "calibration.ece_increase": ("fraction", "candidate ECE minus baseline ECE"),
    "calibration.brier": ("score", "multiclass Brier score, range [0, 2]"),
    "calibration.nll": ("nats", "mean negative log-likelihood of the true class"),
    "compare.accuracy_drop_upper95": (
        "points",
        "upper bound of the one-sided 95% paired bootstrap interval of the accuracy drop (non-inferiority)",
    ),
    "compare.macro_f1_drop": (
        "points",
        "baseline macro-F1 minus candidate macro-F1, percentage points, paired 95% bootstrap interval",
    ),
    "compare.negative_flip_rate": (
        "fraction",
        "fraction of test items the baseline got right and the candidate gets wrong",
    ),
    "compare.kl_mean": ("nats", "mean KL divergence from the baseline's class probabilities"),
    "compare.mcnemar_p_holm": (
        "p-value",
        "McNemar p-value after Holm correction across every candidate of the run",
    ),
    "quality.accuracy_clean": (
        "fraction",
        "accuracy on the test items the data audit neither found leaked nor flagged as mislabelled",
    ),
    "calibration.temperature": (
        "T",
        "softmax temperature fitted on the calibration split (never the test split)",
    ),
    "calibration.ece_calibrated": ("fraction", "ECE on the test split after the fitted temperature"),
    "slices.worst_class_recall": ("fraction", "lowest per-class recall, Wilson 95% interval"),
    "slices.worst_class_drop": (
        "points",
        "largest per-class recall drop against the baseline, percentage points, paired 95% interval",
    ),
    "slices.worst_slice_drop": (
        "points",
        "largest accuracy drop against the baseline over user-declared slices, percentage points",
    ),
    "robustness.corruption_accuracy": ("fraction", "mean accuracy over corruptions and severities 1-5"),
    "robustness.relative_mce": (
        "ratio",
        "relative mean corruption error against the baseline (Hendrycks & Dietterich); 1 = as robust",
    ),
    "robustness.consistency": (
        "fraction",
        "fraction of items whose prediction is unchanged under label-preserving perturbations",
    ),
    "robustness.consistency_drop": ("points", "baseline consistency minus candidate consistency"),
    "robustness.perturbation_cosine": (
        "cosine",
        "mean cosine between an item's embedding and its perturbed copy's (embedders)",
    ),
    "robustness.adversarial_accuracy": (
        "fraction",
        "accuracy on PGD adversarials crafted on the baseline and replayed (transfer robustness)",
    ),
    "robustness.attack_success_rate": (
        "fraction",
        "of items classified correctly when clean, the fraction the PGD adversarials flip",
    ),
    "robustness.adversarial_accuracy_drop": (
        "points",
        "baseline adversarial accuracy minus candidate adversarial accuracy",
    ),
    "ood.auroc": ("fraction", "AUROC separating out-of-distribution from test inputs (OOD positive)"),
    "ood.fpr95": (
        "fraction",
        "fraction of OOD inputs accepted at the threshold keeping 95% of ID (ID positive)",
    ),
    "ood.auroc_drop": ("points", "baseline OOD AUROC minus candidate OOD AUROC, percentage points"),
    "security.file_scan": ("pass", "1 when the artifact's file scan passes, 0 when it fails"),
    "security.backdoor_flagged_classes": (
        "classes",
        "classes whose training data the backdoor scans flag (activation clustering and spectral signatures)",
    ),
    "efficiency.latency_p50_ms": ("ms", "median latency of one batch-1 call"),
    "efficiency.latency_p99_ms": ("ms", "99th percentile latency of one batch-1 call"),
    "efficiency.throughput_b32": (
        "items/s",
        "throughput at batch 32, order-statistic interval over timing rounds",
    ),
    "efficiency.throughput_best": (
        "items/s",
        "throughput at the best batch size measured, order-statistic interval over timing rounds",
    ),
    "efficiency.peak_rss_bytes": (
        "bytes",
        "peak resident memory of a fresh process that loads and runs the model",
    ),
    "efficiency.size_bytes": ("bytes", "artifact size on disk"),
    "efficiency.load_time_s": ("s", "time to load the artifact into a ready Runner"),
    "efficiency.cost_usd_per_1m": (
        "USD",
        "hardware cost of 1 million predictions at the best throughput (price / 3600 / throughput * 1e6)",
    ),
}


@dataclass
class Measurement:
    """One check's result: value with unit, optional 95% interval, and details for plots and tables."""

    name: str
    value: float | None
    unit: str
    interval: tuple[float, float] | None = None
    status: Status = "ok"
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        def clean(v: float | None) -> float | None:
            return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)

        return {
            "name": self.name,
            "value": clean(self.value),
            "unit": self.unit,
            "interval": [clean(self.interval[0]), clean(self.interval[1])] if self.interval else None,
            "status": self.status,
            "details": self.details,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        iv = d.get("interval")
        return cls(
            name=d["name"],
            value=d.get("value"),
            unit=d["unit"],
            interval=(iv[0], iv[1]) if iv else None,
            status=d.get("status", "ok"),
            details=dict(d.get("details") or {}),
        )


def measure(
    name: str, value: float | None, interval: tuple[float, float] | None = None, **details: Any
) -> Measurement:
    """Build a Measurement with the unit registered for ``name``; None value means UNKNOWN."""
    unit = MEASUREMENTS[name][0] if name in MEASUREMENTS else details.pop("unit", "")
    status: Status = "unknown" if value is None or not math.isfinite(float(value)) else "ok"
    return Measurement(name, None if status == "unknown" else float(value), unit, interval, status, details)  # type: ignore[arg-type]
