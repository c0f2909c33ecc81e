"""Pass registry: each pass is a frozen config dataclass plus a function registered for it.

A pass function takes ``(candidate, config, ctx)`` and returns a new Candidate, or raises
``PassSkipped`` with the reason when it cannot apply. Recipes chain passes: ``"prune(0.5) > int8-static"``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modelyard.candidate import Candidate
from modelyard.data.dataset import Dataset, FitData

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


def config_to_dict(name: str, config: Any) -> dict[str, Any]:
    return {"pass": name, "config": dataclasses.asdict(config)}
