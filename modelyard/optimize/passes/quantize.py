"""int8 passes on ONNX candidates, with ONNX Runtime's quantization tools.

- ``int8-dynamic``: ``quantize_dynamic`` (weights int8 offline, activation scales at run time), per-channel
  by default; optionally after SmoothQuant-style smoothing (``smooth_alpha``, see ``smooth.py``). Conv is excluded by default: dynamic ConvInteger is slow and older ONNX Runtime builds had no
  CPU kernel for it (u8 activations x s8 weights; ORT issues #3130, #6430). ``DefaultTensorType`` is always
  passed so fused transformer graphs quantize (cpu-measurements.md, failure 1).
- ``int8-static``: ``quant_pre_process`` then ``quantize_static`` in QDQ format (S8S8 by default), calibrated
  on training inputs fed one example at a time.
- ``int8-auto``: quantize (static for CNN/MLP graphs, dynamic for transformer graphs), measure fidelity to
  the fp32 parent on training inputs; in dynamic mode also try smoothing with each of ``smooth_alphas`` and
  keep the best graph; while it is below the policy floors keep the most sensitive nodes in fp32 (1, 2, 4,
  ... then bisect), up to ``max_fp32_nodes``.

Every produced file is loaded and run once before it is returned; a model ONNX Runtime refuses becomes
``PassSkipped`` with ORT's reason.
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import ArtifactError, ConfigError, PassSkipped, first_line
from modelyard.optimize.candidate import Candidate
from modelyard.optimize.passes.sensitivity import (
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
from modelyard.optimize.passes.smooth import SmoothReport, channel_max, find_targets, smooth_file
from modelyard.optimize.registry import PassContext, register_pass

QUANT_TYPES = ("int8", "uint8")
CALIBRATIONS = ("minmax", "percentile", "entropy")
MODES = ("auto", "dynamic", "static")
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
BATCH = 32  # batch size for fidelity measurements


def _check_choice(pass_name: str, option: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{pass_name}: {option} must be one of {', '.join(choices)}; got {value!r}")


def _check_bool(pass_name: str, option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{pass_name}: {option} must be true or false, got {value!r}")


def _check_count(pass_name: str, option: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{pass_name}: {option} must be an integer >= {minimum}, got {value!r}")


def _check_alpha(pass_name: str, option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(
            f"{pass_name}: {option} must be a number in [0, 1] (SmoothQuant migration strength), got {value!r}"
        )


def _names(pass_name: str, option: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{pass_name}: {option} must be a list of names, e.g. ('Conv',); got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class DynamicQuantConfig:
    """ONNX Runtime dynamic int8. ``exclude_op_types`` stay fp32 (Conv by default). ``smooth_alpha`` (None =
    off) smooths the inputs of MatMul/Gemm/Attention first (SmoothQuant; channel maxima measured on
    ``smooth_samples`` fit inputs). ``reduce_range`` (7-bit weights): None = on x86 CPUs without VNNI, where
    ONNX Runtime's u8s8 kernels can saturate 16-bit sums, off elsewhere (see ``default_reduce_range``)."""

    per_channel: bool = True
    reduce_range: bool | None = None
    weight_type: str = "int8"
    exclude_op_types: tuple[str, ...] = ("Conv",)
    smooth_alpha: float | None = None
    smooth_samples: int = 128

    def __post_init__(self) -> None:
        if self.smooth_alpha is not None:
            _check_alpha("int8-dynamic", "smooth_alpha", self.smooth_alpha)
        _check_count("int8-dynamic", "smooth_samples", self.smooth_samples, 1)
        _check_bool("int8-dynamic", "per_channel", self.per_channel)
        if self.reduce_range is not None:
            _check_bool("int8-dynamic", "reduce_range", self.reduce_range)
        _check_choice("int8-dynamic", "weight_type", self.weight_type, QUANT_TYPES)
        object.__setattr__(
            self, "exclude_op_types", _names("int8-dynamic", "exclude_op_types", self.exclude_op_types)
        )


@dataclass(frozen=True)
class StaticQuantConfig:
    """ONNX Runtime static int8 (QDQ), calibrated on ``samples`` training inputs."""

    calibration: str = "minmax"
    per_channel: bool = True
    samples: int = 128
    activation_type: str = "int8"
    weight_type: str = "int8"
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_choice("int8-static", "calibration", self.calibration, CALIBRATIONS)
        _check_bool("int8-static", "per_channel", self.per_channel)
        _check_count("int8-static", "samples", self.samples, 1)
        _check_choice("int8-static", "activation_type", self.activation_type, QUANT_TYPES)
        _check_choice("int8-static", "weight_type", self.weight_type, QUANT_TYPES)
        object.__setattr__(self, "exclude_nodes", _names("int8-static", "exclude_nodes", self.exclude_nodes))


