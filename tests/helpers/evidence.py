"""Synthetic evidence (a classifier run, an embedder run, a run with unknown measurements) and readers of
the rendered model card, for the report tests.

Each builder returns a complete, valid ``modelyard.evidence/2`` dict (``validate_evidence`` accepts it), which a
test may change before rendering; ``as_v1`` turns one into the shape of a version 1 file."""

from __future__ import annotations

import re
from typing import Any

import yaml

from modelyard.evaluate.evidence import measure
from modelyard.evaluate.schema import SCHEMA_VERSION, V1

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAILED_REASON = "accuracy drop upper bound 3.10 points exceeds the 1.00 point margin"
SKIPPED_REASON = "fp16 needs a GPU; none was found"


def bins(shift: float) -> list[dict[str, float]]:
    """15 reliability bins, the first five empty, each with accuracy = confidence + ``shift`` (at most 1)."""
    out = []
    for m in range(15):
        lo, hi = m / 15, (m + 1) / 15
        conf = (lo + hi) / 2
        out.append(
            {
                "lo": lo,
                "hi": hi,
                "count": 0 if m < 5 else 10 + m,
                "confidence": conf,
                "accuracy": min(1.0, conf + shift),
            }
        )
    return out


def _classifier_measurements(i: int, *, baseline: bool) -> dict[str, Any]:
    acc = 0.96 - 0.01 * i
    ms = [
        measure("quality.accuracy", acc, (acc - 0.02, acc + 0.015)),
        measure("quality.macro_f1", acc - 0.01, (acc - 0.035, acc + 0.01)),
        measure("calibration.ece", 0.02 + 0.01 * i, (0.01, 0.04 + 0.01 * i), bins=bins(0.02 * i)),
        measure("calibration.brier", 0.07 + 0.01 * i),
        measure("calibration.nll", 0.15 + 0.02 * i),
        measure(
            "efficiency.latency_p50_ms",
            2.0 / (i + 1),
            samples_ms=[2.0 / (i + 1) + 0.01 * k for k in range(30)],
        ),
        measure("efficiency.latency_p99_ms", 3.0 / (i + 1)),
        measure("efficiency.throughput_b32", 4000.0 * (i + 1)),
        measure(
            "efficiency.throughput_best",
            5000.0 * (i + 1),
            curve={"1": 500.0 * (i + 1), "8": 3000.0, "32": 5000.0 * (i + 1)},
        ),
        measure("efficiency.size_bytes", 4_000_000 / (i + 1)),
        measure("efficiency.peak_rss_bytes", 150_000_000.0),
        measure("efficiency.load_time_s", 0.3),
        measure("efficiency.cost_usd_per_1m", 0.02 / (i + 1)),
    ]
    if not baseline:
        ms += [
            measure("compare.accuracy_drop", 1.0 * i, (0.2 * i, 1.0 * i + 1.1)),
            measure("compare.flip_rate", 0.01 * i),
            measure("compare.mcnemar_p", 0.5 / i),
        ]
    return {m.name: m.to_dict() for m in ms}


def gate(
    gate: str, check: str, passed: bool | None, value: float | None, threshold: float, reason: str
) -> dict:
    """One gate result of a verdict, as the evidence stores it."""
    return {
        "gate": gate,
        "check": check,
        "passed": passed,
        "value": value,
        "threshold": threshold,
        "reason": reason,
    }


