"""Pass registry completeness and recipe parsing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from modelyard.cli import main
from modelyard.errors import ConfigError
from modelyard.optimize.recipes import available_passes, build_config, parse_recipe
from modelyard.optimize.registry import config_to_dict

EXPECTED = {
    "onnx",
    "int8-dynamic",
    "int8-static",
    "int8-auto",
    "prune",
    "distill",
    "fp16",
    "openvino",
    "openvino-bf16",
    "openvino-int8",
    "torch-bf16",
}


def test_every_expected_pass_is_registered() -> None:
    assert set(available_passes()) >= EXPECTED


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pass_config_round_trips_through_json(name: str) -> None:
    info = available_passes()[name]
    assert dataclasses.is_dataclass(info.config_cls)
    default = info.config_cls()
    blob = json.loads(json.dumps(config_to_dict(name, default)))
    assert blob["pass"] == name
    again = build_config(name, [], blob["config"])
    assert dataclasses.asdict(again) == dataclasses.asdict(default)
    assert info.summary


def test_every_pass_is_listed_by_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in available_passes():
        assert name in out


def test_parse_recipe_with_arguments() -> None:
    steps = parse_recipe("prune(0.25, structured=False) > onnx > int8-static(calibration='percentile')")
    assert [n for n, _ in steps] == ["prune", "onnx", "int8-static"]
    assert steps[0][1].amount == 0.25 and steps[0][1].structured is False
    assert steps[2][1].calibration == "percentile"


@pytest.mark.parametrize(
    ("recipe", "match"),
    [
        ("onnx > int4-magic", r"unknown pass 'int4-magic'; known passes: "),
        ("onnx >", r"empty step in recipe"),
        ("", r"empty step in recipe"),
        ("prune(amount=0.5, speed=9)", r"pass 'prune' has no option 'speed'"),
        ("prune(0.5, True, 3, 0.1, 7, 8)", r"takes at most"),
        ("prune(os.system('x'))", r"arguments must be literals"),
        ("onnx(((", r"cannot parse"),
        ("Bad Name", r"cannot parse recipe step"),
    ],
)
def test_bad_recipes(recipe: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_recipe(recipe)
