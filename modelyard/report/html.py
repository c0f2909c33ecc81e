"""report.html: one self-contained page (inline CSS, plots as inline images: the Pareto plot SVG, coloured by
runtime, the others PNG) rendered from evidence.

``report_context`` turns the typed evidence (``RunEvidence``; a dict is converted once on the way in) into
plain rows and strings (data); the jinja2 template with autoescape turns those into HTML (rendering). Nothing
appears in the page that is not in the evidence.
"""

from __future__ import annotations

import base64
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jinja2

from modelyard.errors import DataError
from modelyard.evaluate.checks import measurement_table
from modelyard.evaluate.schema import CandidateEvidence, DatasetInfo, ModelInfo, RunEvidence
from modelyard.report import audit_view as a
from modelyard.report import plots
from modelyard.report import robustness_view as rv
from modelyard.report import sections as sec
from modelyard.report import view as v

REPORT_FILE = "report.html"
TEMPLATES = Path(__file__).with_name("templates")


@functools.cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )


def write_report(evidence: v.EvidenceInput, out_dir: Path) -> Path:
    """Write ``out_dir/report.html`` (atomically) from ``evidence`` and return its path.

    ``evidence``: a RunEvidence, or its dict (schema version 2, or 1 migrated); an invalid dict raises
    DataError naming the first invalid field, and nothing is written."""
    return v.atomic_write_text(Path(out_dir) / REPORT_FILE, render_report(evidence))


def render_report(evidence: v.EvidenceInput) -> str:
    """The report as an HTML string."""
    return _env().get_template("report.html.j2").render(**report_context(evidence))


def report_context(evidence: v.EvidenceInput) -> dict[str, Any]:
    """Everything the template shows, as plain strings, lists and dicts."""
    ev = v.as_evidence(evidence)
    kind = v.task_kind(ev)
    cands = ev.candidates
    caveats = sec.caveats(ev)
    base = v.baseline(ev)
    return {
        "title": f"modelyard report: {ev.model.name or 'unnamed model'}",
        "run": _run(ev),
        "model": _model(ev.model),
        "dataset": _dataset(ev.dataset),
        "hardware": v.hardware_rows(ev.hardware),
        "policy": v.flatten(ev.policy),
        "table": _candidates_table(cands, kind, ev.champion, ev.pareto, marked=bool(caveats)),
        "caveats": caveats,
        "champion": ev.champion,
        "champion_reason": ev.champion_reason,
        "failures": [
            {"name": c.name, "gates": [v.gate_row(g) for g in v.failed_gates(c)]}
            for c in cands
            if v.failed_gates(c)
        ],
        "skipped": v.skipped_rows(ev),
        "plots": _plots(ev, kind, ev.champion),
        "lineage": [_lineage(c, base.name if base else None) for c in cands],
        **evidence_sections(ev, kind),
    }


# ---------------------------------------------------------------------------------------------- header


def _run(ev: RunEvidence) -> list[tuple[str, str]]:
    return [
        ("run id", ev.run_id or v.UNKNOWN),
        ("created", ev.created),
        ("evidence schema", ev.schema_version),
    ]


def _text(x: object) -> str:
    return v.NOT_RECORDED if x is None or x == "" else str(x)


def _model(m: ModelInfo) -> list[tuple[str, str]]:
    rows = [("name", _text(m.name)), ("task", m.task), ("source", _text(m.source))]
    return [*rows, ("license", _text(m.license)), *v.spec_rows(m)]


def _dataset(ds: DatasetInfo) -> list[tuple[str, str]]:
    rows = [
        ("name", _text(ds.name)),
        ("modality", ds.modality),
        ("n_train", str(ds.n_train)),
        ("n_test", str(ds.n_test)),
        ("num_classes", _text(ds.num_classes)),
        ("fingerprint_sha256", _text(ds.fingerprint_sha256)),
    ]
    if ds.paraphrase_pairs:
        rows.append(("paraphrase pairs", str(ds.paraphrase_pairs)))
    return [*rows, ("source", _text(ds.source)), ("license", _text(ds.license))]


# ------------------------------------------------------------------------------------------ candidates


