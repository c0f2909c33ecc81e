"""MODEL_CARD.md: Hugging Face–compatible YAML front matter plus Markdown sections, from evidence only.

``card_metadata`` builds the front matter (data); ``card_context`` builds the body's rows and risk
statements (data), both from the typed evidence (``RunEvidence``; a dict is converted once on the way in);
the jinja2 template renders them. Every string from the evidence is escaped for
Markdown by the environment's ``finalize`` hook, so a name like ``<script>`` shows as text.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

import jinja2
import yaml
from markupsafe import Markup

from modelyard.evaluate.checks import measurement_table
from modelyard.evaluate.schema import CandidateEvidence, DatasetInfo, Measurement, RunEvidence
from modelyard.report import audit_view as a
from modelyard.report import governance
from modelyard.report import robustness_view as rv
from modelyard.report import sections as sec
from modelyard.report import view as v

CARD_FILE = "MODEL_CARD.md"
TEMPLATES = Path(__file__).with_name("templates")

# License ids the Hugging Face Hub knows; anything else goes out as `license: other` + `license_name`.
HF_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "bsd", "bsd-2-clause", "bsd-3-clause", "bsd-3-clause-clear", "isc", "unlicense",
        "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0", "cc-by-sa-3.0", "cc-by-sa-4.0",
        "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0", "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0",
        "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "gpl", "gpl-2.0", "gpl-3.0", "lgpl-2.1",
        "lgpl-3.0", "lgpl-lr", "agpl-3.0", "mpl-2.0", "epl-1.0", "epl-2.0", "afl-3.0", "artistic-2.0",
        "bsl-1.0", "ecl-2.0", "eupl-1.1", "wtfpl", "zlib", "pddl", "odbl", "odc-by", "ofl-1.1", "openrail",
        "openrail++", "creativeml-openrail-m", "bigscience-openrail-m", "llama2", "llama3", "gemma", "other",
    }
)  # fmt: skip

# Measurements that go into model-index, per task kind: (measurement, HF metric type, label).
INDEX_METRICS: dict[str, list[tuple[str, str, str]]] = {
    "classification": [
        ("quality.accuracy", "accuracy", "accuracy"),
        ("quality.macro_f1", "f1", "macro F1"),
        ("calibration.ece", "ece", "expected calibration error, 15 bins"),
    ],
    "embedding": [
        ("quality.cosine_mean", "cosine_similarity", "mean cosine similarity to the baseline's embeddings"),
        ("quality.top10_agreement", "top10_agreement", "top-10 neighbour agreement with the baseline"),
        ("quality.paraphrase_recall_at_1", "recall_at_1", "paraphrase recall@1"),
    ],
}

WIDE_INTERVAL = 0.05  # a main-metric interval wider than this (5 points of accuracy) is called wide
SMALL_TEST_SET = 1000


def write_model_card(evidence: v.EvidenceInput, out_dir: Path) -> Path:
    """Write ``out_dir/MODEL_CARD.md`` (atomically) from ``evidence`` and return its path.

    ``evidence``: a RunEvidence, or its dict (schema version 2, or 1 migrated); an invalid dict raises
    DataError naming the first invalid field, and nothing is written."""
    return v.atomic_write_text(Path(out_dir) / CARD_FILE, render_model_card(evidence))


def render_model_card(evidence: v.EvidenceInput) -> str:
    """The model card as Markdown text with YAML front matter."""
    ev = v.as_evidence(evidence)
    front = yaml.safe_dump(card_metadata(ev), sort_keys=False, allow_unicode=True, width=1000)
    body = _env().get_template("model_card.md.j2").render(**card_context(ev))
    return f"---\n{front}---\n\n{body.strip()}\n"


# -------------------------------------------------------------------------------------- front matter


def card_metadata(evidence: v.EvidenceInput) -> dict[str, Any]:
    """The YAML front matter as a dict: license (only when the model declares one), tags, model-index.
    The card describes the champion, else the baseline (stated as not approved)."""
    ev = v.as_evidence(evidence)
    meta: dict[str, Any] = {}
    declared = _one_line(ev.model.license)
    if declared:
        lic = declared.lower().replace(" ", "-")
        if lic in HF_LICENSES:
            meta["license"] = lic
        else:
            meta["license"] = "other"
            meta["license_name"] = declared
    task = v.hf_task_type(ev)
    cand = v.subject(ev)
    tags = ["modelyard"] + ([task] if task else [])
    if cand is not None and cand.format:
        tags.append(_one_line(cand.format))
    meta["tags"] = list(dict.fromkeys(tags))
    if task:
        meta["pipeline_tag"] = task
    metrics = _index_metrics(ev, cand)
    if task and metrics:
        ds_name = _one_line(ev.dataset.name) or "unnamed dataset"
        meta["model-index"] = [
            {
                "name": _one_line(ev.model.name) or "unnamed model",
                "results": [
                    {
                        "task": {"type": task},
                        "dataset": {"name": ds_name, "type": ds_name, "split": "test"},
                        "metrics": metrics,
                    }
                ],
            }
        ]
    return meta


def _index_metrics(ev: RunEvidence, cand: CandidateEvidence | None) -> list[dict[str, Any]]:
    out = []
    for name, hf_type, label in INDEX_METRICS[v.task_kind(ev)]:
        val = v.value(cand, name)
        if val is None:
            continue  # unknown values are not claimed; the body lists them
        iv = v.interval(v.measurement(cand, name))
        unit = v.unit_of(v.measurement(cand, name), name)
        if iv:
            label = f"{label} (test split; 95% interval {v.fmt_interval(iv, unit)})"
        out.append({"type": hf_type, "value": val, "name": label})
    return out


def _one_line(text: Any) -> str:
    return " ".join(str(text).split()) if text not in (None, "") else ""


# ------------------------------------------------------------------------------------------------ body


def card_context(evidence: v.EvidenceInput) -> dict[str, Any]:
    """The body's content as plain strings and rows."""
    ev = v.as_evidence(evidence)
    cand = v.subject(ev)
    kind = v.task_kind(ev)
    results = _measurement_rows(cand)
    efficiency = [r for r in results if r["name"].startswith("efficiency.")]
    return {
        "model_name": _one_line(ev.model.name) or "unnamed model",
        "run_id": ev.run_id or v.UNKNOWN,
        "created": ev.created,
        "schema": ev.schema_version,
        "task": ev.model.task,
        "hf_task": v.hf_task_type(ev) or "not determined (dataset modality not recorded)",
        "model_source": ev.model.source or v.NOT_RECORDED,
        "model_license": ev.model.license or v.NOT_RECORDED,
        "cand": _candidate_details(cand, v.baseline(ev)) if cand else None,
        "is_champion": cand is not None and cand.name == ev.champion,
        "champion_reason": ev.champion_reason or v.NOT_RECORDED,
        "data": _data_rows(ev.dataset),
        "results": results,
        "comparison": _comparison(ev, kind),
        "gates": [v.gate_row(g) for g in cand.verdict.gates] if cand else [],
        "other_failures": [
            {"name": c.name, "gate": v.gate_row(g)}
            for c in ev.candidates
            if c is not cand
            for g in v.failed_gates(c)
        ],
        "skipped": v.skipped_rows(ev),
        "hardware": v.hardware_rows(ev.hardware),
        "spec": v.spec_rows(ev.model),
        "efficiency": efficiency,
        "risks": risks(ev),
        "caveats": sec.caveats(ev),
        **_evidence_sections(ev, cand, kind),
    }


