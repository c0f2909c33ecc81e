"""Thin Typer app: parse, call the library, render with rich.

Exit codes: 0 done (for a run: a champion was chosen); 1 a run where no candidate passed the policy (the
table and every failed gate are printed, the run is registered, the champion alias is not moved); 2 bad
input (one line, never a traceback)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from modelyard.cli_audit import audit_app
from modelyard.cli_render import render_run
from modelyard.cli_serve import serve
from modelyard.errors import GateFailed, ModelyardError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Ship a trained model cheaply and safely.")
models_app = typer.Typer(no_args_is_help=True, help="Versions, aliases and the audit log in the registry.")
app.add_typer(models_app, name="models")
app.add_typer(audit_app, name="audit")
app.command("serve")(serve)
# Tables are wide; when output is not a terminal (CI logs, pipes) do not squeeze them into 80 columns.
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True)

RecipesOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--recipe",
        "--recipes",
        "-r",
        help="A recipe such as 'onnx > int8-static'; repeat for several; ';' also separates.",
    ),
]
PolicyOpt = Annotated[
    str | None, typer.Option("--policy", "-p", help="Policy TOML file, or a preset: default, edge.")
]
HomeOpt = Annotated[
    Path | None, typer.Option("--home", help="Home folder (default $MODELYARD_HOME or ./.modelyard).")
]
QuickOpt = Annotated[
    bool, typer.Option("--quick", help="Fewer timing repeats (faster, noisier efficiency figures).")
]


def _settings(home: Path | None) -> Any:
    from modelyard.config import Settings

    return Settings.from_env(home=home)


def _recipes(given: list[str] | None, default: list[str]) -> list[str]:
    if not given:
        return default
    return [r.strip() for item in given for r in item.split(";") if r.strip()]


def _options(quick: bool) -> Any:
    from modelyard.pipeline import EvalOptions

    if quick:
        return EvalOptions(batch_sizes=(1, 32), latency_calls=50, min_time_s=0.15, n_resamples=1000)
    return EvalOptions()


def _run(
    baseline: Any,
    dataset: Any,
    *,
    model_name: str,
    source: str,
    recipes: list[str],
    policy: str | None,
    home: Path | None,
    quick: bool,
    register: bool,
    ood_data: Path | None = None,
) -> Any:
    from modelyard.config import load_policy
    from modelyard.data.loaders import load_ood_set
    from modelyard.optimize.registry import parse_recipe
    from modelyard.pipeline import run_pipeline

    pol = load_policy(policy)
    settings = _settings(home)
    ood = load_ood_set(ood_data) if ood_data is not None else None
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

        return run_pipeline(
            baseline,
            dataset,
            model_name=model_name,
            model_source=source,
            recipes=recipes,
            policy=pol,
            settings=settings,
            options=_options(quick),
            register=register,
            ood_data=ood,
            ood_source=str(ood_data) if ood_data is not None else None,
            progress=progress,
        )


def _finish(result: Any) -> None:
    """Render the run; exit 1 when no candidate passed (the run is registered, champion not moved), so a CI
    job can tell. Exit codes: 0 champion chosen, 1 nothing passed, 2 bad input (see ``main``)."""
    render_run(result)
    result.require_champion()  # GateFailed -> exit 1 in main()


@app.command()
def demo(
    name: Annotated[str, typer.Argument(help="digits, minilm or tabular")] = "digits",
    recipe: RecipesOpt = None,
    policy: PolicyOpt = None,
    home: HomeOpt = None,
    quick: QuickOpt = False,
    ood_data: OodOpt = None,
) -> None:
    """Run the whole job on a built-in demo model."""
    from modelyard.zoo.demos import load_demo

    settings = _settings(home)
    with err_console.status(f"preparing the {name} demo"):
        d = load_demo(name, settings.home)
    result = _run(
        d.baseline,
        d.dataset,
        model_name=d.model_name,
        source=f"modelyard built-in demo '{name}'",
        recipes=_recipes(recipe, d.default_recipes),
        policy=policy,
        home=home,
        quick=quick,
        register=True,
        ood_data=ood_data,
    )
    _finish(result)


def _user_inputs(
    model: Path,
    data: Path,
    task: str | None,
    factory: str | None,
    trust_pickle: bool,
    label_column: str,
    data_source: str | None,
    data_license: str | None,
    datasheet: Path | None = None,
    slice_columns: list[str] | None = None,
) -> tuple[Any, Any]:
    from modelyard.data.loaders import load_dataset
    from modelyard.optimize.baseline import load_baseline

    dataset = load_dataset(
        data,
        label_column=label_column,
        source=data_source,
        license=data_license,
        slice_columns=tuple(slice_columns or ()),
        datasheet=datasheet,
    )
    baseline = load_baseline(model, dataset, task=task, factory=factory, trust_pickle=trust_pickle)
    return baseline, dataset


ModelOpt = Annotated[
    Path,
    typer.Option(
        "--model", "-m", help="ONNX file, safetensors (+ --factory), TorchScript, .pt2 or HF folder."
    ),
]
DataOpt = Annotated[
    Path,
    typer.Option("--data", "-d", help=".npz (x, y), .csv (features + label column) or .jsonl (text, label)."),
]
TaskOpt = Annotated[
    str | None, typer.Option("--task", help="classification or embedding (default: from the data).")
]
FactoryOpt = Annotated[
    str | None,
    typer.Option(
        "--factory", help="package.module:function building the module for a safetensors state dict."
    ),
]
TrustOpt = Annotated[
    bool,
    typer.Option(
        "--trust-pickle", help="Allow pickle-based files (TorchScript, .pt2) after a security scan."
    ),
]
LabelOpt = Annotated[str, typer.Option("--label-column", help="Label column of a CSV file.")]
NameOpt = Annotated[
    str | None, typer.Option("--name", help="Model name in the registry (default: the model file's stem).")
]
SourceOpt = Annotated[
    str | None, typer.Option("--data-source", help="Where the data comes from (goes into the model card).")
]
LicenseOpt = Annotated[
    str | None, typer.Option("--data-license", help="The data's licence (goes into the model card).")
]
DatasheetOpt = Annotated[
    Path | None,
    typer.Option("--datasheet", help="TOML or JSON datasheet: source, license, description, collection, ..."),
]
SliceOpt = Annotated[
    list[str] | None,
    typer.Option("--slice-column", help="CSV column to report accuracy per value of (repeat for several)."),
]
OodOpt = Annotated[
    Path | None,
    typer.Option(
        "--ood-data", help="Out-of-distribution inputs: .npz (x), .jsonl (text) or .txt, same input shape."
    ),
]


@app.command()
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
) -> None:
    """Make cheaper variants of your model, measure them, gate them, register them, choose the champion."""
    baseline, dataset = _user_inputs(
        model,
        data,
        task,
        factory,
        trust_pickle,
        label_column,
        data_source,
        data_license,
        datasheet,
        slice_column,
    )
    default = ["onnx", "onnx > int8-auto"]
    if baseline.format != "onnx":
        default += ["prune(0.5) > onnx"] if baseline.tokenizer_dir is None else []
    result = _run(
        baseline,
        dataset,
        model_name=name or model.stem,
        source=str(model),
        recipes=_recipes(recipe, default),
        policy=policy,
        home=home,
        quick=quick,
        register=True,
        ood_data=ood_data,
    )
    _finish(result)


@app.command()
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
    baseline, dataset = _user_inputs(
        model,
        data,
        task,
        factory,
        trust_pickle,
        label_column,
        data_source,
        data_license,
        datasheet,
        slice_column,
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


@app.command()
def passes() -> None:
    """List the optimization passes and their options."""
    import dataclasses

    from modelyard.optimize.registry import available_passes

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


def _registry(home: Path | None) -> Any:
    from modelyard.registry import Registry

    return Registry(_settings(home).home)


@models_app.command("list")
def models_list(home: HomeOpt = None) -> None:
    """Registered models with their aliases."""
    reg = _registry(home)
    table = Table(title="models")
    for col in ("model", "versions", "aliases", "latest"):
        table.add_column(col)
    for m in reg.list_models():
        aliases = ", ".join(f"{a}→v{v}" for a, v in sorted(m.get("aliases", {}).items()))
        table.add_row(m["name"], str(m.get("versions")), aliases, f"v{m.get('latest')}")
    console.print(table)
    console.print(f"registry: {reg.home / 'registry.db'}")


@models_app.command("show")
def models_show(
    ref: Annotated[str, typer.Argument(help="NAME, NAME@alias or NAME:version")],
    home: HomeOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print everything stored, as JSON.")] = False,
) -> None:
    """One model's versions (or one version in detail, with the trust record of a pickle or factory model)."""
    from modelyard.security.trust import describe_trust

    reg = _registry(home)
    if ":" in ref or "@" in ref:
        name, version = reg.resolve(ref)
        info = reg.get_version(name, version)
        if as_json:
            console.print_json(json.dumps(info, default=str))
            return
        table = Table(title=f"{name} v{version}")
        table.add_column("field")
        table.add_column("value")
        for key in ("candidate", "parent_version", "created", "run_id", "artifact_sha256", "data_sha256"):
            if key in info:
                table.add_row(key, str(info[key]))
        table.add_row("passes", " > ".join(p["pass"] for p in info.get("passes", [])) or "(baseline)")
        verdict = (info.get("evidence") or {}).get("verdict") or {}
        table.add_row("verdict", "pass" if verdict.get("passed") else "fail")
        manifest = info.get("manifest") or {}
        table.add_row("trust", describe_trust(manifest.get("format"), manifest.get("meta")))
        console.print(table)
        return
    table = Table(title=f"{ref} versions")
    for col in ("version", "candidate", "parent", "verdict", "created"):
        table.add_column(col)
    for v in reg.list_versions(ref):
        full = reg.get_version(ref, int(v["version"]))
        verdict = ((full.get("evidence") or {}).get("verdict") or {}).get("passed")
        table.add_row(
            f"v{v['version']}",
            str(v.get("candidate")),
            str(v.get("parent_version") or "-"),
            "-" if verdict is None else ("pass" if verdict else "fail"),
            str(v.get("created")),
        )
    console.print(table)