def _candidates_table(
    cands: list[CandidateEvidence],
    kind: str,
    champion: str | None,
    pareto: list[str],
    *,
    marked: bool = False,
) -> dict[str, Any]:
    """Key metrics (with intervals), the extra evidence columns the run has (values only; intervals and
    unknown reasons in the cell's title), then efficiency. ``marked``: accuracy headers point to the caveats."""
    extra = sec.extra_columns(cands, kind)
    metrics = v.key_metrics(kind) + extra + v.efficiency_metrics()
    header = []
    for name, label in metrics:
        text = sec.header(name, label)
        header.append(text + " ‡" if marked and "accuracy" in name else text)
    rows = []
    for c in cands:
        cells = []
        for name, _ in metrics:
            if (name, _) in extra:
                cells.append(sec.compact_cell(c, name))
                continue
            text = v.cell_text(c, name)
            cells.append({"text": text, "unknown": text.startswith((v.UNKNOWN, v.NOT_MEASURED)), "title": ""})
        n_failed = len(v.failed_gates(c))
        verdict = v.verdict_label(c)
        rows.append(
            {
                "name": c.name,
                "runtime": v.runtime_label(c),
                "runtime_detail": v.runtime_text(c),
                "champion": c.name == champion,
                "pareto": c.name in pareto,
                "cells": cells,
                "verdict": verdict,
                "verdict_detail": f"{n_failed} gate(s) not passed" if n_failed else "",
            }
        )
    return {"header": header, "rows": rows}


def _lineage(c: CandidateEvidence, baseline: str | None) -> dict[str, Any]:
    ms = c.measurements
    chain = [p.pass_ for p in c.passes]
    return {
        "name": c.name,
        "parent": c.parent if c.parent is not None else "none (baseline)",
        "format": c.format or v.NOT_RECORDED,
        "runtime": v.runtime_text(c),
        "chain": " → ".join([baseline or "baseline", *chain]) if c.parent is not None else "baseline",
        "passes": v.passes_rows(c),
        "sha256": c.artifact_sha256,
        "notes": list(c.notes),
        "gates": [v.gate_row(g) for g in c.verdict.gates],
        "measurements": [
            {
                "name": name,
                "value": v.fmt_measurement(ms[name], name),
                "status": ms[name].status,
                "meaning": v.meaning_of(name),
            }
            for name in sorted(ms)
        ],
    }


# ------------------------------------------------------------------------------------ evidence sections


def evidence_sections(ev: RunEvidence, kind: str) -> dict[str, Any]:
    """Calibration, per-class, robustness, OOD, audit and "how this was measured" sections."""
    cands = ev.candidates
    subject = v.subject(ev)
    classifier = kind == "classification"
    return {
        "calibration": {
            "show": classifier,
            "table": sec.calibration_table(ev),
            "plot": _plot(
                "Reliability after temperature scaling",
                "Accuracy per confidence bin on the test split after dividing the logits by each candidate's T.",
                plots.reliability_png,
                sec.calibrated_bins(ev),
                missing="No candidate has calibrated reliability bins in the evidence.",
            ),
        },
        "per_class": _per_class(ev, subject) if classifier else None,
        "robustness": _robustness(ev),
        "ood": _ood(ev),
        "audit": {
            "data": a.data_audit(ev),
            "model": a.model_audit(ev),
            "file_scans": a.file_scan_table(ev),
            "contracts": a.contract_table(ev),
        },
        "suite": {"table": a.suite_table(ev), "facts": a.suite_facts(ev)},
        "has_evidence_sections": any(
            sec.has_any(cands, [n])
            for n in measurement_table()
            if n.startswith(("robustness.", "ood.", "slices."))
        ),
    }


def _per_class(ev: RunEvidence, subject: CandidateEvidence | None) -> dict[str, Any]:
    classes, series, note = sec.per_class_series(ev)
    names = list(series)
    caption = "Recall per class" + (
        f": the baseline ({names[0]}) against " + ", ".join(names[1:]) + "." if len(names) > 1 else "."
    )
    caption += note
    return {
        "worst": sec.worst_table(ev),
        "subject": subject.name if subject else "",
        "table": sec.per_class_table(subject),
        "slices": sec.slices_table(subject),
        "plot": _plot(
            "Per-class recall",
            caption,
            lambda data: plots.per_class_png(*data),
            (classes, series) if classes and series else None,
            missing="No candidate has per-class results in the evidence.",
        ),
    }


def _robustness(ev: RunEvidence) -> dict[str, Any]:
    return {
        "table": rv.robustness_table(ev),
        "unknown": rv.unknown_reason(ev, "robustness"),
        "note": rv.adversarial_note(ev),
        "corruptions": rv.corruption_by_candidate(ev),
        "consistency": rv.consistency_table(ev),
        "plot": _plot(
            "Accuracy under corruption",
            "Mean accuracy over corruptions at each severity; severity 0 is clean accuracy on the same items.",
            plots.corruption_curves_png,
            rv.corruption_curves(ev),
            missing="No candidate has a corruption table in the evidence.",
        ),
    }


def _ood(ev: RunEvidence) -> dict[str, Any]:
    return {
        "table": rv.ood_table(ev),
        "unknown": rv.unknown_reason(ev, "ood"),
        "note": rv.ood_note(ev),
        "scores": rv.ood_scores_table(ev),
        "sets": rv.ood_sets_table(ev),
        "plot": _plot(
            "OOD score: in-distribution against OOD",
            "Histogram of the chosen score per candidate, each set normalised to its own total; dashed line: "
            "the serving threshold (inputs to its right are flagged).",
            plots.ood_histograms_png,
            rv.ood_histograms(ev),
            missing="No candidate has an OOD score histogram in the evidence.",
        ),
    }


