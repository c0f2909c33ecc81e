"""Throughput intervals and a cost that recomputes from its own details.

Timings here come from a fake clock that the fake runner advances by known durations, so every rate, median
and interval is known exactly; no test sleeps or reads wall time.
"""

from __future__ import annotations

import math
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.config import Policy
from modelyard.errors import ConfigError
from modelyard.evaluate import efficiency as E
from modelyard.evaluate.checks import measurement_table
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.run import EvalOptions, _interleaved_best
from modelyard.runtime.base import RunnerSpec, TensorSpec

SPEC = RunnerSpec(
    inputs=(TensorSpec("x", "float32", (None, 3)),),
    outputs=(TensorSpec("logits", "float32", (None, 2)),),
    task="classification",
    num_classes=2,
)
PRICE = 0.36  # USD/hour: 1e-4 USD per second


def _binomial_coverage(n: int, q: float, lo: int, hi: int) -> float:
    """P(lo <= K <= hi - 1), K ~ Binomial(n, q), written out."""
    return sum(math.comb(n, k) * q**k * (1 - q) ** (n - k) for k in range(lo, hi))


# ---------------------------------------------------------------------------------------------------
# order_statistic_interval


@pytest.mark.parametrize(
    ("n", "ranks", "coverage"),
    [
        (5, (1, 5), 1 - 2 / 2**5),  # 93.75%: five rounds cannot reach 95% for the median
        (7, (1, 7), 1 - 2 / 2**7),  # 98.4%: what THROUGHPUT_ROUNDS buys
        (20, (6, 15), None),
    ],
)
def test_median_interval_ranks_and_their_coverage(
    n: int, ranks: tuple[int, int], coverage: float | None
) -> None:
    samples = [float(10 * (n - i)) for i in range(n)]  # any order: the interval sorts
    iv = E.order_statistic_interval(samples, 0.5)
    assert iv is not None
    assert iv.ranks == ranks
    assert (iv.low, iv.high) == (float(10 * ranks[0]), float(10 * ranks[1]))
    exact = _binomial_coverage(n, 0.5, *ranks)
    assert iv.coverage == pytest.approx(exact, rel=1e-12)
    if coverage is not None:
        assert iv.coverage == pytest.approx(coverage, rel=1e-12)
    if n >= 7:
        assert iv.coverage >= 0.95


def test_high_quantile_with_few_samples_states_its_low_coverage() -> None:
    iv = E.order_statistic_interval(list(range(20)), 0.99)
    assert iv is not None
    assert iv.ranks == (19, 20)
    assert iv.coverage == pytest.approx(_binomial_coverage(20, 0.99, 19, 20))
    assert iv.coverage < 0.5  # far below 95%, and said so


def test_median_interval_covers_as_often_as_it_says() -> None:
    """Simulation: 7 draws from an exponential, 4000 times; the (min, max) interval holds the true median
    ln 2 at the stated rate, within four binomial standard errors."""
    rng = np.random.default_rng(0)
    trials, hits, stated = 4000, 0, None
    for _ in range(trials):
        iv = E.order_statistic_interval(rng.exponential(size=E.THROUGHPUT_ROUNDS).tolist(), 0.5)
        assert iv is not None
        stated = iv.coverage
        hits += iv.low <= math.log(2) <= iv.high
    assert stated is not None
    se = math.sqrt(stated * (1 - stated) / trials)
    assert abs(hits / trials - stated) < 4 * se


def test_interval_edge_cases() -> None:
    assert E.order_statistic_interval([], 0.5) is None
    assert E.order_statistic_interval([3.0], 0.5) is None
    with pytest.raises(ConfigError, match="q and confidence must be in"):
        E.order_statistic_interval([1.0, 2.0], 1.0)


# ---------------------------------------------------------------------------------------------------
# cost_measurement