@models_app.command("promote")
def models_promote(
    name: Annotated[str, typer.Argument(help="model name")],
    version: Annotated[int, typer.Argument(help="version number")],
    alias: Annotated[str, typer.Option("--alias")] = "champion",
    reason: Annotated[str, typer.Option("--reason")] = "promoted by hand",
    home: HomeOpt = None,
) -> None:
    """Point an alias (default champion) at a version; the move is logged."""
    _registry(home).promote(name, version, alias=alias, reason=reason)
    console.print(f"{name}@{alias} → v{version}")


@models_app.command("rollback")
def models_rollback(
    name: Annotated[str, typer.Argument(help="model name")],
    alias: Annotated[str, typer.Option("--alias")] = "champion",
    reason: Annotated[str, typer.Option("--reason")] = "rolled back by hand",
    home: HomeOpt = None,
) -> None:
    """Move an alias back to the version it pointed to before; the move is logged."""
    version = _registry(home).rollback(name, alias=alias, reason=reason)
    console.print(f"{name}@{alias} → v{version} (rolled back)")


@models_app.command("log")
def models_log(
    name: Annotated[str | None, typer.Argument(help="model name (all when omitted)")] = None,
    home: HomeOpt = None,
) -> None:
    """The audit log of alias moves."""
    table = Table(title="alias moves")
    for col in ("when", "model", "alias", "from", "to", "reason"):
        table.add_column(col)
    for e in _registry(home).audit_log(name):
        table.add_row(
            str(e["when"]),
            e["model"],
            e["alias"],
            f"v{e['from_version']}" if e["from_version"] else "-",
            f"v{e['to_version']}",
            str(e["reason"]),
        )
    console.print(table)


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
    except click.exceptions.Abort:
        err_console.print("aborted")
        return 130
    except click.ClickException as exc:
        exc.show()
        return 2
    return rc if isinstance(rc, int) else 0  # a command's typer.Exit(code) comes back as its code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
