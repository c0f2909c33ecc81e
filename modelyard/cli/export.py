"""`modelyard export`: a registered version as a Triton model, a KServe InferenceService or ONNX with its
serving rules (see :mod:`modelyard.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from modelyard.cli.options import HomeOpt, settings_for
from modelyard.cli.render import console


def export(
    ref: Annotated[str, typer.Argument(help="NAME (its champion), NAME@alias or NAME:version")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="triton, kserve or onnx.")],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder to write into (a Triton repository for triton).")
    ],
    storage_uri: Annotated[
        str | None,
        typer.Option(
            "--storage-uri",
            help="kserve: where you will upload the model repository (s3://, gs://, pvc://, https://, ...).",
        ),
    ] = None,
    runtime: Annotated[
        str,
        typer.Option("--runtime", help="kserve: 'onnx' (ONNX model format) or 'triton' (Triton runtime)."),
    ] = "onnx",
    service_name: Annotated[
        str | None,
        typer.Option("--service-name", help="kserve: InferenceService name (default: from the model)."),
    ] = None,
    memory: Annotated[
        str | None,
        typer.Option(
            "--memory", help="kserve: memory request and limit (e.g. 1Gi) instead of the measured peak."
        ),
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option("--max-batch-size", help="triton/kserve: override the measured batch size.")
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option("--max-wait-ms", help="triton/kserve: override the queue delay.")
    ] = None,
    home: HomeOpt = None,
) -> None:
    """Export a registered ONNX version for Triton, KServe, or as ONNX with a sidecar of its serving rules."""
    from modelyard.export import ExportOptions, export_model
    from modelyard.registry.mlflow_backend import open_registry

    options = ExportOptions(
        format=fmt,
        out=out,
        storage_uri=storage_uri,
        runtime=runtime,
        service_name=service_name,
        memory=memory,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
    )
    result = export_model(open_registry(settings_for(home)), ref, options)
    table = Table(title=f"{result.model} v{result.version} → {result.format}")
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for f in result.files:
        table.add_row(str(f.relative_to(result.folder)), str(f.stat().st_size))
    console.print(table)
    for note in result.notes:
        console.print(f"note: {note}", highlight=False, soft_wrap=True)
    console.print(f"written: {result.folder}")
