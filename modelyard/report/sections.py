"""Data for the report's and card's evidence sections beyond accuracy: comparison columns, calibration after
temperature, per-class results, robustness and out-of-distribution detection.

Every function reads the typed evidence (``RunEvidence``; measurement details are free-form dicts) and returns display strings in plain tables
(``{"header": [str], "rows": [[str]]}``, first cell the candidate or row name) or plain numbers for the plots.
Nothing is invented: a missing measurement shows as "not measured", an unknown one as "unknown (reason)".
Metric conventions are those of the reference (metrics.md §5.1–5.5).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from modelyard.evaluate.checks import measurement_table
from modelyard.evaluate.schema import CandidateEvidence, RunEvidence
from modelyard.report import view as v

Table = dict[str, Any]

# Extra candidate-table columns per task kind: (measurement, label). A column appears only when some candidate
# of the run has the measurement, so older evidence renders as before.
EXTRA_METRICS: dict[str, list[tuple[str, str]]] = {
    "classification": [
        ("compare.negative_flip_rate", "NFR"),
        ("compare.kl_mean", "KL to baseline"),
        ("slices.worst_class_drop", "Worst-class drop"),
        ("robustness.adversarial_accuracy", "Adversarial accuracy"),
        ("ood.auroc", "OOD AUROC"),
    ],
    "embedding": [
        ("robustness.perturbation_cosine", "Perturbation cosine"),
        ("ood.auroc", "OOD AUROC"),
    ],
}
MAX_PLOT_CLASSES = 25
MAX_COMPARED = 3  # per-class bars compare the baseline with every candidate when there are at most this many


# -------------------------------------------------------------------------------------------- accessors


def details(cand: CandidateEvidence | None, name: str) -> dict[str, Any]:
    """The measurement's free-form details, or {} when the measurement is missing."""
    m = v.measurement(cand, name)
    return {} if m is None else m.details


def as_dict(x: Any) -> dict[str, Any]:
    return x if isinstance(x, dict) else {}


def as_list(x: Any) -> list[Any]:
    return x if isinstance(x, list) else []


def has_any(cands: Sequence[CandidateEvidence], names: Sequence[str]) -> bool:
    return any(v.measurement(c, n) is not None for c in cands for n in names)


def num(x: Any, unit: str) -> str:
    """A bare number from details in its unit's precision, or "unknown"."""
    return v.fmt_bare(v.as_float(x), unit)


def with_ci(x: Any, ci: Any, unit: str = "fraction") -> str:
    """ "0.9500 [0.9000 – 0.9800]" from a details value and its ``[lo, hi]`` (the interval only when valid)."""
    text = num(x, unit)
    iv = v.pair(ci)
    return f"{text} [{v.fmt_interval(iv, unit)}]" if iv and v.as_float(x) is not None else text


def short(x: Any, limit: int = 120) -> str:
    text = " ".join(str(x).split()) if x is not None else ""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cell(cand: CandidateEvidence, name: str, *, with_interval: bool = True) -> str:
    """A table cell for a measurement: value (with interval), "unknown (reason)" or "not measured"."""
    m = v.measurement(cand, name)
    if not with_interval and v.measured(m) is not None:
        return v.fmt_bare(v.measured(m), v.unit_of(m, name))
    return v.fmt_measurement(m, name, with_unit=False)


def header(name: str, label: str) -> str:
    unit = measurement_table().get(name, ("", ""))[0]
    return f"{label} ({unit})" if unit and unit not in ("bytes", "pass", "classes") else label


def measured_columns(
    cands: Sequence[CandidateEvidence], columns: list[tuple[str, str]]
) -> list[tuple[str, str]]:
    """The columns some candidate has a measurement for."""
    return [(n, label) for n, label in columns if has_any(cands, [n])]


def table(header_row: list[str], rows: list[list[str]]) -> Table:
    return {"header": header_row, "rows": rows}


def common_unknown(cands: Sequence[CandidateEvidence], names: Sequence[str]) -> str:
    """The reason when every candidate's ``names`` that exist are unknown for one same reason, else "" (a table
    of identical "unknown (reason)" cells says less than one sentence)."""
    ms = [v.measurement(c, n) for c in cands for n in names]
    present = [m for m in ms if m is not None]
    if not present or any(v.measured(m) is not None for m in present):
        return ""
    reasons = {v.unknown_reason(m) or "" for m in present}
    return reasons.pop() if len(reasons) == 1 else ""


def candidate_table(cands: Sequence[CandidateEvidence], columns: list[tuple[str, str]]) -> Table:
    """One row per candidate with any of ``columns``, one column per measurement some candidate has."""
    cols = measured_columns(cands, columns)
    rows = [
        [c.name, *(cell(c, n) for n, _ in cols)]
        for c in cands
        if any(v.measurement(c, n) is not None for n, _ in cols)
    ]
    return table(["candidate", *(header(n, label) for n, label in cols)], rows if cols else [])


