"""The other processes' load recorded with speed figures: what OtherLoad computes, that the efficiency
measurements carry it, and that a run timed on a busy machine says so in a caveat."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from modelyard.evaluate import machine_load
from modelyard.evaluate.efficiency import measure_efficiency
from modelyard.evaluate.machine_load import CONTENDED_CORES, OtherLoad
from modelyard.pipeline import _contended_timing
from tests.helpers.fake_runner import FakeRunner, fake_candidate


def _stat(path: Path, busy_ticks: int) -> None:
    # cpu user nice system idle iowait irq softirq steal: busy = all but idle and iowait
    path.write_text(f"cpu  {busy_ticks} 0 0 5000 7 0 0 0 0 0\ncpu0 0 0 0 0 0 0 0 0 0 0\n")


@dataclass
class Machine:
    """A fake /proc/stat (busy ticks) and fake clocks (this process's CPU seconds, wall seconds)."""

    stat: Path
    clock: dict[str, float]

    def busy(self, ticks: int) -> None:
        _stat(self.stat, ticks)


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Machine:
    m = Machine(tmp_path / "stat", {"own": 10.0, "wall": 100.0})
    m.busy(1000)
    monkeypatch.setattr(machine_load, "process_time", lambda: m.clock["own"])
    monkeypatch.setattr(machine_load, "perf_counter", lambda: m.clock["wall"])
    return m


def test_other_cores_are_the_machines_busy_time_less_this_process(machine: Machine) -> None:
    meter = OtherLoad(machine.stat, cpus=2)
    tick = meter._tick
    start = meter.snapshot()
    # 2 s of wall time: the machine was busy 3 CPU-seconds, 1.2 of them this process's own; less the counters'
    # resolution, one tick per CPU over the 2 s
    machine.busy(1000 + 3 * tick)
    machine.clock["own"] += 1.2
    machine.clock["wall"] += 2.0
    resolution = 2 / tick / 2.0
    assert meter.resolution_cores(2.0) == pytest.approx(resolution)
    assert meter.cores_since(start) == pytest.approx(0.9 - resolution)
    assert meter.details_since(start) == {"other_cores": round(0.9 - resolution, 2)}
    machine.clock["own"] += 5.0  # this process alone: never negative
    assert meter.cores_since(start) == 0.0


def test_a_short_window_does_not_read_one_tick_per_cpu_as_a_neighbour(machine: Machine) -> None:
    meter = OtherLoad(machine.stat, cpus=2)
    start = meter.snapshot()
    # 30 ms of an idle machine whose counters moved a tick on each CPU: 0.67 "cores" of rounding
    machine.busy(1002)
    machine.clock["wall"] += 0.03
    assert meter.cores_since(start) == 0.0
    # a real neighbour over the same window shows above the resolution
    machine.busy(1002 + 3)
    assert meter.cores_since(start) == pytest.approx(1.0)


def test_without_proc_stat_it_reports_nothing(tmp_path: Path) -> None:
    meter = OtherLoad(tmp_path / "missing")
    start = meter.snapshot()
    assert not meter.available and meter.cores_since(start) == 0.0 and meter.details_since(start) == {}


@pytest.mark.skipif(not OtherLoad().available, reason="needs /proc/stat (Linux)")
def test_efficiency_figures_record_a_busy_neighbour(tmp_path: Path) -> None:
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        res = measure_efficiency(
            fake_candidate(tmp_path, FakeRunner(busy_s=1e-4)),  # 2000 calls: a 0.2 s latency window
            np.zeros((4, 3), np.float32),
            price_usd_per_hour=1.0,
            batch_sizes=(1, 8),
            latency_calls=2000,
            min_time_s=0.5,
            measure_rss=False,
        )
    finally:
        busy.kill()
        busy.wait()
    for key in ("efficiency.latency_p50_ms", "efficiency.throughput_best", "efficiency.throughput_b32"):
        assert res[key].details["other_cores"] >= CONTENDED_CORES, key  # a whole spinning process


def _ms(**others: float | None) -> dict[str, dict[str, Any]]:
    def m(other: float | None) -> Any:
        return SimpleNamespace(details={} if other is None else {"other_cores": other})

    return {
        name: {"efficiency.throughput_best": m(o), "quality.accuracy": m(5.0)} for name, o in others.items()
    }


def test_a_run_timed_on_a_busy_machine_says_so() -> None:
    assert _contended_timing(_ms(baseline=0.05, onnx=None)) == []
    assert (
        _contended_timing({"onnx": {"quality.accuracy": SimpleNamespace(details={"other_cores": 3.0})}}) == []
    )
    (line,) = _contended_timing(_ms(baseline=0.05, onnx=0.95, int8=CONTENDED_CORES))
    assert "(most, in cores: int8 (0.30), onnx (0.95))" in line and "rerun on a quiet machine" in line
