"""The ``openvino-int8`` pass: NNCF post-training static int8 quantization of the OpenVINO fp32 IR,
calibrated on fit items only, compiled with inference precision ``f32`` for whatever stays unquantized
(``bf16`` when the mixed-precision fallback below runs on a CPU with BF16).

Transformer encoders (LayerNorm or attention in the graph) get NNCF's ``model_type=TRANSFORMER`` with the
MIXED preset (symmetric weights, asymmetric activations) and SmoothQuant on the MatMuls. Like ``int8-auto``,
the SmoothQuant alpha is searched on fit items against the policy's fidelity floors (plus a margin): each of
``smooth_alphas`` in turn, stopping at the first whose model meets them. CNN and MLP graphs get the PERFORMANCE
preset (symmetric) and no SmoothQuant.

When no alpha meets the targets, the closest model falls back to mixed precision by sensitivity (``mixed``):
its most damaging quantized ops are kept out of int8, as few as the targets allow and at most
``max_float_ops``; they run in bf16 where the CPU has BF16 instructions, else in f32. When that does not
meet them either (or ``max_float_ops`` is 0), the pass is skipped with the best fidelity as the reason.

Fidelity is measured against the parent on another draw of fit items than the calibration one (the same items
when the fit part holds no more than ``samples``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ConfigError, PassSkipped, first_line
from modelyard.optimize.passes.int8.ort import _batches, calibration_feeds
from modelyard.optimize.passes.int8.sensitivity import describe, fidelity, fidelity_floors, meets, shortfall
from modelyard.optimize.passes.openvino.common import (
    IR_NAME,
    check_runtime_options,
    copy_ir,
    fp32_ir,
    is_transformer,
    load_checked,
    new_candidate,
    outputs,
    require_openvino,
    runtime_meta,
)
from modelyard.optimize.passes.openvino.mixed import Fallback, keep_out_of_int8
from modelyard.optimize.registry import PassContext, register_pass
from modelyard.runtime.openvino import INSTALL_HINT, OvSettings

PASS = "openvino-int8"
MODEL_TYPES = ("auto", "transformer", "plain")
BATCH = 32


@dataclass(frozen=True)
class OpenVinoInt8Config:
    """NNCF static int8 for OpenVINO. ``model_type``: "auto" (transformer when the graph has LayerNorm or
    attention), "transformer" or "plain". ``samples``: fit items to calibrate on (and, a different draw, to
    measure fidelity on). ``smooth_alphas``: SmoothQuant alphas for transformer MatMuls, tried in order.
    ``margin``: how far above each policy floor the fidelity must be on the fit items.
    ``fast_bias_correction``: NNCF's fast bias correction. ``max_float_ops``: at most this many quantized ops
    kept out of int8 (in bf16 or f32) when the int8 model misses the targets; 0: skip instead.
    ``hint``, ``streams``: as for ``openvino``."""

    model_type: str = "auto"
    samples: int = 300
    smooth_alphas: tuple[float, ...] = (0.95, 0.8, 0.65, 0.5)
    margin: float = 0.005
    fast_bias_correction: bool = True
    max_float_ops: int = 16
    hint: str = "LATENCY"
    streams: int | None = None

    def __post_init__(self) -> None:
        alphas = self.smooth_alphas
        if isinstance(alphas, str | int | float) or not isinstance(alphas, Sequence) or not alphas:
            raise ConfigError(
                f"{PASS}: smooth_alphas must be a non-empty list of numbers in [0, 1], got {alphas!r}"
            )
        if any(isinstance(a, bool) or not isinstance(a, int | float) or not 0 <= a <= 1 for a in alphas):
            raise ConfigError(f"{PASS}: smooth_alphas must be numbers in [0, 1], got {alphas!r}")
        object.__setattr__(self, "smooth_alphas", tuple(float(a) for a in alphas))
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(
                f"{PASS}: model_type must be one of {', '.join(MODEL_TYPES)}, got {self.model_type!r}"
            )
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 2:
            raise ConfigError(f"{PASS}: samples must be an integer >= 2, got {self.samples!r}")
        if (
            isinstance(self.margin, bool)
            or not isinstance(self.margin, int | float)
            or not 0 <= self.margin < 0.5
        ):
            raise ConfigError(f"{PASS}: margin must be a number in [0, 0.5), got {self.margin!r}")
        if not isinstance(self.fast_bias_correction, bool):
            raise ConfigError(
                f"{PASS}: fast_bias_correction must be true or false, got {self.fast_bias_correction!r}"
            )
        if (
            isinstance(self.max_float_ops, bool)
            or not isinstance(self.max_float_ops, int)
            or self.max_float_ops < 0
        ):
            raise ConfigError(
                f"{PASS}: max_float_ops must be an integer >= 0 (0: no mixed precision), got {self.max_float_ops!r}"
            )
        check_runtime_options(PASS, self.hint, self.streams)


def require_nncf() -> str:
    """NNCF's version; PassSkipped with one line when it cannot be imported."""
    try:
        import nncf
    except ImportError as exc:
        raise PassSkipped(f"{PASS}: NNCF is not installed ({first_line(exc)}); {INSTALL_HINT}") from None
    return str(nncf.__version__)


