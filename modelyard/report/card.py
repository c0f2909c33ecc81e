"""MODEL_CARD.md: Hugging Face–compatible YAML front matter plus Markdown sections, from evidence only.

``card_metadata`` builds the front matter (data); ``card_context`` builds the body's rows and risk
statements (data); the jinja2 template renders them. Every string from the evidence is escaped for
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

from modelyard.evaluate.evidence import MEASUREMENTS
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


def write_model_card(evidence: dict[str, Any], out_dir: Path) -> Path:
    """Write ``out_dir/MODEL_CARD.md`` (atomically) from ``evidence`` and return its path."""
    return v.atomic_write_text(Path(out_dir) / CARD_FILE, render_model_card(evidence))


def render_model_card(evidence: dict[str, Any]) -> str:
    """The model card as Markdown text with YAML front matter."""
    ev = v.check_evidence(evidence)
    front = yaml.safe_dump(card_metadata(ev), sort_keys=False, allow_unicode=True, width=1000)
    body = _env().get_template("model_card.md.j2").render(**card_context(ev))
    return f"---\n{front}---\n\n{body.strip()}\n"


# -------------------------------------------------------------------------------------- front matter


def subject(evidence: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate the card describes: the champion, else the baseline (stated as not approved)."""
    return v.candidate(evidence, evidence.get("champion")) or v.baseline(evidence)


