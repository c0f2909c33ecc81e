"""The ``fp16`` pass: float32 ONNX -> float16 ONNX, for GPU targets only.

On CPU, ONNX Runtime's fp16 kernels are few and slower than fp32 (the graph fills with Casts), so the pass
skips unless the run targets a GPU. When ONNX Runtime's CUDA execution provider sees a device, the converted
model is test-loaded there and the pass skips if it lands on the CPU. Conversion uses
``onnxruntime.transformers.float16`` (ops that are unsafe in fp16 stay fp32 via its default block list);
``keep_io_types`` keeps float32 inputs and outputs so the preprocessors and evaluation code see the same
dtypes as before.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, ConfigError, ModelyardError, PassSkipped, first_line
from modelyard.optimize.registry import PassContext, register_pass
from modelyard.runtime.base import RunnerSpec, TensorSpec

_QUANTIZED_OPS = frozenset(
    {
        "QuantizeLinear",
        "DequantizeLinear",
        "DynamicQuantizeLinear",
        "MatMulInteger",
        "ConvInteger",
        "QAttention",
        "QEmbedLayerNormalization",
        "DynamicQuantizeMatMul",
        "QLinearConv",
        "QLinearMatMul",
        "MatMulNBits",
    }
)


@dataclass(frozen=True)
class Fp16Config:
    """``keep_io_types``: keep float32 model inputs and outputs (Casts inside the graph)."""

    keep_io_types: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.keep_io_types, bool):
            raise ConfigError(f"fp16: keep_io_types must be true or false, got {self.keep_io_types!r}")


def _gpu_check(path: Path) -> str:
    """Open the fp16 model with ONNX Runtime on CUDA (the device it will be measured and served on) when ONNX
    Runtime can run there; a note saying where it loaded, or why it was not test-loaded (the pipeline then
    leaves its efficiency UNKNOWN rather than time it on the CPU). Skips when ONNX Runtime refuses the model
    on CUDA or places it on the CPU."""
    from modelyard.runtime.device import gpu_runtime
    from modelyard.runtime.onnx import make_session, providers_for, session_device

    status = gpu_runtime()
    if not status.ort_cuda:
        return f"not test-loaded: ONNX Runtime cannot run on the GPU here ({status.ort_note})"
    try:
        sess = make_session(path, providers=providers_for("cuda:0"))
    except ModelyardError as exc:
        raise PassSkipped(f"fp16: ONNX Runtime (CUDA) refuses the fp16 model: {exc}") from None
    device = session_device(sess)
    if device == "cpu":
        raise PassSkipped("fp16: ONNX Runtime placed the fp16 model on the CPU, not on the GPU")
    return f"loads with ONNX Runtime on {device} (providers: {', '.join(sess.get_providers())})"


def convert(src: Path, dest: Path, keep_io_types: bool) -> Any:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = onnx.load(str(src))
    if any(n.op_type in _QUANTIZED_OPS for n in model.graph.node):
        raise PassSkipped("fp16: the model is already quantized to int8; convert the fp32 model instead")
    try:
        half = convert_float_to_float16(model, keep_io_types=keep_io_types)
        OnnxModel(half).topological_sort()  # the converter appends its input Casts at the end of the graph
        onnx.checker.check_model(half)
    except Exception as exc:
        raise ArtifactError(f"fp16: conversion of {src} failed: {first_line(exc)}") from None
    onnx.save(half, str(dest))
    return half


def _half_spec(spec: RunnerSpec) -> RunnerSpec:
    def half(t: TensorSpec) -> TensorSpec:
        return replace(t, dtype="float16") if t.dtype == "float32" else t

    return replace(
        spec, inputs=tuple(half(t) for t in spec.inputs), outputs=tuple(half(t) for t in spec.outputs)
    )


@register_pass("fp16", Fp16Config, "float16 ONNX for GPU targets (skipped on CPU)")
def fp16_pass(candidate: Candidate, config: Fp16Config, ctx: PassContext) -> Candidate:
    if not ctx.is_gpu:
        raise PassSkipped(
            "fp16 needs a GPU target; this machine has none (CPU fp16 kernels are slower than fp32)"
        )
    if candidate.format != "onnx":
        raise PassSkipped(
            f"fp16 works on ONNX models and this candidate is {candidate.format}; run 'onnx' first"
        )
    dest = Path(ctx.workdir) / "model.onnx"
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    ctx.progress("converting to float16")
    convert(candidate.path, dest, config.keep_io_types)
    check = _gpu_check(dest)
    notes = [
        f"float16 weights and compute (ops unsafe in fp16 kept fp32); "
        f"{'float32' if config.keep_io_types else 'float16'} inputs and outputs; {check}"
    ]
    return Candidate(
        name=candidate.name,
        format="onnx",
        path=dest,
        spec=candidate.spec if config.keep_io_types else _half_spec(candidate.spec),
        parent=None,
        passes=[],
        tokenizer_dir=candidate.tokenizer_dir,
        meta={**candidate.meta, "precision": "fp16", "keep_io_types": config.keep_io_types},
        notes=notes,
    )
