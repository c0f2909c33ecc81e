"""Evidence: measured facts about candidates, as plain JSON-serialisable data with units.

Shape of ``evidence.json`` (schema ``modelyard.evidence/1``)::

    {
      "schema": "modelyard.evidence/1", "run_id": str, "created": ISO-8601 str,
      "model": {"name": str, "task": "classification"|"embedding", "source": str},
      "dataset": Dataset.describe(),
      "hardware": {"cpu": str, "cores": int, "isa": {"avx2": bool, "avx512": bool, "vnni": bool, "amx": bool},
                   "int8_note": str, "price_usd_per_hour": float, "price_source": str},
      "policy": Policy.to_dict(),
      "candidates": [
        {"name": str, "parent": str|None, "format": str, "passes": [{"pass": str, "config": {}}],
         "artifact_sha256": str, "size_bytes": int, "notes": [str],
         "measurements": {dotted name: Measurement.to_dict()},
         "verdict": {"passed": bool, "gates": [{"gate": str, "check": str, "passed": bool|None,
                     "value": float|None, "threshold": float, "reason": str}]}}
      ],
      "skipped": [{"recipe": str, "pass": str, "reason": str}],
      "champion": str|None, "pareto": [str], "champion_reason": str
    }

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
    "efficiency.latency_p50_ms": ("ms", "median latency of one batch-1 call"),
    "efficiency.latency_p99_ms": ("ms", "99th percentile latency of one batch-1 call"),
    "efficiency.throughput_b32": ("items/s", "throughput at batch 32"),
    "efficiency.throughput_best": ("items/s", "throughput at the best batch size measured"),
    "efficiency.peak_rss_bytes": (
        "bytes",
        "peak resident memory of a fresh process that loads and runs the model",
    ),
    "efficiency.size_bytes": ("bytes", "artifact size on disk"),
    "efficiency.load_time_s": ("s", "time to load the artifact into a ready Runner"),
    "efficiency.cost_usd_per_1m": ("USD", "hardware cost of 1 million predictions at the best throughput"),
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
