"""The ``torch-bf16`` pass: a PyTorch or Hugging Face candidate with bfloat16 weights, run by PyTorch in bf16.

bf16 pays only where the hardware computes it natively. On the CPU that means AVX512_BF16 or AMX-BF16
(``cpu_info()["isa"]["bf16"]``); elsewhere PyTorch emulates bf16 matrix multiplies, slower than fp32, and the
pass is skipped with that reason. On a GPU target it needs torch to report bf16 support on the device.

The weights are stored in bfloat16 (``meta["torch_dtype"] = "bfloat16"``: a safetensors state dict with its
factory, or a Hugging Face folder); the Runner casts float inputs to bf16 and returns float32 outputs. The
pass loads what it wrote, checks that PyTorch runs it in bfloat16 and records its difference from the parent
on a few fit examples (the gates judge it). There is no ONNX Runtime bf16 pass: its CPU execution provider
has no bfloat16 MatMul or Gemm kernel (ONNX Runtime 1.32 refuses such a graph with NOT_IMPLEMENTED).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, PassSkipped
from modelyard.optimize.passes.export import example_feeds
from modelyard.optimize.registry import PassContext, register_pass
from modelyard.runtime import device

PASS = "torch-bf16"
DTYPE = "bfloat16"


@dataclass(frozen=True)
class TorchBf16Config:
    """No options: weights and compute in bfloat16; inputs and outputs stay float32."""


def bf16_unavailable(*, gpu: bool) -> str | None:
    """Why bf16 would not run natively on the target (one line), or None when it would."""
    if gpu:
        import torch

        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return None
        return "torch reports no bf16 support on the GPU here"
    if device.cpu_info()["isa"].get("bf16"):
        return None
    return (
        "this CPU has no BF16/AMX instructions (avx512_bf16 or amx_bf16); PyTorch would emulate bf16 "
        "matrix multiplies here, slower than fp32"
    )


def _require_module(candidate: Candidate) -> None:
    if candidate.format not in ("torch", "hf"):
        raise PassSkipped(
            f"{PASS}: works on PyTorch and Hugging Face candidates; this candidate is {candidate.format}"
        )
    if candidate.format == "torch" and candidate.meta.get("torch_kind", "safetensors") != "safetensors":
        raise PassSkipped(
            f"{PASS}: needs a safetensors state dict with a factory; a {candidate.meta.get('torch_kind')} "
            "model cannot be rebuilt in bf16"
        )
    if candidate.meta.get("torch_dtype") == DTYPE:
        raise PassSkipped(f"{PASS}: the candidate already runs in bfloat16")


def _save(candidate: Candidate, workdir: Path) -> Candidate:
    import torch

    module = candidate.torch_module().to(torch.bfloat16)
    if candidate.format == "hf":
        from modelyard.optimize.passes.hf_surgery import save_hf_candidate

        return save_hf_candidate(module.inner, candidate, workdir, notes=[])
    from modelyard.optimize.passes.surgery import save_torch_candidate

    return save_torch_candidate(
        module,
        candidate,
        workdir,
        factory=str(candidate.meta["factory"]),
        factory_kwargs=dict(candidate.meta.get("factory_kwargs") or {}),
        notes=[],
    )


def _first_output(
    cand: Candidate, feeds: dict[str, np.ndarray], threads: int | None
) -> tuple[np.ndarray, str]:
    runner = cand.load(threads=threads)
    out = np.asarray(runner.run(feeds)[runner.spec.output_name], dtype=np.float64)
    return out, str(getattr(runner, "dtype", "unknown"))


@register_pass(
    PASS,
    TorchBf16Config,
    "PyTorch with bfloat16 weights and compute (skipped on CPUs without BF16/AMX instructions)",
)
def torch_bf16_pass(candidate: Candidate, config: TorchBf16Config, ctx: PassContext) -> Candidate:
    reason = bf16_unavailable(gpu=ctx.is_gpu)
    if reason:
        raise PassSkipped(f"{PASS}: {reason}")
    _require_module(candidate)
    workdir = Path(ctx.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ctx.progress("casting the weights to bfloat16")
    made = _save(candidate, workdir)
    made = replace(made, meta={**made.meta, "torch_dtype": DTYPE, "precision": "bf16"})
    feeds = example_feeds(candidate, ctx)
    ref, _ = _first_output(candidate, feeds, ctx.threads)
    got, dtype = _first_output(made, feeds, ctx.threads)
    if dtype != DTYPE:
        raise ArtifactError(f"{PASS}: PyTorch loads the candidate in {dtype}, not {DTYPE}")
    if got.shape != ref.shape:
        raise ArtifactError(
            f"{PASS}: the bf16 model outputs shape {got.shape} but its parent gives {ref.shape}"
        )
    if not np.all(np.isfinite(got)):
        raise ArtifactError(f"{PASS}: the bf16 model gives non-finite outputs")
    diff = float(np.max(np.abs(got - ref))) if ref.size else 0.0
    made.notes.append(
        f"bfloat16 weights and compute in PyTorch (float32 inputs cast, float32 outputs); max abs difference "
        f"vs the parent {diff:.2g} on {len(ref)} fit examples"
    )
    made.meta["parent_max_abs_diff"] = diff
    return made
