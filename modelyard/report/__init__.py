"""Run outputs rendered from evidence: evidence.json, report.html and MODEL_CARD.md.

Data first, rendering second: ``view`` reads and formats evidence; ``sections`` (calibration, per-class),
``robustness_view`` (robustness, OOD), ``audit_view`` (audits, security, how checks were measured) and
``governance`` (NIST AI RMF / ISO/IEC 42001 mapping) turn its newer parts into display rows; ``html`` and
``card`` render them and ``plots`` draws PNGs. Every file is written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from modelyard.report.card import CARD_FILE, render_model_card, write_model_card
from modelyard.report.html import REPORT_FILE, render_report, write_report
from modelyard.report.view import atomic_write_text, check_evidence, evidence_json

EVIDENCE_FILE = "evidence.json"

__all__ = [
    "CARD_FILE",
    "EVIDENCE_FILE",
    "REPORT_FILE",
    "render_model_card",
    "render_report",
    "write_evidence",
    "write_model_card",
    "write_outputs",
    "write_report",
]


def write_evidence(evidence: dict[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/evidence.json`` (sorted keys, indent 2; NaN and infinities as null) atomically."""
    check_evidence(evidence)
    return atomic_write_text(Path(out_dir) / EVIDENCE_FILE, evidence_json(evidence))


def write_outputs(evidence: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write evidence.json, report.html and MODEL_CARD.md into ``out_dir``; return their paths by file name."""
    return {
        EVIDENCE_FILE: write_evidence(evidence, out_dir),
        REPORT_FILE: write_report(evidence, out_dir),
        CARD_FILE: write_model_card(evidence, out_dir),
    }
