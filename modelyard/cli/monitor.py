"""`modelyard monitor`: the prediction log of the served models: labels posted from a file (``feedback``) and
each served version's drift and accuracy against its reference (``status``), and a model's checks over time
as one HTML page (``report``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli.options import HomeOpt, settings_for
from modelyard.cli.render import console, render_status

monitor_app = typer.Typer(
    no_args_is_help=True, help="The prediction log of served models: labels, drift and accuracy."
)


@monitor_app.command("feedback")
def monitor_feedback(
    file: Annotated[Path, typer.Argument(help=".csv with a header 'id,label', or .jsonl of {id, label}.")],
    home: HomeOpt = None,
    model: Annotated[
        str | None, typer.Option("--model", help="Only accept request ids of this model.")
    ] = None,
    db: Annotated[
        Path | None, typer.Option("--db", help="Prediction log file (default monitor.db in the home folder).")
    ] = None,
) -> None:
    """Store labels for logged requests, by request id.

    The id is the x-request-id the server answered with. All labels are stored in one transaction, or none: an
    unknown id or a label that is not a class of the model exits 2 with one line. A request labelled twice
    keeps both labels; the latest is the one used."""
    from modelyard.monitor.db import default_path
    from modelyard.monitor.feedback import read_feedback_file, store_feedback

    path = db if db is not None else default_path(settings_for(home).home)
    items = read_feedback_file(file)
    stored = store_feedback(path, items, model=model, source=f"file:{file.name}")
    console.print(stored.summary(), highlight=False, soft_wrap=True)


@monitor_app.command("status")
def monitor_status(
    name: Annotated[str | None, typer.Argument(help="Model name (default: every model in the log).")] = None,
    home: HomeOpt = None,
    window: Annotated[
        int, typer.Option("--window", min=1, help="Requests per window: the last N logged requests.")
    ] = 200,
    alpha: Annotated[
        float,
        typer.Option("--alpha", help="False-alarm rate per window, shared among the checks that alarm."),
    ] = 0.05,
    db: Annotated[
        Path | None, typer.Option("--db", help="Prediction log file (default monitor.db in the home folder).")
    ] = None,
) -> None:
    """Drift, OOD rate and accuracy of each served version's last requests against its reference.

    One table per version: the live checks of the window (value, interval, what it is compared with, the
    false-alarm rate it was tested at) and the alarms naming what moved. Exits 0 whether or not an alarm
    fired; an unknown model or a missing log exits 2 with one line."""
    from modelyard.monitor.status import monitor_status as status_of

    statuses = status_of(settings_for(home).home, name, window=window, alpha=alpha, db=db)
    for status in statuses:
        render_status(status)
    alarmed = [s.label for s in statuses if s.alarm]
    head = f"{len(statuses)} version(s) watched, last {window} requests each, false-alarm rate {alpha:g} per window"
    console.print(
        f"{head}: {len(alarmed)} with alarms ({', '.join(alarmed)})" if alarmed else f"{head}: no alarms",
        highlight=False,
        soft_wrap=True,
    )


@monitor_app.command("report")
def monitor_report(
    name: Annotated[str, typer.Argument(help="Model name (its latest logged version is reported).")],
    home: HomeOpt = None,
    window: Annotated[int, typer.Option("--window", min=1, help="Requests per window.")] = 200,
    alpha: Annotated[
        float,
        typer.Option("--alpha", help="False-alarm rate per window, shared among the checks that alarm."),
    ] = 0.05,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="HTML file to write (default <home>/monitor/NAME-report.html)."),
    ] = None,
    db: Annotated[
        Path | None, typer.Option("--db", help="Prediction log file (default monitor.db in the home folder).")
    ] = None,
) -> None:
    """Write one self-contained HTML page of a served model's checks over consecutive windows.

    Drift per signal against its threshold, the input features' effects, the confidence (per window, and the
    last window's against the reference's), estimated and realised accuracy with their intervals, and the
    alarms with what moved; inline SVG charts, no script, nothing fetched. Written atomically; an unknown
    model or a missing log exits 2 with one line."""
    from modelyard.monitor.report import build_report, default_report_path, write_report

    root = settings_for(home).home
    report = build_report(root, name, window=window, alpha=alpha, db=db)
    path = write_report(report, out if out is not None else default_report_path(root, name))
    console.print(
        f"{report.label}: {len(report.windows)} windows of {window} requests, "
        f"{report.alarmed_windows} with alarms; report written to {path}",
        highlight=False,
        soft_wrap=True,
    )
