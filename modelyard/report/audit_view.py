"""Data for the audit, security and "how this was measured" sections, and the risks the audits imply.

Reads the typed evidence's free-form ``audit`` (data audit and model audit), each candidate's ``security.*``
measurements and ``serving.input_contract``, and the free-form ``suite``; returns display strings (metrics.md §5.6–5.7).
Long lists (e.g. the clean test indices) are counted, never listed.
"""

from __future__ import annotations

from typing import Any

from modelyard.evaluate.schema import CandidateEvidence, RunEvidence
from modelyard.report import view as v
from modelyard.report.sections import (
    Table,
    as_dict,
    as_list,
    data_audit_of,
    details,
    num,
    serving_ood,
    short,
    table,
)

MAX_EXAMPLES = 10
MAX_EXAMPLE_KEYS = 8


def data_audit(ev: RunEvidence) -> dict[str, Any]:
    """The data audit as ``{status, note, summary: [(label, text)], tables: [{title, table, more}], caveats}``."""
    data = data_audit_of(ev)
    if not data:
        return {
            "status": v.NOT_MEASURED,
            "note": "The evidence records no data audit.",
            "summary": [],
            "tables": [],
            "caveats": [],
        }
    if data.get("status") == "skipped":
        why = short(data.get("reason") or "no reason recorded", 300)
        return {
            "status": "skipped",
            "note": f"The data audit was skipped: {why}.",
            "summary": [],
            "tables": [],
            "caveats": [],
        }
    ex, near, leak = (
        as_dict(data.get("exact_duplicates")),
        as_dict(data.get("near_duplicates")),
        as_dict(data.get("leakage")),
    )
    conflicts, issues = as_dict(data.get("label_conflicts")), as_dict(data.get("label_issues"))
    outliers, balance = as_dict(data.get("outliers")), as_dict(data.get("balance"))
    summary = [
        (
            "Exact duplicate groups",
            f"train {_n(ex.get('train_groups'))}, test {_n(ex.get('test_groups'))}" if ex else v.NOT_MEASURED,
        ),
        ("Near-duplicate pairs", _near_text(near) if near else v.NOT_MEASURED),
        ("Train/test leakage", _leakage_text(leak) if leak else v.NOT_MEASURED),
        (
            "Label conflicts (same input, different labels)",
            _n(conflicts.get("count")) if conflicts else v.NOT_MEASURED,
        ),
        ("Label issues", _issues_text(issues) if issues else v.NOT_MEASURED),
        (
            "Outliers",
            f"{_n(outliers.get('count'))} test items ({num(outliers.get('fraction'), 'fraction')} of the test split)"
            if outliers
            else v.NOT_MEASURED,
        ),
        (
            "Class imbalance (largest / smallest train class)",
            num(balance.get("imbalance_ratio"), "ratio") if balance else v.NOT_MEASURED,
        ),
    ]
    if data.get("representation"):
        summary.append(("Representation used", short(data["representation"])))
    clean = as_list(data.get("clean_test_indices"))
    if "clean_test_indices" in data:
        summary.append(("Clean test items (neither leaked nor flagged)", str(len(clean))))
    tables = [
        _examples("Leaked test items (test index, train index)", leak.get("pairs")),
        _examples("Possible label errors", issues.get("examples")),
        _examples("Exact duplicates", ex.get("examples")),
        _examples("Near duplicates", near.get("examples")),
        _examples("Label conflicts", conflicts.get("examples")),
        _examples("Outliers (most unusual test items)", outliers.get("top")),
        {"title": "Class balance", "table": balance_table(balance), "more": 0},
        {"title": "Provenance", "table": provenance_table(data, ev), "more": 0},
    ]
    return {
        "status": "ok",
        "note": "",
        "summary": summary,
        "tables": [t for t in tables if t["table"]["rows"]],
        "caveats": [short(c, 400) for c in as_list(data.get("caveats")) if c not in (None, "")],
    }


