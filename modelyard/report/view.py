"""Data layer shared by the HTML report and the model card.

The renderers read a ``RunEvidence`` (``modelyard.evaluate.schema``): ``as_evidence`` is the one entry point
that turns a dict into one (version 2 validated, version 1 migrated, anything else refused with DataError).
This module pulls values out of the typed evidence without ever inventing one, formats numbers with their
units, and writes files atomically. Rendering (HTML, Markdown, plots) lives in the sibling modules.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelyard.errors import DataError
from modelyard.evaluate.checks import columns, measurement_table
from modelyard.evaluate.checks import expected as expected_checks
from modelyard.evaluate.schema import (
    CandidateEvidence,
    GateResult,
    Hardware,
    Measurement,
    ModelInfo,
    RunEvidence,
    load_evidence,
)

UNKNOWN = "unknown"
NOT_MEASURED = "not measured"
NOT_RECORDED = "not recorded"

MAIN_METRIC = {"classification": "quality.accuracy", "embedding": "quality.cosine_mean"}


def key_metrics(kind: str) -> list[tuple[str, str]]:
    """The candidates table's quality columns for a task kind: (measurement name, column label), from the
    check registry (read at render time, so a check declared later has its column)."""
    return columns(kind)


def efficiency_metrics() -> list[tuple[str, str]]:
    """The candidates table's efficiency columns, from the check registry."""
    return columns("classification", efficiency_columns=True)


def expected(kind: str) -> list[str]:
    """Measurements a complete run of a task kind has (the registry's); absent ones are reported as not
    measured."""
    return expected_checks(kind)


_PROBABILITY_UNITS = {"fraction", "cosine", "score", "nats", "points", "p-value"}
_RATIO_UNITS = {"ratio", "T"}  # around 1: three decimals, so 1.000 and 1.050 line up in a table

EvidenceInput = RunEvidence | Mapping[str, Any]
"""What the public renderers take: the typed evidence, or its dict (schema version 2 or 1)."""


# ----------------------------------------------------------------------------------------- entry point


def json_data(evidence: object) -> dict[str, Any]:
    """A JSON-safe copy of an evidence dict (what ``evidence.json`` would hold); DataError for anything else."""
    if not isinstance(evidence, Mapping):
        raise DataError(
            f"evidence must be a dict (JSON object) or a RunEvidence, got {type(evidence).__name__}; pass "
            "the dict that modelyard.pipeline builds, json.load of evidence.json, or load_evidence(path)"
        )
    data: dict[str, Any] = jsonable(dict(evidence))
    return data


def as_evidence(evidence: EvidenceInput) -> RunEvidence:
    """The typed evidence the renderers read: ``evidence`` itself, or its dict converted once (as JSON:
    non-finite numbers become null) by ``load_evidence``: version 2 validated, version 1 migrated. An invalid
    dict raises DataError naming the first invalid field, in one line."""
    if isinstance(evidence, RunEvidence):
        return evidence
    return load_evidence(json_data(evidence))


# ------------------------------------------------------------------------------------------- accessors


def skipped_rows(ev: RunEvidence) -> list[dict[str, str]]:
    """Skipped passes as ``{recipe, pass, reason}`` display strings."""
    return [
        {"recipe": s.recipe, "pass": s.pass_, "reason": s.reason or "no reason recorded"} for s in ev.skipped
    ]


def candidate(ev: RunEvidence, name: str | None) -> CandidateEvidence | None:
    return next((c for c in ev.candidates if c.name == name), None)


def baseline(ev: RunEvidence) -> CandidateEvidence | None:
    """The candidate without a parent (the user's model); the first candidate if none is marked."""
    return next((c for c in ev.candidates if c.parent is None), ev.candidates[0] if ev.candidates else None)


def subject(ev: RunEvidence) -> CandidateEvidence | None:
    """The candidate a single-model section describes: the champion, else the baseline."""
    return candidate(ev, ev.champion) or baseline(ev)


def task_kind(ev: RunEvidence) -> str:
    """ "embedding" or "classification": the model's task."""
    return ev.model.task


def hf_task_type(ev: RunEvidence) -> str | None:
    """The Hugging Face task id for this run, or None when the evidence does not say enough."""
    if task_kind(ev) == "embedding":
        return "feature-extraction"
    return {
        "image": "image-classification",
        "text": "text-classification",
        "tabular": "tabular-classification",
    }.get(ev.dataset.modality)


def measurement(cand: CandidateEvidence | None, name: str) -> Measurement | None:
    return None if cand is None else cand.measurements.get(name)


def as_float(value: Any) -> float | None:
    """A finite float, or None for anything else (None, NaN, strings, bools): for free-form details."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def measured(m: Measurement | None) -> float | None:
    """The measurement's value, or None when it is missing or unknown."""
    return None if m is None or m.status != "ok" else m.value


def value(cand: CandidateEvidence | None, name: str) -> float | None:
    """The measured value, or None when missing or unknown."""
    return measured(measurement(cand, name))


def pair(raw: Any) -> tuple[float, float] | None:
    """A ``[lo, hi]`` pair of finite numbers (from free-form details), or None."""
    if not isinstance(raw, list | tuple) or len(raw) != 2:
        return None
    lo, hi = as_float(raw[0]), as_float(raw[1])
    return None if lo is None or hi is None else (lo, hi)


def interval(m: Measurement | None) -> tuple[float, float] | None:
    """The measurement's 95% interval when both ends are finite, else None."""
    return None if m is None else pair(m.interval)


