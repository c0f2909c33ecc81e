"""SmoothQuant-style activation smoothing of an ONNX graph, before dynamic int8 quantization.

Dynamic int8 quantizes each activation tensor with one scale for the whole tensor, so a few outlier input
channels (BERT's LayerNorm and GELU outputs have some) crush every other channel to a handful of levels.
Smoothing moves that range into the weights, where quantization is per output channel and cheap to absorb:
for a consumer ``Y = X @ W`` with ``W`` an initializer, pick a per-input-channel factor

    s_k = max|X_k| ** alpha / max|W_k| ** (1 - alpha)      (clipped to [min_scale, max_scale])

then ``Y = (X / s) @ (s[:, None] * W)``: the rows of ``W`` are scaled offline and one elementwise ``Mul(X,
1 / s)`` is inserted in front of the consumer. In fp32 the rewrite is exact up to rounding.

Consumers handled: ``MatMul`` with a 2-D initializer as input 1, ``Gemm`` with an initializer B (no
transA), and the fused ``Attention`` contrib op (input 0 is X [B, S, K], input 1 the packed QKV weight
[K, 3K]). A weight initializer shared by several nodes is left alone. When one tensor feeds several
smoothed consumers they share one factor (computed from the max over their weights) and one ``Mul``;
consumers outside the set keep reading the original tensor.

``max|X_k|`` is measured on calibration feeds (training inputs) by exposing the tensors as extra graph
outputs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import PassSkipped
from modelyard.optimize.passes.int8.ort import BATCH, _batches, _load
from modelyard.optimize.registry import PassContext

SMOOTH_OPS = ("MatMul", "Gemm", "Attention")
MIN_SCALE = 1e-2
MAX_SCALE = 1e2


@dataclass
class Target:
    """One smoothable consumer: node ``node`` reads activation ``x`` and weight initializer ``w``; the
    weight's input-channel axis is ``axis`` (0 for MatMul/Attention/Gemm, 1 for Gemm with transB)."""

    node: str
    op_type: str
    x: str
    w: str
    axis: int


@dataclass
class SmoothReport:
    """What a smoothing rewrite did: the alpha, which nodes were smoothed, how many Mul nodes it added."""

    alpha: float
    nodes: list[str] = field(default_factory=list)
    tensors: int = 0
    scale_range: tuple[float, float] = (1.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "alpha": self.alpha,
            "smoothed_nodes": len(self.nodes),
            "mul_nodes": self.tensors,
            "scale_min": round(self.scale_range[0], 6),
            "scale_max": round(self.scale_range[1], 6),
        }


def find_targets(model: Any, op_types: Sequence[str] = SMOOTH_OPS) -> list[Target]:
    """The consumers that can be smoothed, in graph order (named nodes only)."""
    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    out = []
    for node in model.graph.node:
        if node.op_type not in op_types or not node.name or len(node.input) < 2:
            continue
        x, w = node.input[0], node.input[1]
        if x in inits or w not in inits or uses.get(w, 0) != 1 or len(inits[w].dims) != 2:
            continue
        axis = 0
        if node.op_type == "Gemm":
            attrs = {a.name: a.i for a in node.attribute if a.type == 2}  # INT
            if attrs.get("transA", 0):
                continue
            axis = 1 if attrs.get("transB", 0) else 0
        elif node.op_type == "Attention" and node.domain not in ("com.microsoft", ""):
            continue
        out.append(Target(node.name, node.op_type, x, w, axis))
    return out


