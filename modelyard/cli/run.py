"""`modelyard demo`, `optimize`, `evaluate` and `passes`: the commands that run the pipeline, and the listing
of the passes it can apply.

Exit codes: 0 done (for a run: a champion was chosen); 1 a run where no candidate passed the policy (the
table and every failed gate are printed, the run is registered, the champion alias is not moved); 2 bad
input (one line, never a traceback; see ``modelyard.cli.main``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

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
    RayOpt,
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
from modelyard.errors import ConfigError

if TYPE_CHECKING:
    from modelyard.candidate import Candidate
    from modelyard.data.dataset import Dataset
    from modelyard.pipeline import RunResult


@contextlib.contextmanager
def progress_bar(recipes: list[str]) -> Iterator[Callable[[str, float], None]]:
    """A transient progress bar on stderr sized for the pipeline over ``recipes``; yields its callback."""
    from modelyard.optimize.recipes import parse_recipe

    total = 1 + sum(len(parse_recipe(r)) for r in recipes) + len(recipes)
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("starting", total=total)

        def progress(msg: str, advance: float = 0.0) -> None:
            bar.update(task, description=msg[:90], advance=advance)

        yield progress


def _run(
    baseline: Candidate,
    dataset: Dataset,
    *,
    model_name: str,
    source: str,
    recipes: list[str],
    policy: str | None,
    home: Path | None,
    quick: bool,
    register: bool,
    ood_data: Path | None = None,
    ray: str | None = None,
) -> RunResult:
    """Run the pipeline with a progress bar on stderr (its builds and checks on Ray with ``ray``)."""
    from modelyard.config import load_policy
    from modelyard.data.loaders import load_ood_set
    from modelyard.evaluate.run import EvalOptions
    from modelyard.pipeline import run_pipeline

    pol = load_policy(policy)
    run_settings = settings_for(home)
    ood = load_ood_set(ood_data) if ood_data is not None else None
    with contextlib.ExitStack() as stack:
        executor = None
        if ray is not None:
            from modelyard.scale.ray_runner import ray_executor

            executor = stack.enter_context(ray_executor(ray, threads=run_settings.threads))
        progress = stack.enter_context(progress_bar(recipes))
        return run_pipeline(
            baseline,
            dataset,
            model_name=model_name,
            model_source=source,
            recipes=recipes,
            policy=pol,
            settings=run_settings,
            options=EvalOptions.quick() if quick else EvalOptions(),
            register=register,
            ood_data=ood,
            ood_source=str(ood_data) if ood_data is not None else None,
            progress=progress,
            executor=executor,
        )


def _finish(result: RunResult) -> None:
    """Render the run; exit 1 when no candidate passed (the run is registered, champion not moved), so a CI
    job can tell. Exit codes: 0 champion chosen, 1 nothing passed, 2 bad input (see ``main``)."""
    render_run(result)
    result.require_champion()  # GateFailed -> exit 1 in main()


def demo(
    name: Annotated[str, typer.Argument(help="digits, minilm or tabular")] = "digits",
    recipe: RecipesOpt = None,
    policy: PolicyOpt = None,
    home: HomeOpt = None,
    quick: QuickOpt = False,
    ood_data: OodOpt = None,
    ray: RayOpt = None,
) -> None:
    """Run the whole job on a built-in demo model."""
    from modelyard.zoo.demos import load_demo

    with err_console.status(f"preparing the {name} demo"):
        d = load_demo(name, settings_for(home).home)
    result = _run(
        d.baseline,
        d.dataset,
        model_name=d.model_name,
        source=f"modelyard built-in demo '{name}'",
        recipes=recipe_list(recipe, d.default_recipes),
        policy=policy,
        home=home,
        quick=quick,
        register=True,
        ood_data=ood_data,
        ray=ray,
    )
    _finish(result)


def optimize(
    model: ModelOpt,
    data: DataOpt,
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
    ray: RayOpt = None,
) -> None:
    """Make cheaper variants of your model, measure them, gate them, register them, choose the champion."""
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
    result = _run(
        baseline,
        dataset,
        model_name=name or model.stem,
        source=str(model),
        recipes=recipe_list(recipe, default_recipes(baseline)),
        policy=policy,
        home=home,
        quick=quick,
        register=True,
        ood_data=ood_data,
        ray=ray,
    )
    _finish(result)


def evaluate(
    model: ModelOpt,
    data: DataOpt,
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
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Also record it in the registry.")
    ] = False,
) -> None:
    """Measure one model on the evidence (no optimization); writes the report and model card."""
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
    result = _run(
        baseline,
        dataset,
        model_name=name or model.stem,
        source=str(model),
        recipes=[],
        policy=policy,
        home=home,
        quick=quick,
        register=register,
        ood_data=ood_data,
    )
    _finish(result)


def checks(
    readme: Annotated[
        Path | None,
        typer.Option("--readme", help="rewrite the gate table of this README from the registry, then exit"),
    ] = None,
) -> None:
    """List the checks: those every candidate is measured on (unit, direction, model kinds, needs and gate), then
    the live checks the monitor measures on served traffic."""
    from modelyard.evaluate.checks import all_checks, readme_with_gate_table

    if readme is not None:
        try:
            text = readme.read_text(encoding="utf-8")
            readme.write_text(readme_with_gate_table(text), encoding="utf-8")
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot rewrite the gate table of {readme}: {exc}") from None
        console.print(f"rewrote the gate table in {readme}")
        return
    for spec in all_checks():
        better = f"{spec.direction} is better" if spec.direction else "no better direction"
        needs = f"; needs {', '.join(spec.needs)}" if spec.needs else ""
        live = "; live: measured on served traffic (modelyard monitor status)" if spec.stage == "live" else ""
        line = f"{spec.name} ({spec.unit}, {better}; {', '.join(spec.tasks)}{needs}{live})"
        if spec.gate is not None:
            g = spec.gate
            default = "unset" if g.default is None else f"{g.default:g}"
            line += f"  gate {g.name}: {g.key or 'fixed threshold'} = {default}"
        console.print(line, highlight=False, soft_wrap=True)
    console.print(f"{len(all_checks())} checks; a gate's threshold is set by its policy key")


def passes() -> None:
    """List the optimization passes and their options."""
    import dataclasses

    from modelyard.optimize.recipes import available_passes

    table = Table(title="passes")
    for col in ("name", "options (defaults)", "what it does"):
        table.add_column(col)
    for info in available_passes().values():
        opts = ", ".join(
            f"{f.name}={f.default!r}"
            for f in dataclasses.fields(info.config_cls)
            if f.default is not dataclasses.MISSING
        )
        table.add_row(info.name, opts, info.summary)
    console.print(table)