def serving_ood(cand: CandidateEvidence) -> dict[str, Any]:
    """The candidate's OOD serving rule (free-form), or {} when none is served."""
    return (cand.serving.ood if cand.serving is not None else None) or {}


def data_audit_of(ev: RunEvidence) -> dict[str, Any]:
    """The data audit (free-form), or {} when none is recorded."""
    return as_dict(ev.audit.get("data"))


def caveats(ev: RunEvidence) -> list[str]:
    """The sentences that go next to every accuracy figure: the evidence's caveats, plus a note when the data
    audit did not run (leakage and label errors were then not checked)."""
    out = [short(c, 400) for c in ev.caveats if c]
    data = data_audit_of(ev)
    if not data or data.get("status") == "skipped":
        why = data.get("reason") or "not recorded in the evidence"
        out.append(
            f"the data audit did not run ({short(why, 200)}): leakage and label errors were not checked"
        )
    return out


# ------------------------------------------------------------------------------------ candidates table


def extra_columns(cands: Sequence[CandidateEvidence], kind: str) -> list[tuple[str, str]]:
    return measured_columns(cands, EXTRA_METRICS.get(kind, []))


def compact_cell(cand: CandidateEvidence, name: str) -> dict[str, Any]:
    """A narrow cell (value only; the reason of an unknown in ``title``) for the extra columns."""
    m = v.measurement(cand, name)
    if m is None:
        return {"text": v.NOT_MEASURED, "unknown": True, "title": ""}
    val = v.value(cand, name)
    if val is None:
        return {"text": v.UNKNOWN, "unknown": True, "title": v.unknown_reason(m) or ""}
    iv = v.interval(m)
    unit = v.unit_of(m, name)
    return {
        "text": v.fmt_bare(val, unit),
        "unknown": False,
        "title": f"95% interval {v.fmt_interval(iv, unit)}" if iv else "",
    }


# ----------------------------------------------------------------------------------------- calibration


def calibration_table(ev: RunEvidence) -> Table:
    """ECE before and after the fitted temperature, T and its calibration-split NLL, per candidate."""
    rows = []
    for c in ev.candidates:
        if not has_any([c], ("calibration.temperature", "calibration.ece_calibrated")):
            continue
        t = details(c, "calibration.temperature")
        after = details(c, "calibration.ece_calibrated")
        before = (
            cell(c, "calibration.ece")
            if v.measurement(c, "calibration.ece") is not None
            else num(after.get("ece_before"), "fraction")
        )
        rows.append(
            [
                c.name,
                before,
                cell(c, "calibration.temperature"),
                cell(c, "calibration.ece_calibrated"),
                num(t.get("nll_before"), "nats"),
                num(t.get("nll_after"), "nats"),
                str(t.get("n_cal") if t.get("n_cal") is not None else v.NOT_RECORDED),
                short(t.get("fitted_on") or t.get("calibration_split") or v.NOT_RECORDED),
            ]
        )
    return table(
        [
            "candidate",
            "ECE before (fraction)",
            "temperature T",
            "ECE after T (fraction)",
            "NLL before (nats, cal.)",
            "NLL after (nats, cal.)",
            "calibration items",
            "fitted on",
        ],
        rows,
    )


def calibrated_bins(ev: RunEvidence) -> list[tuple[str, list[Any]]]:
    """Reliability panels after temperature scaling: (title, bins) per candidate that has them."""
    out = []
    for c in ev.candidates:
        bins = details(c, "calibration.ece_calibrated").get("bins")
        if isinstance(bins, list) and bins:
            t = v.value(c, "calibration.temperature")
            ece = v.fmt_bare(v.value(c, "calibration.ece_calibrated"), "fraction")
            out.append((f"{c.name}: T {v.fmt_bare(t, 'T')}, ECE {ece}", bins))
    return out


# ------------------------------------------------------------------------------------------- per class


