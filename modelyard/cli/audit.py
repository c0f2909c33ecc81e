"""`modelyard audit data` and `modelyard audit model`: the audits `optimize` runs, on their own.

Thin shells: parse, call the library, render, say where the output is. A model that fails its scan
exits 1 (a finding, not an error); bad input exits 2 through the CLI's error handler."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from modelyard.cli.render import console, err_console

audit_app = typer.Typer(no_args_is_help=True, help="Audit a dataset or a model file on their own.")


def _out_path(out: Path | None, home: Path | None, kind: str) -> Path:
    from modelyard.config import Settings
    from modelyard.pipeline import new_run_id

    if out is not None:
        return out
    return Settings.from_env(home=home).home / "audits" / f"{kind}-{new_run_id()}.json"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from modelyard.report.view import atomic_write_text, jsonable

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(jsonable(data), indent=2, sort_keys=True) + "\n")


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * float(x):.1f}%"


@audit_app.command("data")
def audit_data_cmd(
    data: Annotated[Path | None, typer.Option("--data", "-d", help=".npz, .csv or .jsonl dataset.")] = None,
    demo: Annotated[str | None, typer.Option("--demo", help="Audit a built-in demo's data instead.")] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="Also use this model's representations and run the backdoor scans."
        ),
    ] = None,
    factory: Annotated[
        str | None, typer.Option("--factory", help="module:function for a state dict.")
    ] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help="Allow scanned pickle files.")] = False,
    task: Annotated[str | None, typer.Option("--task", help="classification or embedding.")] = None,
    label_column: Annotated[str, typer.Option("--label-column", help="Label column of a CSV.")] = "label",
    data_source: Annotated[
        str | None, typer.Option("--data-source", help="Where the data comes from.")
    ] = None,
    data_license: Annotated[str | None, typer.Option("--data-license", help="The data's licence.")] = None,
    datasheet: Annotated[Path | None, typer.Option("--datasheet", help="TOML or JSON datasheet.")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the JSON report.")] = None,
    home: Annotated[Path | None, typer.Option("--home", help="Home folder.")] = None,
) -> None:
    """Duplicates, train/test leakage, label issues, outliers, balance and provenance of a dataset."""
    from modelyard.data.audit import audit_data
    from modelyard.errors import ConfigError

    if (data is None) == (demo is None):
        raise ConfigError("give exactly one of --data FILE or --demo NAME")
    baseline = None
    if demo is not None:
        from modelyard.config import Settings
        from modelyard.zoo.demos import load_demo

        with err_console.status(f"preparing the {demo} demo"):
            d = load_demo(demo, Settings.from_env(home=home).home)
        dataset, baseline = d.dataset, d.baseline
    else:
        from modelyard.data.loaders import load_dataset

        assert data is not None
        dataset = load_dataset(
            data, label_column=label_column, source=data_source, license=data_license, datasheet=datasheet
        )
        if model is not None:
            from modelyard.optimize.baseline import load_baseline

            baseline = load_baseline(model, dataset, task=task, factory=factory, trust_pickle=trust_pickle)
    with err_console.status("auditing"):
        if baseline is not None:
            from modelyard.evaluate.audits import run_audits

            result = run_audits(baseline, dataset)
            report = {"data": result["data"], "backdoor": result["model"]["backdoor"]}
        else:
            report = {"data": {**audit_data(dataset), "representation": "raw inputs"}}
    path = _out_path(out, home, "data")
    _write_json(path, report)
    _render_data(report, dataset.name)
    console.print(f"wrote {path}")


def _render_data(report: dict[str, Any], name: str) -> None:
    a = report["data"]
    table = Table(title=f"data audit: {name} (representation: {a.get('representation', 'raw inputs')})")
    table.add_column("check")
    table.add_column("finding")
    leak = a.get("leakage") or {}
    table.add_row(
        "train/test leakage",
        f"exact {_pct(leak.get('exact_fraction'))}, exact or near {_pct(leak.get('near_fraction'))} "
        f"of {leak.get('n_test', '?')} test items",
    )
    ex = a.get("exact_duplicates") or {}
    table.add_row(
        "exact duplicates", f"{ex.get('train_groups', 0)} groups in train, {ex.get('test_groups', 0)} in test"
    )
    nd = a.get("near_duplicates") or {}
    table.add_row("near duplicates", f"{nd.get('pairs', 0)} pairs ({nd.get('method', '')})")
    table.add_row("label conflicts", str((a.get("label_conflicts") or {}).get("count", 0)))
    li = a.get("label_issues") or {}
    if li.get("status") == "ok":
        table.add_row(
            "label issues",
            f"{li.get('train_flagged', 0)} train and {li.get('test_flagged', 0)} test items flagged; "
            f"estimated error rate {_pct(li.get('estimated_error_rate'))}",
        )
    else:
        table.add_row("label issues", f"skipped: {li.get('reason', '')}")
    ol = a.get("outliers") or {}
    table.add_row("outliers", f"{ol.get('count', 0)} test items ({_pct(ol.get('fraction'))})")
    bal = a.get("balance") or {}
    table.add_row("class balance", f"imbalance ratio {bal.get('imbalance_ratio', 'n/a')}")
    prov = a.get("provenance") or {}
    table.add_row(
        "provenance",
        f"source: {prov.get('source') or 'not declared'}; licence: {prov.get('license') or 'not declared'}",
    )
    bd = report.get("backdoor")
    if bd is not None:
        if bd.get("status") == "ok":
            flagged = ", ".join(map(str, bd.get("flagged_classes") or [])) or "none"
            table.add_row(
                "backdoor scans", f"flagged classes: {flagged}; {bd.get('n_suspicious', 0)} suspicious items"
            )
        else:
            table.add_row("backdoor scans", f"skipped: {bd.get('reason', '')}")
    console.print(table)
    for c in a.get("caveats") or []:
        console.print(f"caveat: {c}")


@audit_app.command("model")
def audit_model_cmd(
    path: Annotated[Path, typer.Argument(help="Model file or folder to scan (nothing is loaded).")],
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the JSON report.")] = None,
    home: Annotated[Path | None, typer.Option("--home", help="Home folder.")] = None,
) -> None:
    """Scan a model file by its bytes (format, pickle opcodes, safetensors header, ONNX external data).
    Exits 1 when the scan does not PASS."""
    from modelyard.errors import DataError
    from modelyard.security.audit import audit_model

    if not path.exists():
        raise DataError(f"model path {path} does not exist; check the path")
    report = audit_model(path)
    dest = _out_path(out, home, "model")
    _write_json(dest, report)
    table = Table(title=f"model scan: {path}")
    table.add_column("verdict")
    table.add_column("format")
    table.add_column("findings")
    table.add_row(
        str(report.get("status")),
        str(report.get("format")),
        "\n".join(report.get("findings") or []) or "none",
    )
    console.print(table)
    console.print(f"wrote {dest}")
    if report.get("status") != "PASS":
        raise typer.Exit(1)
