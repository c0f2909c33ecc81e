"""export: a registered version written for the servers teams already run.

- ``triton``: ``<out>/<name>/`` of a Triton model repository (:mod:`modelyard.export.triton`);
- ``kserve``: ``<out>/<service>-kserve/`` with an ``InferenceService`` manifest and the Triton repository it serves
  (:mod:`modelyard.export.kserve`);
- ``onnx``: ``<out>/<name>-v<version>/`` with the registered files and a sidecar of the serving rules
  (:mod:`modelyard.export.sidecar`).

Every export is written into a staging folder and renamed into place (all or nothing) and never replaces
something that exists. Only ONNX artifacts are exported.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from modelyard.errors import ConfigError
from modelyard.export.sidecar import OnnxExport, read_sidecar
from modelyard.registry import Registry

if TYPE_CHECKING:
    from modelyard.serve.batcher import BatchingConfig
    from modelyard.serve.model import ServedModel

__all__ = ["FORMATS", "ExportOptions", "ExportResult", "OnnxExport", "export_model", "read_sidecar"]

FORMATS = ("triton", "kserve", "onnx")


@dataclass(frozen=True)
class ExportOptions:
    """How to export. ``storage_uri`` (kserve, required): where the model repository will be uploaded;
    ``runtime`` (kserve): "onnx" or "triton"; ``service_name`` (kserve): default from the model name;
    ``memory`` (kserve): a Kubernetes quantity instead of the measured peak; ``max_batch_size``,
    ``max_wait_ms``, ``latency_budget_ms`` (triton, kserve): override the batching chosen from the evidence,
    as ``modelyard serve`` takes them."""

    format: str
    out: Path
    storage_uri: str | None = None
    runtime: str = "onnx"
    service_name: str | None = None
    memory: str | None = None
    max_batch_size: int | None = None
    max_wait_ms: float | None = None
    latency_budget_ms: float | None = None

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"unknown export format {self.format!r}; choose one of: {', '.join(FORMATS)}")


@dataclass
class ExportResult:
    """What an export wrote: the folder, its files, the version exported and notes worth reading."""

    format: str
    model: str
    version: int
    folder: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_model(registry: Registry, ref: str, options: ExportOptions) -> ExportResult:
    """Export the version ``ref`` names ("name", "name@alias", "name:3") as ``options`` say."""
    from modelyard.export import kserve
    from modelyard.export.sidecar import write_onnx_export
    from modelyard.export.source import load_onnx_version, staged
    from modelyard.export.triton import write_triton_model

    if options.format == "kserve":
        kserve.check_storage_uri(options.storage_uri)  # before anything is loaded
    out = Path(options.out)
    with tempfile.TemporaryDirectory(prefix="modelyard-export-") as work:
        model = load_onnx_version(registry, ref, workdir=Path(work), what=options.format)
        try:
            info = registry.get_version(model.name, model.version)
            notes = list(model.notes)
            if options.format == "onnx":
                target = out / f"{model.name}-v{model.version}"
                with staged(target) as tmp:
                    files = write_onnx_export(model, info, tmp)
                return _result(options, model.name, model.version, target, tmp, files, notes)
            batching = _batching(registry, model, options)
            notes.append(f"batching: {batching.why}")
            if options.format == "triton":
                target = out / model.name
                with staged(target) as tmp:
                    files = write_triton_model(model, batching, tmp)
                return _result(options, model.name, model.version, target, tmp, files, notes)
            doc = kserve.manifest(
                model,
                storage_uri=str(options.storage_uri),
                runtime=options.runtime,
                name=options.service_name,
                memory=options.memory,
                artifact_sha256=str(info.get("artifact_sha256", "")),
            )
            target = out / f"{doc['metadata']['name']}-kserve"
            with staged(target) as tmp:
                files = write_triton_model(model, batching, tmp / kserve.REPOSITORY_DIR / model.name)
                files.insert(0, _write_yaml(doc, tmp / kserve.MANIFEST_FILE))
            notes.append(doc["metadata"]["annotations"]["modelyard.io/storage"])
            return _result(options, model.name, model.version, target, tmp, files, notes)
        finally:
            model.close()


def _batching(registry: Registry, model: ServedModel, options: ExportOptions) -> BatchingConfig:
    """The batching ``modelyard serve`` would choose for ``model``, with the options' overrides."""
    from modelyard.serve.settings import ServeSettings
    from modelyard.serve.state import batching_for

    settings = ServeSettings.from_env(
        {},
        home=registry.home,
        max_batch_size=options.max_batch_size,
        max_wait_ms=options.max_wait_ms,
        latency_budget_ms=options.latency_budget_ms,
    )
    return batching_for(settings, model)


def _write_yaml(doc: dict[str, object], path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _result(
    options: ExportOptions,
    model: str,
    version: int,
    target: Path,
    tmp: Path,
    files: list[Path],
    notes: list[str],
) -> ExportResult:
    moved = [target / f.relative_to(tmp) for f in files]
    return ExportResult(options.format, model, version, target, moved, notes)