# ----------------------------------------------------------------------------------------------- plots


def _plots(ev: RunEvidence, kind: str, champion: str | None) -> list[dict[str, str]]:
    cands = ev.candidates
    out = [_pareto_plot(ev, kind, champion)]
    if kind == "classification":
        panels = []
        for c in cands:
            bins = sec.details(c, "calibration.ece").get("bins")
            if isinstance(bins, list) and bins:
                panels.append(
                    (f"{c.name}: ECE {v.fmt_bare(v.value(c, 'calibration.ece'), 'fraction')}", bins)
                )
        out.append(
            _plot(
                "Reliability diagrams",
                "Accuracy per confidence bin (bars), gap to mean confidence (shaded), perfect calibration (dashed).",
                plots.reliability_png,
                panels,
                missing="No candidate has calibration bins in the evidence.",
            )
        )
    samples = {}
    for c in cands:
        s = sec.details(c, "efficiency.latency_p50_ms").get("samples_ms")
        if isinstance(s, list) and s:
            samples[c.name] = s
    out.append(
        _plot(
            "Latency distributions",
            "Batch-1 latency samples per candidate (box: quartiles, line: median, whiskers: 1.5 IQR).",
            plots.latency_png,
            samples,
            missing="No candidate has latency samples in the evidence.",
        )
    )
    curves = {}
    for c in cands:
        curve = sec.details(c, "efficiency.throughput_best").get("curve")
        if isinstance(curve, dict) and curve:
            curves[c.name] = curve
    out.append(
        _plot(
            "Throughput by batch size",
            "Items per second at each batch size measured.",
            plots.throughput_png,
            curves,
            missing="No candidate has a throughput curve in the evidence.",
        )
    )
    return out


def _pareto_plot(ev: RunEvidence, kind: str, champion: str | None) -> dict[str, str]:
    cands = ev.candidates
    y_name = v.MAIN_METRIC[kind]
    # x: cost per 1M predictions (the axis modelyard.gate computes the frontier on) when any candidate has
    # it; otherwise batch-1 latency, and then the cost frontier is not drawn as a line.
    on_cost = any(v.value(c, "efficiency.cost_usd_per_1m") is not None for c in cands)
    x_name = "efficiency.cost_usd_per_1m" if on_cost else "efficiency.latency_p50_ms"
    x_label = "cost per 1M predictions (USD)" if on_cost else "batch-1 latency p50 (ms)"
    y_label = f"{y_name.split('.', 1)[1].replace('_', ' ')} ({measurement_table()[y_name][0]})"
    points, left_out = [], []
    for c in cands:
        x, y = v.value(c, x_name), v.value(c, y_name)
        if x is None or y is None:
            left_out.append(c.name)
        else:
            points.append((c.name, x, y))
    frontier = list(ev.pareto)
    runtimes = {c.name: v.runtime_name(c) for c in cands}
    shown = sorted({runtimes[name] for name, _, _ in points})
    caption = (
        f"x: {x_label}; y: {y_label}. Colour: runtime ({', '.join(shown) or 'none'}); star: champion; "
        "crosses: candidates that failed a gate"
    )
    caption += "; dashed line: Pareto frontier recorded in the evidence." if on_cost else "."
    if frontier and not on_cost:
        caption += " The Pareto frontier (" + ", ".join(frontier) + ") is on cost, which is unknown here."
    if left_out:
        caption += " Not plotted (unknown x or y): " + ", ".join(left_out) + "."
    failed = [c.name for c in cands if not c.verdict.passed]
    return _plot(
        "Pareto: quality against " + ("cost" if on_cost else "latency"),
        caption,
        lambda pts: plots.pareto_svg(
            pts,
            x_label=x_label,
            y_label=y_label,
            champion=champion,
            frontier=frontier if on_cost else (),
            failed=failed,
            runtimes=runtimes,
        ),
        points,
        missing="No candidate has both measurements known, so there is nothing to plot.",
        mime="image/svg+xml",
    )


def _plot(
    title: str,
    caption: str,
    fn: Callable[[Any], bytes],
    data: Any,
    *,
    missing: str,
    mime: str = "image/png",
) -> dict[str, str]:
    if not data:
        return {"title": title, "caption": missing, "src": ""}
    try:
        image = fn(data)
    except DataError:  # the evidence had the field but no usable numbers in it
        return {"title": title, "caption": missing, "src": ""}
    return {
        "title": title,
        "caption": caption,
        "src": f"data:{mime};base64," + base64.b64encode(image).decode("ascii"),
    }
