"""The options more than one command takes, each defined once, and the helpers that turn them into library
objects: the settings, the recipe list, and the baseline with its dataset."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from modelyard.candidate import Candidate
    from modelyard.config import Settings
    from modelyard.data.dataset import Dataset

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
RayOpt = Annotated[
    str | None,
    typer.Option(
        "--ray",
        help="Build candidates and run their checks as Ray tasks: 'auto' starts a local Ray for the run, "
        "otherwise a cluster address (needs modelyard[ray]; timing checks stay on this machine).",
    ),
]
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


def settings_for(home: Path | None) -> Settings:
    """The settings for ``--home`` (or the environment's)."""
    from modelyard.config import Settings

    return Settings.from_env(home=home)


def recipe_list(given: list[str] | None, default: list[str]) -> list[str]:
    """The recipes of ``--recipe`` (repeated, or ';'-separated), or ``default`` when none was given."""
    if not given:
        return default
    return [r.strip() for item in given for r in item.split(";") if r.strip()]


def load_inputs(
    model: Path,
    data: Path,
    *,
    task: str | None,
    factory: str | None,
    trust_pickle: bool,
    label_column: str,
    data_source: str | None,
    data_license: str | None,
    datasheet: Path | None,
    slice_columns: list[str] | None,
) -> tuple[Candidate, Dataset]:
    """The baseline and the dataset of ``--model``, ``--data`` and the options that go with them."""
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
