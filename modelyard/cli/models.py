"""`modelyard models`: versions, aliases and the audit log of alias moves in the registry."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from modelyard.cli.options import HomeOpt, settings_for
from modelyard.cli.render import console

if TYPE_CHECKING:
    from modelyard.registry import Registry

models_app = typer.Typer(no_args_is_help=True, help="Versions, aliases and the audit log in the registry.")


def _registry(home: Path | None) -> Registry:
    from modelyard.registry.mlflow_backend import open_registry

    return open_registry(settings_for(home))


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
            console.print_json(json.dumps(info, default=_json_default))
            return
        table = Table(title=f"{name} v{version}")
        table.add_column("field")
        table.add_column("value")
        for key in ("candidate", "parent_version", "created", "run_id", "artifact_sha256", "data_sha256"):
            if key in info:
                table.add_row(key, str(info[key]))
        table.add_row("passes", " > ".join(p["pass"] for p in info.get("passes", [])) or "(baseline)")
        evidence = info.get("evidence")
        table.add_row("verdict", "-" if evidence is None else ("pass" if evidence.verdict.passed else "fail"))
        manifest = info.get("manifest") or {}
        table.add_row("trust", describe_trust(manifest.get("format"), manifest.get("meta")))
        console.print(table)
        return
    table = Table(title=f"{ref} versions")
    for col in ("version", "candidate", "parent", "verdict", "created"):
        table.add_column(col)
    for v in reg.list_versions(ref):
        full = reg.get_version(ref, int(v["version"]))
        evidence = full.get("evidence")
        verdict = None if evidence is None else evidence.verdict.passed
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


def _json_default(value: object) -> object:
    """JSON for what ``get_version`` returns beyond plain data: the typed evidence, paths."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        return value.model_dump(mode="json", by_alias=True)
    return str(value)