def _n(x: Any) -> str:
    if isinstance(x, list):
        return str(len(x))
    return str(x) if x is not None else v.NOT_RECORDED


def _pct(x: Any) -> str:
    f = v.as_float(x)
    return v.UNKNOWN if f is None else f"{f * 100:.1f}%"


def _near_text(near: dict[str, Any]) -> str:
    how = near.get("method") or f"threshold {num(near.get('threshold'), 'cosine')}"
    return f"{_n(near.get('pairs'))} ({short(how, 300)})"


def _leakage_text(leak: dict[str, Any]) -> str:
    n_test = leak.get("n_test")
    of = f" of {n_test} test items" if n_test is not None else " of the test items"
    return f"{_pct(leak.get('exact_fraction'))} exact, {_pct(leak.get('near_fraction'))} exact or near{of} have a twin in train"


def _issues_text(issues: dict[str, Any], *, method: bool = True) -> str:
    if issues.get("status") == "skipped":
        return f"skipped: {short(issues.get('reason') or 'no reason recorded', 200)}"
    text = (
        f"{_n(issues.get('train_flagged'))} train and {_n(issues.get('test_flagged'))} test labels flagged; "
        f"estimated error rate {_pct(issues.get('estimated_error_rate'))}"
    )
    how = str(issues.get("method") or "")
    if method:
        text += f" ({short(how or 'method not recorded', 400)})"
    return text + ("" if "never removed" in how and method else "; flagged test rows are kept, never removed")


def _examples(title: str, items: Any) -> dict[str, Any]:
    """Any list of examples as a table: dicts give columns (their keys), anything else one "example" column."""
    items = as_list(items)
    shown = items[:MAX_EXAMPLES]
    keys: list[str] = []
    for it in shown:
        if isinstance(it, dict):
            keys.extend(str(k) for k in it)
    keys = list(dict.fromkeys(keys))[:MAX_EXAMPLE_KEYS] or ["example"]
    rows = []
    for it in shown:
        if isinstance(it, dict):
            rows.append([_value(it.get(k)) for k in keys])
        else:
            rows.append([_value(it), *([""] * (len(keys) - 1))])
    return {"title": title, "table": table(keys, rows), "more": max(0, len(items) - len(shown))}


def _value(x: Any) -> str:
    if isinstance(x, float):
        return num(x, "fraction") if 0 <= x <= 1 else v.fmt_bare(x, "")
    if isinstance(x, list):
        return short(", ".join(_value(i) for i in x[:10]) + (", …" if len(x) > 10 else ""))
    if isinstance(x, dict):
        return short("; ".join(f"{k}: {_value(val)}" for k, val in list(x.items())[:6]))
    return "—" if x is None else short(x)


def balance_table(balance: dict[str, Any]) -> Table:
    train, test = as_dict(balance.get("train")), as_dict(balance.get("test"))
    classes = list(dict.fromkeys([*map(str, train), *map(str, test)]))[:50]
    return table(["class", "train", "test"], [[k, _n(train.get(k, 0)), _n(test.get(k, 0))] for k in classes])


def provenance_table(data: dict[str, Any], ev: RunEvidence) -> Table:
    """The data's provenance: what the data audit recorded, else what the dataset declares."""
    prov, ds = as_dict(data.get("provenance")), ev.dataset
    declared = {
        "fingerprint_sha256": ds.fingerprint_sha256,
        "source": ds.source,
        "license": ds.license,
        "datasheet": ds.datasheet,
    }
    rows = []
    for key, label in (
        ("fingerprint_sha256", "fingerprint (SHA-256)"),
        ("source", "source"),
        ("license", "licence"),
        ("datasheet", "datasheet"),
    ):
        val = prov.get(key) or declared[key]
        rows.append([label, short(val) if val else "not declared"])
    return table(["field", "value"], rows)


# ------------------------------------------------------------------------------------------ model audit


