"""Structural edits of Hugging Face BERT-like models: FFN neuron pruning, fewer-layer students, saving."""

from __future__ import annotations

import copy
import math
import re
import shutil
import typing
from pathlib import Path
from typing import Any

from torch import nn

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError, PassSkipped
from modelyard.optimize.passes.surgery import keep_count, l1_keep, sliced_layer

# ---------------------------------------------------------------------------------------------------
# Hugging Face BERT-like models
# ---------------------------------------------------------------------------------------------------


def hf_ffn_layers(model: nn.Module) -> list[nn.Module]:
    """Transformer blocks with ``intermediate.dense`` and ``output.dense`` Linear layers (BERT, RoBERTa, MiniLM)."""
    out = []
    for m in model.modules():
        inter = getattr(getattr(m, "intermediate", None), "dense", None)
        outp = getattr(getattr(m, "output", None), "dense", None)
        if (
            isinstance(inter, nn.Linear)
            and isinstance(outp, nn.Linear)
            and inter.out_features == outp.in_features
        ):
            out.append(m)
    return out


def prune_hf_ffn(model: nn.Module, amount: float) -> tuple[int, int]:
    """Remove ``amount`` of every block's FFN neurons (rows of ``intermediate.dense`` by L1 norm, and the
    matching columns of ``output.dense``), the same count in every block so that ``config.intermediate_size``
    describes the result. Returns (kept, before) neurons per block."""
    config = getattr(model, "config", None)
    layers = hf_ffn_layers(model)
    n_layers = getattr(config, "num_hidden_layers", None)
    if config is None or not layers or not hasattr(config, "intermediate_size") or len(layers) != n_layers:
        raise PassSkipped(
            f"structured pruning of Hugging Face models supports BERT-like encoders (blocks with intermediate.dense "
            f"and output.dense, config.intermediate_size); {type(model).__name__} is not one; use prune(structured=False)"
        )
    before = int(config.intermediate_size)
    k = keep_count(before, amount)
    for layer in layers:
        inter, outp = typing.cast(Any, layer.intermediate), typing.cast(Any, layer.output)
        idx = l1_keep(inter.dense.weight, k)
        inter.dense = sliced_layer(inter.dense, idx, None)
        outp.dense = sliced_layer(outp.dense, None, idx)
    config.intermediate_size = k
    return k, before


def _layer_list(model: nn.Module, n_layers: int) -> str:
    for name, m in model.named_modules():
        if isinstance(m, nn.ModuleList) and len(m) == n_layers and name.endswith("layer"):
            return str(name)
    raise PassSkipped(
        f"distill needs a BERT-like HF model with an encoder layer list; found none of length {n_layers} "
        f"in {type(model).__name__}"
    )


def student_layer_indices(teacher_layers: int, layers: int) -> list[int]:
    """Teacher layers that initialise a student of ``layers`` layers: every k-th, ending at the last one."""
    return [math.floor((i + 1) * teacher_layers / layers + 1e-9) - 1 for i in range(layers)]


def hf_student(teacher: nn.Module, layers: int) -> nn.Module:
    """A copy of an HF model with ``layers`` encoder layers taken from every k-th teacher layer (ending at
    the last), plus the teacher's embeddings, pooler and head."""
    config = copy.deepcopy(getattr(teacher, "config", None))
    total = getattr(config, "num_hidden_layers", None)
    if config is None or not isinstance(total, int):
        raise PassSkipped(
            f"distill needs an HF model whose config has num_hidden_layers; {type(teacher).__name__} has none"
        )
    prefix = _layer_list(teacher, total)
    config.num_hidden_layers = layers
    student = type(teacher)(config)
    mapping = {str(j): str(i) for i, j in enumerate(student_layer_indices(total, layers))}
    pattern = re.compile(rf"^{re.escape(prefix)}\.(\d+)\.")
    state = {}
    for key, value in teacher.state_dict().items():
        m = pattern.match(key)
        if m is None:
            state[key] = value
        elif m.group(1) in mapping:
            state[f"{prefix}.{mapping[m.group(1)]}.{key[m.end() :]}"] = value
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise ArtifactError(
            f"cannot initialise the {layers}-layer student from {type(teacher).__name__}: "
            f"missing {list(missing)[:5]}, unexpected {list(unexpected)[:5]}"
        )
    return student.eval()


_WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".onnx",
    ".data",
    ".ot",
    ".pkl",
)
_NOT_COPIED = {"config.json", "generation_config.json", "README.md", ".gitattributes"}
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "merges.txt",
    "vocab.json",
    "added_tokens.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def _copy_aux_files(src: Path, dest: Path) -> None:
    """Copy tokenizer and sentence-transformers files (not weights, not the model config) from ``src``."""
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if (
            not path.is_file()
            or any(part.startswith(".") for part in rel.parts)
            or path.name.endswith(_WEIGHT_SUFFIXES)
            or (len(rel.parts) == 1 and rel.name in _NOT_COPIED)
        ):
            continue
        target = dest / rel
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def save_hf_candidate(model: nn.Module, parent: Candidate, workdir: Path, *, notes: list[str]) -> Candidate:
    """``save_pretrained`` into ``workdir/model`` (transformers 5 always writes safetensors) plus the
    parent's tokenizer and sentence-transformers files, as an hf-format candidate."""
    folder = workdir / "model"
    model.save_pretrained(str(folder))  # type: ignore[operator]
    if not any(folder.glob("*.safetensors")):
        raise ArtifactError(
            f"save_pretrained wrote no .safetensors file into {folder}; check the transformers version"
        )
    _copy_aux_files(parent.path, folder)
    tok = parent.tokenizer_dir
    if tok is not None and Path(tok).resolve() != parent.path.resolve():
        for name in _TOKENIZER_FILES:
            src = Path(tok) / name
            if src.is_file() and not (folder / name).exists():
                shutil.copy2(src, folder / name)
    return Candidate(
        name=parent.name,
        format="hf",
        path=folder,
        spec=parent.spec,
        parent=None,
        passes=[],
        tokenizer_dir=folder if tok is not None else None,
        meta=dict(parent.meta),
        notes=list(notes),
    )
