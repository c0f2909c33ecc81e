"""Settings (home folder, environment read once) and Policy (the user's gates, TOML) loading and validation."""

from __future__ import annotations

import math
import os
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from modelyard.errors import ConfigError

DEFAULT_PRICE_USD_PER_HOUR = 0.10
PRICE_SOURCE = (
    "default 0.10 USD/hour: a typical on-demand price for a 2-vCPU cloud instance; "
    "set [hardware] price_usd_per_hour in the policy or MODELYARD_PRICE_USD_PER_HOUR"
)


@dataclass(frozen=True)
class Settings:
    """Everything read from the environment, read once at start-up."""

    home: Path = Path(".modelyard")
    threads: int | None = None
    price_usd_per_hour: float | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {"home": Path(env.get("MODELYARD_HOME", ".modelyard"))}
        if env.get("MODELYARD_THREADS"):
            values["threads"] = _positive_int("MODELYARD_THREADS", env["MODELYARD_THREADS"])
        if env.get("MODELYARD_PRICE_USD_PER_HOUR"):
            values["price_usd_per_hour"] = _positive_float(
                "MODELYARD_PRICE_USD_PER_HOUR", env["MODELYARD_PRICE_USD_PER_HOUR"]
            )
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"])
        return cls(**values)


def _positive_int(name: str, raw: Any) -> int:
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}") from None
    if value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _positive_float(name: str, raw: Any) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a positive number, got {raw!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"{name} must be a positive number, got {raw!r}")
    return value


@dataclass(frozen=True)
class QualityPolicy:
    """Quality gates against the baseline. Defaults are the documented safe defaults."""

    max_accuracy_drop_points: float = (
        1.0  # non-inferiority margin: the one-sided 95% upper bound must be below it
    )
    significance_alpha: float = (
        0.05  # Holm-corrected McNemar p below it fails a candidate whose accuracy dropped
    )
    max_flip_rate: float = 0.02
    max_negative_flip_rate: float = 0.01
    max_kl_nats: float = 0.05
    max_ece_increase: float = 0.02
    max_class_recall_drop_points: float = 10.0  # per-class recall vs the baseline; one lost class fails
    max_slice_drop_points: float = 5.0  # user-declared slices, when the data declares them
    min_cosine_mean: float = 0.99
    min_cosine_p5: float = 0.98
    min_top10_agreement: float = 0.95


@dataclass(frozen=True)
class RobustnessPolicy:
    """Robustness and out-of-distribution gates against the baseline, and how the attacks are run."""

    max_relative_mce: float = 1.2  # corruption error relative to the baseline's (images)
    max_consistency_drop_points: float = 5.0  # prediction consistency under perturbations
    max_adversarial_drop_points: float = 5.0  # PGD (transfer) accuracy vs the baseline's
    max_ood_auroc_drop_points: float = 5.0
    ood_score: str = "energy"  # energy | msp | maxlogit
    epsilon: float | None = None  # attack budget in input units; None: the modality's default
    pgd_steps: int = 10


@dataclass(frozen=True)
class BudgetPolicy:
    """Optional hard budgets; absent means no budget."""

    max_latency_p99_ms: float | None = None
    max_peak_rss_mb: float | None = None
    max_size_mb: float | None = None
    min_throughput: float | None = None


@dataclass(frozen=True)
class ObjectivePolicy:
    """How the champion is chosen among passing candidates."""

    minimize: str = "cost"  # cost | latency | size
    tie_tolerance: float = 0.05  # relative; candidates within it of the best are tied, then quality decides


@dataclass(frozen=True)
class HardwarePolicy:
    """``price_usd_per_hour``: the price the cost figures use. ``target``: the device the candidates are
    measured on (and the fp16 pass aims at): "cpu", or "gpu", which needs a GPU runtime usable on this machine
    (torch with CUDA, or onnxruntime-gpu seeing a device; see ``modelyard.runtime.device.gpu_runtime``).
    ``run_pipeline`` refuses a GPU target without one before any work."""

    price_usd_per_hour: float = DEFAULT_PRICE_USD_PER_HOUR
    target: str = "cpu"  # cpu | gpu