def channel_max(
    model_path: Path,
    tensors: Sequence[str],
    batches: Sequence[dict[str, np.ndarray]],
    threads: int | None = None,
) -> dict[str, np.ndarray]:
    """Per-channel (last axis) max |x| of each tensor over the calibration batches."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(model, str(path))
        del model
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    inputs = {i.name for i in sess.get_inputs()}
    names = list(tensors)
    stats: dict[str, np.ndarray] = {}
    for feeds in batches:
        values = sess.run(names, {k: v for k, v in feeds.items() if k in inputs})
        for name, value in zip(names, values, strict=True):
            arr = np.abs(np.asarray(value, dtype=np.float32))
            m = arr.reshape(-1, arr.shape[-1]).max(axis=0) if arr.ndim > 1 else arr
            stats[name] = m if name not in stats else np.maximum(stats[name], m)
    return stats


def smoothing_scales(
    x_max: np.ndarray,
    w_max: np.ndarray,
    alpha: float,
    min_scale: float = MIN_SCALE,
    max_scale: float = MAX_SCALE,
) -> np.ndarray:
    """s_k = x_max_k ** alpha / w_max_k ** (1 - alpha), clipped to [min_scale, max_scale]. A channel whose
    weights are all zero does not reach the output, so it gets ``max_scale`` (shrunk as far as allowed);
    a channel that is always zero (or not finite) keeps 1."""
    x = np.asarray(x_max, dtype=np.float64)
    w = np.asarray(w_max, dtype=np.float64)
    finite = np.isfinite(x) & np.isfinite(w)
    ok = (x > 0) & (w > 0) & finite
    s = np.ones_like(x)
    s[ok] = np.power(x[ok], alpha) / np.power(w[ok], 1.0 - alpha)
    s[(x > 0) & (w == 0) & finite] = max_scale
    return np.clip(s, min_scale, max_scale)


def smooth_model(
    model: Any,
    stats: dict[str, np.ndarray],
    alpha: float,
    targets: Sequence[Target],
    *,
    min_scale: float = MIN_SCALE,
    max_scale: float = MAX_SCALE,
) -> tuple[Any, SmoothReport]:
    """Rewrite ``model`` (a copy is returned) so that each target reads ``x / s`` and its weight rows carry
    ``s``. Targets whose activation has no statistics, or whose channel count disagrees, are skipped."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {t.name: t for t in out.graph.initializer}
    groups: dict[str, list[Target]] = {}
    weights: dict[str, np.ndarray] = {}
    for t in targets:
        if t.x not in stats:
            continue
        w = numpy_helper.to_array(inits[t.w])
        if w.shape[t.axis] != stats[t.x].shape[0] or w.dtype != np.float32:
            continue
        weights[t.w] = w
        groups.setdefault(t.x, []).append(t)
    report = SmoothReport(alpha=float(alpha))
    lo, hi = np.inf, -np.inf
    node_index = {n.name: n for n in out.graph.node if n.name}
    taken = {t.name for t in out.graph.initializer} | {n.name for n in out.graph.node}
    taken |= {o for n in out.graph.node for o in n.output} | {i.name for i in out.graph.input}
    new_nodes: dict[str, Any] = {}  # consumer name -> Mul node to insert before it
    for i, (x, members) in enumerate(groups.items()):
        w_max = np.max(
            [np.abs(weights[t.w]).max(axis=1 - t.axis) for t in members],
            axis=0,
        )
        s = smoothing_scales(stats[x], w_max, alpha, min_scale, max_scale).astype(np.float32)
        lo, hi = min(lo, float(s.min())), max(hi, float(s.max()))
        inv_name = _fresh(f"smooth_{i}_inv_scale", taken)
        y_name = _fresh(f"{x}_smoothed", taken)
        mul_name = _fresh(f"Smooth_{i}_Mul", taken)
        out.graph.initializer.append(numpy_helper.from_array((1.0 / s).astype(np.float32), inv_name))
        mul = helper.make_node("Mul", [x, inv_name], [y_name], name=mul_name)
        first = min(members, key=lambda t: _position(out, t.node))
        new_nodes[first.node] = mul
        for t in members:
            w = weights[t.w]
            scaled = w * (s[:, None] if t.axis == 0 else s[None, :])
            inits[t.w].CopyFrom(numpy_helper.from_array(scaled.astype(np.float32), t.w))
            node = node_index[t.node]
            node.input[0] = y_name
            report.nodes.append(t.node)
        report.tensors += 1
    if new_nodes:
        ordered = []
        for node in out.graph.node:
            if node.name in new_nodes:
                ordered.append(new_nodes[node.name])
            ordered.append(node)
        del out.graph.node[:]
        out.graph.node.extend(ordered)
    if report.tensors:
        report.scale_range = (lo, hi)
    return out, report


