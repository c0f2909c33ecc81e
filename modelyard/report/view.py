"""Data layer shared by the HTML report and the model card.

Reads an evidence dict (schema ``modelyard.evidence/2`` or ``/1``, see ``modelyard.evaluate.schema``),
checks its shape, pulls values out of it without ever inventing one, formats numbers with their units, and
writes files atomically. Rendering (HTML, Markdown, plots) lives in the sibling modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from modelyard.errors import DataError
from modelyard.evaluate.evidence import MEASUREMENTS
from modelyard.evaluate.schema import SCHEMA_VERSION, SUPPORTED_VERSIONS

SCHEMA = SCHEMA_VERSION
UNKNOWN = "unknown"
NOT_MEASURED = "not measured"
NOT_RECORDED = "not recorded"

# Key metrics shown in the candidates table, per task kind: (measurement name, column label).
KEY_METRICS: dict[str, list[tuple[str, str]]] = {
    "classification": [
        ("quality.accuracy", "Accuracy"),
        ("quality.macro_f1", "Macro F1"),
        ("compare.accuracy_drop", "Accuracy drop"),
        ("calibration.ece", "ECE"),
    ],
    "embedding": [
        ("quality.cosine_mean", "Cosine mean"),
        ("quality.cosine_p5", "Cosine p5"),
        ("quality.top10_agreement", "Top-10 agreement"),
        ("quality.paraphrase_recall_at_1", "Paraphrase recall@1"),
    ],
}
EFFICIENCY_METRICS: list[tuple[str, str]] = [
    ("efficiency.size_bytes", "Size"),
    ("efficiency.latency_p50_ms", "Latency p50"),
    ("efficiency.throughput_best", "Throughput (best batch)"),
    ("efficiency.cost_usd_per_1m", "Cost per 1M predictions"),
]
MAIN_METRIC = {"classification": "quality.accuracy", "embedding": "quality.cosine_mean"}

# Measurements a complete run of each task kind has; absent ones are reported as not measured.
EXPECTED: dict[str, list[str]] = {
    "classification": [
        n for n in MEASUREMENTS if n.startswith(("quality.accuracy", "quality.macro", "calibration."))
    ]
    + [n for n in MEASUREMENTS if n.startswith("efficiency.")],
    "embedding": [
        n for n in MEASUREMENTS if n.startswith(("quality.cosine", "quality.top10", "quality.para"))
    ]
    + [n for n in MEASUREMENTS if n.startswith("efficiency.")],
}

_PROBABILITY_UNITS = {"fraction", "cosine", "score", "nats", "points", "p-value"}
_RATIO_UNITS = {"ratio", "T"}  # around 1: three decimals, so 1.000 and 1.050 line up in a table


# ---------------------------------------------------------------------------------------------- checks


def check_evidence(evidence: Any) -> dict[str, Any]:
    """Return ``evidence`` if renderers can use its shape; raise DataError listing every problem otherwise.

    This is the renderers' lenient check, for either schema version: missing sections and missing
    measurements are allowed (they render as "unknown"/"not recorded"); wrong types, unnamed candidates and
    a champion that is not a candidate are not. The strict check of a whole evidence file is
    ``modelyard.evaluate.schema.validate_evidence`` (what ``write_evidence`` applies).
    """
    if not isinstance(evidence, dict):
        raise DataError(
            f"evidence must be a dict in schema {SCHEMA}, got {type(evidence).__name__}; "
            "pass the dict that modelyard.evaluate builds (or json.load of evidence.json)"
        )
    problems: list[str] = []
    schema = evidence.get("schema")
    if schema is not None and schema not in SUPPORTED_VERSIONS:
        problems.append(f"schema is {schema!r}, expected {' or '.join(map(repr, SUPPORTED_VERSIONS))}")
    for key in ("model", "dataset", "hardware", "policy", "audit", "suite"):
        if evidence.get(key) is not None and not isinstance(evidence[key], dict):
            problems.append(f"{key!r} is a {type(evidence[key]).__name__}, expected a dict")
    caveats = evidence.get("caveats")
    if caveats is not None and not isinstance(caveats, list):
        problems.append(f"'caveats' is a {type(caveats).__name__}, expected a list of sentences")
    cands = evidence.get("candidates", [])
    names: list[str] = []
    if not isinstance(cands, list):
        problems.append(f"'candidates' is a {type(cands).__name__}, expected a list")
        cands = []
    for i, cand in enumerate(cands):
        if not isinstance(cand, dict):
            problems.append(f"candidates[{i}] is a {type(cand).__name__}, expected a dict")
            continue
        name = cand.get("name")
        if not isinstance(name, str) or not name:
            problems.append(f"candidates[{i}] has no name")
            continue
        if name in names:
            problems.append(f"candidate name {name!r} appears twice")
        names.append(name)
        ms = cand.get("measurements")
        if ms is not None and not isinstance(ms, dict):
            problems.append(f"candidate {name!r}: 'measurements' is a {type(ms).__name__}, expected a dict")
        elif ms:
            bad = sorted(str(k) for k, v in ms.items() if not isinstance(v, dict))
            if bad:
                problems.append(f"candidate {name!r}: measurements {bad} are not dicts")
        verdict = cand.get("verdict")
        if verdict is not None and not isinstance(verdict, dict):
            problems.append(f"candidate {name!r}: 'verdict' is a {type(verdict).__name__}, expected a dict")
        elif verdict and not isinstance(verdict.get("gates", []), list):
            problems.append(f"candidate {name!r}: 'verdict.gates' is not a list")
        passes = cand.get("passes")
        if passes is not None and not isinstance(passes, list):
            problems.append(f"candidate {name!r}: 'passes' is a {type(passes).__name__}, expected a list")
    skipped = evidence.get("skipped")
    if skipped is not None and not (isinstance(skipped, list) and all(isinstance(s, dict) for s in skipped)):
        problems.append("'skipped' must be a list of dicts")
    champion = evidence.get("champion")
    if champion is not None and champion not in names:
        problems.append(f"champion {champion!r} is not one of the candidates {names}")
    pareto = evidence.get("pareto")
    if pareto is not None and not isinstance(pareto, list):
        problems.append(f"'pareto' is a {type(pareto).__name__}, expected a list of candidate names")
    if problems:
        raise DataError(
            "invalid evidence: "
            + "; ".join(problems)
            + "; rebuild it with modelyard.evaluate or fix these fields"
        )
    return evidence


# ------------------------------------------------------------------------------------------- accessors


def section(evidence: dict[str, Any], key: str) -> dict[str, Any]:
    value = evidence.get(key)
    return value if isinstance(value, dict) else {}


def candidates(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    return list(evidence.get("candidates") or [])


def skipped(evidence: dict[str, Any]) -> list[dict[str, Any]]:
    return list(evidence.get("skipped") or [])


def skipped_rows(evidence: dict[str, Any]) -> list[dict[str, str]]:
    """Skipped passes as ``{recipe, pass, reason}`` display strings."""
    return [
        {
            "recipe": str(s.get("recipe", "")),
            "pass": str(s.get("pass", "")),
            "reason": str(s.get("reason") or "no reason recorded"),
        }
        for s in skipped(evidence)
    ]


def candidate(evidence: dict[str, Any], name: str | None) -> dict[str, Any] | None:
    for cand in candidates(evidence):
        if cand.get("name") == name:
            return cand
    return None


def baseline(evidence: dict[str, Any]) -> dict[str, Any] | None:
    """The candidate without a parent (the user's model); the first candidate if none is marked."""
    cands = candidates(evidence)
    for cand in cands:
        if cand.get("parent") is None:
            return cand
    return cands[0] if cands else None


def task_kind(evidence: dict[str, Any]) -> str:
    """ "embedding" or "classification", from the model's task, else from which measurements exist."""
    task = section(evidence, "model").get("task")
    if task in ("classification", "embedding"):
        return str(task)
    for cand in candidates(evidence):
        ms = cand.get("measurements") or {}
        if "quality.accuracy" in ms:
            return "classification"
        if "quality.cosine_mean" in ms:
            return "embedding"
    return "classification"


def hf_task_type(evidence: dict[str, Any]) -> str | None:
    """The Hugging Face task id for this run, or None when the evidence does not say enough."""
    if task_kind(evidence) == "embedding":
        return "feature-extraction"
    modality = section(evidence, "dataset").get("modality")
    return {
        "image": "image-classification",
        "text": "text-classification",
        "tabular": "tabular-classification",
    }.get(str(modality))


def measurement(cand: dict[str, Any] | None, name: str) -> dict[str, Any] | None:
    if cand is None:
        return None
    ms = cand.get("measurements") or {}
    m = ms.get(name)
    return m if isinstance(m, dict) else None


def as_float(value: Any) -> float | None:
    """A finite float, or None for anything else (None, NaN, strings, bools)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def value(cand: dict[str, Any] | None, name: str) -> float | None:
    """The measured value, or None when missing, unknown or not a finite number."""
    m = measurement(cand, name)
    if m is None or m.get("status", "ok") != "ok":
        return None
    return as_float(m.get("value"))


def interval(m: dict[str, Any] | None) -> tuple[float, float] | None:
    if m is None:
        return None
    iv = m.get("interval")
    if not isinstance(iv, list | tuple) or len(iv) != 2:
        return None
    lo, hi = as_float(iv[0]), as_float(iv[1])
    return None if lo is None or hi is None else (lo, hi)


def unit_of(m: dict[str, Any] | None, name: str) -> str:
    if m is not None and isinstance(m.get("unit"), str) and m["unit"]:
        return str(m["unit"])
    return MEASUREMENTS.get(name, ("", ""))[0]


def meaning_of(name: str) -> str:
    return MEASUREMENTS.get(name, ("", ""))[1]


def unknown_reason(m: dict[str, Any] | None) -> str | None:
    """A reason recorded in an unknown measurement's details (``reason`` or ``error``), if any."""
    if m is None:
        return None
    details = m.get("details")
    if isinstance(details, dict):
        for key in ("reason", "error"):
            if isinstance(details.get(key), str) and details[key]:
                return str(details[key])
    return None


def size_bytes(cand: dict[str, Any]) -> float | None:
    """Artifact size: the measurement if present, else the candidate's recorded ``size_bytes``."""
    measured = value(cand, "efficiency.size_bytes")
    return measured if measured is not None else as_float(cand.get("size_bytes"))


def gate_status(gate: dict[str, Any]) -> str:
    passed = gate.get("passed")
    return "PASS" if passed is True else "FAIL" if passed is False else "UNKNOWN"


def hardware_rows(hw: dict[str, Any]) -> list[tuple[str, str]]:
    """Hardware, the target and the device the efficiency figures were taken on, ISA flags, the int8 note and
    the price assumption as (label, text) rows."""
    isa = hw.get("isa")
    isa_text = (
        ", ".join(f"{k}: {'yes' if flag else 'no'}" for k, flag in sorted(isa.items()))
        if isinstance(isa, dict) and isa
        else NOT_RECORDED
    )
    price = as_float(hw.get("price_usd_per_hour"))
    price_text = NOT_RECORDED if price is None else f"{price:g} USD per hour"
    if price is not None:
        price_text += f" (source: {hw.get('price_source') or NOT_RECORDED})"
    rows = [
        ("CPU", str(hw.get("cpu") or NOT_RECORDED)),
        ("Cores", str(hw.get("cores") or NOT_RECORDED)),
    ]
    if hw.get("machine"):
        rows.append(("Machine", str(hw["machine"])))
    if hw.get("target"):
        rows.append(("Target", str(hw["target"])))
    rows.append(("Efficiency measured on", str(hw.get("efficiency_device") or NOT_RECORDED)))
    rows += [("ISA", isa_text), ("int8 note", str(hw.get("int8_note") or NOT_RECORDED))]
    measured = hw.get("int8_measured")
    if isinstance(measured, list) and measured:
        rows.append(("int8 measured", "; ".join(str(x) for x in measured)))
    rows.append(("Price assumption", price_text))
    return rows


def spec_rows(model: dict[str, Any]) -> list[tuple[str, str]]:
    """The model's input and output tensors (from ``model.spec``), e.g. ``input_ids: int64 [?, 128]``."""
    spec = model.get("spec")
    if not isinstance(spec, dict):
        return []
    rows = []
    for key, label in (("inputs", "Inputs"), ("outputs", "Outputs")):
        tensors = spec.get(key)
        if isinstance(tensors, list) and tensors:
            rows.append((label, ", ".join(_tensor_text(t) for t in tensors)))
    vr = spec.get("value_range")
    if isinstance(vr, list | tuple) and len(vr) == 2:
        rows.append(("Input value range", f"{vr[0]} to {vr[1]}"))
    return rows


def _tensor_text(t: Any) -> str:
    if not isinstance(t, dict):
        return str(t)
    shape = t.get("shape")
    dims = ", ".join("?" if d is None else str(d) for d in shape) if isinstance(shape, list) else "?"
    return f"{t.get('name', '?')}: {t.get('dtype', '?')} [{dims}]"


def gate_row(g: dict[str, Any]) -> dict[str, str]:
    """A gate as display strings. The gate's value and threshold are in the gate's own scale (e.g. MB for
    a size budget, per ``modelyard.gate``), not the measurement's unit, so they are shown as bare numbers
    (with the gate's ``unit`` only when the gate records one); the reason carries the unit in words."""
    unit = g.get("unit") if isinstance(g.get("unit"), str) else ""

    def num(key: str, missing: str) -> str:
        x = as_float(g.get(key))
        return missing if x is None else f"{x:.4g}" + (f" {unit}" if unit else "")

    return {
        "gate": str(g.get("gate") or UNKNOWN),
        "check": str(g.get("check") or "—"),
        "status": gate_status(g),
        "value": num("value", UNKNOWN),
        "threshold": num("threshold", "not recorded"),
        "reason": str(g.get("reason") or "no reason recorded"),
    }


def verdict_label(cand: dict[str, Any]) -> str:
    verdict = cand.get("verdict")
    if not isinstance(verdict, dict) or "passed" not in verdict:
        return "no verdict"
    return "PASS" if verdict.get("passed") is True else "FAIL"


def gates(cand: dict[str, Any]) -> list[dict[str, Any]]:
    verdict = cand.get("verdict")
    if not isinstance(verdict, dict):
        return []
    return [g for g in verdict.get("gates") or [] if isinstance(g, dict)]


def failed_gates(cand: dict[str, Any]) -> list[dict[str, Any]]:
    """Gates that did not pass: failed ones and unknown ones (unknown fails closed)."""
    return [g for g in gates(cand) if g.get("passed") is not True]


def pass_chain(cand: dict[str, Any]) -> list[dict[str, Any]]:
    """The candidate's passes as ``{"pass": str, "config": dict}``; malformed entries are kept as text."""
    out: list[dict[str, Any]] = []
    for p in cand.get("passes") or []:
        if isinstance(p, dict):
            cfg = p.get("config")
            out.append({"pass": str(p.get("pass", UNKNOWN)), "config": cfg if isinstance(cfg, dict) else {}})
        else:
            out.append({"pass": str(p), "config": {}})
    return out


def config_text(config: dict[str, Any]) -> str:
    return json.dumps(jsonable(config), sort_keys=True, separators=(", ", ": ")) if config else "{}"


def flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Flatten nested dicts to (dotted key, JSON text of the leaf) pairs, sorted by key."""
    rows: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key in sorted(data, key=str):
            rows.extend(flatten(data[key], f"{prefix}.{key}" if prefix else str(key)))
    else:
        leaf = data if isinstance(data, str) else json.dumps(jsonable(data), sort_keys=True)
        rows.append((prefix, leaf))
    return rows


# ------------------------------------------------------------------------------------------ formatting


def fmt_number(v: float | None, unit: str) -> str:
    """A value in its unit's usual precision, with the unit, or "unknown"."""
    if v is None:
        return UNKNOWN
    v += 0.0  # -0.0 shows as 0
    if unit == "bytes":
        return fmt_bytes(v)
    if unit == "USD":
        return f"{_plain(v)} USD"
    if unit in _PROBABILITY_UNITS:
        text = f"{v:.2e}" if v != 0 and abs(v) < 1e-4 else f"{v:.4f}"
        return text if unit in ("fraction", "cosine", "score") else f"{text} {unit}"
    text = f"{v:.3f}" if unit in _RATIO_UNITS else _plain(v)
    return f"{text} {unit}" if unit else text


def fmt_bare(v: float | None, unit: str) -> str:
    """Like fmt_number without the unit (for table cells whose header names the unit)."""
    if v is None:
        return UNKNOWN
    v += 0.0  # -0.0 shows as 0
    if unit == "bytes":
        return fmt_bytes(v)
    if unit in _PROBABILITY_UNITS:
        return f"{v:.2e}" if v != 0 and abs(v) < 1e-4 else f"{v:.4f}"
    return f"{v:.3f}" if unit in _RATIO_UNITS else _plain(v)


def fmt_bytes(v: float) -> str:
    """Binary multiples (MiB = 2**20 bytes), the scale modelyard.gate's size and memory budgets use."""
    for factor, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if abs(v) >= factor:
            return f"{v / factor:.2f} {name}"
    return f"{v:.0f} bytes"


def fmt_interval(iv: tuple[float, float] | None, unit: str) -> str:
    """ "lo – hi" in the unit's precision (no unit), or "" when there is no interval."""
    if iv is None:
        return ""
    return f"{fmt_bare(iv[0], unit)} – {fmt_bare(iv[1], unit)}"


def fmt_measurement(m: dict[str, Any] | None, name: str, *, with_unit: bool = True) -> str:
    """ "0.9531 [0.9400 – 0.9650]", "unknown (reason)" or "not measured"."""
    if m is None:
        return NOT_MEASURED
    unit = unit_of(m, name)
    v = None if m.get("status", "ok") != "ok" else as_float(m.get("value"))
    if v is None:
        reason = unknown_reason(m)
        return f"{UNKNOWN} ({reason})" if reason else UNKNOWN
    text = fmt_number(v, unit) if with_unit else fmt_bare(v, unit)
    iv = interval(m)
    return f"{text} [{fmt_interval(iv, unit)}]" if iv else text


def cell_text(cand: dict[str, Any], name: str) -> str:
    """A table cell: the measurement without its unit (the column header names it); for the size, the
    candidate's recorded ``size_bytes`` when there is no size measurement."""
    if name == "efficiency.size_bytes" and value(cand, name) is None:
        size = size_bytes(cand)
        if size is not None:
            return fmt_bytes(size)
    return fmt_measurement(measurement(cand, name), name, with_unit=False)


def _plain(v: float) -> str:
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1e-3:
        return f"{v:.3g}"
    return f"{v:.2e}"


# ------------------------------------------------------------------------------------------- json + io


def jsonable(data: Any, path: str = "evidence") -> Any:
    """A JSON-safe copy: non-finite floats become null, tuples lists, numpy values plain numbers."""
    if data is None or isinstance(data, bool | str | int):
        return data
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {str(k): jsonable(v, f"{path}.{k}") for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [jsonable(v, f"{path}[{i}]") for i, v in enumerate(data)]
    if hasattr(data, "tolist"):  # numpy arrays and scalars
        return jsonable(data.tolist(), path)
    raise DataError(
        f"{path} is a {type(data).__name__}, which is not JSON data; store plain numbers, strings, lists and dicts"
    )


def evidence_json(evidence: dict[str, Any]) -> str:
    return (
        json.dumps(jsonable(evidence), sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    )


def atomic_write(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` so that a crash leaves the old file or the new one, never half."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if hasattr(os, "O_DIRECTORY"):
        with contextlib.suppress(OSError):
            dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    return atomic_write(path, text.encode("utf-8"))