def card_metadata(evidence: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter as a dict: license (only when the model declares one), tags, model-index."""
    ev = v.check_evidence(evidence)
    model = v.section(ev, "model")
    meta: dict[str, Any] = {}
    declared = _one_line(model.get("license"))
    if declared:
        lic = declared.lower().replace(" ", "-")
        if lic in HF_LICENSES:
            meta["license"] = lic
        else:
            meta["license"] = "other"
            meta["license_name"] = declared
    task = v.hf_task_type(ev)
    cand = subject(ev)
    tags = ["modelyard"] + ([task] if task else [])
    if cand is not None and cand.get("format"):
        tags.append(_one_line(cand["format"]))
    meta["tags"] = list(dict.fromkeys(tags))
    if task:
        meta["pipeline_tag"] = task
    metrics = _index_metrics(ev, cand)
    if task and metrics:
        ds = v.section(ev, "dataset")
        ds_name = _one_line(ds.get("name")) or "unnamed dataset"
        meta["model-index"] = [
            {
                "name": _one_line(model.get("name")) or "unnamed model",
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


def _index_metrics(ev: dict[str, Any], cand: dict[str, Any] | None) -> list[dict[str, Any]]:
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


def card_context(evidence: dict[str, Any]) -> dict[str, Any]:
    """The body's content as plain strings and rows."""
    ev = v.check_evidence(evidence)
    model, ds, hw = v.section(ev, "model"), v.section(ev, "dataset"), v.section(ev, "hardware")
    cand = subject(ev)
    champion = ev.get("champion")
    kind = v.task_kind(ev)
    ms = (cand or {}).get("measurements") or {}
    efficiency = [r for r in _measurement_rows(cand, ms) if r["name"].startswith("efficiency.")]
    return {
        "model_name": _one_line(model.get("name")) or "unnamed model",
        "run_id": str(ev.get("run_id") or v.UNKNOWN),
        "created": str(ev.get("created") or v.UNKNOWN),
        "schema": str(ev.get("schema") or v.UNKNOWN),
        "task": str(model.get("task") or kind),
        "hf_task": v.hf_task_type(ev) or "not determined (dataset modality not recorded)",
        "model_source": str(model.get("source") or "not recorded"),
        "model_license": str(model.get("license") or "not recorded"),
        "cand": _candidate_details(cand, v.baseline(ev)) if cand else None,
        "is_champion": cand is not None and cand.get("name") == champion,
        "champion_reason": str(ev.get("champion_reason") or "not recorded"),
        "data": _data_rows(ds),
        "results": _measurement_rows(cand, ms),
        "comparison": _comparison(ev, kind),
        "gates": [v.gate_row(g) for g in v.gates(cand)] if cand else [],
        "other_failures": [
            {"name": str(c["name"]), "gate": v.gate_row(g)}
            for c in v.candidates(ev)
            if cand is None or c["name"] != cand.get("name")
            for g in v.failed_gates(c)
        ],
        "skipped": v.skipped_rows(ev),
        "hardware": v.hardware_rows(hw),
        "spec": v.spec_rows(model),
        "efficiency": efficiency,
        "risks": risks(ev),
        "caveats": sec.caveats(ev),
        **_evidence_sections(ev, cand, kind),
    }


def _evidence_sections(ev: dict[str, Any], cand: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    """Calibration, per-class, robustness, OOD, data audit, security and governance content."""
    name = str((cand or {}).get("name") or "")
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
        "provenance": a.provenance_table(sec.as_dict(sec.as_dict(ev.get("audit")).get("data")), ev),
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


def _candidate_details(cand: dict[str, Any], base: dict[str, Any] | None) -> dict[str, Any]:
    size = v.size_bytes(cand)
    return {
        "name": str(cand["name"]),
        "format": str(cand.get("format") or "not recorded"),
        "parent": str(cand["parent"]) if cand.get("parent") is not None else "none (this is the baseline)",
        "baseline": str((base or {}).get("name") or "not recorded"),
        "passes": [{"pass": p["pass"], "config": v.config_text(p["config"])} for p in v.pass_chain(cand)],
        "sha256": md_code(cand["artifact_sha256"]) if cand.get("artifact_sha256") else v.NOT_RECORDED,
        "size": "not recorded" if size is None else f"{size:,.0f} bytes ({v.fmt_bytes(size)})",
        "notes": [str(n) for n in cand.get("notes") or []],
    }


def _data_rows(ds: dict[str, Any]) -> list[tuple[str, str]]:
    def get(key: str) -> str:
        return "not recorded" if ds.get(key) in (None, "") else str(ds[key])

    rows = [
        ("Name", get("name")),
        ("Modality", get("modality")),
        ("Train examples", get("n_train")),
        ("Test examples", get("n_test")),
    ]
    if ds.get("num_classes") is not None:
        rows.append(("Classes", get("num_classes")))
    if ds.get("paraphrase_pairs"):
        rows.append(("Paraphrase pairs (test)", get("paraphrase_pairs")))
    rows += [
        ("Fingerprint (SHA-256)", get("fingerprint_sha256")),
        ("Source", get("source")),
        ("Licence", get("license")),
    ]
    return rows


def _measurement_rows(cand: dict[str, Any] | None, ms: dict[str, Any]) -> list[dict[str, str]]:
    rows = []
    for name in sorted(ms, key=str):
        m = ms[name]
        unit = v.unit_of(m, str(name))
        val = v.value(cand, str(name))
        reason = v.unknown_reason(m)
        rows.append(
            {
                "name": str(name),
                "value": _value_text(val, unit, reason),
                "interval": v.fmt_interval(v.interval(m), unit) or "—",
                "unit": unit or "—",
                "meaning": v.meaning_of(str(name)) or "—",
            }
        )
    return rows


def _value_text(val: float | None, unit: str, reason: str | None) -> str:
    if val is None:
        return f"{v.UNKNOWN} ({reason})" if reason else v.UNKNOWN
    if unit == "bytes":
        return f"{val:,.0f} ({v.fmt_bytes(val)})"
    return v.fmt_bare(val, unit)


def _comparison(ev: dict[str, Any], kind: str) -> dict[str, Any]:
    metrics = v.KEY_METRICS[kind][:2] + v.EFFICIENCY_METRICS
    header = [
        f"{label} ({unit})" if (unit := MEASUREMENTS[name][0]) != "bytes" else label
        for name, label in metrics
    ]
    rows = []
    for c in v.candidates(ev):
        cells = [v.cell_text(c, name) for name, _ in metrics]
        rows.append({"name": str(c["name"]), "cells": cells, "verdict": v.verdict_label(c)})
    return {"header": header, "rows": rows}


def risks(evidence: dict[str, Any]) -> list[str]:
    """Limitations and risks, each derived from a fact in the evidence (or from its absence)."""
    ev = v.check_evidence(evidence)
    out: list[str] = []
    kind = v.task_kind(ev)
    cand = subject(ev)
    champion = ev.get("champion")
    ds, model, hw = v.section(ev, "dataset"), v.section(ev, "model"), v.section(ev, "hardware")
    if cand is None:
        out.append("The evidence holds no candidates, so nothing about a model was measured.")
    elif cand.get("name") != champion:
        out.append(
            f"No candidate passed the policy's gates; this card describes the baseline (candidate {cand['name']}), "
            "which the policy did not approve."
        )
    main = v.MAIN_METRIC[kind]
    m = v.measurement(cand, main)
    iv = v.interval(m)
    n_test = v.as_float(ds.get("n_test"))
    if iv is not None and iv[1] - iv[0] > WIDE_INTERVAL:
        width = iv[1] - iv[0]
        size = f" from {n_test:.0f} test examples" if n_test is not None else ""
        out.append(
            f"The 95% interval of {main} is {width:.4f} wide{size}; differences smaller than that "
            "between candidates are not resolved by this evidence."
        )
    if n_test is not None and n_test < SMALL_TEST_SET:
        out.append(
            f"The test split has {n_test:.0f} examples (fewer than {SMALL_TEST_SET}); intervals are wide and "
            "rare failure modes may not appear in it."
        )
    if n_test is None:
        out.append("The evidence does not record the size of the test split.")
    if cand is not None:
        ms = cand.get("measurements") or {}
        unknown = sorted(str(n) for n, mm in ms.items() if v.value(cand, str(n)) is None)
        if unknown:
            out.append("Unknown measurements (the check ran but gave no value): " + ", ".join(unknown) + ".")
        expected = [n for n in v.EXPECTED[kind] if n not in ms]
        if expected:
            out.append("Not measured: " + ", ".join(expected) + ".")
    if kind == "embedding":
        out.append(
            "Embedding quality is measured as agreement with the baseline's embeddings and paraphrase retrieval "
            "on this dataset, not against downstream task labels."
        )
    if hw.get("int8_note"):
        out.append(f"Hardware: {hw['int8_note']}")
    device = f", device {hw['efficiency_device']}" if hw.get("efficiency_device") else ""
    out.append(
        (
            f"Speed, memory and cost were measured on the hardware listed above ({hw['cpu']}{device})"
            if hw.get("cpu")
            else "The evidence does not record the hardware that speed, memory and cost were measured on"
        )
        + "; other hardware will give other numbers."
    )
    for c in v.candidates(ev):
        if cand is not None and c["name"] == cand.get("name"):
            continue
        for g in v.failed_gates(c):
            reason = g.get("reason") or "no reason recorded"
            out.append(f"Candidate {c['name']} did not pass gate {g.get('gate') or v.UNKNOWN}: {reason}")
    provenance = sec.as_dict(sec.as_dict(sec.as_dict(ev.get("audit")).get("data")).get("provenance"))
    if not (ds.get("source") or provenance.get("source")):
        out.append(
            "The dataset's source is not recorded in the evidence; its provenance cannot be checked from this card."
        )
    if not (ds.get("license") or provenance.get("license")):
        out.append(
            "The dataset's licence is not recorded in the evidence; check its terms before using or sharing the model."
        )
    if not model.get("source"):
        out.append("The model's source is not recorded in the evidence.")
    if cand is not None and not cand.get("artifact_sha256"):
        out.append("The artifact's SHA-256 is not recorded, so the file cannot be matched to this card.")
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