def _evidence_sections(ev: RunEvidence, cand: CandidateEvidence | None, kind: str) -> dict[str, Any]:
    """Calibration, per-class, robustness, OOD, data audit, security and governance content."""
    name = cand.name if cand else ""
    scores = rv.ood_scores_table(ev)
    scores["rows"] = [r for r in scores["rows"] if r[0] == name]
    scans = a.file_scan_table(ev)
    scans["rows"] = [r for r in scans["rows"] if r[0] == name]
    clean = v.measurement(cand, "quality.accuracy_clean")
    clean_details = sec.details(cand, "quality.accuracy_clean")
    return {
        "classifier": kind == "classification",
        "calibration": sec.calibration_table(ev),
        "per_class": {
            "worst": sec.worst_table(ev),
            "table": sec.per_class_table(cand),
            "slices": sec.slices_table(cand),
        },
        "robustness": {
            "table": rv.robustness_table(ev),
            "unknown": rv.unknown_reason(ev, "robustness"),
            "note": rv.adversarial_note(ev),
            "severity": rv.corruption_by_severity(cand),
            "consistency": rv.consistency_table(ev),
        },
        "ood": {
            "table": rv.ood_table(ev),
            "unknown": rv.unknown_reason(ev, "ood"),
            "note": rv.ood_note(ev),
            "scores": scores,
            "sets": rv.ood_sets_table(ev),
        },
        "audit": a.data_audit(ev),
        "provenance": a.provenance_table(sec.data_audit_of(ev), ev),
        "clean_accuracy": {
            "text": v.fmt_measurement(clean, "quality.accuracy_clean", with_unit=False),
            "n": str(clean_details.get("n", v.NOT_RECORDED)),
            "excluded": str(clean_details.get("excluded", v.NOT_RECORDED)),
            "baseline": sec.num(clean_details.get("baseline"), "fraction"),
            "measured": clean is not None,
        },
        "security": {
            **a.model_audit(ev),
            "file_scan": scans,
            "contract": a.contract_table(ev, cand) if cand is not None else sec.table([], []),
        },
        "governance": governance.governance_rows(ev),
        "governance_note": governance.NOTE,
    }