def classifier_evidence(*, source: str | None = None, license: str | None = None) -> dict[str, Any]:
    names = ["baseline", "onnx", "int8-dynamic", "int8-static"]
    passes = [
        [],
        [{"pass": "export-onnx", "config": {"opset": 17}}],
        [
            {"pass": "export-onnx", "config": {"opset": 17}},
            {"pass": "int8-dynamic", "config": {"per_channel": True}},
        ],
        [
            {"pass": "export-onnx", "config": {"opset": 17}},
            {"pass": "int8-static", "config": {"calibration_size": 128}},
        ],
    ]
    cands = []
    for i, name in enumerate(names):
        ok = name != "int8-static"
        gates = [
            gate(
                "accuracy non-inferiority",
                "compare.accuracy_drop",
                ok,
                0.3 * i if ok else 3.1,
                1.0,
                "within margin" if ok else FAILED_REASON,
            ),
            gate("calibration", "calibration.ece", True, 0.02 + 0.01 * i, 0.1, "ECE within limit"),
        ]
        cands.append(
            {
                "name": name,
                "parent": None if i == 0 else "baseline" if i == 1 else "onnx",
                "format": "torch" if i == 0 else "onnx",
                "passes": passes[i],
                "artifact_sha256": f"{i:x}" * 64,
                "size_bytes": int(4_000_000 / (i + 1)),
                "notes": ["Softmax kept in fp32"] if i == 3 else [],
                "meta": {},
                "serving": None,
                "measurements": _classifier_measurements(i, baseline=i == 0),
                "verdict": {"passed": ok, "gates": gates},
            }
        )
    return {
        "schema": SCHEMA_VERSION,
        "run_id": "run-20250101-abc",
        "created": "2025-01-01T12:00:00+00:00",
        "model": {"name": "digits-cnn", "task": "classification", "source": "modelyard zoo", "spec": None},
        "dataset": {
            "name": "digits",
            "modality": "image",
            "n_train": 1437,
            "n_test": 360,
            "n_cal": None,
            "split": "20% of the items, stratified, seed 0",
            "slice_columns": [],
            "datasheet": None,
            "num_classes": 10,
            "classes": [str(k) for k in range(10)],
            "paraphrase_pairs": 0,
            "fingerprint_sha256": "f" * 64,
            "source": source,
            "license": license,
        },
        "hardware": {
            "cpu": "Test CPU 3000",
            "cores": 2,
            "machine": "test machine",
            "isa": {"avx2": True, "avx512": False, "vnni": False, "amx": False},
            "int8_note": "no VNNI: int8 matmuls are emulated and may be slower than fp32",
            "price_usd_per_hour": 0.0416,
            "price_source": "on-demand 2-vCPU instance",
            "target": "cpu",
            "efficiency_device": "cpu",
        },
        "policy": {"objective": "cheapest", "gates": {"accuracy_drop_points": 1.0, "ece_max": 0.1}},
        "candidates": cands,
        "skipped": [{"recipe": "fp16", "pass": "fp16", "reason": SKIPPED_REASON}],
        "champion": "int8-dynamic",
        "pareto": ["baseline", "int8-dynamic"],
        "champion_reason": "cheapest candidate that passed every gate (0.0067 USD per 1M predictions)",
        "audit": {"data": {}, "model": {}},
        "caveats": [],
        "suite": {},
    }


def embedder_evidence() -> dict[str, Any]:
    cands = []
    for i, name in enumerate(["minilm", "minilm-int8"]):
        ms = [
            measure("quality.cosine_mean", 1.0 - 0.004 * i, (0.99 - 0.004 * i, 1.0)),
            measure("quality.cosine_p5", 1.0 - 0.02 * i),
            measure("quality.top10_agreement", 1.0 - 0.05 * i),
            measure("quality.paraphrase_recall_at_1", 0.9, (0.85, 0.94)),
            measure("efficiency.latency_p50_ms", 8.0 / (i + 1), samples_ms=[8.0 / (i + 1)] * 5 + [9.0]),
            measure("efficiency.throughput_best", 300.0 * (i + 1), curve={"1": 100.0, "16": 300.0 * (i + 1)}),
            measure("efficiency.size_bytes", 90_000_000 / (i + 1) ** 2),
            measure("efficiency.cost_usd_per_1m", 0.04 / (i + 1)),
        ]
        cands.append(
            {
                "name": name,
                "parent": None if i == 0 else "minilm",
                "format": "hf" if i == 0 else "onnx",
                "passes": [] if i == 0 else [{"pass": "int8-dynamic", "config": {}}],
                "artifact_sha256": "a" * 64,
                "size_bytes": 1,
                "notes": [],
                "meta": {},
                "serving": None,
                "measurements": {m.name: m.to_dict() for m in ms},
                "verdict": {
                    "passed": True,
                    "gates": [gate("cosine", "quality.cosine_mean", True, 0.996, 0.99, "ok")],
                },
            }
        )
    return {
        "schema": SCHEMA_VERSION,
        "run_id": "run-emb",
        "created": "2025-01-02T00:00:00+00:00",
        "model": {
            "name": "all-MiniLM-L6-v2",
            "task": "embedding",
            "source": "sentence-transformers",
            "spec": None,
            "license": "Apache-2.0",
        },
        "dataset": {
            "name": "paraphrases",
            "modality": "text",
            "n_train": 0,
            "n_test": 2000,
            "n_cal": None,
            "split": "given as separate items",
            "slice_columns": [],
            "datasheet": None,
            "num_classes": None,
            "classes": None,
            "paraphrase_pairs": 1000,
            "fingerprint_sha256": "e" * 64,
            "source": "built-in demo",
            "license": "CC-BY-4.0",
        },
        "hardware": {
            "cpu": "Test CPU",
            "cores": 2,
            "machine": "x86_64",
            "isa": {"avx2": True},
            "int8_note": "",
            "price_usd_per_hour": 0.04,
            "price_source": "x",
            "target": "cpu",
            "efficiency_device": "cpu",
        },
        "policy": {},
        "candidates": cands,
        "skipped": [],
        "champion": "minilm-int8",
        "pareto": ["minilm", "minilm-int8"],
        "champion_reason": "cheapest passing candidate",
        "audit": {"data": {}, "model": {}},
        "caveats": [],
        "suite": {},
    }


