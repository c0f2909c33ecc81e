"""`modelyard rollout`: start a shadow or canary rollout of a version against the champion, see how rollouts
stand, stop one. A running server serving the model's champion picks a rollout up by itself and decides it
(promote, roll back, or inconclusive at the policy's maximum); see :mod:`modelyard.rollout.control`."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelyard.cli.options import HomeOpt, PolicyOpt, settings_for
from modelyard.cli.render import console

if TYPE_CHECKING:
    from modelyard.registry import Registry
    from modelyard.rollout.control import RolloutView

rollout_app = typer.Typer(
    no_args_is_help=True, help="Shadow and canary rollouts: a challenger compared with the champion live."
)


def _registry(home: HomeOpt) -> Registry:
    from modelyard.registry.mlflow_backend import open_registry

    return open_registry(settings_for(home))


def _table(views: list[RolloutView], title: str) -> Table:
    table = Table(title=title)
    for col in ("model", "champion", "challenger", "mode", "state", "requests", "started", "reason"):
        table.add_column(col)
    for v in views:
        mode = v.mode if v.percent is None else f"{v.mode} {v.percent:g}%"
        table.add_row(
            v.model,
            f"v{v.champion}",
            f"v{v.challenger}",
            mode,
            v.state,
            str(v.requests),
            v.started_at,
            v.reason[:120],
        )
    return table


@rollout_app.command("start")
def rollout_start(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int, typer.Argument(help="the challenger's version number")],
    mode: Annotated[
        str, typer.Option("--mode", help="shadow (copies, never returned) or canary.")
    ] = "shadow",
    percent: Annotated[
        float | None,
        typer.Option("--percent", help="canary: share of requests the challenger answers, 1-99."),
    ] = None,
    sticky_header: Annotated[
        str | None, typer.Option("--sticky-header", help="canary: route by this request header's value.")
    ] = None,
    policy: PolicyOpt = None,
    home: HomeOpt = None,
) -> None:
    """Start a rollout of VERSION against the champion; a serving server picks it up within a second."""
    from modelyard.config import load_policy
    from modelyard.rollout.control import start_rollout

    rollout_policy = load_policy(policy).rollout  # a malformed [rollout] table stops here, nothing written
    view = start_rollout(
        _registry(home),
        name,
        version,
        mode=mode,
        percent=percent,
        sticky_header=sticky_header,
        policy=rollout_policy,
    )
    share = "every request copied" if view.percent is None else f"{view.percent:g}% of requests"
    console.print(
        f"{name}: {view.mode} rollout of v{view.challenger} against v{view.champion} started ({share})",
        highlight=False,
    )


@rollout_app.command("status")
def rollout_status_cmd(
    name: Annotated[str | None, typer.Argument(help="model name (all when omitted)")] = None,
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the views as JSON.")] = False,
) -> None:
    """Rollouts, running first, with their decision and statistics."""
    from modelyard.rollout.control import rollout_status

    views = rollout_status(_registry(home), name)
    if as_json:
        console.print_json(json.dumps({"rollouts": [v.to_dict() for v in views]}))
        return
    console.print(_table(views, "rollouts"))
    running = [v for v in views if v.state == "running"]
    for v in running:
        stats = Table(title=f"{v.model} v{v.challenger}: signals")
        for col in ("signal", "n", "decision", "estimate", "limit or margin"):
            stats.add_column(col)
        for s in v.statistics:
            estimate = s.get("rate") if "rate" in s else s.get("mean")
            bound = s.get("limit") if "limit" in s else s.get("margin")
            stats.add_row(
                str(s.get("name")),
                str(s.get("n")),
                str(s.get("decision")),
                "-" if estimate is None else f"{estimate:.4g}",
                "-" if bound is None else f"{bound:.4g}",
            )
        console.print(stats)


@rollout_app.command("stop")
def rollout_stop(
    name: Annotated[str, typer.Argument(help="model name")],
    reason: Annotated[str, typer.Option("--reason")] = "stopped by hand",
    home: HomeOpt = None,
) -> None:
    """Stop the running rollout of NAME; the champion is kept and the stop is in the audit log."""
    from modelyard.rollout.control import stop_rollout

    view = stop_rollout(_registry(home), name, reason=reason)
    console.print(
        f"{name}: rollout of v{view.challenger} stopped; v{view.champion} stays champion", highlight=False
    )