def worst_table(ev: RunEvidence) -> Table:
    """Per candidate: worst-class recall (class), worst-class drop (class), and the worst-slice drop (slice)
    when the run declared slices."""
    cands = ev.candidates
    with_slices = has_any(cands, ["slices.worst_slice_drop"])
    rows = []
    for c in cands:
        if not has_any(
            [c], ("slices.worst_class_recall", "slices.worst_class_drop", "slices.worst_slice_drop")
        ):
            continue
        wcr = details(c, "slices.worst_class_recall").get("worst_class")
        wcd = details(c, "slices.worst_class_drop").get("class")
        row = [
            c.name,
            cell(c, "slices.worst_class_recall"),
            "—" if wcr is None else short(wcr),
            cell(c, "slices.worst_class_drop"),
            "—" if wcd is None else short(wcd),
        ]
        if with_slices:
            ws = as_dict(details(c, "slices.worst_slice_drop").get("worst"))
            row += [
                cell(c, "slices.worst_slice_drop"),
                short(f"{ws.get('column')} = {ws.get('value')}") if ws else "—",
            ]
        rows.append(row)
    header = ["candidate", "worst-class recall (fraction)", "class", "worst-class drop (points)", "class"]
    return table(header + (["worst-slice drop (points)", "slice"] if with_slices else []), rows)


def per_class_table(cand: CandidateEvidence | None) -> Table:
    """The candidate's per-class precision, recall and F1 (Wilson 95% intervals) with the baseline's recall."""
    rows = []
    for r in as_list(details(cand, "slices.worst_class_recall").get("per_class")):
        if not isinstance(r, dict):
            continue
        rows.append(
            [
                short(r.get("class")),
                str(r.get("support") if r.get("support") is not None else v.NOT_RECORDED),
                with_ci(r.get("precision"), r.get("precision_ci"))
                if not ("precision" in r and r["precision"] is None)
                else "undefined (never predicted)",
                with_ci(r.get("recall"), r.get("recall_ci")),
                num(r.get("f1"), "fraction"),
                num(r.get("baseline_recall"), "fraction"),
                num(r.get("recall_drop_points"), "points"),
            ]
        )
    return table(
        [
            "class",
            "support",
            "precision [95% CI]",
            "recall [95% CI]",
            "F1",
            "baseline recall",
            "recall drop (points)",
        ],
        rows,
    )


def slices_table(cand: CandidateEvidence | None) -> Table:
    """Accuracy per user-declared slice against the baseline's."""
    rows = []
    for s in as_list(details(cand, "slices.worst_slice_drop").get("slices")):
        if not isinstance(s, dict):
            continue
        rows.append(
            [
                short(s.get("column")),
                short(s.get("value")),
                str(s.get("n") if s.get("n") is not None else v.NOT_RECORDED),
                with_ci(s.get("accuracy"), s.get("accuracy_ci")),
                num(s.get("baseline_accuracy"), "fraction"),
                num(s.get("drop_points"), "points"),
                short(s.get("status") or "ok"),
            ]
        )
    return table(
        ["column", "value", "n", "accuracy [95% CI]", "baseline accuracy", "drop (points)", "status"], rows
    )


def _recalls(cand: CandidateEvidence | None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for r in as_list(details(cand, "slices.worst_class_recall").get("per_class")):
        if isinstance(r, dict) and r.get("class") is not None:
            out[str(r["class"])] = v.as_float(r.get("recall"))
    return out


def per_class_series(ev: RunEvidence) -> tuple[list[str], dict[str, list[float | None]], str]:
    """Classes, recall series by candidate (the baseline first) and a note on what was left out, for the
    grouped bar plot: the baseline against the champion, or against every candidate when there are few."""
    base = v.baseline(ev)
    others = [c for c in ev.candidates if c is not base and _recalls(c)]
    champion = v.candidate(ev, ev.champion)
    if len(others) > MAX_COMPARED:
        others = (
            [champion]
            if champion is not None and champion is not base and _recalls(champion)
            else others[:MAX_COMPARED]
        )
    base_recall = _recalls(base)
    if not base_recall:  # the baseline's recall as recorded next to each candidate's
        for c in others:
            for r in as_list(details(c, "slices.worst_class_recall").get("per_class")):
                if isinstance(r, dict) and r.get("class") is not None:
                    base_recall.setdefault(str(r["class"]), v.as_float(r.get("baseline_recall")))
    classes = list(dict.fromkeys([*base_recall, *(k for c in others for k in _recalls(c))]))
    note = ""
    if len(classes) > MAX_PLOT_CLASSES:

        def lowest(k: str) -> float:
            vals = [_recalls(c).get(k) for c in others] + [base_recall.get(k)]
            known = [x for x in vals if x is not None]
            return min(known) if known else 2.0

        keep = set(sorted(classes, key=lowest)[:MAX_PLOT_CLASSES])
        note = f" Showing the {MAX_PLOT_CLASSES} classes with the lowest recall of {len(classes)}."
        classes = [k for k in classes if k in keep]
    series: dict[str, list[float | None]] = {}
    if base_recall and base is not None:
        series[base.name] = [base_recall.get(k) for k in classes]
    for c in others:
        rec = _recalls(c)
        series[c.name] = [rec.get(k) for k in classes]
    return classes, series, note