@dataclass(frozen=True)
class AutoQuantConfig:
    """Accuracy-aware int8: ``mode`` auto = static for CNN/MLP graphs, dynamic for transformer graphs.

    ``samples`` training inputs are used for calibration and for the fidelity measurement. The search aims
    ``margin`` above each floor (capped at 1): the sample is small and is not the evaluation set, and a
    model picked to sit exactly on the floor there tends to land just under it on held-out data.
    In dynamic mode each of ``smooth_alphas`` is tried (SmoothQuant smoothing before quantizing; empty =
    never smooth) and the best graph is the starting point of the fp32-node search.
    """

    mode: str = "auto"
    max_fp32_nodes: int = 32
    samples: int = 128
    calibration: str = "minmax"
    per_channel: bool = True
    margin: float = 0.005
    smooth_alphas: tuple[float, ...] = (0.5, 0.65, 0.8)

    def __post_init__(self) -> None:
        alphas = self.smooth_alphas
        if isinstance(alphas, str | int | float) or not isinstance(alphas, Sequence):
            raise ConfigError(
                f"int8-auto: smooth_alphas must be a list of numbers in [0, 1], e.g. (0.5, 0.8); got {alphas!r}"
            )
        for a in alphas:
            _check_alpha("int8-auto", "smooth_alphas", a)
        object.__setattr__(self, "smooth_alphas", tuple(float(a) for a in alphas))
        _check_choice("int8-auto", "mode", self.mode, MODES)
        _check_count("int8-auto", "max_fp32_nodes", self.max_fp32_nodes, 0)
        _check_count("int8-auto", "samples", self.samples, 2)
        _check_choice("int8-auto", "calibration", self.calibration, CALIBRATIONS)
        _check_bool("int8-auto", "per_channel", self.per_channel)
        if (
            isinstance(self.margin, bool)
            or not isinstance(self.margin, int | float)
            or not 0 <= self.margin < 0.5
        ):
            raise ConfigError(f"int8-auto: margin must be a number in [0, 0.5), got {self.margin!r}")


# ---------------------------------------------------------------------------------------------------
# plumbing


