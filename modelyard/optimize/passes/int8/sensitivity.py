"""Helpers for the accuracy-aware int8 search: fidelity against the fp32 parent, the policy floors, and
per-node sensitivity rankings.

Fidelity is measured on training inputs only. Classifiers: top-1 agreement with the parent (plus the mean
KL divergence of the softmax, a smooth score used to rank nodes). Embedders: per-item cosine to the
parent's embedding (mean and 5th percentile) and top-10 neighbour agreement within the sample.

Two rankings, both "most damaging first":
- ``rank_by_isolation``: quantize one node at a time and measure the damage at the model output. Exact
  and generic (works for dynamic int8 graphs, where QAttention/MatMulInteger hide the quantized tensors),
  costs one quantization and one pass over the sample per node.
- ``rank_by_qdq_error``: one pass with ``onnxruntime.quantization.qdq_loss_debug`` over a QDQ model: each
  quantized node scores the relative noise power its quantized inputs carry (activations: before vs after
  their Q/DQ pair; weights: float vs dequantized). Cheap; used for statically quantized graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ConfigError
from modelyard.optimize.passes.int8.ort import FeedReader

logger = logging.getLogger(__name__)

DEFAULT_FLOORS: dict[str, float] = {"agreement_min": 0.99, "cosine_mean_min": 0.99, "cosine_p5_min": 0.98}
# floor key -> fidelity key, per task; top10_min only applies when the policy sets it.
_FLOOR_KEYS = {
    "classification": {"agreement_min": "agreement"},
    "embedding": {"cosine_mean_min": "cosine_mean", "cosine_p5_min": "cosine_p5", "top10_min": "top10"},
}


def fidelity_floors(policy: dict[str, float] | None, task: str) -> dict[str, float]:
    """The floors that apply to ``task``: the policy's values, defaults where it has none."""
    if task not in _FLOOR_KEYS:
        raise ConfigError(f"no fidelity floors for task {task!r}; expected classification or embedding")
    merged = {**DEFAULT_FLOORS, **dict(policy or {})}
    out: dict[str, float] = {}
    for key in _FLOOR_KEYS[task]:
        if key in merged:
            value = float(merged[key])
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"fidelity floor {key} must be within [0, 1], got {value}")
            out[key] = value
    return out


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - np.max(x, axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / np.sum(e, axis=1, keepdims=True))


