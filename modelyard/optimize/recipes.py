"""Recipes: the catalogue of registered passes, parsing ``"prune(0.5) > onnx > int8-static(...)"`` into
(pass, config) steps, and the recipes ``optimize`` tries when the user names none.

Passes register themselves in :mod:`modelyard.optimize.registry` when their modules are imported; the
catalogue imports them (lazily, so importing modelyard stays cheap). The registry never imports the passes,
so the passes can import the registry without an import cycle.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from typing import TYPE_CHECKING, Any

from modelyard.errors import ConfigError
from modelyard.optimize.registry import _PASSES, PassInfo

if TYPE_CHECKING:
    from modelyard.candidate import Candidate


def default_recipes(baseline: Candidate) -> list[str]:
    """ONNX export, and ONNX then int8 with the quantization chosen by measurement; for a PyTorch model that
    is not a text model, also 50% structured pruning then ONNX export."""
    recipes = ["onnx", "onnx > int8-auto"]
    if baseline.format != "onnx" and baseline.tokenizer_dir is None:
        recipes.append("prune(0.5) > onnx")
    return recipes


def _ensure_loaded() -> None:
    # Importing the pass modules registers them; done lazily so importing modelyard stays cheap.
    from modelyard.optimize import passes  # noqa: F401


def available_passes() -> dict[str, PassInfo]:
    _ensure_loaded()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> PassInfo:
    passes = available_passes()
    if name not in passes:
        raise ConfigError(f"unknown pass {name!r}; known passes: {', '.join(passes)}")
    return passes[name]


_STEP = re.compile(r"^\s*([a-z0-9][a-z0-9_-]*)\s*(?:\((.*)\))?\s*$")


def _parse_args(text: str, step: str) -> tuple[list[Any], dict[str, Any]]:
    try:
        call = ast.parse(f"f({text})", mode="eval").body
    except SyntaxError as exc:
        raise ConfigError(f"cannot parse the arguments of recipe step {step!r}: {exc.msg}") from None
    assert isinstance(call, ast.Call)
    try:
        args = [ast.literal_eval(a) for a in call.args]
        kwargs = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg}
    except ValueError:
        raise ConfigError(
            f"recipe step {step!r}: arguments must be literals (numbers, strings, True/False)"
        ) from None
    return args, kwargs


def build_config(name: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
    info = get_pass(name)
    fields = [f for f in dataclasses.fields(info.config_cls) if f.init]
    if len(args) > len(fields):
        raise ConfigError(f"pass {name!r} takes at most {len(fields)} positional arguments, got {len(args)}")
    values = dict(zip((f.name for f in fields), args, strict=False))
    known = {f.name for f in fields}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"pass {name!r} has no option {', '.join(map(repr, unknown))}; its options are: {', '.join(sorted(known))}"
        )
    values.update(kwargs)
    try:
        return info.config_cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad options for pass {name!r}: {exc}") from None


def parse_recipe(recipe: str) -> list[tuple[str, Any]]:
    """Parse ``"prune(0.5) > int8-static(calibration='percentile')"`` into (name, config) steps."""
    steps = [s for s in recipe.split(">")]
    if not recipe.strip() or any(not s.strip() for s in steps):
        raise ConfigError(
            f"empty step in recipe {recipe!r}; write passes separated by '>', e.g. 'onnx > int8-static'"
        )
    out = []
    for step in steps:
        m = _STEP.match(step)
        if not m:
            raise ConfigError(
                f"cannot parse recipe step {step.strip()!r}; write it as name or name(arg, key=value)"
            )
        name, argtext = m.group(1), m.group(2)
        args, kwargs = _parse_args(argtext, step.strip()) if argtext and argtext.strip() else ([], {})
        out.append((name, build_config(name, args, kwargs)))
    return out