def _candidate_details(cand: CandidateEvidence, base: CandidateEvidence | None) -> dict[str, Any]:
    size = v.size_bytes(cand)
    return {
        "name": cand.name,
        "format": cand.format or v.NOT_RECORDED,
        "runtime": v.runtime_text(cand),
        "parent": cand.parent if cand.parent is not None else "none (this is the baseline)",
        "baseline": base.name if base else v.NOT_RECORDED,
        "passes": v.passes_rows(cand),
        "sha256": md_code(cand.artifact_sha256),
        "size": f"{size:,.0f} bytes ({v.fmt_bytes(size)})",
        "notes": list(cand.notes),
    }


def _data_rows(ds: DatasetInfo) -> list[tuple[str, str]]:
    def text(x: object) -> str:
        return v.NOT_RECORDED if x is None or x == "" else str(x)

    rows = [
        ("Name", text(ds.name)),
        ("Modality", ds.modality),
        ("Train examples", str(ds.n_train)),
        ("Test examples", str(ds.n_test)),
    ]
    if ds.num_classes is not None:
        rows.append(("Classes", str(ds.num_classes)))
    if ds.paraphrase_pairs:
        rows.append(("Paraphrase pairs (test)", str(ds.paraphrase_pairs)))
    rows += [
        ("Fingerprint (SHA-256)", text(ds.fingerprint_sha256)),
        ("Source", text(ds.source)),
        ("Licence", text(ds.license)),
    ]
    return rows


def _measurement_rows(cand: CandidateEvidence | None) -> list[dict[str, str]]:
    ms: dict[str, Measurement] = cand.measurements if cand else {}
    rows = []
    for name in sorted(ms):
        m = ms[name]
        unit = v.unit_of(m, name)
        rows.append(
            {
                "name": name,
                "value": _value_text(v.measured(m), unit, v.unknown_reason(m)),
                "interval": v.fmt_interval(v.interval(m), unit) or "—",
                "unit": unit or "—",
                "meaning": v.meaning_of(name) or "—",
            }
        )
    return rows


def _value_text(val: float | None, unit: str, reason: str | None) -> str:
    if val is None:
        return f"{v.UNKNOWN} ({reason})" if reason else v.UNKNOWN
    if unit == "bytes":
        return f"{val:,.0f} ({v.fmt_bytes(val)})"
    return v.fmt_bare(val, unit)


def _comparison(ev: RunEvidence, kind: str) -> dict[str, Any]:
    metrics = v.key_metrics(kind)[:2] + v.efficiency_metrics()
    header = [
        f"{label} ({unit})" if (unit := measurement_table()[name][0]) != "bytes" else label
        for name, label in metrics
    ]
    rows = []
    for c in ev.candidates:
        cells = [v.cell_text(c, name) for name, _ in metrics]
        rows.append(
            {"name": c.name, "runtime": v.runtime_label(c), "cells": cells, "verdict": v.verdict_label(c)}
        )
    return {"header": header, "rows": rows}