@contextlib.contextmanager
def quiet_nncf() -> Iterator[None]:
    """Silence NNCF's log lines and progress bars (both go to stdout) for the duration of the block."""
    logger = logging.getLogger("nncf")
    levels = [(h, h.level) for h in logger.handlers]
    old = logger.level
    logger.setLevel(logging.ERROR)
    for h, _ in levels:
        h.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(old)
        for h, level in levels:
            h.setLevel(level)


def quantize_ir(
    src: Path,
    dest: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    transformer: bool,
    alpha: float | None,
    fast_bias_correction: bool,
    open_dest: Path | None = None,
) -> int:
    """NNCF static int8 of the IR ``src`` into ``dest``, calibrated on ``feeds`` (one item each); returns the
    number of FakeQuantize ops inserted. With ``open_dest``, the same model before NNCF's last step (weight
    compression: fp32 weights behind their FakeQuantize ops) is saved there too, for ``mixed``."""
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import (
        AdvancedQuantizationParameters,
        AdvancedSmoothQuantParameters,
    )

    model = ov.Core().read_model(str(src))
    names = {p.get_any_name() for p in model.inputs}
    data = nncf.Dataset(list(feeds), lambda f: {k: v for k, v in f.items() if k in names})
    advanced = AdvancedQuantizationParameters(
        smooth_quant_alphas=AdvancedSmoothQuantParameters(matmul=-1.0 if alpha is None else float(alpha)),
        backend_params={} if open_dest is None else {"compress_weights": False},
    )
    try:
        with quiet_nncf():
            quantized = nncf.quantize(
                model,
                data,
                preset=nncf.QuantizationPreset.MIXED if transformer else nncf.QuantizationPreset.PERFORMANCE,
                model_type=nncf.ModelType.TRANSFORMER if transformer else None,
                subset_size=len(feeds),
                fast_bias_correction=fast_bias_correction,
                advanced_parameters=advanced,
            )
        if open_dest is not None:
            from openvino._offline_transformations import compress_quantize_weights_transformation

            ov.save_model(quantized, str(open_dest), compress_to_fp16=False)
            compress_quantize_weights_transformation(quantized)  # what nncf.quantize does last
        ov.save_model(quantized, str(dest), compress_to_fp16=False)
    except Exception as exc:  # NNCF and OpenVINO raise many types; report one line
        raise PassSkipped(f"{PASS}: NNCF could not quantize the model: {first_line(exc)}") from None
    return sum(op.get_type_name() == "FakeQuantize" for op in quantized.get_ops())


