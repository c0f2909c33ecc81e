"""The ``onnx`` pass: PyTorch / Hugging Face candidate -> one self-contained ONNX file, then graph
optimization.

Export uses the TorchScript-based exporter (``dynamo=False``): on torch 2.13 the dynamo exporter is ~10x
slower and its BERT graph silently loses the attention pattern ONNX Runtime fuses (cpu-measurements.md,
failure 3). The exported file is checked against the PyTorch module before anything else happens.

Graph optimization: BERT-like Hugging Face models go through ``onnxruntime.transformers.optimizer``
(opt_level 1: EP-independent basic rewrites, then the Python fusions Attention / EmbedLayerNormalization /
SkipLayerNormalization / BiasGelu); other models get ONNX Runtime's offline *basic* optimizations
(constant folding, redundant-node elimination), whose output stays standard ONNX — the extended level
writes CPU-only contrib ops (FusedConv, FusedGemm) that other runtimes cannot read. ORT applies its
extended/layout optimizations again at session load anyway, so nothing is lost by stopping at basic.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, ConfigError, PassSkipped, first_line
from modelyard.optimize.registry import PassContext, register_pass

MIN_OPSET = 13  # per-channel QDQ quantization needs opset >= 13
MAX_OPSET = 20  # highest opset the TorchScript exporter in torch 2.x writes

# model_type values (config.json) whose graphs the ORT "bert" optimizer fuses.
BERT_LIKE = ("bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert")
FUSED_OPS = ("EmbedLayerNormalization", "Attention", "SkipLayerNormalization")
# Keys of a torch candidate's meta that do not describe an ONNX artifact.
_TORCH_META = ("torch_kind", "factory", "factory_kwargs", "trust")  # what only a PyTorch module needs
# Fixed texts traced together with the data sample so the example batch always contains padding.
_TRACE_TEXTS = ("ok", "a longer sentence, so that the example batch is padded and the mask path is traced")


FUSE_CHOICES = ("auto", "always", "never")


@dataclass(frozen=True)
class OnnxExportConfig:
    """``opset``: ONNX opset to export with (13-20). ``optimize``: run graph optimization after export.
    ``fuse`` (BERT-like models): "auto" keeps the transformer optimizer's fused graph only if it measures
    faster than the plain export on this CPU; "always" or "never" force the choice."""

    opset: int = 17
    optimize: bool = True
    fuse: str = "auto"

    def __post_init__(self) -> None:
        if (
            isinstance(self.opset, bool)
            or not isinstance(self.opset, int)
            or not MIN_OPSET <= self.opset <= MAX_OPSET
        ):
            raise ConfigError(
                f"onnx: opset must be an integer from {MIN_OPSET} to {MAX_OPSET}, got {self.opset!r}; "
                "the default 17 suits ONNX Runtime 1.14 and later"
            )
        if not isinstance(self.optimize, bool):
            raise ConfigError(f"onnx: optimize must be true or false, got {self.optimize!r}")
        if self.fuse not in FUSE_CHOICES:
            raise ConfigError(f"onnx: fuse must be one of {', '.join(FUSE_CHOICES)}, got {self.fuse!r}")


# ---------------------------------------------------------------------------------------------------
# helpers shared with the quantization passes


def output_tolerance(ref: np.ndarray) -> float:
    """Absolute tolerance for 'the same model': 1e-3 of the output's scale (at least 1e-3)."""
    return 1e-3 * max(1.0, float(np.max(np.abs(ref))) if ref.size else 1.0)


def run_onnx(path: Path, feeds: dict[str, np.ndarray], threads: int | None = None) -> np.ndarray:
    """The first output of an ONNX file on ``feeds`` (inputs the graph does not declare are dropped)."""
    from modelyard.runtime.onnx import make_session

    sess = make_session(path, threads)
    names = {i.name for i in sess.get_inputs()}
    out = sess.run(None, {k: v for k, v in feeds.items() if k in names})
    return np.asarray(out[0])


def hf_config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    try:
        data = json.loads(cfg.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"cannot read the Hugging Face config {cfg}: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{cfg} must hold a JSON object")
    return data


