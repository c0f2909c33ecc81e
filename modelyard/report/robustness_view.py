"""Data for the robustness and out-of-distribution sections of the report and the card.

Display strings in plain tables and plain numbers for the plots, from each candidate's ``robustness.*`` and
``ood.*`` measurements and its ``serving.ood`` rule (metrics.md §5.2 OOD conventions, §5.3 robustness).
"""

from __future__ import annotations

from typing import Any

from modelyard.evaluate.schema import CandidateEvidence, RunEvidence
from modelyard.report import view as v
from modelyard.report.sections import (
    Table,
    as_dict,
    as_list,
    candidate_table,
    cell,
    common_unknown,
    details,
    has_any,
    num,
    serving_ood,
    short,
    table,
    with_ci,
)

# ------------------------------------------------------------------------------------------ robustness

ROBUSTNESS_COLUMNS = [
    ("robustness.corruption_accuracy", "Corruption accuracy"),
    ("robustness.relative_mce", "Relative mCE"),
    ("robustness.consistency", "Consistency"),
    ("robustness.consistency_drop", "Consistency drop"),
    ("robustness.adversarial_accuracy", "Adversarial accuracy (PGD)"),
    ("robustness.attack_success_rate", "ASR (PGD)"),
    ("robustness.adversarial_accuracy_drop", "Adversarial accuracy drop"),
    ("robustness.perturbation_cosine", "Perturbation cosine"),
]


def unknown_reason(ev: RunEvidence, section: str) -> str:
    """The one reason every candidate's robustness or OOD measurements are unknown, else ""."""
    names = OOD_NAMES if section == "ood" else tuple(n for n, _ in ROBUSTNESS_COLUMNS)
    return common_unknown(ev.candidates, names)


def robustness_table(ev: RunEvidence) -> Table:
    """Per candidate: every robustness measurement the run has, plus FGSM robust accuracy from the details."""
    cands = ev.candidates
    t = candidate_table(cands, ROBUSTNESS_COLUMNS)
    if any(_attack(c, "fgsm") for c in cands) and t["rows"]:
        t["header"].append("FGSM accuracy (fraction)")
        by_name = {c.name: c for c in cands}
        for row in t["rows"]:
            fgsm = _attack(by_name[row[0]], "fgsm")
            row.append(num(fgsm.get("robust_accuracy"), "fraction") if fgsm else v.NOT_MEASURED)
    return t


def _attack(cand: CandidateEvidence, attack: str) -> dict[str, Any]:
    return as_dict(as_dict(details(cand, "robustness.adversarial_accuracy").get("attacks")).get(attack))


def adversarial_note(ev: RunEvidence) -> str:
    """How the adversarials were made: attacks, epsilon in input units, steps, where they were crafted."""
    for c in ev.candidates:
        d = details(c, "robustness.adversarial_accuracy")
        if not d:
            continue
        eps = d.get("epsilon_text") or num(d.get("epsilon"), "")
        attacks = ", ".join(str(a).upper() for a in as_dict(d.get("attacks"))) or "PGD"
        steps = f", {d['steps']} PGD steps" if d.get("steps") is not None else ""
        where = d.get("crafted_on") or "baseline"
        return (
            f"Adversarial inputs: {attacks} (L∞) at ε = {short(eps)}{steps}, crafted once on the {short(where)} "
            "(white-box) and replayed on every candidate (transfer). ASR: of the items a candidate classifies "
            "correctly when clean, the share its PGD adversarials flip."
        )
    return ""


def _mean(xs: list[float | None]) -> float | None:
    known = [x for x in xs if x is not None]
    return sum(known) / len(known) if known else None


def _severity_table(raw: Any) -> dict[str, list[float | None]]:
    return {
        str(k): [v.as_float(x) for x in vals]
        for k, vals in as_dict(raw).items()
        if isinstance(vals, list) and vals
    }


