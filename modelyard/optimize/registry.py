"""Pass registry: each pass is a frozen config dataclass plus a function registered for it.

A pass function takes ``(candidate, config, ctx)`` and returns a new Candidate, or raises
``PassSkipped`` with the reason when it cannot apply. Recipes chain passes: ``"prune(0.5) > int8-static"``.
"""

from __future__ import annotations

import ast
import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.data.dataset import Dataset, FitData
from modelyard.errors import ConfigError
from modelyard.optimize.candidate import Candidate

Progress = Callable[[str], None]


@dataclass
class PassContext:
    """What a pass may use: a folder to write into, the fit part of the dataset (train and calibration
    splits, for calibration, smoothing, sensitivity searches and fine-tuning), the policy's fidelity floors,
    a thread count and a progress callback.

    Given a whole ``Dataset``, the context keeps only its fit part (``Dataset.fit_part()``): a pass cannot
    see, let alone fit on, the test items its candidate will be judged on."""

    workdir: Path
    dataset: FitData
    threads: int | None = None
    seed: int = 0
    fidelity: dict[str, float] = field(default_factory=dict)
    progress: Progress = lambda msg: None
    is_gpu: bool = False

    def __post_init__(self) -> None:
        data: Any = self.dataset
        if isinstance(data, Dataset):
            self.dataset = data.fit_part()


PassFn = Callable[[Candidate, Any, PassContext], Candidate]


@dataclass(frozen=True)
class PassInfo:
    name: str
    config_cls: type
    fn: PassFn
    summary: str


_PASSES: dict[str, PassInfo] = {}


def register_pass(name: str, config_cls: type, summary: str) -> Callable[[PassFn], PassFn]:
    if not dataclasses.is_dataclass(config_cls):
        raise TypeError(f"config for pass {name!r} must be a dataclass")

    def deco(fn: PassFn) -> PassFn:
        if name in _PASSES:
            raise ValueError(f"pass {name!r} registered twice")
        _PASSES[name] = PassInfo(name, config_cls, fn, summary)
        return fn

    return deco


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


def config_to_dict(name: str, config: Any) -> dict[str, Any]:
    return {"pass": name, "config": dataclasses.asdict(config)}


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