def _fresh(name: str, taken: set[str]) -> str:
    out, n = name, 1
    while out in taken:
        out, n = f"{name}_{n}", n + 1
    taken.add(out)
    return out


def _position(model: Any, name: str) -> int:
    for i, node in enumerate(model.graph.node):
        if node.name == name:
            return i
    return len(model.graph.node)


def smooth_file(
    src: Path,
    dst: Path,
    stats: dict[str, np.ndarray],
    alpha: float,
    targets: Sequence[Target],
) -> SmoothReport:
    """``smooth_model`` from file to file."""
    import onnx

    smoothed, report = smooth_model(onnx.load(str(src)), stats, alpha, targets)
    onnx.save(smoothed, str(dst))
    return report


# ---------------------------------------------------------------------------------------------------
# smoothing a candidate for the int8 passes: channel maxima from training inputs, the fp32 exactness check

SMOOTH_TOLERANCE = 1e-3  # max abs output change allowed for the fp32 smoothed graph (relative to max |y|)


@dataclass
class Smoother:
    """Channel statistics of one fp32 graph, ready to write smoothed copies of it for any alpha."""

    src: Path
    targets: list[Any]
    stats: dict[str, np.ndarray]
    samples: int

    def write(self, dst: Path, alpha: float) -> SmoothReport:
        return smooth_file(self.src, dst, self.stats, alpha, self.targets)


def smoother(
    candidate: Candidate, ctx: PassContext, samples: int, op_types: Sequence[str]
) -> Smoother | None:
    """Measure per-channel max |x| of every smoothable input on ``samples`` training inputs (natural-length
    batches of 32, like the runtime sees them); None when the graph has nothing to smooth."""
    wanted = {"Gemm", *op_types} if "MatMul" in op_types else set(op_types)
    targets = [t for t in find_targets(_load(candidate.path)) if t.op_type in wanted]
    if not targets:
        return None
    x = ctx.dataset.fit_sample(samples, seed=ctx.seed)
    batches = _batches(candidate, x, BATCH)
    stats = channel_max(candidate.path, sorted({t.x for t in targets}), batches, ctx.threads)
    return Smoother(candidate.path, targets, stats, len(x))


def smoothing_error(
    original: Path, smoothed: Path, feeds: dict[str, np.ndarray], threads: int | None
) -> float:
    """Max abs difference of the two fp32 graphs' first output on ``feeds``, relative to max |y| (>= 1)."""
    from modelyard.optimize.passes.export import run_onnx

    a = run_onnx(original, feeds, threads)
    b = run_onnx(smoothed, feeds, threads)
    return float(np.max(np.abs(a - b)) / max(1.0, float(np.max(np.abs(a)))))


def _check_smoothing(err: float, pass_name: str) -> None:
    if not err <= SMOOTH_TOLERANCE:
        raise PassSkipped(
            f"{pass_name}: the smoothed fp32 graph differs from the original by {err:.2e} (relative, allowed "
            f"{SMOOTH_TOLERANCE:g}); run without smoothing"
        )


def _smooth_note(report: SmoothReport, samples: int) -> str:
    lo, hi = report.scale_range
    return (
        f"SmoothQuant smoothing alpha {report.alpha:g} on {report.tensors} input tensor(s) of "
        f"{len(report.nodes)} node(s) (channel maxima from {samples} training inputs; scales {lo:.3g}-{hi:.3g})"
    )