def corruption_curves(ev: RunEvidence) -> dict[str, list[tuple[int, float]]]:
    """Mean accuracy over corruptions at each severity (severity 0 = clean accuracy), per candidate."""
    out: dict[str, list[tuple[int, float]]] = {}
    for c in ev.candidates:
        d = details(c, "robustness.corruption_accuracy")
        tbl = _severity_table(d.get("table"))
        if not tbl:
            continue
        pts: list[tuple[int, float]] = []
        clean = v.as_float(d.get("clean_accuracy"))
        if clean is not None:
            pts.append((0, clean))
        for s in range(max(len(x) for x in tbl.values())):
            m = _mean([x[s] if s < len(x) else None for x in tbl.values()])
            if m is not None:
                pts.append((s + 1, m))
        if pts:
            out[c.name] = pts
    return out


def corruption_by_candidate(ev: RunEvidence) -> Table:
    """Rows: corruptions; columns: candidates; cells: accuracy averaged over severities."""
    tables = {
        c.name: _severity_table(details(c, "robustness.corruption_accuracy").get("table"))
        for c in ev.candidates
    }
    tables = {k: t for k, t in tables.items() if t}
    corruptions = list(dict.fromkeys(k for t in tables.values() for k in t))
    rows = [[k, *(num(_mean(t.get(k, [])), "fraction") for t in tables.values())] for k in corruptions]
    return table(["corruption", *tables], rows)


def corruption_by_severity(cand: CandidateEvidence | None) -> Table:
    """The candidate's accuracy per corruption and severity, with the baseline's mean for comparison."""
    d = details(cand, "robustness.corruption_accuracy")
    tbl, base = _severity_table(d.get("table")), _severity_table(d.get("baseline_table"))
    n = max((len(x) for x in tbl.values()), default=0)
    rows = [
        [
            k,
            *(num(x[s] if s < len(x) else None, "fraction") for s in range(n)),
            num(_mean(base.get(k, [])), "fraction"),
        ]
        for k, x in tbl.items()
    ]
    return table(["corruption", *(f"severity {s + 1}" for s in range(n)), "baseline mean"], rows)


def consistency_table(ev: RunEvidence) -> Table:
    """Rows: label-preserving perturbations; columns: candidates; cells: fraction of unchanged predictions."""
    per = {}
    for c in ev.candidates:
        raw = as_dict(details(c, "robustness.consistency").get("per_perturbation"))
        if raw:
            per[c.name] = {str(k): _fraction(x) for k, x in raw.items()}
    names = list(dict.fromkeys(k for p in per.values() for k in p))
    return table(
        ["perturbation", *per], [[k, *(p.get(k, v.NOT_MEASURED) for p in per.values())] for k in names]
    )


def _fraction(x: Any) -> str:
    if isinstance(x, dict):  # {"value"|"fraction"|"consistency": f, "interval": [lo, hi], ...}
        val = next((x[k] for k in ("value", "fraction", "consistency", "mean") if k in x), None)
        return with_ci(val, x.get("interval"))
    return num(x, "fraction")


# ------------------------------------------------------------------------------------------------- OOD

OOD_NAMES = ("ood.auroc", "ood.fpr95", "ood.auroc_drop")


def ood_table(ev: RunEvidence) -> Table:
    """Per candidate: the chosen score's AUROC and FPR95, the drop against the baseline, and the serving rule."""
    rows = []
    for c in ev.candidates:
        if not has_any([c], OOD_NAMES):
            continue
        rule = serving_ood(c)
        rows.append(
            [
                c.name,
                short(details(c, "ood.auroc").get("score") or rule.get("score") or v.NOT_RECORDED),
                cell(c, "ood.auroc"),
                cell(c, "ood.fpr95"),
                cell(c, "ood.auroc_drop"),
                threshold_text(rule),
            ]
        )
    return table(
        [
            "candidate",
            "score",
            "AUROC (OOD positive)",
            "FPR at 95% TPR (ID positive)",
            "AUROC drop (points)",
            "serving threshold",
        ],
        rows,
    )


