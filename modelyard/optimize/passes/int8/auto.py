"""``int8-auto``: quantize (static for CNN/MLP graphs, dynamic for transformer graphs), measure fidelity to
the fp32 parent on training inputs; in dynamic mode also try smoothing with each of ``smooth_alphas`` and
keep the best graph; while it is below the policy floors keep the most sensitive nodes in fp32 (1, 2, 4,
... then bisect), up to ``max_fp32_nodes``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import PassSkipped, first_line
from modelyard.optimize.passes.int8.configs import AutoQuantConfig
from modelyard.optimize.passes.int8.ort import (
    BATCH,
    _batches,
    _gemm_names,
    _load,
    _new_candidate,
    _outputs,
    calibration_feeds,
    check_runs,
    default_reduce_range,
    dynamic_op_types,
    dynamic_quantized_nodes,
    preprocess_for_static,
    quantize_dynamic_file,
    quantize_static_file,
    require_onnx,
)
from modelyard.optimize.passes.int8.sensitivity import (
    Ranking,
    best_round,
    describe,
    fidelity,
    fidelity_floors,
    meets,
    quantized_qdq_nodes,
    rank_by_isolation,
    rank_by_qdq_error,
    search_exclusions,
    shortfall,
)
from modelyard.optimize.passes.int8.smooth import (
    SMOOTH_TOLERANCE,
    SmoothReport,
    _smooth_note,
    smoother,
    smoothing_error,
)
from modelyard.optimize.registry import PassContext, register_pass

# Ops whose presence marks a transformer graph (fused by the ORT optimizer, or exported LayerNorm).
TRANSFORMER_OPS = frozenset(
    {
        "Attention",
        "MultiHeadAttention",
        "EmbedLayerNormalization",
        "SkipLayerNormalization",
        "LayerNormalization",
    }
)


# why the nodes kept out of int8 run in fp32 here, where openvino-int8 runs them in bf16 on CPUs with BF16
FALLBACK_REASON = (
    "nodes kept out of int8 run in fp32: ONNX Runtime's CPU execution provider has no bf16 kernels for "
    "MatMul, Gemm or Conv"
)


def is_transformer_graph(model: Any) -> bool:
    return any(n.op_type in TRANSFORMER_OPS for n in model.graph.node)


@dataclass
class _Plan:
    """How one auto run quantizes: a function from the fp32 node list to a model file, and how it ranks."""

    mode: str
    quantize: Callable[[list[str], str], Path]
    rank: Callable[[Path, list[str]], Ranking]
    candidates: Callable[[Path], list[str]]
    describe: str


def _dynamic_plan(
    src: Path,
    config: AutoQuantConfig,
    tmp: Path,
    measure: Callable[[Path], dict[str, float]],
    ctx: PassContext,
    smooth_alpha: float | None = None,
) -> _Plan:
    """Dynamic int8 of ``src`` (the parent, or a smoothed copy of it with ``smooth_alpha``)."""
    float_model = _load(src)
    gemms = _gemm_names(float_model)
    op_types = dynamic_op_types(("Conv",))
    prefix = "dyn" if smooth_alpha is None else f"dyn_s{smooth_alpha:g}"

    def quantize(excluded: list[str], tag: str, only: list[str] | None = None) -> Path:
        dst = tmp / f"{prefix}_{tag}.onnx"
        quantize_dynamic_file(
            src,
            dst,
            per_channel=config.per_channel,
            reduce_range=default_reduce_range(),
            weight_type="int8",
            op_types=op_types,
            gemms=gemms,
            nodes_to_exclude=excluded,
            nodes_to_quantize=only,
        )
        return dst

    def rank(full: Path, nodes: list[str]) -> Ranking:
        def only(name: str) -> Path:
            return quantize([], "probe", [name])

        return rank_by_isolation(nodes, only, measure, ctx.progress)

    def candidates(full: Path) -> list[str]:
        return [name for name, _ in dynamic_quantized_nodes(float_model, _load(full), op_types)]

    how = (
        f"dynamic int8 ({'per-channel' if config.per_channel else 'per-tensor'} int8 weights, Conv kept fp32"
        f"{'' if smooth_alpha is None else f', SmoothQuant alpha {smooth_alpha:g}'})"
    )
    return _Plan("dynamic", lambda ex, tag: quantize(ex, tag), rank, candidates, how)


def _static_plan(
    candidate: Candidate, config: AutoQuantConfig, tmp: Path, ctx: PassContext, notes: list[str]
) -> _Plan:
    x = ctx.dataset.fit_sample(config.samples, seed=ctx.seed)
    feeds = calibration_feeds(candidate, x, config.calibration)
    src, problem = preprocess_for_static(candidate.path, tmp / "pre.onnx")
    if problem:
        notes.append(problem)

    def quantize(excluded: list[str], tag: str) -> Path:
        dst = tmp / f"static_{tag}.onnx"
        quantize_static_file(
            src,
            dst,
            feeds,
            calibration=config.calibration,
            per_channel=config.per_channel,
            activation_type="int8",
            weight_type="int8",
            nodes_to_exclude=excluded,
        )
        return dst

    def rank(full: Path, nodes: list[str]) -> Ranking:
        ranking = rank_by_qdq_error(src, full, feeds[:32], tmp)
        keep = set(nodes)
        return Ranking([n for n in ranking.nodes if n in keep], ranking.scores, ranking.method)

    def candidates(full: Path) -> list[str]:
        return [n.name for n in quantized_qdq_nodes(_load(full))]

    how = (
        f"static int8 QDQ ({'per-channel' if config.per_channel else 'per-tensor'}, {config.calibration} "
        f"calibration on {len(feeds)} training inputs)"
    )
    return _Plan("static", quantize, rank, candidates, how)


@register_pass(
    "int8-auto",
    AutoQuantConfig,
    "accuracy-aware int8: quantize (dynamic: also with SmoothQuant smoothing), measure fidelity to fp32, "
    "keep the most sensitive nodes in fp32 "
    "until the floors hold",
)
def int8_auto(candidate: Candidate, config: AutoQuantConfig, ctx: PassContext) -> Candidate:
    require_onnx(candidate, "int8-auto")
    task = candidate.spec.task
    floors = fidelity_floors(ctx.fidelity, task)
    targets = {k: min(1.0, v + float(config.margin)) for k, v in floors.items()}
    dest = Path(ctx.workdir) / "model.onnx"
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    mode = config.mode
    if mode == "auto":
        mode = "dynamic" if is_transformer_graph(_load(candidate.path)) else "static"

    # Fidelity sample: training inputs, a different draw from the calibration sample.
    x_fid = ctx.dataset.fit_sample(config.samples, seed=ctx.seed + 1)
    batches = _batches(candidate, x_fid, BATCH)
    ref = _outputs(candidate.path, batches, ctx.threads)
    n_items = len(ref)

    def measure(path: Path) -> dict[str, float]:
        return fidelity(_outputs(path, batches, ctx.threads), ref, task)

    def passes(fid: dict[str, float]) -> bool:
        return meets(fid, targets, task)

    def show(fid: dict[str, float]) -> str:
        return describe(fid, targets, task, label="target")

    notes: list[str] = []
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmpdir:
        tmp = Path(tmpdir)
        plan = (
            _dynamic_plan(candidate.path, config, tmp, measure, ctx)
            if mode == "dynamic"
            else _static_plan(candidate, config, tmp, ctx, notes)
        )
        ctx.progress(f"int8-auto: {plan.describe}")
        try:
            full = plan.quantize([], "all")
        except Exception as exc:
            raise PassSkipped(
                f"int8-auto: ONNX Runtime could not quantize the model: {first_line(exc)}"
            ) from None
        check_runs(full, batches[0], "int8-auto", ctx.threads)
        nodes = plan.candidates(full)
        if not nodes:
            raise PassSkipped(f"int8-auto: {plan.describe} found nothing to quantize in this graph")
        fid0 = measure(full)
        search: list[dict[str, Any]] = [{"fp32_nodes": 0, "fidelity": _rounded(fid0), "passed": passes(fid0)}]
        notes.append(
            f"int8-auto: {plan.describe}; {len(nodes)} quantizable nodes; fidelity measured on "
            f"{n_items} training inputs against the fp32 parent; "
            f"targets = policy floors + margin {config.margin:g}"
        )
        notes.append(f"round 0 (all {len(nodes)} quantized): {show(fid0)}")
        smoothing: dict[str, Any] | None = None
        if mode == "dynamic" and config.smooth_alphas and not passes(fid0):

            def key(fid: dict[str, float]) -> tuple[bool, float, float]:
                return (passes(fid), -shortfall(fid, targets, task), -fid["damage"])

            smooth_rounds, more_notes, picked = _search_smoothing(
                candidate, config, ctx, tmp, measure, key, show, batches[0], fid0
            )
            search[0]["smooth_alpha"] = None
            search.extend(smooth_rounds)
            notes.extend(more_notes)
            if picked is not None:
                plan, full, fid0, smoothing = picked
                nodes = plan.candidates(full)
        ranking: Ranking | None = None
        chosen_path, chosen_nodes, chosen_fid = full, [], fid0
        if not passes(fid0):
            ctx.progress(f"int8-auto: below the floors ({show(fid0)}); ranking node sensitivity")
            ranking = plan.rank(full, nodes)
            rounds = search_exclusions(
                ranking,
                config.max_fp32_nodes,
                lambda ex: plan.quantize(ex, f"ex{len(ex)}"),
                measure,
                passes,
                ctx.progress,
            )
            for r in rounds:
                search.append(
                    {**r.to_dict(), **({"smooth_alpha": smoothing["alpha"]} if smoothing is not None else {})}
                )
                notes.append(
                    f"round {len(search) - 1} ({len(r.fp32_nodes)} fp32): {show(r.fidelity)}"
                    f"{' - meets the targets' if r.passed else ''}"
                )
            best = best_round(rounds)
            if best is None:
                tried = [(0, fid0)] + [(len(r.fp32_nodes), r.fidelity) for r in rounds]
                kept, best_fid = min(tried, key=lambda t: t[1]["damage"])
                limit = min(config.max_fp32_nodes, len(nodes) - 1)
                raise PassSkipped(
                    f"int8-auto: no {mode} int8 model keeping at most {limit} of {len(nodes)} quantizable "
                    f"node(s) in fp32 meets the fidelity floors (+ margin {config.margin:g}); "
                    f"best reached with {kept} fp32 node(s): {show(best_fid)}"
                )
            chosen_path, chosen_nodes, chosen_fid = best.path, best.fp32_nodes, best.fidelity
            check_runs(chosen_path, batches[0], "int8-auto", ctx.threads)
            notes.append(
                f"kept {len(chosen_nodes)} of {len(nodes)} quantizable nodes in fp32 (most sensitive first, "
                f"{ranking.method}): {', '.join(chosen_nodes)}; {FALLBACK_REASON}"
            )
        else:
            notes.append("all nodes quantized: the targets hold without keeping any node in fp32")
        shutil.copyfile(chosen_path, dest)
    meta: dict[str, Any] = {
        "quantization": {
            "method": f"auto-{mode}",
            "per_channel": config.per_channel,
            **({"calibration": config.calibration} if mode == "static" else {}),
            "quantized_nodes": len(nodes) - len(chosen_nodes),
            "fallback_precision": "fp32",
            "fallback_reason": FALLBACK_REASON,
            **({"smooth_alpha": smoothing["alpha"] if smoothing else None} if mode == "dynamic" else {}),
        },
        "fp32_nodes": list(chosen_nodes),
        "search": search,
        "fidelity_floors": floors,
        "fidelity_targets": targets,
        "fidelity_train": _rounded(chosen_fid),
    }
    if ranking is not None:
        meta["sensitivity"] = {"method": ranking.method, "top": ranking.summary(10)}
    if smoothing is not None:
        meta["smoothing"] = smoothing
    return _new_candidate(candidate, dest, meta, notes)


def _search_smoothing(
    candidate: Candidate,
    config: AutoQuantConfig,
    ctx: PassContext,
    tmp: Path,
    measure: Callable[[Path], dict[str, float]],
    key: Callable[[dict[str, float]], tuple[bool, float, float]],
    show: Callable[[dict[str, float]], str],
    feeds: dict[str, np.ndarray],
    fid_plain: dict[str, float],
) -> tuple[list[dict[str, Any]], list[str], tuple[_Plan, Path, dict[str, float], dict[str, Any]] | None]:
    """Smooth with each of ``config.smooth_alphas``, quantize and measure. Returns the search rounds, notes,
    and the best graph by ``key`` (passing first, then closest to the targets, then least damage) as (plan,
    quantized path, fidelity, smoothing meta) -- None when nothing can be smoothed, when no alpha beats the
    unsmoothed graph (``fid_plain``), or when the best smoothed fp32 graph is not exact."""
    ctx.progress("int8-auto: measuring activation channel ranges for smoothing")
    sm = smoother(candidate, ctx, config.samples, dynamic_op_types(("Conv",)))
    tried: list[dict[str, Any]] = []
    notes: list[str] = []
    if sm is None:
        notes.append("smoothing: no MatMul/Gemm/Attention with an initializer weight; not applied")
        return tried, notes, None
    best: tuple[tuple[bool, float, float], _Plan, Path, dict[str, float], SmoothReport, Path] | None = None
    for alpha in config.smooth_alphas:
        ctx.progress(f"int8-auto: smoothing with alpha {alpha:g} and quantizing")
        src = tmp / f"smooth_{alpha:g}.onnx"
        report = sm.write(src, alpha)
        plan = _dynamic_plan(src, config, tmp, measure, ctx, alpha)
        try:
            full = plan.quantize([], "all")
        except Exception as exc:
            notes.append(f"smoothing alpha {alpha:g}: ONNX Runtime could not quantize it ({first_line(exc)})")
            continue
        fid = measure(full)
        ok = key(fid)[0]
        tried.append({"smooth_alpha": alpha, "fp32_nodes": 0, "fidelity": _rounded(fid), "passed": ok})
        notes.append(
            f"round {len(tried)} (alpha {alpha:g}, {len(report.nodes)} nodes smoothed, all quantized): "
            f"{show(fid)}{' - meets the targets' if ok else ''}"
        )
        if best is None or key(fid) > best[0]:
            best = (key(fid), plan, full, fid, report, src)
    if best is None or best[0] <= key(fid_plain):
        notes.append("smoothing not used: no alpha tried did better than the unsmoothed graph")
        return tried, notes, None
    _, plan, full, fid, report, src = best
    err = smoothing_error(candidate.path, src, feeds, ctx.threads)
    if not err <= SMOOTH_TOLERANCE:
        notes.append(
            f"smoothing not used: the smoothed fp32 graph differs from the parent by {err:.2e} (relative, "
            f"allowed {SMOOTH_TOLERANCE:g})"
        )
        return tried, notes, None
    notes.append(_smooth_note(report, sm.samples) + " - the best of the alphas tried")
    meta = {
        **report.to_dict(),
        "samples": sm.samples,
        "fp32_max_rel_diff": err,
        "alphas_tried": list(config.smooth_alphas),
    }
    return tried, notes, (plan, full, fid, meta)


def _rounded(fid: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in fid.items()}
