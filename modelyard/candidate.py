"""Candidate: a Runner's artifact on disk plus its lineage."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelyard.errors import ArtifactError
from modelyard.runtime.base import Runner, RunnerSpec
from modelyard.runtime.preprocess import ArrayPreprocessor, Preprocessor, TokenizerPreprocessor

Format = Literal["onnx", "torch", "hf", "openvino"]


@dataclass
class Candidate:
    """One model variant.

    ``format``: "onnx" (an .onnx file), "torch" (a PyTorch module: safetensors state dict + factory,
    TorchScript, or torch.export; see ``meta["torch_kind"]``), "hf" (a Hugging Face folder) or "openvino"
    (an OpenVINO IR ``.xml`` file with its ``.bin`` beside it; compiled with ``meta["openvino"]``'s settings).
    A "torch" or "hf" candidate with ``meta["torch_dtype"] == "bfloat16"`` is loaded and run in bfloat16.
    ``passes`` is the full chain of pass configs applied since the baseline, as JSON dicts
    ``{"pass": name, "config": {...}}``. ``notes`` are facts worth reporting (e.g. which nodes were kept in fp32).
    """

    name: str
    format: Format
    path: Path
    spec: RunnerSpec
    parent: str | None = None
    passes: list[dict[str, Any]] = field(default_factory=list)
    tokenizer_dir: Path | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def is_baseline(self) -> bool:
        return self.parent is None

    def load(self, *, threads: int | None = None, spin: bool = True, device: str = "cpu") -> Runner:
        """Load this candidate as a Runner (ONNX Runtime for ONNX files, OpenVINO for OpenVINO IR, PyTorch
        otherwise). ``spin=False``: ONNX Runtime threads sleep between calls (what a server wants).
        ``device``: "cpu" (default), "gpu" (the policy's ``[hardware] target``) or "cuda:N"; a GPU the
        runtime cannot reach is a ConfigError (OpenVINO candidates run on the CPU only). The Runner's
        ``device`` says where it runs."""
        if self.format == "onnx":
            from modelyard.runtime.onnx import OrtRunner

            return OrtRunner(self.path, spec=self.spec, threads=threads, spin=spin, device=device)
        if self.format == "openvino":
            from modelyard.runtime.openvino import OvRunner, OvSettings

            settings = OvSettings.from_meta(self.meta)
            return OvRunner(self.path, spec=self.spec, threads=threads, device=device, settings=settings)
        if self.format == "hf":
            from modelyard.runtime.hf import HFRunner

            return HFRunner(
                self.path,
                task=self.spec.task,
                threads=threads,
                device=device,
                dtype=self.meta.get("torch_dtype"),
            )
        from modelyard.runtime.device import resolve_device
        from modelyard.runtime.torch import TorchRunner

        resolve_device(device)  # a bad choice is refused before the module is built
        return TorchRunner(self.torch_module(), spec=self.spec, threads=threads, device=device)

    def torch_module(self) -> Any:
        """The candidate as a ``torch.nn.Module`` (for passes that train or export). Raises if it has none."""
        if self.format == "hf":
            from modelyard.runtime.hf import load_hf_module

            return load_hf_module(self.path, self.spec.task, dtype=self.meta.get("torch_dtype"))
        if self.format != "torch":
            raise ArtifactError(f"candidate {self.name!r} is {self.format}, not a PyTorch module")
        from modelyard.runtime.torch import load_torch_module

        return load_torch_module(self.path, self.meta)

    def preprocessor(self, *, pad_to: int | None = None) -> Preprocessor:
        if self.tokenizer_dir is not None:
            return TokenizerPreprocessor(
                self.tokenizer_dir,
                [t.name for t in self.spec.inputs],
                max_length=int(self.meta.get("max_length", 128)),
                pad_to=pad_to,
            )
        first = self.spec.inputs[0]
        return ArrayPreprocessor(first.name, first.dtype)

    def files(self) -> list[Path]:
        """Every file that makes up the artifact (a folder's files, a file plus ONNX external data, or an
        OpenVINO .xml plus its .bin)."""
        if self.path.is_dir():
            return sorted(p for p in self.path.rglob("*") if p.is_file())
        out = [self.path]
        if self.format == "openvino":
            weights = self.path.with_suffix(".bin")
            return [*out, weights] if weights.exists() else out
        data = self.path.with_name(self.path.name + ".data")
        if data.exists():
            out.append(data)
        return out

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def artifact_sha256(self) -> str:
        h = hashlib.sha256()
        base = self.path if self.path.is_dir() else self.path.parent
        for p in self.files():
            h.update(str(p.relative_to(base)).encode() + b"\0")
            with p.open("rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "path": str(self.path),
            "spec": self.spec.to_dict(),
            "parent": self.parent,
            "passes": self.passes,
            "tokenizer_dir": str(self.tokenizer_dir) if self.tokenizer_dir else None,
            "meta": self.meta,
            "notes": self.notes,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Candidate:
        return cls(
            name=d["name"],
            format=d["format"],
            path=Path(d["path"]),
            spec=RunnerSpec.from_dict(d["spec"]),
            parent=d.get("parent"),
            passes=list(d.get("passes") or []),
            tokenizer_dir=Path(d["tokenizer_dir"]) if d.get("tokenizer_dir") else None,
            meta=dict(d.get("meta") or {}),
            notes=list(d.get("notes") or []),
        )

    def manifest_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)