def threshold_text(rule: dict[str, Any]) -> str:
    """ "flag when energy score > -3.2 (95% of ID kept, fitted on the calibration split)"."""
    t = v.as_float(rule.get("threshold"))
    if t is None:
        return f"{v.UNKNOWN} ({short(rule['reason'])})" if rule.get("reason") else v.NOT_RECORDED
    tpr = v.as_float(rule.get("tpr_target"))
    kept = f"{tpr * 100:g}% of ID kept" if tpr is not None else "ID kept share not recorded"
    fitted = short(rule.get("fitted_on") or v.NOT_RECORDED)
    flag = short(rule.get("flag") or "score > threshold").replace("threshold", f"{t:.4g}")
    return f"{short(rule.get('score') or 'score')}: flag when {flag} ({kept}, fitted on {fitted})"


def ood_scores_table(ev: RunEvidence) -> Table:
    """Per candidate and score: AUROC, AUPR-In, AUPR-Out and FPR95 (the chosen score marked)."""
    rows = []
    for c in ev.candidates:
        d = details(c, "ood.auroc")
        for score, r in as_dict(d.get("scores")).items():
            r = as_dict(r)
            chosen = " (chosen)" if score == d.get("score") else ""
            rows.append(
                [
                    c.name,
                    f"{short(score)}{chosen}",
                    *(num(r.get(k), "fraction") for k in ("auroc", "aupr_in", "aupr_out", "fpr95")),
                ]
            )
    return table(["candidate", "score", "AUROC", "AUPR-In", "AUPR-Out", "FPR95"], rows)


def ood_sets_table(ev: RunEvidence) -> Table:
    """Rows: OOD sets (with their size); columns: candidates; cells: the chosen score's AUROC on that set, and
    its FPR95 ("AUROC / FPR95") when the evidence records one."""
    per: dict[str, dict[str, dict[str, Any]]] = {}
    sizes: dict[str, str] = {}
    for c in ev.candidates:
        d = details(c, "ood.auroc")
        sets = as_dict(d.get("sets") or d.get("per_set"))
        if sets:
            per[c.name] = {str(k): as_dict(s) for k, s in sets.items()}
            for k, s in sets.items():
                n = as_dict(s).get("n")
                sizes.setdefault(str(k), str(n) if n is not None else v.NOT_RECORDED)
    with_fpr = any("fpr95" in s for p in per.values() for s in p.values())

    def text(s: dict[str, Any] | None) -> str:
        if s is None:
            return v.NOT_MEASURED
        auroc = num(s.get("auroc"), "fraction")
        return f"{auroc} / {num(s.get('fpr95'), 'fraction')}" if with_fpr else auroc

    rows = [[k, sizes[k], *(text(p.get(k)) for p in per.values())] for k in sizes]
    label = "AUROC / FPR95" if with_fpr else "AUROC"
    return table(["OOD set", "n", *(f"{name}: {label}" for name in per)], rows)


def ood_histograms(ev: RunEvidence) -> dict[str, dict[str, Any]]:
    """Per candidate: the chosen score's histogram (edges, ID and OOD counts) and the serving threshold."""
    out = {}
    for c in ev.candidates:
        d = details(c, "ood.auroc")
        h = as_dict(d.get("histogram"))
        if not h.get("edges"):
            continue
        rule = serving_ood(c)
        same = rule.get("score") in (None, d.get("score"))
        out[c.name] = {
            "edges": as_list(h.get("edges")),
            "id": as_list(h.get("id")),
            "ood": as_list(h.get("ood")),
            "threshold": v.as_float(rule.get("threshold")) if same else None,
            "score": str(d.get("score") or "score"),
        }
    return out


def ood_note(ev: RunEvidence) -> str:
    """The OOD convention and where the sets came from."""
    for c in ev.candidates:
        d = details(c, "ood.auroc")
        if d and v.value(c, "ood.auroc") is not None:
            src = d.get("ood_source") or ev.suite.get("ood_source")
            parts = [
                f"Score: {short(d.get('score') or v.NOT_RECORDED)} (larger = more out-of-distribution)",
                f"AUROC with {short(d.get('positive') or 'OOD')} as the positive class; FPR95 with ID positive",
                f"{d.get('n_id', v.NOT_RECORDED)} ID and {d.get('n_ood', v.NOT_RECORDED)} OOD items",
            ]
            if src:
                parts.append(f"OOD sets: {short(src)}")
            return "; ".join(parts) + "."
    return ""
