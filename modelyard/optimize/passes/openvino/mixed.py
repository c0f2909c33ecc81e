"""Mixed precision by sensitivity for ``openvino-int8``: when no SmoothQuant alpha gives an int8 model that
meets the fidelity targets, the quantized operations that cost the most fidelity are kept out of int8, as
few as the targets allow, with the exclusion search ``int8-auto`` uses (``exclusion_counts``: 1, 2, 4, ...
up to ``max_float_ops``, then bisect; ``search_exclusions`` and ``best_round`` in ``int8.sensitivity``).

What "quantized operation" and "kept out" mean here. NNCF marks what it quantizes with FakeQuantize (FQ)
nodes; OpenVINO's CPU plugin runs an operation in int8 when its inputs pass through FQs, and in the
inference precision otherwise. A quantized operation is an op that reads an FQ output, directly or through
shape-only ops (Reshape, Transpose, ...): MatMuls and convolutions (activation and weight FQs), and the
attention op, whose query and key inputs NNCF quantizes at the MatMuls that make them. The fallback starts
from the same quantization with NNCF's weight compression off (the "open" IR: every quantized weight is
still an fp32 constant behind its FQ; ``nncf.quantize`` compresses them only as its last step). Keeping op X
out of int8 is a graph edit on a fresh copy of the open IR: each input edge on the way from an FQ to X is
rewired to the FQ's own input. Only X's edges are rewired, not the FQ's output as a whole, which would also
unquantize the other readers of a shared FQ (the query, key and value MatMuls read one LayerNorm output
through one FQ). The remaining weight FQs are then compressed to int8 constants with the transformation
``nncf.quantize`` itself applies (``openvino._offline_transformations.compress_quantize_weights_transformation``)
and the IR is saved. X then runs with its fp32 weights in the inference precision.

Why the bypassed graph is the final model, not a re-quantization with ``nncf.IgnoredScope(names=...)``:
every other op keeps exactly the quantization parameters that were calibrated, ranked and measured (a
re-quantization re-runs SmoothQuant, range estimation and bias correction around the ignored ops, so the
model served would not be the one the search measured), and a search round costs one compile instead of a
whole NNCF run. ``nncf.quantize_with_accuracy_control`` does the same kind of restoring, but judges one
scalar metric against ``max_drop`` where the policy has several floors, compiles its trial models with its
own settings rather than the inference precision the candidate is served with, and runs its own search,
whose rounds could not be recorded like ``int8-auto``'s.

Ranking (cheap, one compile per op, no re-quantization): the open model and, for each quantized op, a copy
with that op alone kept out are compiled and run on ``RANK_ITEMS`` items of the fidelity draw (fit items);
an op's score is the damage (1 - cosine for embedders, KL for classifiers) it removes.

Precision of the kept-out ops: OpenVINO's ``INFERENCE_PRECISION_HINT`` is the precision of everything that
is not int8. It is "bf16" where the CPU has BF16 instructions (AVX512_BF16 or AMX, as for ``openvino-bf16``)
and OpenVINO reports it compiled in bf16, "f32" otherwise. The ranking and the search rounds are compiled
that way, so the fidelity they measure includes the bf16 rounding of the ops that were never int8
(LayerNorm, Softmax, GELU).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import modelyard.runtime.openvino as ov_runtime
from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError
from modelyard.optimize.passes.int8.sensitivity import (
    Ranking,
    SearchRound,
    best_round,
    fidelity,
    search_exclusions,
)
from modelyard.optimize.passes.openvino.common import load_checked, outputs
from modelyard.optimize.passes.openvino.convert import bf16_unsupported
from modelyard.runtime.device import default_threads
from modelyard.runtime.openvino import OvSettings

RANK_ITEMS = 64  # fit items each op's ranking run measures
# ops an FQ's int8 passes through unchanged on its way to the op that computes in int8
SHAPE_OPS = frozenset(
    {"Reshape", "Transpose", "Squeeze", "Unsqueeze", "StridedSlice", "Slice", "Split", "VariadicSplit"}
    | {"Concat", "MaxPool", "Convert"}
)


@dataclass
class QuantizedOps:
    """The quantized ops of an open IR, in graph order: each op's label (its friendly name, with
    ``#index`` when the name is not unique) and the input edges (consumer index in ``get_ordered_ops()``,
    input port) that read an FQ on the way to it."""

    edges: dict[str, list[tuple[int, int]]]
    types: dict[str, str]
    n_ops: int

    @property
    def names(self) -> list[str]:
        return list(self.edges)


def quantized_ops(model: Any) -> QuantizedOps:
    """Every op of ``model`` (an open IR) that reads a FakeQuantize output, directly or through ``SHAPE_OPS``."""
    ordered = list(model.get_ordered_ops())
    index = {op.get_name(): i for i, op in enumerate(ordered)}  # get_name(): unique per node
    counts: dict[str, int] = {}
    for op in ordered:
        counts[op.get_friendly_name()] = counts.get(op.get_friendly_name(), 0) + 1

    def label(i: int) -> str:
        name = ordered[i].get_friendly_name()
        return name if counts[name] == 1 else f"{name}#{i}"

    def reached(node: Any, seen: set[int]) -> list[int]:
        i = index[node.get_name()]
        if i in seen or node.get_type_name() in ("Result", "FakeQuantize"):
            return []
        seen.add(i)
        if node.get_type_name() not in SHAPE_OPS:
            return [i]
        return [
            j for out in node.outputs() for t in out.get_target_inputs() for j in reached(t.get_node(), seen)
        ]

    found: dict[int, list[tuple[int, int]]] = {}
    for op in ordered:
        if op.get_type_name() != "FakeQuantize":
            continue
        for target in op.output(0).get_target_inputs():
            consumer = target.get_node()
            edge = (index[consumer.get_name()], target.get_index())
            for i in reached(consumer, set()):
                if edge not in found.setdefault(i, []):
                    found[i].append(edge)
    return QuantizedOps(
        {label(i): found[i] for i in sorted(found)},
        {label(i): ordered[i].get_type_name() for i in sorted(found)},
        len(ordered),
    )


def bypass(model: Any, ops: QuantizedOps, keep_out: Sequence[str]) -> Any:
    """Rewire, in ``model`` (a fresh copy of the open IR), every FQ edge of the ops ``keep_out``: each of those
    inputs then reads the FQ's own input. Returns ``model``."""
    ordered = list(model.get_ordered_ops())
    if len(ordered) != ops.n_ops:
        raise ArtifactError(
            f"the open int8 IR has {len(ordered)} ops, expected {ops.n_ops}; it changed on disk"
        )
    done: set[tuple[int, int]] = set()
    for name in keep_out:
        for i, port in ops.edges[name]:
            if (i, port) in done:
                continue
            done.add((i, port))
            fq = ordered[i].input_value(port).get_node()
            if fq.get_type_name() != "FakeQuantize":
                raise ArtifactError(
                    f"input {port} of {ordered[i].get_friendly_name()!r} is not a FakeQuantize"
                )
            ordered[i].input(port).replace_source_output(fq.input_value(0))
    model.validate_nodes_and_infer_types()
    return model


