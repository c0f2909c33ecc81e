"""A registered version's manifest, read for serving: its Candidate with the file paths re-pointed into the
folder the version was materialized in, and the Open Inference Protocol platform of its format."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from modelyard.candidate import Candidate
from modelyard.errors import ArtifactError

_PLATFORMS = {
    ("onnx", None): "onnx_onnxv1",
    ("torch", "torchscript"): "pytorch_torchscript",
    ("torch", "export"): "pytorch_export",
    ("torch", "safetensors"): "pytorch_safetensors",
    ("hf", None): "huggingface_pytorch",
    ("openvino", None): "openvino_ir",
}


def relocate(manifest: Mapping[str, Any], folder: Path) -> Candidate:
    """The manifest's Candidate with its file paths re-pointed inside the materialized ``folder``.

    The pipeline registers a file artifact's files relative to its parent folder, a folder artifact's
    (Hugging Face) relative to itself, and a separate tokenizer folder's files under ``tokenizer/``."""
    cand = Candidate.from_dict(dict(manifest))
    original = cand.path
    path = folder if cand.format == "hf" else folder / original.name
    if not path.exists():
        raise ArtifactError(
            f"the registered files of {cand.name!r} do not include {original.name!r}; "
            "register the model again (modelyard optimize, or modelyard demo for a demo, registers versions)"
        )
    tokenizer: Path | None = None
    if cand.tokenizer_dir is not None:
        if cand.tokenizer_dir == original and path.is_dir():
            tokenizer = path
        elif (folder / "tokenizer" / "tokenizer.json").is_file():
            tokenizer = folder / "tokenizer"
        elif (folder / "tokenizer.json").is_file():
            tokenizer = folder
        else:
            raise ArtifactError(
                f"candidate {cand.name!r} is a text model but its registered files hold no tokenizer.json; "
                "re-register it with its tokenizer"
            )
    cand.path = path
    cand.tokenizer_dir = tokenizer
    return cand


def platform_of(cand: Candidate) -> str:
    """The Open Inference Protocol platform name of a candidate's format."""
    kind = cand.meta.get("torch_kind", "safetensors") if cand.format == "torch" else None
    return _PLATFORMS.get((cand.format, kind), f"modelyard_{cand.format}")