@dataclass(frozen=True)
class Policy:
    name: str = "default"
    quality: QualityPolicy = field(default_factory=QualityPolicy)
    robustness: RobustnessPolicy = field(default_factory=RobustnessPolicy)
    budgets: BudgetPolicy = field(default_factory=BudgetPolicy)
    objective: ObjectivePolicy = field(default_factory=ObjectivePolicy)
    hardware: HardwarePolicy = field(default_factory=HardwarePolicy)
    waive: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["waive"] = list(self.waive)
        return d

    def fidelity_floors(self) -> dict[str, float]:
        """Floors the accuracy-aware passes must meet against their parent."""
        q = self.quality
        return {
            "agreement_min": 1.0 - q.max_flip_rate,
            "cosine_mean_min": q.min_cosine_mean,
            "cosine_p5_min": q.min_cosine_p5,
            "top10_min": q.min_top10_agreement,
        }


_SECTIONS: dict[str, type] = {
    "quality": QualityPolicy,
    "robustness": RobustnessPolicy,
    "budgets": BudgetPolicy,
    "objective": ObjectivePolicy,
    "hardware": HardwarePolicy,
}
_CHOICES = {
    ("objective", "minimize"): ("cost", "latency", "size"),
    ("hardware", "target"): ("cpu", "gpu"),
    ("robustness", "ood_score"): ("energy", "msp", "maxlogit"),
}
_INTEGERS = {"pgd_steps"}
_FRACTIONS = {
    "significance_alpha",
    "max_flip_rate",
    "max_negative_flip_rate",
    "max_ece_increase",
    "min_cosine_mean",
    "min_cosine_p5",
    "min_top10_agreement",
    "tie_tolerance",
}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # An edge target is a policy with tight size and memory budgets.
    "edge": {"budgets": {"max_size_mb": 5.0, "max_peak_rss_mb": 400.0}, "objective": {"minimize": "size"}},
}


def _section(name: str, base: Any, raw: Any, problems: list[str]) -> Any:
    cls = type(base)
    if not isinstance(raw, dict):
        problems.append(f"[{name}] must be a table, got {type(raw).__name__}")
        return base
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in known:
            problems.append(f"unknown key {key!r} in [{name}]; known keys: {', '.join(sorted(known))}")
            continue
        choices = _CHOICES.get((name, key))
        if choices is not None:
            if value not in choices:
                problems.append(f"[{name}] {key} must be one of {', '.join(choices)}, got {value!r}")
                continue
            values[key] = value
            continue
        if isinstance(value, bool) or not isinstance(value, int | float):
            problems.append(f"[{name}] {key} must be a number, got {value!r}")
            continue
        if not math.isfinite(value) or value < 0:
            problems.append(f"[{name}] {key} must be a finite number >= 0, got {value!r}")
            continue
        if key in _FRACTIONS and value > 1:
            problems.append(f"[{name}] {key} is a fraction and must be in [0, 1], got {value!r}")
            continue
        if key in _INTEGERS:
            if value != int(value) or value < 1:
                problems.append(f"[{name}] {key} must be a whole number >= 1, got {value!r}")
                continue
            values[key] = int(value)
            continue
        values[key] = float(value)
    return replace(base, **values)


def policy_from_dict(raw: dict[str, Any], *, name: str = "custom", base: Policy | None = None) -> Policy:
    """Validate a policy mapping; every problem is gathered into one ConfigError."""
    problems: list[str] = []
    base = base or Policy()
    updates: dict[str, Any] = {"name": name}
    for key, value in raw.items():
        if key in _SECTIONS:
            updates[key] = _section(key, getattr(base, key), value, problems)
        elif key == "waive":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append("waive must be a list of gate names")
            else:
                updates["waive"] = tuple(value)
        else:
            problems.append(
                f"unknown policy section {key!r}; known sections: {', '.join([*_SECTIONS, 'waive'])}"
            )
    if problems:
        raise ConfigError("invalid policy: " + "; ".join(problems))
    return replace(base, **updates)


def load_policy(ref: str | Path | None) -> Policy:
    """A preset name ("default", "edge") or a TOML file path."""
    if ref is None or str(ref) == "default":
        return Policy()
    if str(ref) in PRESETS:
        return policy_from_dict(PRESETS[str(ref)], name=str(ref))
    path = Path(ref)
    if not path.is_file():
        raise ConfigError(
            f"policy {str(ref)!r} is neither a preset ({', '.join(PRESETS)}) nor an existing TOML file"
        )
    try:
        raw = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"policy file {path} is not valid TOML: {exc}") from None
    return policy_from_dict(raw, name=path.stem)