def compressed_copy(open_xml: Path, ops: QuantizedOps, keep_out: Sequence[str], dest: Path) -> Path:
    """The open IR with ``keep_out`` bypassed and the other weight FQs compressed to int8, saved at ``dest``."""
    import openvino as ov
    from openvino._offline_transformations import compress_quantize_weights_transformation

    model = bypass(ov.Core().read_model(str(open_xml)), ops, keep_out)
    compress_quantize_weights_transformation(model)
    ov.save_model(model, str(dest), compress_to_fp16=False)
    return dest


class _InMemory:
    """A compiled in-memory model with the two things ``common.outputs`` needs (``spec`` and ``run``)."""

    def __init__(self, model: Any, candidate: Candidate, settings: OvSettings, threads: int | None) -> None:
        import openvino as ov

        self.compiled = ov.Core().compile_model(
            model, "CPU", settings.compile_config(threads or default_threads())
        )
        self.spec = candidate.spec
        self.precision = ov_runtime.compiled_settings(self.compiled)["inference_precision"]
        self._names = {p.get_any_name() for p in self.compiled.inputs}
        position = [t.name for t in self.spec.outputs].index(self.spec.output_name)
        self._out = next(
            (o for o in self.compiled.outputs if self.spec.output_name in o.get_names()),
            self.compiled.outputs[position],
        )
        self._request = self.compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        result = self._request.infer(
            {k: np.ascontiguousarray(v) for k, v in feeds.items() if k in self._names}
        )
        return {self.spec.output_name: np.array(result[self._out], copy=True)}