def test_cost_is_built_from_the_throughput_measurement() -> None:
    tp = E.throughput_measurement(
        "efficiency.throughput_best", [100.0, 150.0, 200.0], best_batch=8, device="cpu", providers=["CPU"]
    )
    assert tp.value == 150.0 and tp.interval == (100.0, 200.0)
    cost = E.cost_measurement(tp, price_usd_per_hour=PRICE)
    assert cost.value == pytest.approx(PRICE / 3600 / 150.0 * 1e6)
    assert cost.interval == pytest.approx((PRICE / 3600 / 200.0 * 1e6, PRICE / 3600 / 100.0 * 1e6))
    assert cost.details["throughput_items_per_s"] == tp.value
    assert cost.details["throughput_interval"] == [100.0, 200.0]
    assert cost.details["best_batch"] == 8
    assert cost.details["price_usd_per_hour"] == PRICE
    assert cost.details["device"] == "cpu" and cost.details["providers"] == ["CPU"]
    assert cost.details["interval_coverage"] == tp.details["interval_coverage"]
    assert "throughput_items_per_s" in cost.details["formula"]


def test_cost_of_an_unknown_throughput_is_unknown_and_a_free_machine_costs_nothing() -> None:
    unknown = measure("efficiency.throughput_best", None, reason="no batch size ran", device="cpu")
    cost = E.cost_measurement(unknown, price_usd_per_hour=PRICE)
    assert cost.status == "unknown" and cost.details["reason"] == "throughput unknown: no batch size ran"
    assert cost.details["device"] == "cpu"
    free = E.cost_measurement(
        E.throughput_measurement("efficiency.throughput_best", [10.0, 20.0]), price_usd_per_hour=0.0
    )
    assert free.value == 0.0 and free.interval == (0.0, 0.0)
    with pytest.raises(ConfigError, match="price_usd_per_hour must be a finite number >= 0"):
        E.cost_measurement(unknown, price_usd_per_hour=-1.0)


