"""`modelyard monitor`: the prediction log of the served models (labels posted from a file)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from modelyard.cli.options import HomeOpt, settings_for
from modelyard.cli.render import console

monitor_app = typer.Typer(no_args_is_help=True, help="The prediction log of served models and its labels.")


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
