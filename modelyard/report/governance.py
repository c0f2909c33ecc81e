"""Which governance items the run's evidence supports: NIST AI RMF 1.0 MEASURE subcategories and ISO/IEC
42001:2023 Annex A control areas (named at area level only).

A row appears only when its evidence exists in this run. The wording is "supports", never a claim of
conformity: the mapping is indicative and not a conformity assessment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modelyard.evaluate.schema import RunEvidence
from modelyard.report.sections import as_dict, data_audit_of

NOTE = (
    "This mapping is indicative: it lists which NIST AI RMF 1.0 MEASURE subcategories and ISO/IEC 42001:2023 "
    "Annex A control areas the evidence above supports; it is not a conformity assessment."
)

# NIST AI RMF 1.0 (NIST AI 100-1), MEASURE function: subcategory -> short paraphrase.
NIST: dict[str, str] = {
    "2.1": "test sets, metrics and the tools used in TEVV are documented",
    "2.3": "performance is measured in conditions like the deployment",
    "2.5": "validity and reliability are shown; limits of generalization are documented",
    "2.6": "safety risks are evaluated, including behaviour beyond the system's knowledge limits",
    "2.7": "security and resilience are evaluated and documented",
    "2.11": "fairness and bias are evaluated and the results documented",
    "2.12": "environmental impact and efficiency are assessed and documented",
}
# ISO/IEC 42001:2023 Annex A control areas (area level only).
ISO: dict[str, str] = {
    "A.6.2": "AI system life cycle: verification and validation, technical documentation",
    "A.7": "data for AI systems: data quality, provenance, preparation",
    "A.8": "information for interested parties",
}


def _measured(ev: RunEvidence, *prefixes: str) -> bool:
    return any(
        name.startswith(prefixes) and m.status == "ok"
        for c in ev.candidates
        for name, m in c.measurements.items()
    )


def _audit(ev: RunEvidence, part: str, key: str) -> dict[str, Any]:
    return as_dict(as_dict(ev.audit.get(part)).get(key))


def _data_audit_ran(ev: RunEvidence) -> bool:
    data = data_audit_of(ev)
    return bool(data) and data.get("status") != "skipped"


def _provenance(ev: RunEvidence) -> bool:
    return bool(_audit(ev, "data", "provenance").get("fingerprint_sha256") or ev.dataset.fingerprint_sha256)


def _security(ev: RunEvidence) -> bool:
    bd = _audit(ev, "model", "backdoor")
    return bool(_audit(ev, "model", "scan")) or bd.get("status") == "ok" or _measured(ev, "security.")


def _contract(ev: RunEvidence) -> bool:
    return any(c.serving is not None and c.serving.input_contract for c in ev.candidates)


# (evidence in this run, present?, NIST subcategories, ISO areas)
ROWS: list[tuple[str, Callable[[RunEvidence], bool], list[str], list[str]]] = [
    (
        "Test split, metrics with 95% intervals, and how each check was measured",
        lambda ev: _measured(ev, "quality.", "calibration.", "compare."),
        ["2.1"],
        ["A.6.2"],
    ),
    (
        "Paired comparison with the baseline on the served artifact (accuracy drop, flips, KL, McNemar)",
        lambda ev: _measured(ev, "compare."),
        ["2.3", "2.5"],
        ["A.6.2"],
    ),
    (
        "Calibration (ECE, Brier, NLL; temperature fitted on a calibration split)",
        lambda ev: _measured(ev, "calibration."),
        ["2.5"],
        ["A.6.2"],
    ),
    (
        "Corruption and perturbation robustness",
        lambda ev: _measured(
            ev,
            "robustness.corruption",
            "robustness.relative",
            "robustness.consistency",
            "robustness.perturbation",
        ),
        ["2.5"],
        ["A.6.2"],
    ),
    (
        "Adversarial robustness (FGSM/PGD crafted on the baseline, replayed on each candidate)",
        lambda ev: _measured(ev, "robustness.adversarial", "robustness.attack"),
        ["2.7"],
        ["A.6.2"],
    ),
    (
        "Out-of-distribution detection and the serving threshold",
        lambda ev: _measured(ev, "ood."),
        ["2.6"],
        ["A.6.2"],
    ),
    ("Per-class and per-slice results", lambda ev: _measured(ev, "slices."), ["2.11"], ["A.6.2"]),
    (
        "Data audit (duplicates, train/test leakage, label issues, outliers, class balance)",
        _data_audit_ran,
        ["2.5"],
        ["A.7"],
    ),
    ("Data provenance (fingerprint, declared source and licence)", _provenance, ["2.1"], ["A.7"]),
    ("Model file scan and backdoor scans", _security, ["2.7"], ["A.6.2"]),
    ("Input contract enforced by the server", _contract, ["2.7"], ["A.6.2"]),
    (
        "Efficiency on the recorded hardware (latency, throughput, memory, size, cost)",
        lambda ev: _measured(ev, "efficiency."),
        ["2.3", "2.12"],
        ["A.6.2"],
    ),
    (
        "This model card and the report, generated from the evidence file",
        lambda ev: bool(ev.candidates),
        ["2.1"],
        ["A.6.2", "A.8"],
    ),
]


def governance_rows(evidence: RunEvidence) -> list[dict[str, str]]:
    """One row per piece of evidence present in this run: ``{evidence, nist, iso}`` as display text."""
    return [
        {
            "evidence": label,
            "nist": "; ".join(f"MEASURE {k}: {NIST[k]}" for k in nist),
            "iso": "; ".join(f"{k} ({ISO[k]})" for k in iso),
        }
        for label, present, nist, iso in ROWS
        if present(evidence)
    ]
