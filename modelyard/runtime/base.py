"""The Runner protocol: named numpy arrays in, named numpy arrays out, with a declared spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

Task = Literal["classification", "embedding"]
TASKS: tuple[str, ...] = ("classification", "embedding")
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor: numpy dtype name and shape, ``None`` marking a dynamic axis."""

    name: str
    dtype: str
    shape: tuple[int | None, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        return cls(name=str(d["name"]), dtype=str(d["dtype"]), shape=tuple(d["shape"]))


@dataclass(frozen=True)
class RunnerSpec:
    """What a Runner takes and gives, and what it is for.

    Classification runners output ``logits`` of shape (N, num_classes); embedding runners output
    ``embedding`` of shape (N, D). ``value_range`` is the valid range of float inputs, if known.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    task: Task
    num_classes: int | None = None
    value_range: tuple[float, float] | None = None
    labels: tuple[str, ...] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_name(self) -> str:
        return self.outputs[0].name

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["inputs"] = [t.to_dict() for t in self.inputs]
        d["outputs"] = [t.to_dict() for t in self.outputs]
        d["value_range"] = list(self.value_range) if self.value_range else None
        d["labels"] = list(self.labels) if self.labels else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunnerSpec:
        vr = d.get("value_range")
        labels = d.get("labels")
        return cls(
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            task=d["task"],
            num_classes=d.get("num_classes"),
            value_range=(float(vr[0]), float(vr[1])) if vr else None,
            labels=tuple(labels) if labels else None,
            extra=dict(d.get("extra") or {}),
        )

    def with_tensors_of(self, own: RunnerSpec) -> RunnerSpec:
        """This declared spec (task, classes, labels, value range) with the tensor names and dtypes ``own``
        read from the loaded model."""
        return replace(self, inputs=own.inputs, outputs=own.outputs)


@runtime_checkable
class Runner(Protocol):
    """Anything that turns a batch of named arrays into named arrays.

    ``device`` is where the computation actually runs, as a short string: "cpu", or "cuda:N" for GPU N
    (read back from the runtime after loading, not copied from what was asked for). modelyard's Runners also
    have ``describe()``: the runtime, its version and the settings it runs with (see :func:`describe_runner`).
    """

    spec: RunnerSpec
    device: str

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...


def describe_runner(runner: Any) -> dict[str, Any]:
    """``{"name", "version", "settings"}`` of the runtime a loaded Runner runs on, from its ``describe()``
    (read back from the runtime); a Runner without one is named by its class, its version not recorded."""
    describe = getattr(runner, "describe", None)
    if callable(describe):
        info = dict(describe())
        return {
            "name": str(info.get("name") or type(runner).__name__),
            "version": str(info.get("version") or NOT_RECORDED),
            "settings": dict(info.get("settings") or {}),
        }
    return {
        "name": type(runner).__name__,
        "version": NOT_RECORDED,
        "settings": {"device": str(getattr(runner, "device", "unknown"))},
    }


def primary_output(runner: Runner, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """Run and return the main output (logits or embedding) as float64-safe float32 array."""
    out = runner.run(feeds)
    return np.asarray(out[runner.spec.output_name])
