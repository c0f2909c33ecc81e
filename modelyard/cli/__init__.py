"""Thin Typer app: parse, call the library, render with rich. One module per command group: ``run`` (demo,
optimize, evaluate, passes), ``ship``, ``models``, ``audit``, ``serve``, ``monitor``, ``rollout``; the options they share are in
``options``, the consoles and the rendering of a run in ``render``.

Exit codes: 0 done (for a run: a champion was chosen); 1 a run where no candidate passed the policy (the
table and every failed gate are printed, the run is registered, the champion alias is not moved); 2 bad
input (one line, never a traceback)."""

from __future__ import annotations

import os

import typer
from typer.exceptions import TyperException

from modelyard.cli import run, serve
from modelyard.cli.audit import audit_app
from modelyard.cli.export import export
from modelyard.cli.models import models_app
from modelyard.cli.monitor import monitor_app
from modelyard.cli.render import err_console
from modelyard.cli.rollout import rollout_app
from modelyard.cli.ship import ship
from modelyard.errors import GateFailed, ModelyardError

__all__ = ["app", "main"]

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Ship a trained model cheaply and safely.")
# Registration order is the order of `modelyard --help`: commands first, then the groups.
app.command("ship")(ship)
app.command("serve")(serve.serve)
for command in (run.demo, run.optimize, run.evaluate, run.passes, run.checks):
    app.command()(command)
app.command("export")(export)
app.add_typer(models_app, name="models")
app.add_typer(audit_app, name="audit")
app.add_typer(monitor_app, name="monitor")
app.add_typer(rollout_app, name="rollout")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app; exit 1 when a run chose no champion (GateFailed), and a ModelyardError prints
    one line and exits 2, never a traceback."""
    import click

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        rc = app(args=argv, standalone_mode=False)
    except GateFailed as exc:  # the run finished and is registered; nothing passed
        from rich.text import Text

        err_console.print(
            Text("no champion: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True
        )
        return 1
    except ModelyardError as exc:
        from rich.text import Text

        err_console.print(Text("error: ", style="bold red") + Text(str(exc)), highlight=False, soft_wrap=True)
        return 2
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted")
        return 130
    except (click.ClickException, TyperException) as exc:  # usage errors: typer raises its own click's
        show = getattr(exc, "show", None)
        if callable(show):
            show()  # one line: "Error: No such command 'x'." (or the help, when no command was given)
        else:
            err_console.print(f"error: {exc}", highlight=False, soft_wrap=True)
        code = getattr(exc, "exit_code", 2)
        return code if isinstance(code, int) else 2
    return rc if isinstance(rc, int) else 0  # a command's typer.Exit(code) comes back as its code
