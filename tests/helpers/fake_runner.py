"""A fake Runner and Candidate for efficiency tests that need no model: the runner records its calls and
refuses batches over a size."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.candidate import Candidate
from modelyard.runtime.base import RunnerSpec, TensorSpec


class FakeRunner:
    """Records every call; refuses batches larger than ``max_batch``; keeps this process's CPU busy for
    ``busy_s`` per call (a model's compute, so timed windows are not all overhead)."""

    def __init__(
        self, name: str = "fake", max_batch: int = 1 << 30, log: list[str] | None = None, busy_s: float = 0.0
    ) -> None:
        self.spec = RunnerSpec(
            inputs=(TensorSpec("x", "float32", (None, 3)),),
            outputs=(TensorSpec("logits", "float32", (None, 2)),),
            task="classification",
            num_classes=2,
        )
        self.name = name
        self.device = "cpu"
        self.max_batch = max_batch
        self.log = log if log is not None else []
        self.dtypes: set[str] = set()
        self.busy_s = busy_s

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = feeds["x"]
        self.dtypes.add(str(x.dtype))
        if len(x) > self.max_batch:
            raise ValueError(f"batch {len(x)} exceeds the fixed batch size {self.max_batch}")
        self.log.append(self.name)
        until = time.perf_counter() + self.busy_s
        while time.perf_counter() < until:
            pass
        return {"logits": np.zeros((len(x), 2), np.float32)}


class FakeCandidate(Candidate):
    runner: FakeRunner

    def load(self, *, threads: int | None = None, spin: bool = True, device: str = "cpu") -> Any:
        return self.runner


def fake_candidate(tmp_path: Path, runner: FakeRunner) -> FakeCandidate:
    path = tmp_path / "fake.bin"
    path.write_bytes(b"\0" * 123)
    cand = FakeCandidate(name="fake", format="onnx", path=path, spec=runner.spec)
    cand.runner = runner
    return cand