def bert_shape(cfg: dict[str, Any]) -> dict[str, Any] | None:
    """model_type, num_heads and hidden_size for the ORT transformer optimizer, or None if not BERT-like."""
    model_type = str(cfg.get("model_type", "")).lower()
    if model_type not in BERT_LIKE:
        return None
    heads = cfg.get("num_attention_heads", cfg.get("n_heads"))
    hidden = cfg.get("hidden_size", cfg.get("dim"))
    if not isinstance(heads, int) or not isinstance(hidden, int):
        return None
    return {"model_type": model_type, "num_heads": heads, "hidden_size": hidden}


def example_feeds(candidate: Candidate, ctx: PassContext, n: int = 8) -> dict[str, np.ndarray]:
    """A small real batch from the train split, in the candidate's feed format (texts: padded batch)."""
    sample = ctx.dataset.fit_sample(n, seed=ctx.seed)
    pre = candidate.preprocessor()
    if candidate.tokenizer_dir is not None:
        texts = list(_TRACE_TEXTS) + [str(t) for t in sample]
        return pre(texts)
    feeds = pre(sample)
    first = next(iter(feeds.values()))
    if first.shape[0] < 2:  # trace with a batch > 1 so the batch axis is never specialised
        feeds = {k: np.concatenate([v, v], axis=0) for k, v in feeds.items()}
    return feeds


# ---------------------------------------------------------------------------------------------------
# export


def _torch_reference(
    module: Any, names: list[str], feeds: dict[str, np.ndarray]
) -> tuple[tuple[Any, ...], np.ndarray]:
    import torch

    args = tuple(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names)
    with torch.no_grad():
        out = module(*args)
    if isinstance(out, dict):
        out = next(iter(out.values()))
    elif isinstance(out, tuple | list):
        out = out[0]
    return args, out.detach().float().numpy()


