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
    mlflow_tracking_uri: str | None = None  # MODELYARD_REGISTRY=mlflow+<uri>: mirror the registry to MLflow

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
        if env.get("MODELYARD_REGISTRY"):
            values["mlflow_tracking_uri"] = _registry_backend(env["MODELYARD_REGISTRY"])
        values.update({k: v for k, v in overrides.items() if v is not None})
        if "home" in values:
            values["home"] = Path(values["home"])
        return cls(**values)


def _registry_backend(raw: str) -> str | None:
    """MODELYARD_REGISTRY: "sqlite" (the default, the registry alone) or "mlflow+<tracking uri>"."""
    value = raw.strip()
    if value in ("sqlite", "local"):
        return None
    scheme, _, uri = value.partition("+")
    if scheme != "mlflow" or not uri.strip():
        raise ConfigError(
            f"MODELYARD_REGISTRY must be 'sqlite' or 'mlflow+<tracking uri>' (e.g. mlflow+http://127.0.0.1:5000), "
            f"got {raw!r}"
        )
    return uri.strip()


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
class RobustnessPolicy:
    """How the robustness and out-of-distribution checks run (their gate thresholds are policy keys of the
    check registry, like every threshold)."""

    ood_score: str = "energy"  # energy | msp | maxlogit
    epsilon: float | None = None  # attack budget in input units; None: the modality's default
    pgd_steps: int = 10


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


def _thresholds() -> tuple[dict[str, float | None], dict[str, str]]:
    """The registry's policy keys: key -> default threshold, and key -> kind (the registry is imported only
    when a policy is read or applied)."""
    from modelyard.evaluate.checks import threshold_defaults, threshold_kinds

    return threshold_defaults(), threshold_kinds()


@dataclass(frozen=True)
class RolloutPolicy:
    """How a rollout decides (``modelyard.rollout``): the challenger is rolled back as soon as it is worse than
    a margin on any signal at confidence 1 - ``alpha`` (split evenly across the signals), promoted once it is
    non-inferior on every signal after ``min_requests``, and the champion kept ("inconclusive") at
    ``max_requests``. Every test is valid however often it is checked."""

    alpha: float = 0.05  # overall chance of a wrong rollback of a challenger as good as the champion
    max_accuracy_drop_points: float = 1.0  # paired accuracy on labelled requests both answered
    max_flip_rate: float = 0.02  # shadow: share of requests whose predicted class differs from the champion's
    max_error_rate_increase: float = 0.005  # failed requests over the champion's rate before the rollout
    max_slow_rate: float = 0.05  # share of the challenger's answers slower than the champion's p99
    max_mean_kl: float = 0.05  # shadow: mean KL(champion || challenger) per request, nats (capped at 1 nat)
    max_confidence_drop_points: float = 2.0  # champion minus challenger calibrated confidence, same requests
    max_ood_rate_increase: float = 0.02  # challenger minus champion OOD flag rate, same requests
    min_requests: int = 500
    max_requests: int = 20_000
    on_champion_alarm: str = "rollback"  # rollback | alarm: what a champion whose live signals cross does
    # the champion watch (modelyard.rollout.watch): a healthy champion is alarmed on with probability at most
    # watch_alpha over its whole time as champion (alpha spent over epochs of watch_epoch observations per signal)
    watch_alpha: float = 0.01
    watch_max_accuracy_drop_points: float = 5.0  # realised (labels) and estimated (confidence) vs offline
    watch_max_error_rate: float = 0.01  # share of the champion's requests that fail
    watch_max_ood_rate_increase: float = 0.05  # OOD flag rate over the rule's offline rate
    watch_epoch: int = 2_000

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ConfigError(f"[rollout] alpha must be in (0, 1), got {self.alpha!r}")
        if not 0 < self.watch_alpha < 1:
            raise ConfigError(f"[rollout] watch_alpha must be in (0, 1), got {self.watch_alpha!r}")
        if not 0 < self.watch_max_error_rate < 1:
            raise ConfigError(
                f"[rollout] watch_max_error_rate must be in (0, 1), got {self.watch_max_error_rate!r}"
            )
        if self.min_requests > self.max_requests:
            raise ConfigError(
                f"[rollout] min_requests ({self.min_requests}) is above max_requests ({self.max_requests})"
            )


@dataclass(frozen=True)
class Policy:
    """The user's gates and how the champion is chosen. Gate thresholds are keys of the check registry
    (``"quality.max_flip_rate"``): ``thresholds`` holds the ones the policy sets, every other key takes the
    registry's default (``threshold``). ``robustness``, ``objective`` and ``hardware`` are settings."""

    name: str = "default"
    robustness: RobustnessPolicy = field(default_factory=RobustnessPolicy)
    objective: ObjectivePolicy = field(default_factory=ObjectivePolicy)
    hardware: HardwarePolicy = field(default_factory=HardwarePolicy)
    rollout: RolloutPolicy = field(default_factory=RolloutPolicy)
    waive: tuple[str, ...] = ()
    thresholds: tuple[tuple[str, float], ...] = ()  # (policy key, threshold) the policy sets

    def threshold(self, key: str) -> float | None:
        """The threshold of policy key ``key``: the policy's, else the registry's default (None: no budget)."""
        for k, v in self.thresholds:
            if k == key:
                return v
        defaults, _ = _thresholds()
        if key not in defaults:
            raise ConfigError(f"unknown policy key {key!r}; known keys: {', '.join(sorted(defaults))}")
        return defaults[key]

    def to_dict(self) -> dict[str, Any]:
        """The policy as evidence records it: every section with every key, thresholds resolved."""
        defaults, _ = _thresholds()
        d: dict[str, Any] = {"name": self.name}
        for key in defaults:
            section, option = key.split(".", 1)
            d.setdefault(section, {})[option] = self.threshold(key)
        for section in ("robustness", "objective", "hardware", "rollout"):
            d.setdefault(section, {}).update(asdict(getattr(self, section)))
        d.setdefault("budgets", {})
        d["waive"] = list(self.waive)
        return d

    def fidelity_floors(self) -> dict[str, float]:
        """Floors the accuracy-aware passes must meet against their parent."""

        def get(key: str) -> float:
            value = self.threshold(key)
            assert value is not None  # quality keys have defaults
            return value

        return {
            "agreement_min": 1.0 - get("quality.max_flip_rate"),
            "cosine_mean_min": get("quality.min_cosine_mean"),
            "cosine_p5_min": get("quality.min_cosine_p5"),
            "top10_min": get("quality.min_top10_agreement"),
        }


