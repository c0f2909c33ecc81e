"""The ONNX export: the version's registered files (the ONNX model, its external data, its monitor reference,
a text model's tokenizer) and a sidecar ``modelyard.json`` with what serving it as we do needs beside the
graph: the input contract, the softmax temperature, the OOD rule, the drift reference (a pointer to
``monitor_reference.json`` with its hash and schema), the graph's inputs and outputs, classes, lineage and the
SHA-256 of every file. :func:`read_sidecar` reads one back, checked.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelyard.errors import DataError
from modelyard.monitor.reference import FILE_NAME as REFERENCE_FILE
from modelyard.monitor.reference import SCHEMA as REFERENCE_SCHEMA
from modelyard.serve.model import ServedModel
from modelyard.serve.protocol import tensor_metadata

SIDECAR_FILE = "modelyard.json"
SCHEMA = "modelyard.export.onnx/1"


@dataclass(frozen=True)
class OnnxExport:
    """A read-back ONNX export: ``folder``, the model file's path and the sidecar's fields."""

    folder: Path
    model_path: Path
    sidecar: dict[str, Any]

    @property
    def temperature(self) -> float:
        return float(self.sidecar["temperature"])

    @property
    def ood_rule(self) -> dict[str, Any] | None:
        rule = self.sidecar["ood_rule"]
        return dict(rule) if rule is not None else None

    @property
    def input_contract(self) -> dict[str, Any]:
        return dict(self.sidecar["input_contract"])

    @property
    def reference_path(self) -> Path | None:
        ref = self.sidecar["monitor_reference"]
        return None if ref is None else self.folder / ref["file"]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _graph_tensors(model: ServedModel) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    spec = model.runner.spec

    def dims(shape: Any) -> list[int]:
        return [-1 if d is None else int(d) for d in shape]

    return (
        [tensor_metadata(t.name, t.dtype, dims(t.shape)) for t in spec.inputs],
        [tensor_metadata(t.name, t.dtype, dims(t.shape)) for t in spec.outputs],
    )


def sidecar_for(model: ServedModel, info: Mapping[str, Any], files: Mapping[str, str]) -> dict[str, Any]:
    """The sidecar of ``model`` (``info``: the registry's ``get_version``; ``files``: relative path -> SHA-256
    of the exported files)."""
    inputs, outputs = _graph_tensors(model)
    reference = None
    if REFERENCE_FILE in files:
        reference = {"file": REFERENCE_FILE, "sha256": files[REFERENCE_FILE], "schema": REFERENCE_SCHEMA}
    tokenizer = sorted({p.split("/", 1)[0] for p in files if p.startswith("tokenizer/")})
    return {
        "schema": SCHEMA,
        "model": model.name,
        "version": model.version,
        "candidate": model.candidate.name,
        "artifact_sha256": info.get("artifact_sha256", ""),
        "data_sha256": info.get("data_sha256", ""),
        "passes": info.get("passes", []),
        "model_file": model.candidate.path.name,
        "files": dict(sorted(files.items())),
        "task": model.task,
        "classes": None if model.classes is None else list(model.classes),
        "inputs": inputs,
        "outputs": outputs,
        "input_contract": model.contract,
        "temperature": model.temperature,
        "ood_rule": model.ood_rule,
        "monitor_reference": reference,
        "tokenizer": tokenizer[0] if tokenizer else None,
        "notes": list(model.notes),
    }


def write_onnx_export(model: ServedModel, info: Mapping[str, Any], folder: Path) -> list[Path]:
    """Copy every registered file of ``model`` into ``folder`` and write the sidecar; returns the files."""
    if model.folder is None:
        raise DataError(f"{model.name}:{model.version} has no materialized files to export")
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, str] = {}
    written = []
    for src in sorted(p for p in model.folder.rglob("*") if p.is_file()):
        rel = src.relative_to(model.folder).as_posix()
        dest = folder / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
        files[rel] = sha256_of(dest)
        written.append(dest)
    sidecar = folder / SIDECAR_FILE
    sidecar.write_text(
        json.dumps(sidecar_for(model, info, files), indent=2, allow_nan=False) + "\n", encoding="utf-8"
    )
    return [sidecar, *written]


def read_sidecar(folder: Path | str) -> OnnxExport:
    """Read an ONNX export back: the sidecar parsed and checked (schema, fields, every file's hash); DataError
    naming every problem otherwise."""
    folder = Path(folder)
    path = folder / SIDECAR_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(
            f"cannot read {str(path)!r}: {exc}; point at a folder written by 'modelyard export --format onnx'"
        ) from None
    problems: list[str] = []
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise DataError(f"{str(path)!r} is not a {SCHEMA} sidecar")
    for key, kinds in (
        ("model", str),
        ("version", int),
        ("model_file", str),
        ("files", dict),
        ("inputs", list),
        ("outputs", list),
        ("input_contract", dict),
        ("temperature", (int, float)),
    ):
        if not isinstance(doc.get(key), kinds) or isinstance(doc.get(key), bool):
            problems.append(f"{key!r} is missing or not a {getattr(kinds, '__name__', 'number')}")
    t = doc.get("temperature")
    if isinstance(t, int | float) and not (math.isfinite(t) and t > 0):
        problems.append(f"'temperature' must be a finite number > 0, got {t!r}")
    if doc.get("ood_rule") is not None and not isinstance(doc.get("ood_rule"), dict):
        problems.append("'ood_rule' must be an object or null")
    raw_files = doc.get("files")
    files: dict[str, Any] = raw_files if isinstance(raw_files, dict) else {}
    if isinstance(doc.get("model_file"), str) and doc["model_file"] not in files:
        problems.append(f"the model file {doc['model_file']!r} is not among the listed files")
    for rel, digest in files.items():
        p = folder / rel
        if ".." in Path(rel).parts or not p.is_file():
            problems.append(f"listed file {rel!r} is missing")
        elif sha256_of(p) != digest:
            problems.append(f"file {rel!r} does not match its SHA-256 (changed since the export)")
    ref = doc.get("monitor_reference")
    if ref is not None and (not isinstance(ref, dict) or ref.get("file") not in files):
        problems.append("'monitor_reference' must point at one of the listed files")
    if problems:
        raise DataError(f"{str(path)!r}: " + "; ".join(problems))
    return OnnxExport(folder=folder, model_path=folder / doc["model_file"], sidecar=doc)