def risks(evidence: v.EvidenceInput) -> list[str]:
    """Limitations and risks, each derived from a fact in the evidence (or from its absence)."""
    ev = v.as_evidence(evidence)
    out: list[str] = []
    kind = v.task_kind(ev)
    cand = v.subject(ev)
    ds, hw = ev.dataset, ev.hardware
    if cand is None:
        out.append("The evidence holds no candidates, so nothing about a model was measured.")
    elif cand.name != ev.champion:
        out.append(
            f"No candidate passed the policy's gates; this card describes the baseline (candidate {cand.name}), "
            "which the policy did not approve."
        )
    main = v.MAIN_METRIC[kind]
    iv = v.interval(v.measurement(cand, main))
    if iv is not None and iv[1] - iv[0] > WIDE_INTERVAL:
        out.append(
            f"The 95% interval of {main} is {iv[1] - iv[0]:.4f} wide from {ds.n_test} test examples; "
            "differences smaller than that between candidates are not resolved by this evidence."
        )
    if ds.n_test < SMALL_TEST_SET:
        out.append(
            f"The test split has {ds.n_test} examples (fewer than {SMALL_TEST_SET}); intervals are wide and "
            "rare failure modes may not appear in it."
        )
    if cand is not None:
        unknown = sorted(n for n, m in cand.measurements.items() if v.measured(m) is None)
        if unknown:
            out.append("Unknown measurements (the check ran but gave no value): " + ", ".join(unknown) + ".")
        expected = [n for n in v.expected(kind) if n not in cand.measurements]
        if expected:
            out.append("Not measured: " + ", ".join(expected) + ".")
    if kind == "embedding":
        out.append(
            "Embedding quality is measured as agreement with the baseline's embeddings and paraphrase retrieval "
            "on this dataset, not against downstream task labels."
        )
    if hw.int8_note:
        out.append(f"Hardware: {hw.int8_note}")
    recorded = hw.efficiency_device and not hw.efficiency_device.startswith(v.NOT_RECORDED)
    device = f", device {hw.efficiency_device}" if recorded else ""
    out.append(
        (
            f"Speed, memory and cost were measured on the hardware listed above ({hw.cpu}{device})"
            if hw.cpu
            else "The evidence does not record the hardware that speed, memory and cost were measured on"
        )
        + "; other hardware will give other numbers."
    )
    for c in ev.candidates:
        if c is not cand:
            out += [
                f"Candidate {c.name} did not pass gate {g.gate or v.UNKNOWN}: {g.reason or 'no reason recorded'}"
                for g in v.failed_gates(c)
            ]
    provenance = sec.as_dict(sec.data_audit_of(ev).get("provenance"))
    if not (ds.source or provenance.get("source")):
        out.append(
            "The dataset's source is not recorded in the evidence; its provenance cannot be checked from this card."
        )
    if not (ds.license or provenance.get("license")):
        out.append(
            "The dataset's licence is not recorded in the evidence; check its terms before using or sharing the model."
        )
    if not ev.model.source:
        out.append("The model's source is not recorded in the evidence.")
    out.extend(a.evidence_risks(ev, cand))
    return out


# ------------------------------------------------------------------------------------------- rendering

_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~$])")


def md_escape(value: Any) -> str:
    """Escape a string for Markdown text (one line): HTML and Markdown syntax show literally."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return str(value)
    text = " ".join(str(value).split())
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MD_SPECIAL.sub(r"\\\1", text)


def md_code(value: Any, *, in_table: bool = False) -> Markup:
    """A Markdown code span holding ``value`` literally (one line)."""
    text = " ".join(str(value).split())
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    if in_table:
        text = text.replace("|", "\\|")
    return Markup(f"{fence}{pad}{text}{pad}{fence}")


def md_table(t: dict[str, Any], empty: str = "") -> Markup:
    """A Markdown table from ``{"header": [str], "rows": [[str]]}``, every cell escaped; ``empty`` (escaped)
    when there are no rows."""
    if not t.get("rows"):
        return Markup(md_escape(empty))
    lines = [
        "| " + " | ".join(md_escape(h) for h in t["header"]) + " |",
        "| " + " | ".join("---" for _ in t["header"]) + " |",
    ]
    lines += ["| " + " | ".join(md_escape(c) or "—" for c in row) + " |" for row in t["rows"]]
    return Markup("\n".join(lines))


@functools.cache
def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=False,
        finalize=md_escape,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["code"] = md_code
    env.filters["md_table"] = md_table
    env.filters["code_cell"] = lambda value: md_code(value, in_table=True)
    return env
