"""Evidence: measured facts about candidates, as plain JSON-serialisable data with units.

The shape of ``evidence.json`` (schema ``modelyard.evidence/2``) is defined by the typed models in
``modelyard.evaluate.schema`` (``RunEvidence`` and its parts), exported as the JSON Schema
``modelyard/evaluate/evidence.schema.json``; ``load_evidence`` there reads version 2 and migrates
version 1. This module builds the parts that checks produce: ``Measurement`` (``to_dict`` gives the
``schema.Measurement`` shape) and ``measure``.

Measurement names are stable dotted names (``quality.accuracy``, ``calibration.ece``, ...), each declared
once with its unit by the module that computes it (``checkspec.declare``; the registry is
``modelyard.evaluate.checks``, and ``modelyard checks`` lists them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.evaluate.checkspec import unit_of

Status = Literal["ok", "unknown"]


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
    """Build a Measurement with the unit declared for ``name`` (an undeclared name takes ``unit=`` from the
    details); None value means UNKNOWN."""
    declared_unit = unit_of(name)
    unit = declared_unit if declared_unit is not None else details.pop("unit", "")
    status: Status = "unknown" if value is None or not math.isfinite(float(value)) else "ok"
    return Measurement(name, None if status == "unknown" else float(value), unit, interval, status, details)  # type: ignore[arg-type]