def model_audit(ev: RunEvidence) -> dict[str, list[tuple[str, str]]]:
    """The baseline model's file scan and backdoor scans as (label, text) rows."""
    model = as_dict(ev.audit.get("model"))
    scan, bd = as_dict(model.get("scan")), as_dict(model.get("backdoor"))
    scan_rows = (
        [
            ("Verdict", str(scan.get("status") or v.UNKNOWN)),
            ("Format (by magic bytes)", short(scan.get("format") or v.NOT_RECORDED)),
            ("Findings", _join(scan.get("findings")) or "none"),
            ("SHA-256", short(scan.get("sha256") or v.NOT_RECORDED)),
        ]
        if scan
        else [("Verdict", "not measured (the evidence records no model file scan)")]
    )
    if not bd:
        bd_rows = [("Status", "not measured (the evidence records no backdoor scan)")]
    elif bd.get("status") == "skipped":
        bd_rows = [("Status", f"skipped: {short(bd.get('reason') or 'no reason recorded', 300)}")]
    else:
        flagged = [str(c) for c in as_list(bd.get("flagged_classes"))]
        bd_rows = [
            ("Status", "ran"),
            ("Flagged classes", ", ".join(flagged) if flagged else "none"),
            ("Suspicious training items", _n(bd.get("n_suspicious"))),
            ("Method", short(bd.get("method") or v.NOT_RECORDED, 300)),
            ("Representation", short(bd.get("representation") or v.NOT_RECORDED)),
            ("Limits", short(bd.get("limits") or v.NOT_RECORDED, 300)),
        ]
    return {"scan": scan_rows, "backdoor": bd_rows}


def _join(items: Any, limit: int = 5) -> str:
    xs = [short(x, 200) for x in as_list(items)]
    return "; ".join(xs[:limit]) + (f"; and {len(xs) - limit} more" if len(xs) > limit else "")


def file_scan_table(ev: RunEvidence) -> Table:
    """Per candidate: the artifact's file-scan verdict (fails closed: unknown is not a pass)."""
    rows = []
    for c in ev.candidates:
        m = v.measurement(c, "security.file_scan")
        if m is None:
            continue
        d = details(c, "security.file_scan")
        val = v.value(c, "security.file_scan")
        verdict = d.get("verdict") or ("PASS" if val == 1.0 else "FAIL" if val == 0.0 else "UNKNOWN")
        reason = v.unknown_reason(m)
        rows.append(
            [
                c.name,
                str(verdict),
                short(d.get("format") or v.NOT_RECORDED),
                _join(d.get("findings")) or reason or "none",
            ]
        )
    return table(["candidate", "verdict", "format", "findings"], rows)


def contract_table(ev: RunEvidence, only: CandidateEvidence | None = None) -> Table:
    """The input contract the server enforces, per candidate (or for ``only``)."""
    rows = []
    for c in [only] if only is not None else ev.candidates:
        contract = c.serving.input_contract if c.serving is not None else {}
        for inp in as_list(contract.get("inputs")):
            inp = as_dict(inp)
            shape = inp.get("shape")
            dims = (
                "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"
                if isinstance(shape, list)
                else v.NOT_RECORDED
            )
            vr = inp.get("value_range")
            rng = f"{vr[0]} to {vr[1]}" if isinstance(vr, list) and len(vr) == 2 else "any"
            fin = inp.get("finite")
            finite = "required" if fin is True else "not checked" if fin is False else v.NOT_RECORDED
            text = " (raw text through the tokenizer)" if contract.get("text") else ""
            rows.append([c.name, short(inp.get("name")) + text, short(inp.get("dtype")), dims, rng, finite])
    return table(["candidate", "input", "dtype", "shape", "value range", "finite values"], rows)


# --------------------------------------------------------------------------------------------- suite


