"""Run outputs rendered from evidence: evidence.json, report.html and MODEL_CARD.md.

Data first, rendering second: ``view`` reads and formats evidence; ``sections`` (calibration, per-class),
``robustness_view`` (robustness, OOD), ``audit_view`` (audits, security, how checks were measured) and
``governance`` (NIST AI RMF / ISO/IEC 42001 mapping) turn its newer parts into display rows; ``html`` and
``card`` render them and ``plots`` draws PNGs. Every file is written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.evaluate.schema import V1, validate_evidence
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
    """Write ``out_dir/evidence.json`` (sorted keys, indent 2; NaN and infinities as null) atomically.

    What is written is validated first: evidence of the current schema through ``RunEvidence``
    (``modelyard.evaluate.schema``), on the JSON text about to be written. A dict labelled
    ``modelyard.evidence/1`` gets only the renderers' shape check, as before version 2 (v1 had no typed
    schema; the pipeline writes version 2). An invalid dict raises DataError naming the first invalid field,
    and nothing is written.
    """
    if isinstance(evidence, dict) and evidence.get("schema") == V1:
        check_evidence(evidence)
        text = evidence_json(evidence)
    else:
        text = evidence_json(evidence)
        validate_evidence(json.loads(text))
    return atomic_write_text(Path(out_dir) / EVIDENCE_FILE, text)


def write_outputs(evidence: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write evidence.json, report.html and MODEL_CARD.md into ``out_dir``; return their paths by file name."""
    return {
        EVIDENCE_FILE: write_evidence(evidence, out_dir),
        REPORT_FILE: write_report(evidence, out_dir),
        CARD_FILE: write_model_card(evidence, out_dir),
    }
