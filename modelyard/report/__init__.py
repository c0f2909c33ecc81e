"""Run outputs rendered from evidence: evidence.json, report.html and MODEL_CARD.md.

Data first, rendering second: every public function takes the typed evidence (``RunEvidence`` from
``modelyard.evaluate.schema``) or its dict, which is converted once on the way in (schema version 2
validated, version 1 migrated; an invalid dict raises DataError naming the first invalid field). ``view``
reads and formats the typed evidence; ``sections`` (calibration, per-class), ``robustness_view``
(robustness, OOD), ``audit_view`` (audits, security, how checks were measured) and ``governance`` (NIST AI
RMF / ISO/IEC 42001 mapping) turn its newer parts into display rows; ``html`` and ``card`` render them and
``plots`` draws PNGs. Every file is written atomically (temp file + ``os.replace``).
"""

from __future__ import annotations

from pathlib import Path

from modelyard.evaluate.schema import V1, RunEvidence, load_evidence, migrate_v1
from modelyard.report.card import CARD_FILE, render_model_card, write_model_card
from modelyard.report.html import REPORT_FILE, render_report, write_report
from modelyard.report.view import EvidenceInput, atomic_write_text, evidence_json, json_data

EVIDENCE_FILE = "evidence.json"

__all__ = [
    "CARD_FILE",
    "EVIDENCE_FILE",
    "REPORT_FILE",
    "EvidenceInput",
    "render_model_card",
    "render_report",
    "write_evidence",
    "write_model_card",
    "write_outputs",
    "write_report",
]


def _prepare(evidence: EvidenceInput) -> tuple[str, RunEvidence]:
    """The text of ``evidence.json`` (schema version 2) and the typed evidence it holds.

    A dict is validated as the JSON it is written as (non-finite numbers become null): version 2 as it is,
    version 1 through ``migrate_v1``; the text written is that dict's (keys and numbers as given). A
    RunEvidence is written as its JSON (the fields it was given, by their JSON names)."""
    if isinstance(evidence, RunEvidence):
        dumped = evidence.model_dump(mode="json", by_alias=True, exclude_unset=True)
        return evidence_json(dumped), evidence
    data = json_data(evidence)
    ev = load_evidence(data)
    return evidence_json(migrate_v1(data) if data.get("schema") == V1 else data), ev


def write_evidence(evidence: EvidenceInput, out_dir: Path) -> Path:
    """Write ``out_dir/evidence.json`` (schema version 2; sorted keys, indent 2; NaN and infinities as null)
    atomically.

    What is written is validated first through ``RunEvidence`` (``modelyard.evaluate.schema``); a version 1
    dict is migrated to version 2. Invalid evidence raises DataError naming the first invalid field, and
    nothing is written.
    """
    text, _ = _prepare(evidence)
    return atomic_write_text(Path(out_dir) / EVIDENCE_FILE, text)


def write_outputs(evidence: EvidenceInput, out_dir: Path) -> dict[str, Path]:
    """Write evidence.json, report.html and MODEL_CARD.md into ``out_dir``; return their paths by file name.
    The evidence is validated (a dict converted) once, before anything is written."""
    text, ev = _prepare(evidence)
    return {
        EVIDENCE_FILE: atomic_write_text(Path(out_dir) / EVIDENCE_FILE, text),
        REPORT_FILE: write_report(ev, out_dir),
        CARD_FILE: write_model_card(ev, out_dir),
    }