def suite_table(ev: RunEvidence) -> Table:
    """How long each check took and the sample size each used, with why."""
    suite = ev.suite
    seconds, sizes = as_dict(suite.get("seconds")), as_dict(suite.get("sample_sizes"))
    rows = []
    for k in sorted({*map(str, seconds), *map(str, sizes)}):
        s = v.as_float(seconds.get(k))
        size = as_dict(sizes.get(k))
        rows.append(
            [
                k,
                v.UNKNOWN if s is None else f"{s:.2f}",
                _n(size.get("n")) if size else "—",
                short(size.get("why") or "—", 300),
            ]
        )
    return table(["check", "seconds", "items", "why this many"], rows)


def suite_facts(ev: RunEvidence) -> list[tuple[str, str]]:
    """Other facts the suite records (calibration split, OOD source, adversarial settings), flattened."""
    rest = {
        k: val
        for k, val in ev.suite.items()
        if k not in ("seconds", "sample_sizes") and val not in (None, "", [], {})
    }
    return [(k, short(val, 300)) for k, val in v.flatten(rest)]


# --------------------------------------------------------------------------------------------- risks


def evidence_risks(ev: RunEvidence, cand: CandidateEvidence | None) -> list[str]:
    """Risks that the audits, the security checks and unknown checks imply, one sentence each."""
    out: list[str] = []
    data, model = data_audit_of(ev), as_dict(ev.audit.get("model"))
    if not data or data.get("status") == "skipped":
        out.append(
            "The data audit did not run ("
            + short(data.get("reason") or "not recorded", 200)
            + "): duplicates, train/test leakage and label errors were not checked."
        )
    leak = as_dict(data.get("leakage"))
    if (v.as_float(leak.get("near_fraction")) or 0) > 0 or (v.as_float(leak.get("exact_fraction")) or 0) > 0:
        out.append(f"Train/test leakage: {_leakage_text(leak)}; accuracy on the test split may be inflated.")
    conflicts = v.as_float(as_dict(data.get("label_conflicts")).get("count"))
    if conflicts:
        out.append(
            f"Label conflicts: {conflicts:.0f} case(s) of identical inputs with different labels in the data."
        )
    issues = as_dict(data.get("label_issues"))
    flagged = (v.as_float(issues.get("train_flagged")) or 0) + (v.as_float(issues.get("test_flagged")) or 0)
    if issues.get("status") == "ok" and flagged > 0:
        out.append(f"Label issues: {_issues_text(issues, method=False)}.")
    bd = as_dict(model.get("backdoor"))
    classes = [str(c) for c in as_list(bd.get("flagged_classes"))]
    if classes:
        out.append(
            f"The backdoor scans flag the training data of class(es) {', '.join(classes)} "
            f"({_n(bd.get('n_suspicious'))} suspicious items): the model may have learned a trigger."
        )
    elif bd.get("status") == "ok":
        out.append(
            "The backdoor scans flagged no class; "
            + short(bd.get("limits") or "a clean scan is not proof", 300)
            + "."
        )
    scan = as_dict(model.get("scan"))
    if scan and scan.get("status") != "PASS":
        out.append(
            f"The model file scan says {scan.get('status') or v.UNKNOWN}: {_join(scan.get('findings')) or 'no findings recorded'}."
        )
    if cand is not None:
        by_reason: dict[str, list[str]] = {}
        for name, m in cand.measurements.items():
            reason = v.unknown_reason(m)
            if reason and v.measured(m) is None:
                by_reason.setdefault(short(reason, 300), []).append(name)
        for reason, names in by_reason.items():
            out.append(
                f"Unknown ({reason}): {', '.join(sorted(names))}; these checks fail closed in the gates."
            )
        rule = serving_ood(cand)
        if "test" in str(
            rule.get("fitted_on") or ""
        ):  # evidence written before thresholds left the test split
            out.append(
                "The OOD threshold was fitted on the test split (no calibration split), so its FPR95 is optimistic."
            )
        elif rule and rule.get("threshold") is None and rule.get("reason"):
            out.append(f"No OOD threshold is served: {rule['reason']}.")
    return out
