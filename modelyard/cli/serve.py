"""``modelyard serve``: parse the options, build ServeSettings, print one line, run uvicorn on create_app (or,
with ``--ray``, deploy the same app on Ray Serve: :mod:`modelyard.scale.ray_serve`)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from modelyard.scale.ray_serve import RayServeOptions, RayServeRun
    from modelyard.serve.settings import ServeSettings


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
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="auto|ADDRESS",
            help="Serve as a Ray Serve deployment (needs modelyard[ray]): 'auto' starts a local Ray on this machine "
            "(127.0.0.1, no dashboard), otherwise a cluster address (ray://HOST:PORT or HOST:PORT) whose nodes have "
            "modelyard and see the home folder. Ray's HTTP proxy listens on --host/--port.",
        ),
    ] = None,
    replicas: Annotated[
        str | None,
        typer.Option("--replicas", metavar="N", help="With --ray: a fixed number of replicas (default 1)."),
    ] = None,
    replica_cpus: Annotated[
        str | None,
        typer.Option(
            "--replica-cpus",
            metavar="X",
            help="With --ray: CPUs each replica reserves (default 1; may be fractional); its inference threads are "
            "the whole CPUs, at least 1, unless MODELYARD_THREADS is set.",
        ),
    ] = None,
    autoscale: Annotated[
        str | None,
        typer.Option(
            "--autoscale",
            metavar="MIN:MAX",
            help="With --ray: let Ray Serve scale between MIN and MAX replicas (1 <= MIN <= MAX) instead of "
            "--replicas.",
        ),
    ] = None,
    target_ongoing_requests: Annotated[
        str | None,
        typer.Option(
            "--target-ongoing-requests",
            metavar="X",
            help="With --autoscale: the requests in flight per replica the autoscaler aims at (default: Ray's, 2). "
            "A replica batches what it holds, so a higher target packs bigger batches.",
        ),
    ] = None,
) -> None:
    """Serve registry models over the Open Inference Protocol v2 (KServe v2, with binary tensors) and a simple
    JSON POST /predict. Set MODELYARD_API_KEY in the environment to require 'Authorization: Bearer <key>'; it is
    never a command-line option, so it stays out of the process list and the shell history. A pickle-based or
    factory-built version is served only with the trust record stored when it was registered, or with
    --trust-pickle / --trust-factory for a version registered without one. Predictions are logged (summaries,
    not raw inputs) to monitor.db in the home folder unless --no-monitor; every answer carries its request id
    (x-request-id), and labels posted later to POST /v2/models/NAME/feedback or with 'modelyard monitor
    feedback' name it.

    With --ray the same server runs as a Ray Serve deployment: each replica loads the models and has its own
    batcher, cache and /metrics (a scrape reads the replica that answered it); the prediction log is shared.
    Ctrl-C or SIGTERM drains the replicas and shuts Serve and Ray down."""
    from modelyard.cli.render import serve_console
    from modelyard.scale.ray_serve import parse_options
    from modelyard.serve.process import open_app, run_app
    from modelyard.serve.settings import MIB, ServeSettings

    # Ray's options first: a bad value fails in one line before anything is opened or Ray is looked for
    ray_options = parse_options(
        ray,
        replicas=replicas,
        replica_cpus=replica_cpus,
        autoscale=autoscale,
        target_ongoing_requests=target_ongoing_requests,
    )
    if ray_options is not None:
        from modelyard.scale.ray_serve import import_ray_serve

        import_ray_serve()  # without modelyard[ray]: one line saying what to install

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
    extras = _extras(settings, trust_pickle=trust_pickle, trust_factory=trust_factory)
    if ray_options is not None:
        del app  # each replica builds its own
        _serve_on_ray(settings, ray_options, models, extras)
        return
    serve_console.print(
        f"serving {models} at http://{settings.host}:{settings.port}/v2 ({', '.join(extras)})",
        highlight=False,
    )
    run_app(app, settings)


def _extras(settings: ServeSettings, *, trust_pickle: bool, trust_factory: bool) -> list[str]:
    """What the start-up line says besides the models and the address."""
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
    return extras


def _serve_on_ray(settings: ServeSettings, options: RayServeOptions, models: str, extras: list[str]) -> None:
    """Deploy on Ray Serve, print the URLs once it runs, block until Ctrl-C/SIGTERM, print a summary."""
    from modelyard.cli.render import serve_console
    from modelyard.scale.ray_serve import serve_on_ray

    where = "a local Ray (auto)" if options.address == "auto" else f"the Ray cluster at {options.address}"
    serve_console.print(
        f"starting Ray Serve on {where}: {options.describe(settings.threads)} ...",
        highlight=False,
        soft_wrap=True,
    )

    def started(run: RayServeRun) -> None:
        serve_console.print(
            f"serving {models} on Ray Serve at {run.url}/v2 ({', '.join(extras)}); readiness {run.url}/v2/health/"
            f"ready, metrics {run.url}/metrics; started in {run.startup_s:.1f} s; Ctrl-C stops",
            highlight=False,
            soft_wrap=True,
        )
        sys.stdout.flush()  # seen at once by whoever reads a pipe or a log file

    run = serve_on_ray(settings, options, on_started=started)
    state = "shut down cleanly" if run.stopped_cleanly else "shut down (Ray was already gone)"
    serve_console.print(
        f"stopped: served {run.served_s:.1f} s on Ray Serve ({options.describe(settings.threads)}); Serve and Ray {state}",
        highlight=False,
        soft_wrap=True,
    )
