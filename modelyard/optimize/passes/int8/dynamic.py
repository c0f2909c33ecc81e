"""``int8-dynamic``: ``quantize_dynamic`` (weights int8 offline, activation scales at run time), per-channel
by default; optionally after SmoothQuant-style smoothing (``smooth_alpha``, see ``smooth.py``). Conv is
excluded by default: dynamic ConvInteger is slow and older ONNX Runtime builds had no CPU kernel for it (u8
activations x s8 weights; ORT issues #3130, #6430). ``DefaultTensorType`` is always passed so fused
transformer graphs quantize (cpu-measurements.md, failure 1).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from modelyard.candidate import Candidate
from modelyard.errors import PassSkipped, first_line
from modelyard.optimize.passes.int8.configs import DynamicQuantConfig
from modelyard.optimize.passes.int8.ort import (
    _count,
    _gemm_names,
    _load,
    _new_candidate,
    check_runs,
    default_reduce_range,
    dynamic_op_types,
    dynamic_quantized_nodes,
    quantize_dynamic_file,
    require_onnx,
)
from modelyard.optimize.passes.int8.smooth import _check_smoothing, _smooth_note, smoother, smoothing_error
from modelyard.optimize.registry import PassContext, register_pass


@register_pass(
    "int8-dynamic", DynamicQuantConfig, "ONNX Runtime dynamic int8 (per-channel weights; Conv kept fp32)"
)
def int8_dynamic(candidate: Candidate, config: DynamicQuantConfig, ctx: PassContext) -> Candidate:
    require_onnx(candidate, "int8-dynamic")
    from modelyard.optimize.passes.export import example_feeds

    dest = Path(ctx.workdir) / "model.onnx"
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    float_model = _load(candidate.path)
    op_types = dynamic_op_types(config.exclude_op_types)
    feeds = example_feeds(candidate, ctx)
    reduce_range = default_reduce_range() if config.reduce_range is None else config.reduce_range
    notes: list[str] = []
    smooth_meta: dict[str, Any] | None = None
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmpdir:
        src = candidate.path
        if config.smooth_alpha is not None:
            ctx.progress(f"smoothing activations (alpha {config.smooth_alpha:g})")
            sm = smoother(candidate, ctx, config.smooth_samples, op_types)
            if sm is None:
                notes.append("smoothing: no MatMul/Gemm/Attention with an initializer weight; not applied")
            else:
                src = Path(tmpdir) / "smoothed.onnx"
                report = sm.write(src, float(config.smooth_alpha))
                err = smoothing_error(candidate.path, src, feeds, ctx.threads)
                _check_smoothing(err, "int8-dynamic")
                notes.append(_smooth_note(report, sm.samples))
                smooth_meta = {**report.to_dict(), "samples": sm.samples, "fp32_max_rel_diff": err}
        ctx.progress("quantizing (dynamic int8)")
        try:
            quantize_dynamic_file(
                src,
                dest,
                per_channel=config.per_channel,
                reduce_range=reduce_range,
                weight_type=config.weight_type,
                op_types=op_types,
                gemms=_gemm_names(float_model),
            )
        except Exception as exc:
            raise PassSkipped(
                f"int8-dynamic: ONNX Runtime could not quantize the model: {first_line(exc)}"
            ) from None
        done = dynamic_quantized_nodes(_load(src), _load(dest), op_types)
    if not done:
        dest.unlink(missing_ok=True)
        raise PassSkipped(
            f"int8-dynamic: nothing to quantize (no {', '.join(sorted({*op_types, 'Gemm'}))} node outside "
            f"exclude_op_types={list(config.exclude_op_types)}); try int8-static"
        )
    check_runs(dest, feeds, "int8-dynamic", ctx.threads)
    settings = f"{'per-channel' if config.per_channel else 'per-tensor'} {config.weight_type} weights"
    if reduce_range:
        settings += (
            ", reduce_range (7-bit weights" + ("" if config.reduce_range else ": x86 without VNNI") + ")"
        )
    notes.insert(
        0, f"dynamic int8 ({settings}); quantized {len(done)} nodes: {_count([op for _, op in done])}"
    )
    if config.exclude_op_types:
        notes.append(f"op types kept fp32: {', '.join(config.exclude_op_types)}")
    meta = {
        "quantization": {
            "method": "dynamic",
            "per_channel": config.per_channel,
            "reduce_range": reduce_range,
            "weight_type": config.weight_type,
            "quantized_nodes": len(done),
        }
    }
    if config.smooth_alpha is not None:
        meta["quantization"]["smooth_alpha"] = float(config.smooth_alpha)
    if smooth_meta is not None:
        meta["smoothing"] = smooth_meta
    return _new_candidate(candidate, dest, meta, notes)
