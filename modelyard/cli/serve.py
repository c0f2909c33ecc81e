"""``modelyard serve``: parse the options, build ServeSettings, print one line, run uvicorn on create_app."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def serve(
    model: Annotated[
        str | None,
        typer.Argument(help="NAME, NAME@alias or NAME:version; default: every model's @champion."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1 keeps it local).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch_size: Annotated[
        int | None, typer.Option(help="Rows per batch; default: chosen from the measured throughput curve.")
    ] = None,
    max_wait_ms: Annotated[
        float | None, typer.Option(help="How long a batch may wait to fill; default 0 (only what is queued).")
    ] = None,
    no_batching: Annotated[bool, typer.Option("--no-batching", help="Run every request on its own.")] = False,
    cache_items: Annotated[
        int | None, typer.Option(help="Prediction cache size in items; 0 (default) turns it off.")
    ] = None,
    timeout_s: Annotated[
        float | None, typer.Option(help="Per-request inference timeout (default 30 s).")
    ] = None,
    max_body_mb: Annotated[
        float | None, typer.Option(help="Largest request body in MiB (default 16).")
    ] = None,
    max_queue: Annotated[
        int | None, typer.Option(help="Requests that may wait per model (default 256).")
    ] = None,
    reload_on_alias: Annotated[
        bool,
        typer.Option(
            "--reload-on-alias", help="Follow the alias (e.g. champion): promote/rollback swap versions live."
        ),
    ] = False,
    trust_pickle: Annotated[
        bool,
        typer.Option(
            "--trust-pickle",
            help="Serve a pickle-based version (TorchScript, .pt2) registered without a trust record; "
            "it is still scanned first.",
        ),
    ] = False,
    trust_factory: Annotated[
        bool,
        typer.Option(
            "--trust-factory",
            help="Serve a factory-built version registered without a trust record (imports and runs the factory).",
        ),
    ] = False,
    home: Annotated[
        Path | None, typer.Option(help="Home folder (default $MODELYARD_HOME or ./.modelyard).")
    ] = None,
    no_monitor: Annotated[
        bool,
        typer.Option(
            "--no-monitor",
            help="Do not log predictions (also MODELYARD_MONITOR=0); feedback is then refused.",
        ),
    ] = False,
    monitor_sample: Annotated[
        float | None,
        typer.Option(help="Share of requests written to the prediction log, 0..1 (default 1: all)."),
    ] = None,
    monitor_db: Annotated[
        Path | None, typer.Option(help="Prediction log file (default monitor.db in the home folder).")
    ] = None,
    monitor_max_rows: Annotated[
        int | None,
        typer.Option(
            help="Keep at most this many logged predictions, oldest deleted first (default 1,000,000; 0: no limit)."
        ),
    ] = None,
    monitor_max_days: Annotated[
        float | None,
        typer.Option(help="Delete logged predictions older than this many days (default 30; 0: no limit)."),
    ] = None,
    monitor_every_s: Annotated[
        float | None,
        typer.Option(
            help="Seconds between evaluations of the monitor's checks for the Prometheus gauges (default 30; 0: off)."
        ),
    ] = None,
    monitor_window: Annotated[
        int | None,
        typer.Option(help="Requests per window in those evaluations (default 200: the last 200 logged)."),
    ] = None,
) -> None:
    """Serve registry models over the Open Inference Protocol v2 (KServe v2, with binary tensors) and a simple
    JSON POST /predict. Set MODELYARD_API_KEY in the environment to require 'Authorization: Bearer <key>'; it is
    never a command-line option, so it stays out of the process list and the shell history. A pickle-based or
    factory-built version is served only with the trust record stored when it was registered, or with
    --trust-pickle / --trust-factory for a version registered without one. Predictions are logged (summaries,
    not raw inputs) to monitor.db in the home folder unless --no-monitor; every answer carries its request id
    (x-request-id), and labels posted later to POST /v2/models/NAME/feedback or with 'modelyard monitor
    feedback' name it."""
    from modelyard.cli.render import serve_console
    from modelyard.serve.process import open_app, run_app
    from modelyard.serve.settings import MIB, ServeSettings

    settings = ServeSettings.from_env(
        home=home,
        host=host,
        port=port,
        models=(model,) if model else None,
        max_batch_size=max_batch_size,
        max_wait_ms=max_wait_ms,
        batching=not no_batching,
        cache_items=cache_items,
        request_timeout_s=timeout_s,
        max_body_bytes=int(max_body_mb * MIB) if max_body_mb is not None else None,
        max_queue=max_queue,
        reload_on_alias=reload_on_alias,
        trust_pickle=trust_pickle,
        trust_factory=trust_factory,
        monitor=False if no_monitor else None,
        monitor_sample=monitor_sample,
        monitor_db=monitor_db,
        monitor_max_rows=monitor_max_rows,
        monitor_max_days=monitor_max_days,
        monitor_every_s=monitor_every_s,
        monitor_window=monitor_window,
    )
    # fail fast, in one line, on a bad reference, a version nobody said to trust or an unwritable prediction log
    app, refs = open_app(settings)
    models = ", ".join(f"{name} v{version}" for _, name, version in refs)
    batching = "batching off" if not settings.batching else "batching from measurements"
    if settings.max_batch_size is not None:
        batching = f"batches up to {settings.max_batch_size}"
    extras = [batching]
    if settings.auth:
        extras.append("API key required")
    elif settings.host not in ("127.0.0.1", "localhost", "::1"):
        extras.append("WARNING: reachable from the network with no API key; set MODELYARD_API_KEY")
    if settings.reload_on_alias:
        extras.append("following aliases")
    if not settings.monitor:
        extras.append("prediction log off")
    elif settings.monitor_sample < 1.0:
        extras.append(f"logging {settings.monitor_sample:.0%} of predictions to {settings.monitor_path}")
    else:
        extras.append(f"logging predictions to {settings.monitor_path}")
    extras += [
        flag for flag, on in (("--trust-pickle", trust_pickle), ("--trust-factory", trust_factory)) if on
    ]
    serve_console.print(
        f"serving {models} at http://{settings.host}:{settings.port}/v2 ({', '.join(extras)})",
        highlight=False,
    )
    run_app(app, settings)