@dataclass
class Fallback:
    """What the fallback did: the precision the kept-out ops run in (and why), the ranking, every search
    round, and the passing round with the fewest ops kept out (None when none passed)."""

    precision: str
    why: str
    settings: OvSettings
    ops: QuantizedOps
    ranking: Ranking
    ranked_items: int
    int8_damage: float
    rounds: list[SearchRound] = field(default_factory=list)
    best: SearchRound | None = None

    def summary(self) -> dict[str, Any]:
        top = [{**t, "type": self.ops.types.get(t["node"])} for t in self.ranking.summary(10)]
        return {
            "method": self.ranking.method,
            "items": self.ranked_items,
            "int8_damage": round(self.int8_damage, 6),
            "top": top,
        }


def fallback_settings(hint: str, streams: int | None) -> tuple[OvSettings, str]:
    """The settings the kept-out ops run with, before OpenVINO confirms them: bf16 where the CPU has BF16."""
    reason = bf16_unsupported()
    if reason:
        return OvSettings("f32", hint, streams), reason
    return OvSettings("bf16", hint, streams), "this CPU has BF16 instructions"


def keep_out_of_int8(
    open_xml: Path,
    candidate: Candidate,
    *,
    max_ops: int,
    hint: str,
    streams: int | None,
    batches: Sequence[dict[str, np.ndarray]],
    ref: np.ndarray,
    passes: Callable[[dict[str, float]], bool],
    tmp: Path,
    threads: int | None,
    progress: Callable[[str], None],
) -> Fallback:
    """Rank the quantized ops of ``open_xml`` by the damage keeping each alone out of int8 removes, then keep
    the top 1, 2, 4, ... (then bisect) out until ``passes`` holds on ``batches`` (fit items) against ``ref``."""
    import openvino as ov

    core = ov.Core()
    task = candidate.spec.task
    settings, why = fallback_settings(hint, streams)
    ops = quantized_ops(core.read_model(str(open_xml)))
    # the ranking subset: the first RANK_ITEMS items of the fidelity draw
    sub: list[dict[str, np.ndarray]] = []
    n_sub = 0
    for b in batches:
        if n_sub >= RANK_ITEMS:
            break
        sub.append(b)
        n_sub += len(next(iter(b.values())))
    ref_sub = ref[: min(n_sub, len(ref))]

    def damage(model: Any) -> tuple[float, str]:
        runner = _InMemory(model, candidate, settings, threads)
        return fidelity(outputs(runner, sub), ref_sub, task)["damage"], runner.precision

    base, got = damage(core.read_model(str(open_xml)))
    if got != settings.inference_precision:
        why = (
            f"OpenVINO {ov_runtime.openvino_version()} compiled with inference precision {got} when asked for "
            f"{settings.inference_precision} on this CPU"
        )
        settings = OvSettings("f32", hint, streams)
        base, _ = damage(core.read_model(str(open_xml)))
    scores: dict[str, float] = {}
    for k, name in enumerate(ops.names):
        progress(f"sensitivity {k + 1}/{len(ops.names)}: {name}")
        scores[name] = base - damage(bypass(core.read_model(str(open_xml)), ops, [name]))[0]
    order = sorted(range(len(ops.names)), key=lambda i: (-scores[ops.names[i]], i))
    ranking = Ranking(
        [ops.names[i] for i in order],
        scores,
        f"bypass: each quantized op alone kept out of int8, damage removed on {len(ref_sub)} fit items",
    )

    def measure(path: Path) -> dict[str, float]:
        return fidelity(outputs(load_checked(path, candidate, settings, threads), batches), ref, task)

    rounds = search_exclusions(
        ranking,
        max_ops,
        lambda names: compressed_copy(open_xml, ops, names, tmp / f"kept_out_{len(names)}.xml"),
        measure,
        passes,
        progress,
        round_label=f"keeping {{k}} op(s) out of int8 ({settings.inference_precision})",
    )
    return Fallback(
        settings.inference_precision,
        why,
        settings,
        ops,
        ranking,
        len(ref_sub),
        base,
        rounds,
        best_round(rounds),
    )