class FeedReader:
    """A CalibrationDataReader over a list of feed dicts (ORT accepts any object with ``get_next``)."""

    def __init__(self, feeds: Sequence[dict[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item

    def __len__(self) -> int:
        return len(self._feeds)


class _DropOrtChatter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname


@contextlib.contextmanager
def quiet_ort() -> Iterator[None]:
    """Silence ONNX Runtime's quantization chatter (root-logger warnings such as 'Please consider to run
    pre-processing', and the calibrators' prints) for the duration of the block."""
    ort_logger = logging.getLogger("onnxruntime")
    old_level = ort_logger.level
    ort_logger.setLevel(logging.ERROR)
    root = logging.getLogger()
    flt = _DropOrtChatter()
    root.addFilter(flt)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(flt)
        ort_logger.setLevel(old_level)


def _quant_type(name: str) -> Any:
    from onnxruntime.quantization import QuantType

    return QuantType.QInt8 if name == "int8" else QuantType.QUInt8


def _calibration_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod

    return {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[name]


def require_onnx(candidate: Candidate, pass_name: str) -> None:
    if candidate.format != "onnx":
        raise PassSkipped(
            f"{pass_name} works on ONNX models and this candidate is {candidate.format}; run 'onnx' first"
        )


def _load(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise ArtifactError(f"cannot read ONNX model {path}: {exc}") from None


def check_runs(path: Path, feeds: dict[str, np.ndarray], pass_name: str, threads: int | None) -> None:
    """Load the produced model and run one batch; a refusal becomes PassSkipped with ORT's reason."""
    from modelyard.optimize.passes.export import run_onnx

    try:
        run_onnx(path, feeds, threads)
    except ArtifactError as exc:
        raise PassSkipped(f"{pass_name}: ONNX Runtime refuses the quantized model ({exc})") from None
    except Exception as exc:  # ORT's runtime errors have private types
        raise PassSkipped(f"{pass_name}: the quantized model fails to run: {first_line(exc)}") from None


def _batches(candidate: Candidate, x: Any, size: int) -> list[dict[str, np.ndarray]]:
    pre = candidate.preprocessor()
    return [pre(x[i : i + size]) for i in range(0, len(x), size)]


def _outputs(path: Path, batches: Sequence[dict[str, np.ndarray]], threads: int | None) -> np.ndarray:
    from modelyard.runtime.onnx import make_session

    sess = make_session(path, threads)
    names = {i.name for i in sess.get_inputs()}
    return np.concatenate(
        [np.asarray(sess.run(None, {k: v for k, v in b.items() if k in names})[0]) for b in batches]
    )


def calibration_feeds(candidate: Candidate, x: Any, method: str) -> list[dict[str, np.ndarray]]:
    """One example per feed. Texts keep their natural length for min/max; the histogram calibrators need
    one shape for every tensor, so for them texts are padded to the longest in the sample."""
    if candidate.tokenizer_dir is not None:
        texts = [str(t) for t in x]
        pre = candidate.preprocessor()
        if method != "minmax":
            longest = int(next(iter(pre(texts).values())).shape[1])
            pre = candidate.preprocessor(pad_to=longest)
        return [pre([t]) for t in texts]
    pre = candidate.preprocessor()
    return [pre(x[i : i + 1]) for i in range(len(x))]


def _new_candidate(candidate: Candidate, path: Path, meta: dict[str, Any], notes: list[str]) -> Candidate:
    return Candidate(
        name=candidate.name,
        format="onnx",
        path=path,
        spec=candidate.spec,
        parent=None,
        passes=[],
        tokenizer_dir=candidate.tokenizer_dir,
        meta={**candidate.meta, **meta},
        notes=notes,
    )


def _count(ops: Sequence[str]) -> str:
    return ", ".join(f"{op} x{n}" for op, n in sorted(Counter(ops).items()))


# ---------------------------------------------------------------------------------------------------
# dynamic


def dynamic_op_types(exclude: Sequence[str]) -> list[str]:
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    return [op for op in IntegerOpsRegistry if op not in set(exclude)]


def _gemm_names(model: Any) -> set[str]:
    return {n.name for n in model.graph.node if n.op_type == "Gemm" and n.name}


def _with_gemm_aliases(names: Sequence[str], gemms: set[str]) -> list[str]:
    # quantize_dynamic rewrites Gemm "X" into MatMul "X_MatMul" + Add before choosing nodes.
    out = list(names)
    out.extend(f"{n}_MatMul" for n in names if n in gemms)
    return out


def default_reduce_range() -> bool:
    """7-bit weights for dynamic int8 on x86 CPUs without VNNI: there ONNX Runtime's u8s8 kernels
    (VPMADDUBSW) add pairs of products into saturating 16-bit sums, which full-range int8 weights can
    overflow; VNNI, AMX and ARM kernels do not saturate, so full range is kept there."""
    from modelyard.runtime.device import cpu_info

    info = cpu_info()
    return info["machine"] in ("x86_64", "AMD64", "i686") and not (info["isa"]["vnni"] or info["isa"]["amx"])


def quantize_dynamic_file(
    src: Path,
    dst: Path,
    *,
    per_channel: bool,
    reduce_range: bool,
    weight_type: str,
    op_types: Sequence[str],
    gemms: set[str],
    nodes_to_exclude: Sequence[str] = (),
    nodes_to_quantize: Sequence[str] | None = None,
) -> None:
    import onnx
    from onnxruntime.quantization import quantize_dynamic

    with quiet_ort():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=list(op_types),
            per_channel=per_channel,
            reduce_range=reduce_range,
            weight_type=_quant_type(weight_type),
            nodes_to_quantize=_with_gemm_aliases(nodes_to_quantize, gemms) if nodes_to_quantize else None,
            nodes_to_exclude=_with_gemm_aliases(nodes_to_exclude, gemms),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


def dynamic_quantized_nodes(float_model: Any, q_model: Any, op_types: Sequence[str]) -> list[tuple[str, str]]:
    """(name, op_type) of the float model's nodes that quantize_dynamic replaced, in graph order."""
    q_nodes = {n.name: n for n in q_model.graph.node if n.name}
    wanted = set(op_types) | ({"Gemm"} if "MatMul" in op_types else set())
    out = []
    for node in float_model.graph.node:
        if not node.name or node.op_type not in wanted:
            continue
        if node.op_type == "Gemm":
            mm = q_nodes.get(f"{node.name}_MatMul")
            quantized = f"{node.name}_MatMul_quant" in q_nodes or (mm is None and node.name not in q_nodes)
        else:
            same = q_nodes.get(node.name)
            quantized = same is None or list(same.input) != list(node.input)
        if quantized:
            out.append((node.name, node.op_type))
    return out


# ---------------------------------------------------------------------------------------------------
# smoothing (SmoothQuant) before dynamic quantization

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


# ---------------------------------------------------------------------------------------------------
# static


def preprocess_for_static(src: Path, dst: Path) -> tuple[Path, str | None]:
    """``quant_pre_process`` (shape inference + basic optimization) into ``dst``; on failure the original
    model is used and the reason returned."""
    from onnxruntime.quantization import quant_pre_process

    try:
        with quiet_ort():
            quant_pre_process(str(src), str(dst))
    except Exception as exc:
        return src, f"quant_pre_process failed ({first_line(exc)}); quantized the model as given"
    return dst, None


def quantize_static_file(
    src: Path,
    dst: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    calibration: str,
    per_channel: bool,
    activation_type: str,
    weight_type: str,
    nodes_to_exclude: Sequence[str] = (),
) -> None:
    import onnx
    from onnxruntime.quantization import QuantFormat, quantize_static

    with quiet_ort():
        quantize_static(
            str(src),
            str(dst),
            FeedReader(feeds),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=_quant_type(activation_type),
            weight_type=_quant_type(weight_type),
            calibrate_method=_calibration_method(calibration),
            nodes_to_exclude=list(nodes_to_exclude),
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )


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


# ---------------------------------------------------------------------------------------------------
# accuracy-aware


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
                f"{ranking.method}): {', '.join(chosen_nodes)}"
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