# ---------------------------------------------------------------------------------------------------
# a fake clock and runners with known call durations


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(E, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
    return c


class TimedRunner:
    """Each call advances the clock by ``seconds(batch, call index)``."""

    spec = SPEC

    def __init__(self, clock: Clock, seconds: Any) -> None:
        self.clock, self.seconds, self.calls = clock, seconds, 0
        self.device = "cpu"

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        n = len(feeds["x"])
        self.clock.now += self.seconds(n, self.calls)
        self.calls += 1
        return {"logits": np.zeros((n, 2), np.float32)}


class TimedCandidate(Candidate):
    runner: TimedRunner

    def load(self, *, threads: int | None = None, spin: bool = True, device: str = "cpu") -> Any:
        return self.runner


def _candidate(tmp_path: Path, name: str, runner: TimedRunner) -> TimedCandidate:
    path = tmp_path / f"{name}.bin"
    path.write_bytes(b"\0" * 10)
    cand = TimedCandidate(name=name, format="onnx", path=path, spec=SPEC)
    cand.runner = runner
    return cand


def test_interleaved_rounds_give_the_known_median_and_interval(clock: Clock) -> None:
    """Round r's calls take durations[r] seconds each: its figure is 8 / durations[r] items/s."""
    durations = [0.010, 0.020, 0.011, 0.013, 0.009, 0.012, 0.015]
    per_window = E.MIN_CALLS_PER_WINDOW
    runner = TimedRunner(clock, lambda n, i: durations[i // per_window])
    feeds = {"x": np.zeros((8, 3), np.float32)}
    rounds = E.interleaved_throughput({"a": (runner, feeds)}, min_time_s=1e-9, warmup=0)["a"]
    assert rounds == pytest.approx([8 / d for d in durations])
    m = E.throughput_measurement("efficiency.throughput_best", rounds)
    assert m.value == pytest.approx(8 / 0.012)
    assert m.interval == pytest.approx((8 / 0.020, 8 / 0.009))
    assert m.details["interval_coverage"] == pytest.approx(1 - 2 / 2**7, abs=1e-4)
    assert m.details["rounds_items_per_s"] == rounds


def test_measure_efficiency_cost_recomputes_from_its_details(clock: Clock, tmp_path: Path) -> None:
    # a call costs 1 ms plus 0.1 ms per item: the best batch is the largest, at a known rate
    runner = TimedRunner(clock, lambda n, i: 1e-3 + 1e-4 * n)
    res = E.measure_efficiency(
        _candidate(tmp_path, "timed", runner),
        np.zeros((4, 3), np.float32),
        price_usd_per_hour=PRICE,
        batch_sizes=(1, 8),
        latency_calls=5,
        min_time_s=1e-6,
        measure_rss=False,
    )
    best, cost = res["efficiency.throughput_best"], res["efficiency.cost_usd_per_1m"]
    assert best.details["best_batch"] == 32
    assert best.value == pytest.approx(32 / (1e-3 + 32e-4))
    assert best.interval == pytest.approx((best.value, best.value))  # identical rounds: a point interval
    assert len(best.details["rounds_items_per_s"]) == E.THROUGHPUT_ROUNDS
    assert cost.details["throughput_items_per_s"] == best.value
    assert cost.value == pytest.approx(PRICE / 3600 / cost.details["throughput_items_per_s"] * 1e6)
    assert res["efficiency.latency_p50_ms"].value == pytest.approx(1.1)
    assert set(res) == {n for n in measurement_table() if n.startswith("efficiency.")}
    for name, m in res.items():
        assert m.details["device"] == "cpu", name


def test_pipeline_throughput_and_cost_are_new_measurements_from_the_interleaved_rounds(
    clock: Clock, tmp_path: Path
) -> None:
    """Two candidates; during the interleaved rounds "slow" gets slower every call. The final figures are
    new Measurements built from those rounds; the sequential ones are kept, untouched, in the details."""
    fast = TimedRunner(clock, lambda n, i: 1e-3 * n)
    slow = TimedRunner(clock, lambda n, i: 2e-3 * n * (1 + 0.01 * i))
    cands = [_candidate(tmp_path, "fast", fast), _candidate(tmp_path, "slow", slow)]
    options = EvalOptions(batch_sizes=(1, 8), latency_calls=3, min_time_s=1e-6, measure_rss=False)
    results = {
        c.name: E.measure_efficiency(
            c,
            np.zeros((4, 3), np.float32),
            price_usd_per_hour=PRICE,
            batch_sizes=options.batch_sizes,
            latency_calls=options.latency_calls,
            min_time_s=options.min_time_s,
            measure_rss=False,
        )
        for c in cands
    }
    before = {
        n: (ms["efficiency.throughput_best"], ms["efficiency.cost_usd_per_1m"]) for n, ms in results.items()
    }
    frozen = {n: (tp.value, dict(tp.details), cost.value) for n, (tp, cost) in before.items()}
    _interleaved_best(cands, results, np.zeros((4, 3), np.float32), PRICE, options, threads=None)
    for name, ms in results.items():
        tp, cost = ms["efficiency.throughput_best"], ms["efficiency.cost_usd_per_1m"]
        old_tp, old_cost = before[name]
        assert tp is not old_tp and cost is not old_cost
        assert (old_tp.value, old_tp.details, old_cost.value) == frozen[name]  # nothing patched in place
        rounds = tp.details["rounds_items_per_s"]
        assert len(rounds) == E.THROUGHPUT_ROUNDS
        assert tp.value == float(np.median(rounds))
        assert tp.interval == (min(rounds), max(rounds))
        assert tp.details["sequential_items_per_s"] == old_tp.value
        assert tp.details["best_batch"] == old_tp.details["best_batch"]
        assert tp.details["curve"] == old_tp.details["curve"]  # the serving batcher still finds its curve
        assert tp.details["device"] == "cpu"
        assert cost.details["throughput_items_per_s"] == tp.value
        assert cost.value == pytest.approx(PRICE / 3600 / tp.value * 1e6)
        assert cost.interval == pytest.approx(
            (PRICE / 3600 / tp.interval[1] * 1e6, PRICE / 3600 / tp.interval[0] * 1e6)
        )
    slow_rounds = results["slow"]["efficiency.throughput_best"].details["rounds_items_per_s"]
    assert slow_rounds == sorted(slow_rounds, reverse=True)  # it slowed down round after round
    assert (
        results["slow"]["efficiency.throughput_best"].value
        < results["slow"]["efficiency.throughput_best"].details["sequential_items_per_s"]
    )


def test_interleaving_needs_two_measured_candidates(clock: Clock, tmp_path: Path) -> None:
    cand = _candidate(tmp_path, "only", TimedRunner(clock, lambda n, i: 1e-3))
    tp = E.throughput_measurement("efficiency.throughput_best", [5.0, 6.0, 7.0], best_batch=1)
    results: dict[str, dict[str, Measurement]] = {"only": {"efficiency.throughput_best": tp}}
    _interleaved_best([cand], results, np.zeros((2, 3), np.float32), PRICE, EvalOptions(), threads=None)
    assert results["only"]["efficiency.throughput_best"] is tp


def test_the_target_device_reaches_measure_efficiency(clock: Clock, tmp_path: Path) -> None:
    seen: list[str] = []

    class Recording(TimedCandidate):
        def load(self, *, threads: int | None = None, spin: bool = True, device: str = "cpu") -> Any:
            seen.append(device)
            return self.runner

    cand = Recording(name="r", format="onnx", path=tmp_path / "r.bin", spec=SPEC)
    (tmp_path / "r.bin").write_bytes(b"\0")
    cand.runner = TimedRunner(clock, lambda n, i: 1e-3)
    E.measure_efficiency(
        cand,
        np.zeros((2, 3), np.float32),
        price_usd_per_hour=PRICE,
        batch_sizes=(1,),
        latency_calls=2,
        min_time_s=1e-6,
        measure_rss=False,
        device=Policy().hardware.target,
    )
    assert seen == ["cpu"] * E.LOAD_REPEATS
    with pytest.raises(ConfigError, match="device must be"):
        E.measure_efficiency(cand, np.zeros((2, 3)), price_usd_per_hour=PRICE, device="tpu")


# ---------------------------------------------------------------------------------------------------
# the evidence's hardware section and the int8 note read the final figures


def _row(name: str, parent: str | None, value: float, interval: tuple[float, float], last_pass: str) -> Any:
    tp = E.throughput_measurement(
        "efficiency.throughput_best", [interval[0], value, interval[1]], device="cpu"
    )
    return {
        "name": name,
        "parent": parent,
        "passes": [{"pass": last_pass, "config": {}}] if parent else [],
        "measurements": {"efficiency.throughput_best": tp.to_dict()},
    }


@pytest.mark.parametrize(
    ("value", "interval", "verdict"),
    [
        (150.0, (140.0, 160.0), "(pays off here)"),
        (150.0, (90.0, 200.0), "(not clearly: the throughput intervals overlap)"),
        (105.0, (104.0, 106.0), "(does not pay off here)"),
    ],
)
def test_int8_note_weighs_the_ratio_and_the_intervals(
    value: float, interval: tuple[float, float], verdict: str
) -> None:
    from modelyard.pipeline import _int8_verdict_note

    ev: dict[str, Any] = {
        "hardware": {},
        "candidates": [
            _row("onnx", None, 100.0, (95.0, 105.0), "onnx"),
            _row("onnx>int8", "onnx", value, interval, "int8-dynamic"),
        ],
    }
    _int8_verdict_note(ev)
    (line,) = ev["hardware"]["int8_measured"]
    assert line == f"onnx>int8: {value / 100:.2f}x the throughput of its fp32 parent onnx on cpu {verdict}"


def test_efficiency_device_names_each_device_with_its_candidates() -> None:
    from modelyard.pipeline import _efficiency_device

    def ms(device: str) -> dict[str, Measurement]:
        return {
            "efficiency.size_bytes": measure("efficiency.size_bytes", 10, device=device),
            "efficiency.peak_rss_bytes": measure(
                "efficiency.peak_rss_bytes", None, reason="x", device="gone"
            ),
            "quality.accuracy": measure("quality.accuracy", 0.9, device="ignored"),
        }

    assert _efficiency_device({"a": ms("cpu"), "b": ms("cpu")}) == "cpu"
    assert _efficiency_device({"a": ms("cpu"), "b": ms("cuda:0"), "c": ms("cuda:0")}) == (
        "cpu (a); cuda:0 (b, c)"
    )
    assert _efficiency_device({"a": {}}) == "not recorded"
