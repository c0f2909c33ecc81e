"""``modelyard ship``: parse, build the settings, call :func:`modelyard.ship.ship`, render, then serve.

Exit codes: 0 served until stopped (SIGINT/SIGTERM drain first), or shipped to a server already running, or
``--no-serve``; 1 no candidate passed the policy (the run is registered, nothing is served); 2 bad input."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from modelyard.cli.options import (
    DataOpt,
    DatasheetOpt,
    FactoryOpt,
    HomeOpt,
    LabelOpt,
    LicenseOpt,
    ModelOpt,
    NameOpt,
    OodOpt,
    PolicyOpt,
    QuickOpt,
    RecipesOpt,
    SliceOpt,
    SourceOpt,
    TaskOpt,
    TrustOpt,
    load_inputs,
    recipe_list,
    settings_for,
)
from modelyard.cli.render import console, err_console, render_run
from modelyard.cli.run import progress_bar
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.serve.state import ServerState
    from modelyard.ship import ShipResult, ShipUrls


def ship(
    model: Annotated[Path | None, ModelOpt.__metadata__[0]] = None,  # the options of optimize, optional here
    data: Annotated[Path | None, DataOpt.__metadata__[0]] = None,
    demo: Annotated[
        str | None, typer.Option("--demo", help="Ship a built-in demo instead: digits, minilm or tabular.")
    ] = None,
    recipe: RecipesOpt = None,
    policy: PolicyOpt = None,
    name: NameOpt = None,
    task: TaskOpt = None,
    factory: FactoryOpt = None,
    trust_pickle: TrustOpt = False,
    label_column: LabelOpt = "label",
    data_source: SourceOpt = None,
    data_license: LicenseOpt = None,
    datasheet: DatasheetOpt = None,
    slice_column: SliceOpt = None,
    ood_data: OodOpt = None,
    home: HomeOpt = None,
    quick: QuickOpt = False,
    host: Annotated[str, typer.Option(help="Address to bind (127.0.0.1 keeps it local).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    no_monitor: Annotated[
        bool, typer.Option("--no-monitor", help="Do not log predictions (the monitor then sees nothing).")
    ] = False,
    no_serve: Annotated[
        bool, typer.Option("--no-serve", help="Optimize, gate, register (and start the rollout), then exit.")
    ] = False,
) -> None:
    """Optimize, gate and register a model, then serve its champion with monitoring on and print the URLs of
    the endpoint, metrics and dashboard. When the model already has a champion, the new one starts as a shadow
    rollout against it instead of replacing it. Set MODELYARD_API_KEY to require an API key."""
    from modelyard.config import load_policy
    from modelyard.data.loaders import load_ood_set
    from modelyard.evaluate.run import EvalOptions
    from modelyard.serve.settings import ServeSettings
    from modelyard.ship import serve_shipped
    from modelyard.ship import ship as ship_model

    if (demo is None) == (model is None and data is None):
        raise ConfigError("give either --model FILE and --data FILE, or --demo NAME")
    settings = settings_for(home)
    pol = load_policy(policy)  # bad options fail here, before a demo trains or a model loads
    ood = load_ood_set(ood_data) if ood_data is not None else None
    serve = (
        None
        if no_serve
        else ServeSettings.from_env(
            home=settings.home, host=host, port=port, monitor=False if no_monitor else None
        )
    )
    if demo is not None:
        from modelyard.zoo.demos import load_demo

        with err_console.status(f"preparing the {demo} demo"):
            d = load_demo(demo, settings.home)
        baseline, dataset, model_name = d.baseline, d.dataset, name or d.model_name
        source, default = f"modelyard built-in demo '{demo}'", d.default_recipes
    else:
        if model is None or data is None:
            raise ConfigError("give both --model FILE and --data FILE (or --demo NAME)")
        from modelyard.optimize.recipes import default_recipes

        baseline, dataset = load_inputs(
            model,
            data,
            task=task,
            factory=factory,
            trust_pickle=trust_pickle,
            label_column=label_column,
            data_source=data_source,
            data_license=data_license,
            datasheet=datasheet,
            slice_columns=slice_column,
        )
        model_name, source, default = name or model.stem, str(model), default_recipes(baseline)
    recipes = recipe_list(recipe, default)
    with progress_bar(recipes) as progress:
        result = ship_model(
            baseline,
            dataset,
            model_name=model_name,
            model_source=source,
            recipes=recipes,
            policy=pol,
            settings=settings,
            serve=serve,
            options=EvalOptions.quick() if quick else None,
            ood_data=ood,
            ood_source=str(ood_data) if ood_data is not None else None,
            progress=progress,
        )
    render_run(result.run)
    result.run.require_champion()  # GateFailed: exit 1, nothing served
    _render_ship(result)
    if result.server == "start":
        serve_shipped(result, on_ready=lambda state: _render_ready(result, state))


def _say(text: str) -> None:
    console.print(text, markup=False, highlight=False, soft_wrap=True)


def _render_ship(result: ShipResult) -> None:
    m = result.model
    if result.action == "rollout" and result.rollout is not None:
        r = result.rollout
        _say(
            f"shadow rollout started: {m} v{r.challenger} gets a copy of every request beside the serving "
            f"v{r.champion}, which keeps answering; the controller promotes or rolls it back on live traffic"
        )
        _say(f"follow it: modelyard rollout status {m}")
    elif result.action == "unchanged":
        _say(
            f"{m} v{result.new_version} is the serving v{result.serving_version}'s very artifact: nothing to roll "
            "out; the champion stays"
        )
    else:
        _say(f"shipped: {m} v{result.serving_version} is the champion")
    if result.server == "running" and result.urls is not None:
        _say(
            f"already served by the modelyard server at {result.urls.base} (it follows the champion and rollout)"
        )
        _render_urls(result.urls)
    elif result.server is None:
        _say(f"not serving (--no-serve); serve it with: modelyard serve {m}@champion --reload-on-alias")


def _render_urls(urls: ShipUrls) -> None:
    for label, url in (("endpoint", urls.infer), ("metrics", urls.metrics), ("dashboard", urls.dashboard)):
        _say(f"{label + ':':<11}{url}")


def _render_ready(result: ShipResult, state: ServerState) -> None:
    s = state.settings
    if state.load_error:
        err_console.print(
            f"error: the server could not load {result.model}: {state.load_error}", markup=False
        )
        return
    served = ", ".join(f"{slot.name} v{slot.current.model.version}" for slot in state.slots.values())
    extras = [f"logging predictions to {s.monitor_path}" if s.monitor else "prediction log off"]
    if s.auth:
        extras.append("API key required: Authorization: Bearer $MODELYARD_API_KEY")
    elif s.host not in ("127.0.0.1", "localhost", "::1"):
        extras.append("WARNING: reachable from the network with no API key; set MODELYARD_API_KEY")
    _say(f"serving {served} ({'; '.join(extras)}); Ctrl-C stops")
    if result.urls is not None:
        _render_urls(result.urls)