@register_pass(
    PASS,
    OpenVinoInt8Config,
    "OpenVINO int8: NNCF static quantization calibrated on fit items (SmoothQuant alpha searched for "
    "transformers against the fidelity floors; the most sensitive ops kept out of int8, in bf16 or f32, "
    "while the floors are not met)",
)
def openvino_int8_pass(candidate: Candidate, config: OpenVinoInt8Config, ctx: PassContext) -> Candidate:
    require_openvino(PASS)
    nncf_version = require_nncf()
    task = candidate.spec.task
    floors = fidelity_floors(ctx.fidelity, task)
    targets = {k: min(1.0, v + float(config.margin)) for k, v in floors.items()}
    dest = Path(ctx.workdir) / IR_NAME
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    settings = OvSettings(inference_precision="f32", performance_hint=config.hint, streams=config.streams)

    # Calibration and fidelity: two draws of fit items (the pass never sees a test item).
    x_cal = ctx.dataset.fit_sample(config.samples, seed=ctx.seed)
    feeds = calibration_feeds(candidate, x_cal, "minmax")
    batches = _batches(candidate, ctx.dataset.fit_sample(config.samples, seed=ctx.seed + 1), BATCH)
    ref = outputs(candidate.load(threads=ctx.threads), batches)

    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmpdir:
        tmp = Path(tmpdir)
        fp32 = tmp / "fp32.xml"
        notes = fp32_ir(candidate, ctx, fp32, PASS)
        transformer = (
            is_transformer(fp32) if config.model_type == "auto" else config.model_type == "transformer"
        )
        alphas: list[float | None] = list(config.smooth_alphas) if transformer else [None]
        how = (
            "model_type TRANSFORMER, MIXED preset, SmoothQuant on MatMuls"
            if transformer
            else "PERFORMANCE preset, no SmoothQuant"
        )
        search: list[dict[str, Any]] = []
        best: tuple[tuple[bool, float, float], int, dict[str, float], float | None, int, Any] | None = None
        for i, alpha in enumerate(alphas):
            label = "" if alpha is None else f" (SmoothQuant alpha {alpha:g})"
            ctx.progress(f"{PASS}: calibrating on {len(feeds)} fit items and quantizing{label}")
            path = tmp / f"int8_{i}.xml"
            n_fq = quantize_ir(
                fp32,
                path,
                feeds,
                transformer=transformer,
                alpha=alpha,
                fast_bias_correction=config.fast_bias_correction,
                open_dest=tmp / f"open_{i}.xml" if config.max_float_ops > 0 else None,
            )
            if n_fq == 0:
                raise PassSkipped(f"{PASS}: NNCF found nothing to quantize in this graph ({how})")
            runner = load_checked(path, candidate, settings, ctx.threads)
            fid = fidelity(outputs(runner, batches), ref, task)
            ok = meets(fid, targets, task)
            search.append(
                {"smooth_alpha": alpha, "kept_out_of_int8": 0, "fidelity": _rounded(fid), "passed": ok}
            )
            notes.append(
                f"round {i}{label}: {describe(fid, targets, task, label='target')}{' - meets the targets' if ok else ''}"
            )
            key = (ok, -shortfall(fid, targets, task), -fid["damage"])
            if best is None or key > best[0]:
                best = (key, i, fid, alpha, n_fq, runner)
            if ok:
                break
        assert best is not None  # alphas is never empty
        (ok, _, _), i, fid, alpha, n_fq, runner = best
        path = tmp / f"int8_{i}.xml"
        tried = (
            f"alphas tried: {', '.join(f'{a:g}' for a in config.smooth_alphas) if transformer else 'none'}"
        )
        if not ok and config.max_float_ops == 0:
            raise PassSkipped(
                f"{PASS}: no NNCF int8 model ({how}; {tried}) meets the fidelity floors (+ margin "
                f"{config.margin:g}) on fit items; best: {describe(fid, targets, task, label='target')}"
            )
        fallback: Fallback | None = None
        if not ok:
            with_alpha = "" if alpha is None else f" (SmoothQuant alpha {alpha:g})"
            ctx.progress(f"{PASS}: below the targets{with_alpha}; ranking the quantized ops by sensitivity")
            fallback = keep_out_of_int8(
                tmp / f"open_{i}.xml",
                candidate,
                max_ops=config.max_float_ops,
                hint=config.hint,
                streams=config.streams,
                batches=batches,
                ref=ref,
                passes=lambda f: meets(f, targets, task),
                tmp=tmp,
                threads=ctx.threads,
                progress=lambda msg: ctx.progress(f"{PASS}: {msg}"),
            )
            for r in fallback.rounds:
                search.append(
                    {
                        "smooth_alpha": alpha,
                        "kept_out_of_int8": len(r.fp32_nodes),
                        "fidelity": _rounded(r.fidelity),
                        "passed": r.passed,
                    }
                )
                notes.append(
                    f"round {len(search) - 1}{with_alpha}, {len(r.fp32_nodes)} op(s) kept out of int8 "
                    f"({fallback.precision}): {describe(r.fidelity, targets, task, label='target')}"
                    f"{' - meets the targets' if r.passed else ''}"
                )
            if fallback.best is None:
                n_ops = len(fallback.ops.names)
                limit = min(config.max_float_ops, n_ops - 1)
                kept, best_fid = min(
                    [(0, fid)] + [(len(r.fp32_nodes), r.fidelity) for r in fallback.rounds],
                    key=lambda t: (shortfall(t[1], targets, task), t[1]["damage"]),
                )
                raise PassSkipped(
                    f"{PASS}: no NNCF int8 model ({how}; {tried}) meets the fidelity floors (+ margin "
                    f"{config.margin:g}) on fit items, even keeping up to {limit} of {n_ops} quantized ops out "
                    f"of int8 ({fallback.precision}); best, with {kept} kept out: "
                    f"{describe(best_fid, targets, task, label='target')}"
                )
            path, fid = fallback.best.path, fallback.best.fidelity
            settings = fallback.settings
            runner = load_checked(path, candidate, settings, ctx.threads)
        copy_ir(path, dest)
    notes.insert(
        0,
        f"NNCF {nncf_version} static int8 ({how}{'' if alpha is None else f', alpha {alpha:g}'}), calibrated "
        f"on {len(feeds)} fit items; {n_fq} FakeQuantize ops; fidelity measured against the parent on {len(ref)} "
        f"fit items drawn with another seed (the same items when the fit part has no more than {config.samples}); "
        f"targets = policy floors + margin {config.margin:g}",
    )
    kept_out: list[str] = []
    quantization: dict[str, Any] = {
        "method": "nncf-static",
        "nncf": nncf_version,
        "model_type": "transformer" if transformer else "plain",
        "preset": "mixed" if transformer else "performance",
        "smooth_quant_alpha": alpha,
        "calibration_samples": len(feeds),
        "fast_bias_correction": config.fast_bias_correction,
        "fake_quantize_ops": n_fq,
        "fallback_precision": None,
    }
    if fallback is not None and fallback.best is not None:
        kept_out = list(fallback.best.fp32_nodes)
        n_ops = len(fallback.ops.names)
        quantization.update(
            fallback_precision=fallback.precision,
            fallback_reason=fallback.why,
            quantized_ops=n_ops - len(kept_out),
            sensitivity=fallback.summary(),
        )
        notes.append(
            f"mixed precision: kept {len(kept_out)} of {n_ops} quantized ops out of int8, most sensitive first "
            f"({fallback.ranking.method}); they run in {fallback.precision} ({fallback.why}), as do the ops "
            f"NNCF leaves unquantized: {', '.join(kept_out)}"
        )
    quantization["kept_out_of_int8"] = {"count": len(kept_out), "ops": kept_out}
    meta: dict[str, Any] = {
        **runtime_meta(runner, settings, "int8"),
        "quantization": quantization,
        "search": search,
        "fidelity_floors": floors,
        "fidelity_targets": targets,
        "fidelity_train": _rounded(fid),
    }
    return new_candidate(candidate, dest, meta, notes)


def _rounded(fid: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in fid.items()}
