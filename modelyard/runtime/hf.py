"""Hugging Face transformers runner: a local model folder, sequence classification or embeddings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from modelyard.errors import ArtifactError
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.runtime.torch import TorchRunner

TEXT_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def _config(folder: Path) -> dict[str, Any]:
    cfg = folder / "config.json"
    if not cfg.is_file():
        raise ArtifactError(f"{folder} is not a Hugging Face model folder: it has no config.json")
    try:
        data = json.loads(cfg.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{cfg} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ArtifactError(f"{cfg} must hold a JSON object")
    return data


def infer_task(folder: Path) -> str:
    """Sequence classification when the config names a *ForSequenceClassification architecture, else embedding."""
    archs = _config(folder).get("architectures") or []
    return "classification" if any("SequenceClassification" in a for a in archs) else "embedding"


def _normalizes(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.is_file():
        return False
    try:
        return any("Normalize" in str(m.get("type", "")) for m in json.loads(modules.read_text()))
    except (json.JSONDecodeError, AttributeError):
        return False


def hf_spec(folder: Path, task: str) -> RunnerSpec:
    cfg = _config(folder)
    names = ["input_ids", "attention_mask"]
    if int(cfg.get("type_vocab_size", 0) or 0) > 0:
        names.append("token_type_ids")
    inputs = tuple(TensorSpec(n, "int64", (None, None)) for n in names)
    if task == "classification":
        id2label = cfg.get("id2label") or {}
        k = len(id2label) or int(cfg.get("num_labels", 2))
        labels = tuple(str(id2label.get(str(i), i)) for i in range(k)) if id2label else None
        return RunnerSpec(
            inputs, (TensorSpec("logits", "float32", (None, k)),), "classification", k, labels=labels
        )
    dim = int(cfg.get("hidden_size", 0)) or None
    return RunnerSpec(
        inputs,
        (TensorSpec("embedding", "float32", (None, dim)),),
        "embedding",
        extra={"normalize": _normalizes(folder)},
    )


def load_hf_module(folder: Path, task: str, *, dtype: str | None = None) -> Any:
    """A module taking (input_ids, attention_mask[, token_type_ids]) and returning logits or pooled embeddings.

    Loads with eager attention so that the ONNX export keeps the pattern ONNX Runtime fuses into Attention.
    ``dtype`` ("float32", "bfloat16"): the weight dtype to load in (None: transformers' default).
    Weights must be safetensors (pickle .bin checkpoints are refused before this point).
    """
    import torch
    from transformers import AutoModel, AutoModelForSequenceClassification

    if not any(folder.glob("*.safetensors")):
        raise ArtifactError(
            f"{folder} has no .safetensors weights; convert the checkpoint to safetensors "
            "(pickle .bin weights are not loaded)"
        )
    from transformers.utils import logging as hf_logging

    kwargs: dict[str, Any] = {
        "attn_implementation": "eager",
        "local_files_only": True,
        "use_safetensors": True,
    }
    if dtype is not None:
        from modelyard.runtime.torch import torch_dtype

        kwargs["dtype"] = torch_dtype({"torch_dtype": dtype})
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]  # our progress display owns the terminal
    try:
        if task == "classification":
            inner = AutoModelForSequenceClassification.from_pretrained(str(folder), **kwargs).eval()
        else:
            inner = AutoModel.from_pretrained(str(folder), **kwargs).eval()
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()  # type: ignore[no-untyped-call]
    normalize = _normalizes(folder)
    with_types = "token_type_ids" in {t.name for t in hf_spec(folder, task).inputs}

    class HFWrapper(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any = None) -> Any:
            kw = {"input_ids": input_ids, "attention_mask": attention_mask}
            if with_types:
                kw["token_type_ids"] = (
                    token_type_ids if token_type_ids is not None else torch.zeros_like(input_ids)
                )
            out = self.inner(**kw)
            if task == "classification":
                return out.logits
            hidden = out.last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2.0, dim=1)
            return pooled

    return HFWrapper().eval()


class HFRunner(TorchRunner):
    """A Hugging Face model folder run with PyTorch (the reference the ONNX variants are compared with);
    ``dtype`` as in :func:`load_hf_module`."""

    def __init__(
        self,
        folder: Path | str,
        *,
        task: str | None = None,
        threads: int | None = None,
        device: str = "cpu",
        dtype: str | None = None,
    ) -> None:
        folder = Path(folder)
        task = task or infer_task(folder)
        super().__init__(
            load_hf_module(folder, task, dtype=dtype),
            spec=hf_spec(folder, task),
            threads=threads,
            device=device,
        )
        self.folder = folder

    def describe(self) -> dict[str, Any]:
        """torch's description, plus the transformers release that built the module."""
        import transformers

        info = super().describe()
        info["settings"]["model_loader"] = f"transformers {transformers.__version__}"
        return info
