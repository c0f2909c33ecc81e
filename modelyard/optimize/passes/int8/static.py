"""``int8-static``: ``quant_pre_process`` then ``quantize_static`` in QDQ format (S8S8 by default),
calibrated on training inputs fed one example at a time.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from modelyard.candidate import Candidate
from modelyard.errors import PassSkipped, first_line
from modelyard.optimize.passes.int8.configs import StaticQuantConfig
from modelyard.optimize.passes.int8.ort import (
    _count,
    _load,
    _new_candidate,
    calibration_feeds,
    check_runs,
    preprocess_for_static,
    quantize_static_file,
    require_onnx,
)
from modelyard.optimize.passes.int8.sensitivity import quantized_qdq_nodes
from modelyard.optimize.registry import PassContext, register_pass


@register_pass(
    "int8-static", StaticQuantConfig, "ONNX Runtime static int8 (QDQ), calibrated on training inputs"
)
def int8_static(candidate: Candidate, config: StaticQuantConfig, ctx: PassContext) -> Candidate:
    require_onnx(candidate, "int8-static")
    from modelyard.optimize.passes.export import example_feeds

    dest = Path(ctx.workdir) / "model.onnx"
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    x = ctx.dataset.fit_sample(config.samples, seed=ctx.seed)
    feeds = calibration_feeds(candidate, x, config.calibration)
    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        src, problem = preprocess_for_static(candidate.path, Path(tmp) / "pre.onnx")
        if problem:
            notes.append(problem)
        ctx.progress(f"calibrating on {len(feeds)} training inputs ({config.calibration}) and quantizing")
        try:
            quantize_static_file(
                src,
                dest,
                feeds,
                calibration=config.calibration,
                per_channel=config.per_channel,
                activation_type=config.activation_type,
                weight_type=config.weight_type,
                nodes_to_exclude=config.exclude_nodes,
            )
        except Exception as exc:
            raise PassSkipped(
                f"int8-static: ONNX Runtime could not quantize the model: {first_line(exc)}"
            ) from None
    done = quantized_qdq_nodes(_load(dest))
    if not done:
        dest.unlink(missing_ok=True)
        raise PassSkipped("int8-static: ONNX Runtime found nothing to quantize in this graph")
    check_runs(dest, example_feeds(candidate, ctx), "int8-static", ctx.threads)
    notes.insert(
        0,
        f"static int8 QDQ (activations {config.activation_type}, "
        f"{'per-channel' if config.per_channel else 'per-tensor'} "
        f"{config.weight_type} weights), {config.calibration} calibration on {len(feeds)} training inputs; "
        f"quantized {len(done)} nodes: {_count([n.op_type for n in done])}",
    )
    if config.exclude_nodes:
        notes.append(f"kept in fp32 as asked: {', '.join(config.exclude_nodes)}")
    meta = {
        "quantization": {
            "method": "static",
            "calibration": config.calibration,
            "calibration_samples": len(feeds),
            "per_channel": config.per_channel,
            "activation_type": config.activation_type,
            "weight_type": config.weight_type,
            "quantized_nodes": len(done),
        }
    }
    return _new_candidate(candidate, dest, meta, notes)