_SETTINGS: dict[str, type] = {
    "rollout": RolloutPolicy,
    "robustness": RobustnessPolicy,
    "objective": ObjectivePolicy,
    "hardware": HardwarePolicy,
}
_CHOICES = {
    ("rollout", "on_champion_alarm"): ("rollback", "alarm"),
    ("objective", "minimize"): ("cost", "latency", "size"),
    ("hardware", "target"): ("cpu", "gpu"),
    ("robustness", "ood_score"): ("energy", "msp", "maxlogit"),
}
_INTEGERS = {"pgd_steps", "min_requests", "max_requests"}
_FRACTIONS = {
    "tie_tolerance",
    "alpha",
    "max_flip_rate",
    "max_error_rate_increase",
    "max_slow_rate",
    "max_mean_kl",
    "max_ood_rate_increase",
}
_INTEGERS |= {"watch_epoch"}
_FRACTIONS |= {"watch_alpha", "watch_max_error_rate", "watch_max_ood_rate_increase"}

PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    # An edge target is a policy with tight size and memory budgets.
    "edge": {"budgets": {"max_size_mb": 5.0, "max_peak_rss_mb": 400.0}, "objective": {"minimize": "size"}},
}


def _number(where: str, value: Any, *, fraction: bool, integer: bool, problems: list[str]) -> float | None:
    """``value`` as a threshold or numeric setting, or None with the problem recorded."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{where} must be a number, got {value!r}")
        return None
    if not math.isfinite(value) or value < 0:
        problems.append(f"{where} must be a finite number >= 0, got {value!r}")
        return None
    if fraction and value > 1:
        problems.append(f"{where} is a fraction and must be in [0, 1], got {value!r}")
        return None
    if integer and (value != int(value) or value < 1):
        problems.append(f"{where} must be a whole number >= 1, got {value!r}")
        return None
    return float(value)


def _section(
    name: str, base: Policy, raw: Any, problems: list[str], thresholds: dict[str, float]
) -> Any | None:
    """Validate one policy table: its threshold keys go into ``thresholds``; returns the section's settings
    (None when the section has none)."""
    defaults, kinds = _thresholds()
    settings = getattr(base, name) if name in _SETTINGS else None
    if not isinstance(raw, dict):
        problems.append(f"[{name}] must be a table, got {type(raw).__name__}")
        return settings
    known = {f.name for f in fields(settings)} if settings is not None else set()
    known |= {k.split(".", 1)[1] for k in defaults if k.split(".", 1)[0] == name}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = f"[{name}] {key}"
        if f"{name}.{key}" in defaults:
            number = _number(
                where, value, fraction=kinds[f"{name}.{key}"] == "fraction", integer=False, problems=problems
            )
            if number is not None:
                thresholds[f"{name}.{key}"] = number
            continue
        if key not in known:
            problems.append(f"unknown key {key!r} in [{name}]; known keys: {', '.join(sorted(known))}")
            continue
        choices = _CHOICES.get((name, key))
        if choices is not None:
            if value not in choices:
                problems.append(f"{where} must be one of {', '.join(choices)}, got {value!r}")
                continue
            values[key] = value
            continue
        number = _number(
            where, value, fraction=key in _FRACTIONS, integer=key in _INTEGERS, problems=problems
        )
        if number is not None:
            values[key] = int(number) if key in _INTEGERS else number
    return replace(settings, **values) if settings is not None else None


def policy_sections() -> list[str]:
    """Every table a policy may have: the registry's threshold sections, then the settings."""
    defaults, _ = _thresholds()
    out: list[str] = []
    for key in defaults:
        section = key.split(".", 1)[0]
        if section not in out:
            out.append(section)
    return out + [s for s in _SETTINGS if s not in out]


def policy_from_dict(raw: dict[str, Any], *, name: str = "custom", base: Policy | None = None) -> Policy:
    """Validate a policy mapping; every problem is gathered into one ConfigError."""
    problems: list[str] = []
    base = base or Policy()
    updates: dict[str, Any] = {"name": name}
    thresholds = dict(base.thresholds)
    sections = policy_sections()
    for key, value in raw.items():
        if key in sections:
            settings = _section(key, base, value, problems, thresholds)
            if settings is not None:
                updates[key] = settings
        elif key == "waive":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                problems.append("waive must be a list of gate names")
            else:
                updates["waive"] = tuple(value)
        else:
            problems.append(
                f"unknown policy section {key!r}; known sections: {', '.join([*sections, 'waive'])}"
            )
    if problems:
        raise ConfigError("invalid policy: " + "; ".join(problems))
    updates["thresholds"] = tuple(sorted(thresholds.items()))
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
