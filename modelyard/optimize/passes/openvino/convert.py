"""The ``openvino`` pass (fp32) and the ``openvino-bf16`` pass: an ONNX candidate (or a PyTorch / Hugging Face
one, through its plain ONNX export) converted to an OpenVINO IR with fp32 weights, compiled for the CPU with
an explicit inference precision: ``f32`` for ``openvino`` (OpenVINO would otherwise pick bf16 on CPUs that
have BF16 instructions), ``bf16`` for ``openvino-bf16``.

``openvino-bf16`` is skipped on CPUs without BF16 instructions (AVX512_BF16 or AMX-BF16, from
:func:`modelyard.runtime.device.cpu_info`): there OpenVINO silently runs bf16 requests in f32, and the
candidate would be the fp32 one under another name. Both passes compile the IR once, check that OpenVINO
runs it in the precision asked for, and compare it with the parent on a few fit examples: the fp32 IR must
match within the export tolerance; the bf16 one's difference is recorded (the gates judge it).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, PassSkipped
from modelyard.optimize.passes.export import example_feeds, output_tolerance
from modelyard.optimize.passes.openvino.common import (
    IR_NAME,
    OpenVinoConfig,
    fp32_ir,
    load_checked,
    max_abs_diff,
    new_candidate,
    outputs,
    require_openvino,
    runtime_meta,
)
from modelyard.optimize.registry import PassContext, register_pass
from modelyard.runtime.device import cpu_info
from modelyard.runtime.openvino import OvSettings

NO_BF16 = "this CPU has no BF16/AMX instructions"


def bf16_unsupported() -> str | None:
    """Why bf16 inference would not run natively on this CPU (None when it would)."""
    isa = cpu_info()["isa"]
    if isa.get("bf16"):
        return None
    return f"{NO_BF16} (avx512_bf16 or amx_bf16); OpenVINO would run bf16 requests in f32 here"


def _convert(
    candidate: Candidate, config: OpenVinoConfig, ctx: PassContext, precision: str, pass_name: str
) -> Candidate:
    dest = Path(ctx.workdir) / IR_NAME
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    notes = fp32_ir(candidate, ctx, dest, pass_name)
    settings = OvSettings(
        inference_precision="f32" if precision == "fp32" else "bf16",
        performance_hint=config.hint,
        streams=config.streams,
    )
    try:
        runner = load_checked(dest, candidate, settings, ctx.threads)
    except PassSkipped as exc:
        raise PassSkipped(f"{pass_name}: {exc}") from None
    feeds = example_feeds(candidate, ctx)
    ref = outputs(candidate.load(threads=ctx.threads), [feeds])
    got = outputs(runner, [feeds])
    diff = max_abs_diff(got, ref)
    n = len(ref)
    if precision == "fp32" and not diff <= output_tolerance(ref):
        raise ArtifactError(
            f"{pass_name}: the OpenVINO fp32 model differs from its parent by {diff:.3g} (max abs) on {n} fit "
            "examples; the conversion changed the model"
        )
    if not np.all(np.isfinite(got)):
        raise ArtifactError(f"{pass_name}: the OpenVINO {precision} model gives non-finite outputs")
    compiled = runner.settings
    notes.append(
        f"OpenVINO {runner.version} IR, fp32 weights; compiled for the CPU with INFERENCE_PRECISION_HINT "
        f"{compiled['inference_precision']}, PERFORMANCE_HINT {compiled['performance_hint']}, "
        f"{compiled['streams']} stream(s), {compiled['threads']} thread(s) when checked (the thread count "
        f"follows the caller); max abs difference vs the parent {diff:.2g} on {n} fit examples"
    )
    meta = {**runtime_meta(runner, settings, precision), "parent_max_abs_diff": diff}
    return new_candidate(candidate, dest, meta, notes)


@register_pass(
    "openvino",
    OpenVinoConfig,
    "convert to OpenVINO IR (from ONNX, or a PyTorch model's ONNX export) and run it with OpenVINO in fp32",
)
def openvino_pass(candidate: Candidate, config: OpenVinoConfig, ctx: PassContext) -> Candidate:
    require_openvino("openvino")
    if candidate.format == "openvino":
        raise PassSkipped("openvino: the candidate is already an OpenVINO model")
    return _convert(candidate, config, ctx, "fp32", "openvino")


@register_pass(
    "openvino-bf16",
    OpenVinoConfig,
    "OpenVINO with bf16 inference precision (skipped on CPUs without BF16/AMX instructions)",
)
def openvino_bf16_pass(candidate: Candidate, config: OpenVinoConfig, ctx: PassContext) -> Candidate:
    require_openvino("openvino-bf16")
    reason = bf16_unsupported()
    if reason:
        raise PassSkipped(f"openvino-bf16: {reason}")
    return _convert(candidate, config, ctx, "bf16", "openvino-bf16")