def export_torch(
    candidate: Candidate, ctx: PassContext, dest: Path, opset: int
) -> tuple[dict[str, np.ndarray], float]:
    """Export ``candidate``'s module to ``dest`` (weights inside the file); returns the example feeds used
    and the max abs difference between ONNX Runtime and PyTorch on them."""
    import torch

    module = candidate.torch_module()
    names = [t.name for t in candidate.spec.inputs]
    out_name = candidate.spec.output_name
    feeds = example_feeds(candidate, ctx)
    missing = [n for n in names if n not in feeds]
    if missing:
        raise ArtifactError(
            f"onnx: the preprocessor gives no {', '.join(missing)} for candidate {candidate.name!r}; "
            "check the candidate's input spec"
        )
    text = candidate.tokenizer_dir is not None
    dynamic_axes: dict[str, dict[int, str]] = {
        n: ({0: "batch", 1: "sequence"} if text else {0: "batch"}) for n in names
    }
    dynamic_axes[out_name] = {0: "batch"}
    args, ref = _torch_reference(module, names, feeds)
    ctx.progress(f"exporting {candidate.name} to ONNX (opset {opset})")
    with warnings.catch_warnings():
        # The legacy exporter announces its deprecation and transformers' mask helpers trip the tracer's
        # "converting a tensor to a Python boolean" check; the graph is verified against PyTorch below.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # type: ignore[attr-defined]
        warnings.filterwarnings("ignore", category=UserWarning, module=r"torch\.onnx")
        try:
            torch.onnx.export(
                module,
                args,
                str(dest),
                input_names=names,
                output_names=[out_name],
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types; report one line
            raise ArtifactError(
                f"onnx: torch.onnx.export failed for candidate {candidate.name!r}: {first_line(exc)}; "
                "try another opset or make the module traceable"
            ) from None
    got = run_onnx(dest, feeds, ctx.threads)
    if got.shape != ref.shape:
        raise ArtifactError(
            f"onnx: the exported graph outputs shape {got.shape} but PyTorch gives {ref.shape}; "
            "the module's output is not traceable as exported"
        )
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    if not diff <= output_tolerance(ref):
        raise ArtifactError(
            f"onnx: the exported graph differs from PyTorch by {diff:.3g} (max abs) on the example batch; "
            "the module likely has data-dependent control flow the tracer cannot capture"
        )
    return feeds, diff


# ---------------------------------------------------------------------------------------------------
# graph optimization


def optimize_bert(src: Path, dest: Path, shape: dict[str, Any]) -> dict[str, int]:
    """Fuse a BERT-like graph with the ORT transformer optimizer; returns the fused-op counts."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(
        str(src),
        model_type="bert",
        num_heads=int(shape["num_heads"]),
        hidden_size=int(shape["hidden_size"]),
        opt_level=1,
        use_gpu=False,
    )
    stats = {k: int(v) for k, v in opt.get_fused_operator_statistics().items() if v}
    opt.save_model_to_file(str(dest), use_external_data_format=False)
    return stats


def optimize_basic(src: Path, dest: Path) -> None:
    """ONNX Runtime's offline basic graph optimizations; the output uses standard ONNX ops only."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = str(dest)
    so.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(f"ONNX Runtime cannot load {src} to optimize it: {first_line(exc)}") from None


def compare_speed(
    a: Path,
    b: Path,
    feeds: dict[str, np.ndarray],
    threads: int | None,
    *,
    rounds: int = 5,
    min_time_s: float = 0.1,
) -> tuple[float, float]:
    """Items/s of two ONNX graphs on the same feeds, timed round-robin (median of rounds)."""
    import time

    from modelyard.runtime.onnx import make_session

    sessions = [make_session(p, threads) for p in (a, b)]
    names = [{i.name for i in s.get_inputs()} for s in sessions]
    items = int(next(iter(feeds.values())).shape[0])
    rates: list[list[float]] = [[], []]
    for sess, nm in zip(sessions, names, strict=True):
        sess.run(None, {k: v for k, v in feeds.items() if k in nm})
    for _ in range(rounds):
        for i, (sess, nm) in enumerate(zip(sessions, names, strict=True)):
            f = {k: v for k, v in feeds.items() if k in nm}
            calls, start = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - start < min_time_s:
                sess.run(None, f)
                calls += 1
            rates[i].append(items * calls / (time.perf_counter() - start))
    return float(np.median(rates[0])), float(np.median(rates[1]))


def graph_optimize(
    src: Path,
    dest: Path,
    feeds: dict[str, np.ndarray],
    shape: dict[str, Any] | None,
    threads: int | None,
    fuse: str = "auto",
) -> tuple[list[str], dict[str, Any]]:
    """Optimize ``src`` into ``dest`` and check it still matches; falls back to a copy of ``src``.

    Returns (notes, meta updates).
    """
    ref = run_onnx(src, feeds, threads)
    meta: dict[str, Any] = {}
    notes: list[str] = []
    if shape is not None:
        stats = optimize_bert(src, dest, shape)
        meta["fusion"] = stats
        missing = [op for op in FUSED_OPS if not stats.get(op)]
        fused = ", ".join(f"{op} x{n}" for op, n in sorted(stats.items())) or "nothing"
        how = (
            f"ONNX Runtime transformer optimizer (model_type bert, {shape['num_heads']} heads, "
            f"hidden {shape['hidden_size']})"
        )
        if missing:
            notes.append(f"graph optimized by the {how}; fused {fused}; NOT fused: {', '.join(missing)}")
        else:
            notes.append(f"graph optimized by the {how}; fused {fused}")
        meta["graph_optimizer"] = "ort-transformers-bert"
        fused_rate = raw_rate = 0.0
        if fuse == "auto":
            n = int(next(iter(feeds.values())).shape[0])
            batch32 = {k: v[np.arange(32) % n] for k, v in feeds.items()}
            fused_rate, raw_rate = compare_speed(dest, src, batch32, threads)
            meta["fusion_speed_items_per_s"] = {"fused": round(fused_rate, 1), "unfused": round(raw_rate, 1)}
        if fuse == "never":
            shutil.copyfile(src, dest)
            meta["graph_optimizer"] = "ort-session (load-time fusions)"
            notes.append("kept the unfused export (fuse='never'); ONNX Runtime applies its load-time fusions")
        elif fuse == "auto" and raw_rate > 1.05 * fused_rate:
            # Measured, not assumed: on some CPUs ONNX Runtime's own load-time fusions of the plain export
            # beat the transformer optimizer's fused Attention. The faster graph is kept.
            shutil.copyfile(src, dest)
            meta["graph_optimizer"] = "ort-session (load-time fusions)"
            notes.append(
                f"kept the unfused export: it measured {raw_rate:.0f} items/s against {fused_rate:.0f} for the "
                "fused graph on this CPU (ONNX Runtime still applies its load-time fusions); the unfused "
                "graph materialises attention scores, so it may use more memory"
            )
    else:
        optimize_basic(src, dest)
        notes.append("graph optimized by ONNX Runtime basic offline optimizations (standard ONNX ops only)")
        meta["graph_optimizer"] = "ort-basic"
    got = run_onnx(dest, feeds, threads)
    diff = float(np.max(np.abs(got - ref))) if ref.size and got.shape == ref.shape else float("inf")
    if not diff <= output_tolerance(ref):
        shutil.copyfile(src, dest)
        meta = {"graph_optimizer": None}
        notes = [
            f"graph optimization changed the outputs by {diff:.3g} (max abs); kept the unoptimized graph"
        ]
    else:
        meta["graph_optimized_max_abs_diff"] = diff
    return notes, meta


# ---------------------------------------------------------------------------------------------------
# the pass


def _onnx_meta(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k not in _TORCH_META}


@register_pass(
    "onnx", OnnxExportConfig, "export to one ONNX file and optimize the graph (fusion for BERT-like models)"
)
def onnx_pass(candidate: Candidate, config: OnnxExportConfig, ctx: PassContext) -> Candidate:
    dest = Path(ctx.workdir) / "model.onnx"
    Path(ctx.workdir).mkdir(parents=True, exist_ok=True)
    meta = _onnx_meta(dict(candidate.meta))
    notes: list[str] = []
    if candidate.format == "onnx":
        if not config.optimize:
            raise PassSkipped("already ONNX (and optimize=False, so there is nothing to do)")
        if meta.get("graph_optimizer"):
            raise PassSkipped(f"already ONNX and graph-optimized ({meta['graph_optimizer']})")
        feeds = example_feeds(candidate, ctx)
        shape = meta.get("bert_shape")
        ctx.progress(f"optimizing the ONNX graph of {candidate.name}")
        opt_notes, opt_meta = graph_optimize(candidate.path, dest, feeds, shape, ctx.threads, config.fuse)
        meta.update(opt_meta)
        notes.extend(opt_notes)
    elif candidate.format in ("torch", "hf"):
        shape = bert_shape(hf_config(candidate.path)) if candidate.format == "hf" else None
        with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
            raw = Path(tmp) / "export.onnx"
            feeds, diff = export_torch(candidate, ctx, raw, config.opset)
            notes.append(
                f"exported with the TorchScript ONNX exporter, opset {config.opset}; "
                f"max abs difference vs PyTorch {diff:.2g} on {next(iter(feeds.values())).shape[0]} examples"
            )
            meta["export_max_abs_diff"] = diff
            if config.optimize:
                ctx.progress("optimizing the ONNX graph")
                opt_notes, opt_meta = graph_optimize(raw, dest, feeds, shape, ctx.threads, config.fuse)
                meta.update(opt_meta)
                notes.extend(opt_notes)
            else:
                shutil.move(str(raw), dest)
                notes.append("graph left as exported (optimize=False)")
        if shape is not None:
            meta["bert_shape"] = shape
        meta["opset"] = config.opset
    else:
        raise PassSkipped(f"onnx: cannot export a {candidate.format!r} candidate; expected torch, hf or onnx")
    return Candidate(
        name=candidate.name,
        format="onnx",
        path=dest,
        spec=candidate.spec,
        parent=None,
        passes=[],
        tokenizer_dir=candidate.tokenizer_dir,
        meta=meta,
        notes=notes,
    )
