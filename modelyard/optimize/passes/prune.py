"""Magnitude pruning, structured or unstructured, followed by a short deterministic fine-tune.

- structured (default): removes whole Conv output channels (L1 norm of filters) and hidden Linear neurons
  (L1 norm of rows), and shrinks the layers that read them, so the model really has fewer parameters and
  its ONNX export is smaller and faster. Hugging Face BERT-like models lose FFN neurons, the same number
  in every block.
- unstructured: zeroes the globally smallest weights of every Conv/Linear layer except the last; the
  fine-tune keeps them at zero. Dense kernels and dense ONNX files do not get faster or smaller from this.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from modelyard.candidate import Candidate
from modelyard.errors import ConfigError, PassSkipped
from modelyard.optimize.passes import hf_surgery, surgery
from modelyard.optimize.passes.distill import fit, require_pytorch, require_train_data, set_threads
from modelyard.optimize.registry import PassContext, register_pass


@dataclass(frozen=True)
class PruneConfig:
    """``amount``: fraction of channels/neurons (structured) or weights (unstructured) removed, in (0, 1)."""

    amount: float = 0.5
    structured: bool = True
    finetune_epochs: int = 8
    lr: float = 1e-3

    def __post_init__(self) -> None:
        problems = []
        if (
            isinstance(self.amount, bool)
            or not isinstance(self.amount, int | float)
            or not 0 < self.amount < 1
        ):
            problems.append(f"amount must be in (0, 1) (a fraction to remove), got {self.amount!r}")
        if not isinstance(self.structured, bool):
            problems.append(f"structured must be True or False, got {self.structured!r}")
        if (
            isinstance(self.finetune_epochs, bool)
            or not isinstance(self.finetune_epochs, int)
            or self.finetune_epochs < 0
        ):
            problems.append(f"finetune_epochs must be an integer >= 0, got {self.finetune_epochs!r}")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            problems.append(f"lr must be > 0, got {self.lr!r}")
        if problems:
            raise ConfigError(
                f"prune: {'; '.join(problems)}; e.g. prune(0.5) or prune(0.3, structured=False)"
            )


def _finetune(
    module: nn.Module,
    candidate: Candidate,
    config: PruneConfig,
    ctx: PassContext,
    after_step: Any = None,
) -> str:
    """Fine-tune on the train labels, or toward the unpruned model's outputs when there are none."""
    if config.finetune_epochs == 0:
        return "no fine-tune (finetune_epochs=0)"
    has_labels = candidate.spec.task == "classification" and ctx.dataset.y_train is not None
    teacher = None if has_labels else candidate.torch_module().eval()
    fit(
        module,
        candidate,
        ctx.dataset,
        epochs=config.finetune_epochs,
        lr=config.lr,
        seed=ctx.seed,
        teacher=teacher,
        after_step=after_step,
        progress=ctx.progress,
        label="prune fine-tune",
    )
    target = "train labels" if has_labels else "the unpruned model's outputs"
    return f"fine-tuned {config.finetune_epochs} epochs (Adam, lr {config.lr:g}) on {target}"


def _unstructured(
    module: nn.Module, candidate: Candidate, config: PruneConfig, ctx: PassContext
) -> list[str]:
    root: Any = module.inner if candidate.format == "hf" else module
    targets = surgery.unstructured_targets(root)
    if not targets:
        raise PassSkipped(
            f"prune found no Conv/Linear layer in {type(root).__name__} to sparsify besides the output layer"
        )
    weights: list[torch.Tensor] = [typing.cast(torch.Tensor, m.weight) for _, m in targets]
    masks = surgery.global_magnitude_masks(weights, config.amount)

    def reapply(_: nn.Module) -> None:
        with torch.no_grad():
            for w, mask in zip(weights, masks, strict=True):
                w.mul_(mask)

    reapply(module)
    how = _finetune(module, candidate, config, ctx, after_step=reapply)
    total = sum(w.numel() for w in weights)
    zeros = sum(int((w == 0).sum()) for w in weights)
    last = [n for n, m in root.named_modules() if type(m) in (nn.Conv1d, nn.Conv2d, nn.Linear)][-1]
    return [
        f"unstructured magnitude pruning: {zeros / total:.1%} of {total:,} weights in {len(weights)} Conv/Linear "
        f"layers are zero (requested {config.amount:.1%}, global threshold); layer {last!r} kept dense",
        how,
        "zeros are stored densely: the ONNX/safetensors file does not shrink and dense CPU kernels do not get "
        "faster; use structured pruning (or int8 quantization) for size and speed",
    ]


