"""What the OpenVINO passes share: the availability check, the ONNX file a conversion starts from, the
conversion to an fp32 IR, the compile-and-read-back check, and the OpenVINO candidate with its runtime meta.

Conversion is ``openvino.convert_model`` on the ONNX file, saved with ``compress_to_fp16=False`` (the
default of ``save_model`` stores fp16 weights, which would make an "fp32" candidate something else).
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, ConfigError, PassSkipped, first_line
from modelyard.optimize.passes.export import OnnxExportConfig, _onnx_meta, onnx_pass
from modelyard.optimize.registry import PassContext
from modelyard.runtime.openvino import HINTS, META_KEY, OvRunner, OvSettings, openvino_missing

# ops of an OpenVINO model that mark a transformer encoder (LayerNorm becomes MVN; fused attention)
TRANSFORMER_OV_OPS = frozenset({"MVN", "ScaledDotProductAttention"})
IR_NAME = "model.xml"


@dataclass(frozen=True)
class OpenVinoConfig:
    """``hint``: OpenVINO's performance hint, "LATENCY" (one stream, all threads on one request) or
    "THROUGHPUT" (several streams for concurrent requests). ``streams``: None = what the hint picks."""

    hint: str = "LATENCY"
    streams: int | None = None

    def __post_init__(self) -> None:
        check_runtime_options("openvino", self.hint, self.streams)


def check_runtime_options(pass_name: str, hint: Any, streams: Any) -> None:
    problems = []
    if hint not in HINTS:
        problems.append(f"hint must be one of {', '.join(HINTS)}, got {hint!r}")
    if streams is not None and (isinstance(streams, bool) or not isinstance(streams, int) or streams < 1):
        problems.append(f"streams must be None (the hint decides) or an integer >= 1, got {streams!r}")
    if problems:
        raise ConfigError(f"{pass_name}: {'; '.join(problems)}")


def require_openvino(pass_name: str) -> None:
    """PassSkipped with one line when OpenVINO cannot be imported."""
    reason = openvino_missing()
    if reason:
        raise PassSkipped(f"{pass_name}: {reason}")


def onnx_source(candidate: Candidate, ctx: PassContext, tmp: Path, pass_name: str) -> tuple[Path, list[str]]:
    """The ONNX file to convert and notes on where it came from: an ONNX candidate's own file, or for a
    PyTorch / Hugging Face candidate its plain ONNX export (the ``onnx`` pass without ONNX Runtime graph
    optimization: OpenVINO fuses the standard graph itself), written under ``tmp``."""
    if candidate.format == "onnx":
        return candidate.path, [f"converted from the ONNX model of {candidate.name!r}"]
    if candidate.format in ("torch", "hf"):
        sub = PassContext(
            workdir=tmp / "onnx",
            dataset=ctx.dataset,
            threads=ctx.threads,
            seed=ctx.seed,
            progress=ctx.progress,
        )
        sub.workdir.mkdir(parents=True)
        exported = onnx_pass(candidate, OnnxExportConfig(optimize=False), sub)
        return exported.path, [f"converted from the plain ONNX export of {candidate.name!r}", *exported.notes]
    raise PassSkipped(
        f"{pass_name}: cannot convert a {candidate.format!r} candidate; expected onnx, torch or hf"
    )


def convert_onnx(src: Path, dest: Path) -> None:
    """ONNX file -> OpenVINO IR (``dest`` .xml and its .bin) with fp32 weights."""
    import openvino as ov

    try:
        model = ov.convert_model(str(src))
        ov.save_model(model, str(dest), compress_to_fp16=False)
    except Exception as exc:  # OpenVINO's conversion errors are RuntimeErrors with long texts
        raise PassSkipped(f"OpenVINO cannot convert {src.name}: {first_line(exc)}") from None


def copy_ir(src: Path, dest: Path) -> None:
    shutil.copyfile(src, dest)
    shutil.copyfile(src.with_suffix(".bin"), dest.with_suffix(".bin"))


def is_transformer(xml: Path) -> bool:
    import openvino as ov

    model = ov.Core().read_model(str(xml))
    return any(op.get_type_name() in TRANSFORMER_OV_OPS for op in model.get_ops())


def load_checked(xml: Path, candidate: Candidate, settings: OvSettings, threads: int | None) -> OvRunner:
    """Compile ``xml`` with ``settings`` and check OpenVINO runs it in the precision asked for (an "f32"
    candidate that ran in bf16, or a "bf16" one that fell back to f32, would be mislabelled)."""
    runner = OvRunner(xml, spec=candidate.spec, threads=threads, settings=settings)
    got = runner.settings["inference_precision"]
    if got != settings.inference_precision:
        raise PassSkipped(
            f"OpenVINO {runner.version} compiled the model with inference precision {got}, not the "
            f"{settings.inference_precision} asked for, on this CPU"
        )
    return runner


def outputs(runner: Any, batches: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    name = runner.spec.output_name
    return np.concatenate([np.asarray(runner.run(b)[name], dtype=np.float32) for b in batches])


def runtime_meta(runner: OvRunner, settings: OvSettings, precision: str) -> dict[str, Any]:
    """The meta an OpenVINO candidate carries: its settings (what ``Candidate.load`` compiles with) and the
    runtime, its version and what it compiled with when the pass checked it (``compiled``)."""
    return {
        META_KEY: settings.to_dict(),
        "precision": precision,
        "runtime": {
            "name": "openvino",
            "version": runner.version,
            "device": "CPU",
            "compiled": runner.settings,
        },
    }


def new_candidate(candidate: Candidate, xml: Path, meta: dict[str, Any], notes: list[str]) -> Candidate:
    return Candidate(
        name=candidate.name,
        format="openvino",
        path=xml,
        spec=candidate.spec,
        parent=None,
        passes=[],
        tokenizer_dir=candidate.tokenizer_dir,
        meta={**_onnx_meta(dict(candidate.meta)), **meta},
        notes=notes,
    )


def fp32_ir(candidate: Candidate, ctx: PassContext, dest: Path, pass_name: str) -> list[str]:
    """Write ``candidate`` as an fp32 OpenVINO IR at ``dest`` (an fp32 OpenVINO candidate's IR is copied);
    returns notes on where it came from. A quantized or fp16 parent is skipped: its IR would not be fp32."""
    if candidate.meta.get("precision") not in (None, "fp32", "bf16") or "quantization" in candidate.meta:
        raise PassSkipped(
            f"{pass_name}: the parent {candidate.name!r} is already quantized or in reduced precision; "
            "start from its fp32 parent (openvino-int8 makes the OpenVINO int8 model)"
        )
    if candidate.format == "openvino":
        copy_ir(candidate.path, dest)
        return [f"started from the OpenVINO IR of {candidate.name!r}"]
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmpdir:
        src, notes = onnx_source(candidate, ctx, Path(tmpdir), pass_name)
        ctx.progress(f"{pass_name}: converting {src.name} to OpenVINO IR")
        try:
            convert_onnx(src, dest)
        except PassSkipped as exc:
            raise PassSkipped(f"{pass_name}: {exc}") from None
    return notes


def max_abs_diff(got: np.ndarray, ref: np.ndarray) -> float:
    if got.shape != ref.shape:
        raise ArtifactError(f"the OpenVINO model outputs shape {got.shape} but its parent gives {ref.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - ref.astype(np.float64)))) if ref.size else 0.0