def fidelity(out: np.ndarray, ref: np.ndarray, task: str) -> dict[str, float]:
    """Agreement of ``out`` with the parent's ``ref`` on the same items; ``damage`` is the smooth
    score used for ranking (0 = identical): mean KL(ref || out) for classifiers, mean (1 - cosine) for
    embedders."""
    from modelyard.evaluate.metrics import cosine_to_reference, topk_agreement

    out = np.asarray(out, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if task == "classification":
        p = _softmax(ref)
        q = _softmax(out)
        kl = np.sum(p * (np.log(np.clip(p, 1e-12, None)) - np.log(np.clip(q, 1e-12, None))), axis=1)
        return {
            "agreement": float(np.mean(np.argmax(out, axis=1) == np.argmax(ref, axis=1))),
            "damage": float(max(0.0, np.mean(kl))),
        }
    cos = cosine_to_reference(out, ref)
    result = {
        "cosine_mean": float(np.mean(cos)),
        "cosine_p5": float(np.percentile(cos, 5)),
        "cosine_min": float(np.min(cos)),
        "damage": float(np.mean(1.0 - cos)),
    }
    if len(cos) >= 2:
        result["top10"] = topk_agreement(out, ref, k=min(10, len(cos) - 1))
    return result


def meets(fid: dict[str, float], floors: dict[str, float], task: str) -> bool:
    keys = _FLOOR_KEYS[task]
    return all(fid.get(keys[k], 0.0) >= v for k, v in floors.items())


def shortfall(fid: dict[str, float], floors: dict[str, float], task: str) -> float:
    """How far ``fid`` is below ``floors`` in total (sum of the per-floor gaps; 0 when it meets them)."""
    keys = _FLOOR_KEYS[task]
    return float(sum(max(0.0, v - fid.get(keys[k], 0.0)) for k, v in floors.items()))


def describe(
    fid: dict[str, float],
    floors: dict[str, float] | None = None,
    task: str | None = None,
    label: str = "floor",
) -> str:
    """'cosine_mean 0.9921 (floor 0.9900), top10 0.9063 (floor 0.9500), cosine_min 0.9591': the floored
    values first, each with its floor (or target, per ``label``)."""
    keys = _FLOOR_KEYS.get(task or "", {})
    parts = []
    shown = set()
    for floor_key, value in (floors or {}).items():
        k = keys.get(floor_key)
        if k is not None and k in fid:
            parts.append(f"{k} {fid[k]:.4f} ({label} {value:.4f})")
            shown.add(k)
    parts.extend(f"{k} {v:.4f}" for k, v in fid.items() if k not in shown and k != "damage")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------
# rankings


@dataclass
class Ranking:
    """Nodes ordered most damaging first, with their scores and how they were measured."""

    nodes: list[str]
    scores: dict[str, float] = field(default_factory=dict)
    method: str = ""

    def top(self, k: int) -> list[str]:
        return self.nodes[:k]

    def summary(self, n: int = 10) -> list[dict[str, Any]]:
        return [{"node": name, "score": self.scores.get(name)} for name in self.nodes[:n]]


def rank_by_isolation(
    nodes: Sequence[str],
    quantize_only: Callable[[str], Path],
    measure: Callable[[Path], dict[str, float]],
    progress: Callable[[str], None] = lambda msg: None,
) -> Ranking:
    """Quantize each node alone (``quantize_only(node)`` returns the model file) and rank by the damage
    ``measure`` reports at the output. Ties keep graph order."""
    scores: dict[str, float] = {}
    for i, name in enumerate(nodes):
        progress(f"sensitivity {i + 1}/{len(nodes)}: {name}")
        scores[name] = measure(quantize_only(name))["damage"]
    order = sorted(range(len(nodes)), key=lambda i: (-scores[nodes[i]], i))
    return Ranking(
        [nodes[i] for i in order], scores, "isolation: each node quantized alone, damage at the output"
    )


def _noise_ratio(a: Sequence[np.ndarray] | np.ndarray, b: Sequence[np.ndarray] | np.ndarray) -> float:
    """||a - b||^2 / ||a||^2 over all the tensors (0 = no quantization noise)."""
    left = np.concatenate([np.ravel(x) for x in (a if isinstance(a, list | tuple) else [a])]).astype(
        np.float64
    )
    right = np.concatenate([np.ravel(x) for x in (b if isinstance(b, list | tuple) else [b])]).astype(
        np.float64
    )
    if left.shape != right.shape:
        return 0.0
    denom = float(np.dot(left, left))
    return float(np.dot(left - right, left - right) / denom) if denom > 0 else 0.0


def quantized_qdq_nodes(model: Any) -> list[Any]:
    """Compute nodes of a QDQ model fed by at least one DequantizeLinear (graph order, named only)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    out = []
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") or not node.name:
            continue
        if any(
            producers.get(i) is not None and producers[i].op_type == "DequantizeLinear" for i in node.input
        ):
            out.append(node)
    return out


def _qdq_numpy(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """Quantize-dequantize ``x`` per tensor the way a QuantizeLinear/DequantizeLinear pair does."""
    info = np.iinfo(zero_point.dtype)
    s = float(np.ravel(scale)[0])
    z = int(np.ravel(zero_point)[0])
    q = np.clip(np.rint(x / s) + z, info.min, info.max)
    return np.asarray((q - z) * s, dtype=x.dtype)


def _single_node_model(node: Any, feeds: dict[str, np.ndarray], opsets: Any) -> Any:
    import onnx
    from onnx import helper

    inputs = [
        helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), None)
        for name, value in feeds.items()
    ]
    outputs = [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None) for o in node.output if o]
    graph = helper.make_graph([node], "probe", inputs, outputs)
    return helper.make_model(graph, opset_imports=list(opsets), ir_version=onnx.IR_VERSION)


def _run_node(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [np.asarray(o) for o in sess.run(None, feeds)]


def rank_by_qdq_error(
    float_path: Path, qdq_path: Path, feeds: Sequence[dict[str, np.ndarray]], tmp: Path
) -> Ranking:
    """Rank the quantized nodes of a QDQ model by the error quantization causes at each node's output.

    ``qdq_loss_debug`` collects the float model's intermediate tensors on ``feeds``
    (``modify_model_output_intermediate_tensors`` + ``collect_activations``) and pairs float with
    dequantized weights (``create_weight_matching``). Each quantized node is then run alone twice on the
    float model's own inputs: once as is, once with its inputs passed through the node's Q/DQ pairs (the
    scales the calibration chose) and its weights dequantized. The score is the relative error power at
    its output, ||y - y_q||^2 / ||y||^2: the damage this node's quantization adds by itself, seen through
    its weights (an input channel with zero weight costs nothing, a crushed small-range channel does).
    Nodes whose inputs were not captured score the relative noise power of their quantized inputs instead.
    """
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    aug = tmp / "debug_float.onnx"
    modify_model_output_intermediate_tensors(str(float_path), str(aug))
    float_acts = collect_activations(str(aug), FeedReader(feeds))
    weights = create_weight_matching(str(float_path), str(qdq_path))

    float_model = onnx.load(str(float_path))
    float_inits = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    model = onnx.load(str(qdq_path))
    q_inits = {t.name: t for t in model.graph.initializer}
    float_nodes = {n.name: n for n in float_model.graph.node if n.name}
    producers = {o: n for n in model.graph.node for o in n.output}
    nodes = quantized_qdq_nodes(model)
    n_runs = len(feeds)
    scores: dict[str, float] = {}
    for node in nodes:
        original = float_nodes.get(node.name)
        if original is None:
            scores[node.name] = 0.0
            continue
        clean: list[dict[str, np.ndarray]] = [{} for _ in range(n_runs)]
        noisy: list[dict[str, np.ndarray]] = [{} for _ in range(n_runs)]
        fallback = 0.0
        complete = True
        for q_in, f_in in zip(node.input, original.input, strict=False):
            if not f_in:
                continue
            dq = producers.get(q_in)
            if f_in in float_inits:
                value = float_inits[f_in]
                noisy_value = weights[f_in]["dequantized"] if f_in in weights else value
                noisy_value = np.asarray(noisy_value, dtype=value.dtype).reshape(value.shape)
                fallback += _noise_ratio(value, noisy_value)
                for i in range(n_runs):
                    clean[i][f_in], noisy[i][f_in] = value, noisy_value
                continue
            acts = float_acts.get(f_in)
            if acts is None or len(acts) != n_runs:
                complete = False
                continue
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[1] in q_inits and len(q.input) > 2:
                scale = numpy_helper.to_array(q_inits[q.input[1]])
                zp = numpy_helper.to_array(q_inits[q.input[2]]) if q.input[2] in q_inits else None
                if zp is None or scale.size != 1:
                    complete = False
                    continue
                for i in range(n_runs):
                    clean[i][f_in] = acts[i]
                    noisy[i][f_in] = _qdq_numpy(acts[i], scale, zp)
                fallback += _noise_ratio(list(acts), [noisy[i][f_in] for i in range(n_runs)])
            else:
                for i in range(n_runs):
                    clean[i][f_in] = noisy[i][f_in] = acts[i]
        if not complete:
            scores[node.name] = fallback
            continue
        try:
            probe = _single_node_model(original, clean[0], float_model.opset_import)
            ys = [y for i in range(n_runs) for y in _run_node(probe, clean[i])]
            yq = [y for i in range(n_runs) for y in _run_node(probe, noisy[i])]
            scores[node.name] = _noise_ratio(ys, yq)
        except Exception as exc:  # an op that cannot run alone: fall back to the input noise
            logger.debug("sensitivity probe of %s failed: %s", node.name, exc)
            scores[node.name] = fallback
    order = sorted(range(len(nodes)), key=lambda i: (-scores[nodes[i].name], i))
    return Ranking(
        [nodes[i].name for i in order],
        scores,
        "qdq_loss_debug: relative error each node's own quantization (inputs through its Q/DQ pairs, "
        "dequantized weights) causes at its output, on the float model's activations",
    )


# ---------------------------------------------------------------------------------------------------
# the exclusion search


@dataclass
class SearchRound:
    fp32_nodes: list[str]
    fidelity: dict[str, float]
    passed: bool
    path: Path

    def to_dict(self) -> dict[str, Any]:
        return {
            "fp32_nodes": len(self.fp32_nodes),
            "fidelity": {k: round(v, 6) for k, v in self.fidelity.items()},
            "passed": self.passed,
        }


def exclusion_counts(n_nodes: int, max_fp32_nodes: int) -> list[int]:
    """1, 2, 4, 8, ... up to min(max_fp32_nodes, n_nodes), which is always tried last."""
    limit = min(max_fp32_nodes, n_nodes)
    counts = []
    k = 1
    while k < limit:
        counts.append(k)
        k *= 2
    if limit >= 1:
        counts.append(limit)
    return counts


def search_exclusions(
    ranking: Ranking,
    max_fp32_nodes: int,
    quantize_excluding: Callable[[list[str]], Path],
    measure: Callable[[Path], dict[str, float]],
    passes: Callable[[dict[str, float]], bool],
    progress: Callable[[str], None] = lambda msg: None,
    refine_rounds: int = 3,
    round_label: str = "re-quantizing with {k} node(s) in fp32",
) -> list[SearchRound]:
    """Keep the top-k ranked nodes in fp32 for k = 1, 2, 4, ... (at most ``max_fp32_nodes`` and at most all
    but one node) until ``passes``; then bisect between the last failing and the first passing k (at most
    ``refine_rounds`` more) to keep as few fp32 as possible. Returns every round in the order run.
    ``round_label`` is the progress line of a round (``{k}``: the number of nodes kept out)."""
    rounds: list[SearchRound] = []

    def run(k: int) -> SearchRound:
        excluded = ranking.top(k)
        progress(round_label.format(k=k))
        path = quantize_excluding(excluded)
        fid = measure(path)
        r = SearchRound(excluded, fid, passes(fid), path)
        rounds.append(r)
        return r

    low = 0
    # At least one node stays quantized: excluding them all would just be the fp32 model again.
    for k in exclusion_counts(len(ranking.nodes) - 1, max_fp32_nodes):
        if run(k).passed:
            high = k
            for _ in range(refine_rounds):
                if high - low <= 1:
                    break
                mid = (low + high) // 2
                if run(mid).passed:
                    high = mid
                else:
                    low = mid
            break
        low = k
    return rounds


def best_round(rounds: Sequence[SearchRound]) -> SearchRound | None:
    """The passing round with the fewest fp32 nodes, or None."""
    passing = [r for r in rounds if r.passed]
    return min(passing, key=lambda r: len(r.fp32_nodes)) if passing else None