def _structured_torch(
    module: nn.Module, candidate: Candidate, config: PruneConfig, ctx: PassContext
) -> tuple[list[str], str, dict[str, Any]]:
    x = np.asarray(ctx.dataset.x_train[:2], dtype=np.float32)
    before = surgery.param_count(module)
    result = surgery.structured_prune(module, config.amount, torch.from_numpy(x))
    how = _finetune(result.module, candidate, config, ctx)
    after = surgery.param_count(result.module)
    factory = str(candidate.meta.get("factory", ""))
    kwargs = dict(candidate.meta.get("factory_kwargs") or {})
    knobs = surgery.width_knobs(factory, kwargs) if factory != surgery.REBUILD_REF else {}
    width_kwargs = {k: surgery.keep_count(v, config.amount) for k, v in knobs.items()}
    new_factory, new_kwargs = surgery.torch_factory_meta(
        result.module, candidate.meta, result.shapes, width_kwargs
    )
    kept = ", ".join(f"{name} {k}/{n}" for name, (k, n) in result.kept.items())
    notes = [
        f"structured L1 pruning removed {config.amount:.0%} of the channels/neurons of each cut layer (kept: {kept}); "
        f"parameters {before:,} -> {after:,} ({before / max(after, 1):.2f}x fewer)",
        how,
    ]
    if new_factory == surgery.REBUILD_REF:
        notes.append(
            f"rebuilt with {surgery.REBUILD_REF} from {new_kwargs['factory']} and the pruned layer sizes"
        )
    return notes, new_factory, new_kwargs


def _structured_hf(
    module: nn.Module, candidate: Candidate, config: PruneConfig, ctx: PassContext
) -> list[str]:
    before = surgery.param_count(module)
    kept, n = hf_surgery.prune_hf_ffn(typing.cast(nn.Module, module.inner), config.amount)
    how = _finetune(module, candidate, config, ctx)
    after = surgery.param_count(module)
    return [
        f"structured pruning kept {kept} of {n} FFN neurons in every block (L1 norm of intermediate.dense rows); "
        f"parameters {before:,} -> {after:,} ({before / max(after, 1):.2f}x fewer)",
        how,
        "attention heads were not pruned: transformers 5 has no prune_heads and its BERT config ties the head "
        "size to hidden_size / num_attention_heads, so a head-pruned model would not reload with from_pretrained",
    ]


@register_pass(
    "prune",
    PruneConfig,
    "magnitude pruning: structured (fewer channels/neurons/FFN units, a smaller model) or unstructured "
    "(sparse weights), then a short fine-tune",
)
def prune(candidate: Candidate, config: PruneConfig, ctx: PassContext) -> Candidate:
    require_pytorch(candidate, "prune", "pruned")
    require_train_data(candidate, ctx.dataset, "prune")
    set_threads(ctx)
    module = candidate.torch_module()
    if not config.structured:
        notes = _unstructured(module, candidate, config, ctx)
        if candidate.format == "hf":
            return hf_surgery.save_hf_candidate(module.inner, candidate, ctx.workdir, notes=notes)
        return surgery.save_torch_candidate(
            module,
            candidate,
            ctx.workdir,
            factory=str(candidate.meta.get("factory", "")),
            factory_kwargs=dict(candidate.meta.get("factory_kwargs") or {}),
            notes=notes,
        )
    if candidate.format == "hf":
        notes = _structured_hf(module, candidate, config, ctx)
        return hf_surgery.save_hf_candidate(module.inner, candidate, ctx.workdir, notes=notes)
    notes, factory, kwargs = _structured_torch(module, candidate, config, ctx)
    return surgery.save_torch_candidate(
        module, candidate, ctx.workdir, factory=factory, factory_kwargs=kwargs, notes=notes
    )


__all__ = ["PruneConfig", "prune"]