def unit_of(m: Measurement | None, name: str) -> str:
    if m is not None and m.unit:
        return m.unit
    return measurement_table().get(name, ("", ""))[0]


def meaning_of(name: str) -> str:
    return measurement_table().get(name, ("", ""))[1]


def unknown_reason(m: Measurement | None) -> str | None:
    """A reason recorded in an unknown measurement's details (``reason`` or ``error``), if any."""
    if m is None:
        return None
    for key in ("reason", "error"):
        reason = m.details.get(key)
        if isinstance(reason, str) and reason:
            return reason
    return None


def size_bytes(cand: CandidateEvidence) -> float:
    """Artifact size: the measurement if known, else the candidate's recorded ``size_bytes``."""
    size = value(cand, "efficiency.size_bytes")
    return float(cand.size_bytes) if size is None else size


def gate_status(gate: GateResult) -> str:
    return "PASS" if gate.passed is True else "FAIL" if gate.passed is False else "UNKNOWN"


def hardware_rows(hw: Hardware) -> list[tuple[str, str]]:
    """Hardware, the target and the device the efficiency figures were taken on, ISA flags, the int8 note and
    the price assumption as (label, text) rows."""
    isa = ", ".join(f"{k}: {'yes' if flag else 'no'}" for k, flag in sorted(hw.isa.items()))
    rows = [("CPU", hw.cpu or NOT_RECORDED), ("Cores", str(hw.cores) if hw.cores else NOT_RECORDED)]
    if hw.machine:
        rows.append(("Machine", hw.machine))
    rows += [
        ("Target", hw.target),
        ("Efficiency measured on", hw.efficiency_device or NOT_RECORDED),
        ("ISA", isa or NOT_RECORDED),
        ("int8 note", hw.int8_note or NOT_RECORDED),
    ]
    if hw.int8_measured:
        rows.append(("int8 measured", "; ".join(hw.int8_measured)))
    price = f"{hw.price_usd_per_hour:g} USD per hour (source: {hw.price_source or NOT_RECORDED})"
    rows.append(("Price assumption", price))
    return rows


def spec_rows(model: ModelInfo) -> list[tuple[str, str]]:
    """The model's input and output tensors (from the free-form ``model.spec``), e.g. ``input_ids: int64
    [?, 128]``."""
    spec = model.spec or {}
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


def gate_row(g: GateResult) -> dict[str, str]:
    """A gate as display strings. The gate's value and threshold are in the gate's own scale (e.g. MB for
    a size budget, per ``modelyard.gate``), not the measurement's unit, so they are shown as bare numbers;
    the reason carries the unit in words."""
    return {
        "gate": g.gate or UNKNOWN,
        "check": g.check or "—",
        "status": gate_status(g),
        "value": UNKNOWN if g.value is None else f"{g.value:.4g}",
        "threshold": f"{g.threshold:.4g}",
        "reason": g.reason or "no reason recorded",
    }


def verdict_label(cand: CandidateEvidence) -> str:
    return "PASS" if cand.verdict.passed else "FAIL"


def failed_gates(cand: CandidateEvidence) -> list[GateResult]:
    """Gates that did not pass: failed ones and unknown ones (unknown fails closed)."""
    return [g for g in cand.verdict.gates if g.passed is not True]


def passes_rows(cand: CandidateEvidence) -> list[dict[str, str]]:
    """The candidate's passes as ``{"pass", "config"}`` display strings."""
    return [{"pass": p.pass_, "config": config_text(p.config)} for p in cand.passes]


def runtime_name(cand: CandidateEvidence) -> str:
    """The runtime's name ("onnxruntime", "openvino", "torch"), or "not recorded" (older evidence)."""
    return cand.runtime.name if cand.runtime is not None else NOT_RECORDED


def runtime_label(cand: CandidateEvidence) -> str:
    """The runtime and its version, e.g. "onnxruntime 1.22.0"; "not recorded" when the evidence has none."""
    rt = cand.runtime
    return f"{rt.name} {rt.version}" if rt is not None else NOT_RECORDED


def runtime_text(cand: CandidateEvidence) -> str:
    """The runtime, its version and every recorded setting, on one line."""
    rt = cand.runtime
    if rt is None:
        return f"{NOT_RECORDED} (evidence written before runtimes were recorded)"
    settings = "; ".join(f"{key} {_setting(val)}" for key, val in sorted(rt.settings.items()))
    return f"{runtime_label(cand)}" + (f": {settings}" if settings else "")


def _setting(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_setting(v) for v in value) or "none"
    if isinstance(value, str):
        return value
    return json.dumps(jsonable(value), sort_keys=True)


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


def fmt_measurement(m: Measurement | None, name: str, *, with_unit: bool = True) -> str:
    """ "0.9531 [0.9400 – 0.9650]", "unknown (reason)" or "not measured"."""
    if m is None:
        return NOT_MEASURED
    unit = unit_of(m, name)
    v = measured(m)
    if v is None:
        reason = unknown_reason(m)
        return f"{UNKNOWN} ({reason})" if reason else UNKNOWN
    text = fmt_number(v, unit) if with_unit else fmt_bare(v, unit)
    iv = interval(m)
    return f"{text} [{fmt_interval(iv, unit)}]" if iv else text


def cell_text(cand: CandidateEvidence, name: str) -> str:
    """A table cell: the measurement without its unit (the column header names it); for the size, the
    candidate's recorded ``size_bytes`` when there is no known size measurement."""
    if name == "efficiency.size_bytes" and value(cand, name) is None:
        return fmt_bytes(size_bytes(cand))
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