def unknown_evidence() -> dict[str, Any]:
    """One candidate with unknown measurements, unrecorded facts (empty strings, nulls, an empty policy) and
    a failed-closed gate."""
    ms = [
        measure("quality.accuracy", None, reason="predictions failed: runner crashed"),
        measure("calibration.ece", float("nan")),
        measure("efficiency.latency_p50_ms", 1.5, samples_ms=["fast", None, float("nan")]),
        measure("efficiency.throughput_best", None, curve={"b": "x"}),
    ]
    return {
        "schema": SCHEMA_VERSION,
        "run_id": "run-unknown",
        "created": "2025-01-03T00:00:00+00:00",
        "model": {"name": "mystery", "task": "classification", "source": "", "spec": None},
        "dataset": {
            "name": "tiny",
            "modality": "tabular",
            "n_train": 0,
            "n_test": 40,
            "n_cal": None,
            "split": "not recorded",
            "slice_columns": [],
            "datasheet": None,
            "num_classes": None,
            "classes": None,
            "paraphrase_pairs": 0,
            "fingerprint_sha256": "",
            "source": None,
            "license": None,
        },
        "hardware": {
            "cpu": "",
            "cores": 0,
            "machine": "",
            "isa": {},
            "int8_note": "",
            "price_usd_per_hour": 0.0,
            "price_source": "",
            "target": "cpu",
            "efficiency_device": "not recorded",
        },
        "policy": {},
        "candidates": [
            {
                "name": "baseline",
                "parent": None,
                "format": "torch",
                "passes": [],
                "artifact_sha256": "0" * 64,
                "size_bytes": 0,
                "notes": [],
                "meta": {},
                "serving": None,
                "measurements": {m.name: m.to_dict() for m in ms},
                "verdict": {
                    "passed": False,
                    "gates": [
                        gate(
                            "accuracy floor",
                            "quality.accuracy",
                            None,
                            None,
                            0.9,
                            "accuracy is unknown: fails closed",
                        )
                    ],
                },
            }
        ],
        "skipped": [],
        "champion": None,
        "pareto": [],
        "champion_reason": "no candidate passed every gate",
        "audit": {"data": {}, "model": {}},
        "caveats": [],
        "suite": {},
    }


def as_v1(evidence: dict[str, Any]) -> dict[str, Any]:
    """``evidence`` shaped like a version 1 file written before audits, serving rules, the model spec,
    calibration splits and the efficiency device were recorded (``migrate_v1`` fills them in)."""
    out = {k: val for k, val in evidence.items() if k not in ("audit", "caveats", "suite")}
    out["schema"] = V1
    out["model"] = {k: val for k, val in evidence["model"].items() if k != "spec"}
    drop = ("n_cal", "split", "slice_columns", "datasheet")
    out["dataset"] = {k: val for k, val in evidence["dataset"].items() if k not in drop}
    drop = ("target", "efficiency_device", "machine")
    out["hardware"] = {k: val for k, val in evidence["hardware"].items() if k not in drop}
    out["candidates"] = [
        {k: val for k, val in c.items() if k not in ("meta", "serving")} for c in evidence["candidates"]
    ]
    return out


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a model card."""
    match = re.match(r"^---\n(.*?)\n---\n", text, re.S)
    assert match, "card has no YAML front matter"
    data = yaml.safe_load(match.group(1))
    assert isinstance(data, dict)
    return data


def risks_section(text: str) -> str:
    """A model card from its "Limitations and risks" heading on."""
    return text.split("## Limitations and risks", 1)[1]
