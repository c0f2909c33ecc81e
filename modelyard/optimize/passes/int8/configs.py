"""Configs of the int8 passes: frozen dataclasses, validated when they are built."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.errors import ConfigError

QUANT_TYPES = ("int8", "uint8")
CALIBRATIONS = ("minmax", "percentile", "entropy")
MODES = ("auto", "dynamic", "static")


def _check_choice(pass_name: str, option: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ConfigError(f"{pass_name}: {option} must be one of {', '.join(choices)}; got {value!r}")


def _check_bool(pass_name: str, option: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{pass_name}: {option} must be true or false, got {value!r}")


def _check_count(pass_name: str, option: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{pass_name}: {option} must be an integer >= {minimum}, got {value!r}")


def _check_alpha(pass_name: str, option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= float(value) <= 1.0:
        raise ConfigError(
            f"{pass_name}: {option} must be a number in [0, 1] (SmoothQuant migration strength), got {value!r}"
        )


def _names(pass_name: str, option: str, value: Any) -> tuple[str, ...]:
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{pass_name}: {option} must be a list of names, e.g. ('Conv',); got {value!r}")
    return tuple(value)


@dataclass(frozen=True)
class DynamicQuantConfig:
    """ONNX Runtime dynamic int8. ``exclude_op_types`` stay fp32 (Conv by default). ``smooth_alpha`` (None =
    off) smooths the inputs of MatMul/Gemm/Attention first (SmoothQuant; channel maxima measured on
    ``smooth_samples`` fit inputs). ``reduce_range`` (7-bit weights): None = on x86 CPUs without VNNI, where
    ONNX Runtime's u8s8 kernels can saturate 16-bit sums, off elsewhere (see ``default_reduce_range``)."""

    per_channel: bool = True
    reduce_range: bool | None = None
    weight_type: str = "int8"
    exclude_op_types: tuple[str, ...] = ("Conv",)
    smooth_alpha: float | None = None
    smooth_samples: int = 128

    def __post_init__(self) -> None:
        if self.smooth_alpha is not None:
            _check_alpha("int8-dynamic", "smooth_alpha", self.smooth_alpha)
        _check_count("int8-dynamic", "smooth_samples", self.smooth_samples, 1)
        _check_bool("int8-dynamic", "per_channel", self.per_channel)
        if self.reduce_range is not None:
            _check_bool("int8-dynamic", "reduce_range", self.reduce_range)
        _check_choice("int8-dynamic", "weight_type", self.weight_type, QUANT_TYPES)
        object.__setattr__(
            self, "exclude_op_types", _names("int8-dynamic", "exclude_op_types", self.exclude_op_types)
        )


@dataclass(frozen=True)
class StaticQuantConfig:
    """ONNX Runtime static int8 (QDQ), calibrated on ``samples`` training inputs."""

    calibration: str = "minmax"
    per_channel: bool = True
    samples: int = 128
    activation_type: str = "int8"
    weight_type: str = "int8"
    exclude_nodes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_choice("int8-static", "calibration", self.calibration, CALIBRATIONS)
        _check_bool("int8-static", "per_channel", self.per_channel)
        _check_count("int8-static", "samples", self.samples, 1)
        _check_choice("int8-static", "activation_type", self.activation_type, QUANT_TYPES)
        _check_choice("int8-static", "weight_type", self.weight_type, QUANT_TYPES)
        object.__setattr__(self, "exclude_nodes", _names("int8-static", "exclude_nodes", self.exclude_nodes))


@dataclass(frozen=True)
class AutoQuantConfig:
    """Accuracy-aware int8: ``mode`` auto = static for CNN/MLP graphs, dynamic for transformer graphs.

    ``samples`` training inputs are used for calibration and for the fidelity measurement. The search aims
    ``margin`` above each floor (capped at 1): the sample is small and is not the evaluation set, and a
    model picked to sit exactly on the floor there tends to land just under it on held-out data.
    In dynamic mode each of ``smooth_alphas`` is tried (SmoothQuant smoothing before quantizing; empty =
    never smooth) and the best graph is the starting point of the fp32-node search.
    """

    mode: str = "auto"
    max_fp32_nodes: int = 32
    samples: int = 128
    calibration: str = "minmax"
    per_channel: bool = True
    margin: float = 0.005
    smooth_alphas: tuple[float, ...] = (0.5, 0.65, 0.8)

    def __post_init__(self) -> None:
        alphas = self.smooth_alphas
        if isinstance(alphas, str | int | float) or not isinstance(alphas, Sequence):
            raise ConfigError(
                f"int8-auto: smooth_alphas must be a list of numbers in [0, 1], e.g. (0.5, 0.8); got {alphas!r}"
            )
        for a in alphas:
            _check_alpha("int8-auto", "smooth_alphas", a)
        object.__setattr__(self, "smooth_alphas", tuple(float(a) for a in alphas))
        _check_choice("int8-auto", "mode", self.mode, MODES)
        _check_count("int8-auto", "max_fp32_nodes", self.max_fp32_nodes, 0)
        _check_count("int8-auto", "samples", self.samples, 2)
        _check_choice("int8-auto", "calibration", self.calibration, CALIBRATIONS)
        _check_bool("int8-auto", "per_channel", self.per_channel)
        if (
            isinstance(self.margin, bool)
            or not isinstance(self.margin, int | float)
            or not 0 <= self.margin < 0.5
        ):
            raise ConfigError(f"int8-auto: margin must be a number in [0, 0.5), got {self.margin!r}")
