"""Helpers shared by the benchmark scripts: interleaved timing, medians and spreads, Markdown tables, the
closing JSON line. Benchmarks are not tests: nothing here asserts on time."""

from __future__ import annotations

import json
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from modelyard.evaluate.machine_load import OtherLoad

# One "pass" = a fixed piece of work (e.g. every batch of a input set once); it returns how many items
# (sentences, images) it processed.
PassFn = Callable[[], int]


@dataclass(frozen=True)
class Throughput:
    """Items per second over several interleaved rounds, each sample with the CPU load other processes put
    on the machine while it was taken (in cores; see ``OtherLoad``).

    ``median`` uses the clean samples (other load below ``max_other_load``) when there are at least
    ``min_clean`` of them, else every sample, and then ``contended`` is true.
    """

    samples: tuple[float, ...]
    other_load: tuple[float, ...] = ()
    max_other_load: float = float("inf")
    min_clean: int = 3

    @property
    def clean(self) -> tuple[float, ...]:
        if not self.other_load:
            return self.samples
        return tuple(s for s, o in zip(self.samples, self.other_load, strict=True) if o < self.max_other_load)

    @property
    def contended(self) -> bool:
        return len(self.clean) < min(self.min_clean, len(self.samples))

    @property
    def used(self) -> tuple[float, ...]:
        return self.samples if self.contended else self.clean

    @property
    def median(self) -> float:
        return float(statistics.median(self.used))

    @property
    def low(self) -> float:
        return float(min(self.used))

    @property
    def high(self) -> float:
        return float(max(self.used))


def log(msg: str) -> None:
    """Progress on stderr, so stdout carries only the results."""
    print(msg, file=sys.stderr, flush=True)


def time_pass(fn: PassFn, *, min_time_s: float) -> float:
    """Repeat whole passes of ``fn`` until at least ``min_time_s`` has elapsed; items per second."""
    items = 0
    t0 = time.perf_counter()
    while True:
        items += fn()
        elapsed = time.perf_counter() - t0
        if elapsed >= min_time_s:
            return items / elapsed


def interleaved_throughput(
    passes: dict[str, PassFn],
    *,
    rounds: int,
    min_time_s: float,
    max_rounds: int | None = None,
    max_other_load: float = 0.1,
    seed: int = 0,
    warmup: int = 1,
    progress: Callable[[str], None] = log,
) -> dict[str, Throughput]:
    """Warm every config up, then for each round time every config once, in a seeded shuffled order.

    Interleaving makes all configs share the machine's drift; shuffling the order within a round keeps a
    fixed position from favouring one config. Each sample records the load other processes put on the
    CPU meanwhile; while some config has fewer than ``rounds`` clean samples (other load below
    ``max_other_load`` cores), more rounds are run, up to ``max_rounds`` in all.
    """
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    limit = max(rounds, max_rounds or rounds)
    meter = OtherLoad()
    for name, fn in passes.items():
        for _ in range(warmup):
            fn()
        progress(f"  warmed up {name}")
    rng = random.Random(seed)
    samples: dict[str, list[float]] = {name: [] for name in passes}
    loads: dict[str, list[float]] = {name: [] for name in passes}
    r = 0
    while r < limit:
        if r >= rounds and all(sum(o < max_other_load for o in loads[n]) >= rounds for n in passes):
            break
        order = list(passes)
        rng.shuffle(order)
        for name in order:
            start = meter.snapshot()
            samples[name].append(time_pass(passes[name], min_time_s=min_time_s))
            loads[name].append(meter.cores_since(start))
        r += 1
        worst = max(loads[n][-1] for n in passes)
        progress(f"  round {r} done (highest load from other processes during a sample: {worst:.2f} cores)")
    return {
        name: Throughput(tuple(samples[name]), tuple(loads[name]), max_other_load, min(3, rounds))
        for name in passes
    }


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], *, align: str = "") -> str:
    """A GitHub Markdown table; ``align`` has one letter per column, 'l' or 'r' (default: first l, rest r)."""
    spec = align or ("l" + "r" * (len(headers) - 1))
    if len(spec) != len(headers):
        raise ValueError(f"align has {len(spec)} letters for {len(headers)} columns")
    rule = ["---" if a == "l" else "---:" for a in spec]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(rule) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def candidate_name(recipe: str) -> str:
    """The name ``build_candidates`` gives a recipe's candidate: "onnx > int8-auto" -> "onnx>int8-auto"."""
    return ">".join(step.strip() for step in recipe.split(">"))


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(float(value), digits)


def json_line(payload: dict[str, Any]) -> str:
    """The one machine-readable line a benchmark ends with (NaN is not valid JSON: pass None)."""
    return json.dumps(payload, allow_nan=False)
