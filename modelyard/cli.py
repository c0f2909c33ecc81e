"""Thin Typer app: parse, call the library, render with rich. Errors print one line and exit 2."""

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

from modelyard.errors import ModelyardError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Ship a trained model cheaply and safely.")
models_app = typer.Typer(no_args_is_help=True, help="Versions, aliases and the audit log in the registry.")
app.add_typer(models_app, name="models")
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


def _fmt(m: dict[str, Any] | None, kind: str = "g") -> str:
    if not m or m.get("value") is None:
        return "unknown"
    v = float(m["value"])
    if kind == "pct":
        s = f"{100 * v:.2f}%"
        if m.get("interval"):
            lo, hi = m["interval"]
            s += f" [{100 * lo:.1f}, {100 * hi:.1f}]"
        return s
    if kind == "bytes":
        return f"{v / 1024:.0f} KB" if v < 2**20 else f"{v / 2**20:.1f} MB"
    if kind == "int":
        return f"{v:,.0f}"
    if kind == "usd":
        return f"${v:.4f}"
    return f"{v:.4g}"


def _candidates_table(evidence: dict[str, Any]) -> Table:
    task = evidence["model"]["task"]
    table = Table(title=f"{evidence['model']['name']} — run {evidence['run_id']}", show_lines=False)
    cols = ["candidate"]
    if task == "classification":
        cols += ["accuracy [95% CI]", "drop (pts)", "flips", "ECE"]
    else:
        cols += ["cosine mean", "cosine p5", "top-10 agree", "recall@1"]
    cols += ["p50 ms", "items/s (best)", "size", "$/1M", "verdict"]
    for c in cols:
        table.add_column(c, justify="left" if c in ("candidate", "verdict") else "right")
    for c in evidence["candidates"]:
        m = c["measurements"]
        if task == "classification":
            q = [
                _fmt(m.get("quality.accuracy"), "pct"),
                _fmt(m.get("compare.accuracy_drop")),
                _fmt(m.get("compare.flip_rate"), "pct").split(" ")[0],
                _fmt(m.get("calibration.ece")),
            ]
        else:
            q = [
                _fmt(m.get("quality.cosine_mean")),
                _fmt(m.get("quality.cosine_p5")),
                _fmt(m.get("quality.top10_agreement")),
                _fmt(m.get("quality.paraphrase_recall_at_1")),
            ]
        failed = [g["gate"] for g in c["verdict"]["gates"] if not g["passed"]]
        verdict = "[green]pass[/]" if c["verdict"]["passed"] else f"[red]fail[/] ({', '.join(failed)})"
        name = c["name"] + (" [bold yellow]★[/]" if c["name"] == evidence["champion"] else "")
        table.add_row(
            name,
            *q,
            _fmt(m.get("efficiency.latency_p50_ms")),
            _fmt(m.get("efficiency.throughput_best"), "int"),
            _fmt(m.get("efficiency.size_bytes"), "bytes"),
            _fmt(m.get("efficiency.cost_usd_per_1m"), "usd"),
            verdict,
        )
    return table


def _render_run(result: Any) -> None:
    ev = result.evidence
    console.print(_candidates_table(ev))
    for s in ev["skipped"]:
        console.print(f"[dim]skipped[/] {s['pass']}: {s['reason']}")
    for line in ev["hardware"].get("int8_measured", []):
        console.print(f"[dim]int8[/] {line}")
    isa = ", ".join(k for k, v in ev["hardware"]["isa"].items() if v) or "none of AVX2/AVX-512/VNNI/AMX"
    console.print(f"[dim]CPU[/] {ev['hardware']['cpu']} ({ev['hardware']['cores']} cores; {isa})")
    if result.champion:
        console.print(f"[bold]champion:[/] {result.champion} — {ev['champion_reason']}")
    else:
        console.print(f"[bold red]no champion:[/] {ev['champion_reason']}")
    console.print(f"outputs: {result.run_dir}/ (report.html, MODEL_CARD.md, evidence.json)")
    if result.versions:
        shown = ", ".join(f"{n}=v{v}" for n, v in result.versions.items())
        console.print(
            f"registry: {result.model_name} {shown}" + (" (alias champion set)" if result.champion else "")
        )


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
) -> Any:
    from modelyard.config import load_policy
    from modelyard.optimize.registry import parse_recipe
    from modelyard.pipeline import run_pipeline

    pol = load_policy(policy)
    settings = _settings(home)
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
            progress=progress,
        )


@app.command()
def demo(
    name: Annotated[str, typer.Argument(help="digits, minilm or tabular")] = "digits",
    recipe: RecipesOpt = None,
    policy: PolicyOpt = None,
    home: HomeOpt = None,
    quick: QuickOpt = False,
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
    )
    _render_run(result)


def _user_inputs(
    model: Path,
    data: Path,
    task: str | None,
    factory: str | None,
    trust_pickle: bool,
    label_column: str,
    data_source: str | None,
    data_license: str | None,
) -> tuple[Any, Any]:
    from modelyard.data.loaders import load_dataset
    from modelyard.optimize.baseline import load_baseline

    dataset = load_dataset(data, label_column=label_column, source=data_source, license=data_license)
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
    home: HomeOpt = None,
    quick: QuickOpt = False,
) -> None:
    """Make cheaper variants of your model, measure them, gate them, register them, choose the champion."""
    baseline, dataset = _user_inputs(
        model, data, task, factory, trust_pickle, label_column, data_source, data_license
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
    )
    _render_run(result)


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
    home: HomeOpt = None,
    quick: QuickOpt = False,
    register: Annotated[
        bool, typer.Option("--register/--no-register", help="Also record it in the registry.")
    ] = False,
) -> None:
    """Measure one model on the evidence (no optimization); writes the report and model card."""
    baseline, dataset = _user_inputs(
        model, data, task, factory, trust_pickle, label_column, data_source, data_license
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
    )
    _render_run(result)


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
    """One model's versions (or one version in detail)."""
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
    """Entry point: runs the app; a ModelyardError prints one line and exits 2, never a traceback."""
    import click

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        app(args=argv, standalone_mode=False)
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
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
