"""Efficiency evidence: structure, units, consistency and the fresh-process memory probe.

Nothing here asserts on wall time; timings are checked for shape, sign and internal consistency only.
"""

from __future__ import annotations

import json
import math
import resource
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.errors import ConfigError, DataError
from modelyard.evaluate._inputs import tile as _tile
from modelyard.evaluate.checks import measurement_table
from modelyard.evaluate.efficiency import (
    MIN_CALLS_PER_WINDOW,
    THROUGHPUT_ROUNDS,
    compare_speed,
    interleaved_throughput,
    measure_efficiency,
)
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.memory import measure_peak_rss
from tests.helpers.fake_runner import FakeRunner, fake_candidate
from tests.helpers.models import build_tiny_bert, sentiment_texts

EFFICIENCY = {n for n in measurement_table() if n.startswith("efficiency.")}
FAST: dict[str, Any] = {"latency_calls": 20, "min_time_s": 0.05, "batch_sizes": (1, 8)}
PRICE = 0.25


# ---------------------------------------------------------------------------------------------------
# fixtures: the digits demo as a torch candidate, its ONNX export, a tiny text model in ONNX


@pytest.fixture(scope="session")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Any:
    import torch

    from modelyard.zoo.demos import load_demo

    torch.set_num_threads(1)
    return load_demo("digits", tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="session")
def onnx_digits(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Candidate:
    import torch

    torch.set_num_threads(1)
    base: Candidate = digits.baseline
    path = tmp_path_factory.mktemp("onnx") / "digits.onnx"
    torch.onnx.export(
        base.torch_module(),
        (torch.zeros(1, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["pixels"],
        output_names=["logits"],
        dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
    )
    return Candidate(name="onnx", format="onnx", path=path, spec=base.spec, parent=base.name)


@pytest.fixture(scope="session")
def sample(digits: Any) -> np.ndarray:
    return np.asarray(digits.dataset.x_test[:64])


@pytest.fixture(scope="session")
def torch_results(digits: Any, sample: np.ndarray) -> dict[str, Measurement]:
    import torch

    torch.set_num_threads(1)
    return measure_efficiency(digits.baseline, sample, price_usd_per_hour=PRICE, threads=1, **FAST)


@pytest.fixture(scope="session")
def onnx_results(onnx_digits: Candidate, sample: np.ndarray) -> dict[str, Measurement]:
    return measure_efficiency(onnx_digits, sample, price_usd_per_hour=PRICE, threads=1, **FAST)


@pytest.fixture(params=["torch", "onnx"])
def results(request: pytest.FixtureRequest) -> dict[str, Measurement]:
    return request.getfixturevalue(f"{request.param}_results")


@pytest.fixture(scope="session")
def onnx_text(tmp_path_factory: pytest.TempPathFactory) -> Candidate:
    """A tiny BERT classifier with its word-level tokenizer, exported to ONNX."""
    import torch

    from modelyard.runtime.hf import hf_spec, load_hf_module

    torch.set_num_threads(1)
    folder = build_tiny_bert(tmp_path_factory.mktemp("bert") / "bert", classification=True)
    spec = hf_spec(folder, "classification")
    names = [t.name for t in spec.inputs]
    example = tuple(torch.ones(1, 5, dtype=torch.int64) for _ in names)
    path = folder.parent / "bert.onnx"
    with warnings.catch_warnings():  # the legacy exporter's tracer warnings are not this test's subject
        warnings.simplefilter("ignore")
        torch.onnx.export(
            load_hf_module(folder, "classification"),
            example,
            str(path),
            dynamo=False,
            input_names=names,
            output_names=["logits"],
            dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "logits": {0: "batch"}},
        )
    return Candidate(name="bert-onnx", format="onnx", path=path, spec=spec, tokenizer_dir=folder)


# ---------------------------------------------------------------------------------------------------
# a fake runner and candidate, for structure tests that need no model


# ---------------------------------------------------------------------------------------------------
# measure_efficiency on real candidates


def test_every_efficiency_measurement_with_its_unit(results: dict[str, Measurement]) -> None:
    assert set(results) == EFFICIENCY
    for name, m in results.items():
        assert m.name == name
        assert m.unit == measurement_table()[name][0]
        assert m.status == "ok", (name, m.details)
        assert m.value is not None and m.value > 0
        d = json.loads(json.dumps(m.to_dict(), allow_nan=False))
        assert Measurement.from_dict(d).value == pytest.approx(m.value)


def test_latency_percentiles_are_consistent_with_their_samples(results: dict[str, Measurement]) -> None:
    p50, p99 = results["efficiency.latency_p50_ms"], results["efficiency.latency_p99_ms"]
    assert p50.value is not None and p99.value is not None
    assert p99.value >= p50.value
    samples = p50.details["samples_ms"]
    assert len(samples) == p50.details["calls"] == p99.details["calls"] == FAST["latency_calls"]
    assert all(s > 0 for s in samples)
    assert p50.value == pytest.approx(float(np.percentile(samples, 50)), abs=1e-4)
    assert p99.value == pytest.approx(float(np.percentile(samples, 99)), abs=1e-4)
    for m in (p50, p99):
        assert m.interval is not None
        assert m.interval[0] <= m.value <= m.interval[1]
    assert p50.details["distinct_inputs"] == FAST["latency_calls"]
    assert "not timed" in p50.details["preprocessing"]
    assert p50.details["threads"] == 1


def test_throughput_curve_best_and_batch32(results: dict[str, Measurement]) -> None:
    best, b32 = results["efficiency.throughput_best"], results["efficiency.throughput_b32"]
    curve = best.details["curve"]
    assert set(curve) == {"1", "8", "32"}  # the batch sizes asked for, plus 32 for throughput_b32
    assert all(v > 0 for v in curve.values())
    assert best.value == max(curve.values())
    assert curve[str(best.details["best_batch"])] == best.value
    assert b32.value == curve["32"]
    assert len(b32.details["rounds_items_per_s"]) == THROUGHPUT_ROUNDS
    assert b32.details["calls"] >= THROUGHPUT_ROUNDS * MIN_CALLS_PER_WINDOW
    assert b32.value == float(np.median(b32.details["rounds_items_per_s"]))
    assert b32.interval == (min(b32.details["rounds_items_per_s"]), max(b32.details["rounds_items_per_s"]))
    assert best.details["repeats"][str(best.details["best_batch"])] == best.details["rounds_items_per_s"]
    assert best.details["failed_batch_sizes"] == {}


def test_cost_is_price_over_best_throughput(results: dict[str, Measurement]) -> None:
    best = results["efficiency.throughput_best"].value
    cost = results["efficiency.cost_usd_per_1m"]
    assert best is not None
    assert cost.value == pytest.approx(PRICE / 3600 / best * 1e6, rel=1e-12)
    assert cost.details["price_usd_per_hour"] == PRICE
    assert cost.details["throughput_items_per_s"] == best
    assert "fully busy" in cost.details["assumption"]


def test_load_time_is_the_median_of_three(results: dict[str, Measurement]) -> None:
    m = results["efficiency.load_time_s"]
    runs = m.details["runs_s"]
    assert len(runs) == 3
    assert m.value == pytest.approx(sorted(runs)[1])


def test_size_is_the_artifact_size(
    torch_results: dict[str, Measurement],
    onnx_results: dict[str, Measurement],
    digits: Any,
    onnx_digits: Candidate,
) -> None:
    assert torch_results["efficiency.size_bytes"].value == digits.baseline.path.stat().st_size
    assert onnx_results["efficiency.size_bytes"].value == sum(p.stat().st_size for p in onnx_digits.files())


def test_peak_rss_from_a_fresh_process(
    torch_results: dict[str, Measurement], onnx_results: dict[str, Measurement]
) -> None:
    pt, ort = torch_results["efficiency.peak_rss_bytes"], onnx_results["efficiency.peak_rss_bytes"]
    for m in (pt, ort):
        assert m.value is not None
        baseline = m.details["baseline_rss_bytes"]
        assert 0 < baseline < m.value
        assert m.details["above_baseline_bytes"] == m.value - baseline
        assert 0 < m.details["load_peak_rss_bytes"] <= m.value
        assert m.details["batch"] == 32
    assert pt.details["modules_imported"]["torch"] is True
    # an ONNX candidate is served without PyTorch, and the probe shows it
    assert ort.details["modules_imported"] == {"torch": False, "onnxruntime": True, "transformers": False}
    assert ort.value is not None and pt.value is not None and ort.value < pt.value


def test_probe_does_not_inherit_the_parents_peak(onnx_results: dict[str, Measurement]) -> None:
    # Linux carries ru_maxrss across fork+exec; this test process has imported torch, the empty probe has not.
    parent_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert onnx_results["efficiency.peak_rss_bytes"].details["baseline_rss_bytes"] < parent_peak / 2


def test_probe_failure_is_unknown_with_the_reason(
    tmp_path: Path, onnx_digits: Candidate, sample: np.ndarray
) -> None:
    gone = Candidate(name="gone", format="onnx", path=tmp_path / "missing.onnx", spec=onnx_digits.spec)
    m = measure_peak_rss(gone, sample, threads=1)
    assert m.status == "unknown" and m.value is None
    assert m.unit == "bytes"
    assert "memory probe failed" in m.details["reason"]
    assert "missing.onnx" in m.details["reason"]


def test_probe_timeout_is_unknown(onnx_digits: Candidate, sample: np.ndarray) -> None:
    m = measure_peak_rss(onnx_digits, sample, timeout_s=0.001)
    assert m.status == "unknown"
    assert m.details["reason"] == "memory probe timed out after 0.001 s"


def test_texts_are_tokenized_before_timing(onnx_text: Candidate) -> None:
    texts = [t for t, _ in sentiment_texts(24)]
    res = measure_efficiency(onnx_text, texts, price_usd_per_hour=PRICE, threads=1, **FAST)
    assert set(res) == EFFICIENCY
    assert all(m.status == "ok" for m in res.values()), {n: m.details for n, m in res.items()}
    assert "tokenized before timing" in res["efficiency.latency_p50_ms"].details["preprocessing"]
    assert res["efficiency.latency_p50_ms"].details["distinct_inputs"] == 20
    assert set(res["efficiency.throughput_best"].details["curve"]) == {"1", "8", "32"}
    modules = res["efficiency.peak_rss_bytes"].details["modules_imported"]
    assert modules == {"torch": False, "onnxruntime": True, "transformers": False}


# ---------------------------------------------------------------------------------------------------
# structure with a fake runner


def test_batch_sizes_the_model_rejects_are_left_out(tmp_path: Path) -> None:
    runner = FakeRunner(max_batch=8)
    messages: list[tuple[str, float]] = []
    res = measure_efficiency(
        fake_candidate(tmp_path, runner),
        np.arange(15, dtype=np.float64).reshape(5, 3),
        price_usd_per_hour=1.0,
        batch_sizes=(1, 8, 64),
        latency_calls=5,
        min_time_s=0.01,
        measure_rss=False,
        progress=lambda msg, adv: messages.append((msg, adv)),
    )
    best = res["efficiency.throughput_best"]
    assert set(best.details["curve"]) == {"1", "8"}
    assert set(best.details["failed_batch_sizes"]) == {"32", "64"}
    assert "exceeds the fixed batch size 8" in best.details["failed_batch_sizes"]["64"]
    assert best.value == max(best.details["curve"].values())
    b32 = res["efficiency.throughput_b32"]
    assert b32.status == "unknown" and b32.details["reason"].startswith("batch 32 failed: ValueError")
    assert res["efficiency.cost_usd_per_1m"].value == pytest.approx(1.0 / 3600 / best.value * 1e6)
    assert res["efficiency.peak_rss_bytes"].status == "unknown"
    assert res["efficiency.size_bytes"].value == 123
    assert runner.dtypes == {"float32"}  # preprocessing (cast to the input dtype) happened before the calls
    assert messages[-1] == ("fake: efficiency measured", 1.0)


def test_a_runner_that_always_fails_gives_unknowns_not_a_crash(tmp_path: Path) -> None:
    res = measure_efficiency(
        fake_candidate(tmp_path, FakeRunner(max_batch=0)),
        np.zeros((4, 3), np.float32),
        price_usd_per_hour=1.0,
        latency_calls=3,
        min_time_s=0.01,
        measure_rss=False,
    )
    for name in (
        "efficiency.latency_p50_ms",
        "efficiency.latency_p99_ms",
        "efficiency.throughput_b32",
        "efficiency.throughput_best",
        "efficiency.cost_usd_per_1m",
    ):
        assert res[name].status == "unknown", name
        assert res[name].details["reason"]
    assert res["efficiency.load_time_s"].status == "ok"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_sizes": ()}, "batch_sizes must be a non-empty"),
        ({"batch_sizes": (0, 8)}, r"got \(0, 8\)"),
        ({"latency_calls": 0}, "latency_calls must be an integer >= 1, got 0"),
        ({"min_time_s": 0.0}, "min_time_s must be a finite number > 0"),
        ({"price_usd_per_hour": -1.0}, "price_usd_per_hour must be a finite number >= 0, got -1.0"),
        ({"price_usd_per_hour": math.nan}, "price_usd_per_hour must be a finite number >= 0, got nan"),
        ({"threads": 0}, "threads must be None or an integer >= 1"),
    ],
)
def test_bad_options_are_refused(tmp_path: Path, kwargs: dict[str, Any], match: str) -> None:
    options: dict[str, Any] = {"price_usd_per_hour": 1.0, **kwargs}
    with pytest.raises(ConfigError, match=match):
        measure_efficiency(fake_candidate(tmp_path, FakeRunner()), np.zeros((2, 3)), **options)


def test_empty_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"at least one example along axis 0, got shape \(0, 3\)"):
        measure_efficiency(fake_candidate(tmp_path, FakeRunner()), np.zeros((0, 3)), price_usd_per_hour=1.0)


def test_tile_cycles_through_the_sample() -> None:
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(_tile(x, 5), x[[0, 1, 2, 0, 1]])
    np.testing.assert_array_equal(_tile(x, 2, start=2), x[[2, 0]])
    assert _tile(["a", "b"], 3) == ["a", "b", "a"]


# ---------------------------------------------------------------------------------------------------
# interleaved_throughput and compare_speed


def test_interleaved_throughput_is_round_robin_with_rotation() -> None:
    log: list[str] = []
    a, b = FakeRunner("a", log=log), FakeRunner("b", log=log)
    feeds = {"x": np.zeros((4, 3), np.float32)}
    out = interleaved_throughput({"a": (a, feeds), "b": (b, feeds)}, rounds=2, min_time_s=1e-4)
    assert set(out) == {"a", "b"}
    assert all(len(v) == 2 and all(r > 0 for r in v) for v in out.values())
    runs = [name for i, name in enumerate(log) if i == 0 or log[i - 1] != name]
    # warm-up a, b; round 1 starts with a, round 2 with b
    assert runs == ["a", "b", "a", "b", "a"]
    assert log.count("a") >= 1 + 2 * MIN_CALLS_PER_WINDOW


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rounds": 0}, "rounds must be an integer >= 1, got 0"),
        ({"min_time_s": -1.0}, "min_time_s must be a finite number > 0, got -1.0"),
        ({"warmup": -1}, "warmup must be an integer >= 0"),
    ],
)
def test_interleaved_throughput_refuses_bad_options(kwargs: dict[str, Any], match: str) -> None:
    feeds = {"x": np.zeros((1, 3), np.float32)}
    with pytest.raises(ConfigError, match=match):
        interleaved_throughput({"a": (FakeRunner(), feeds)}, **kwargs)


def test_interleaved_throughput_refuses_empty_input() -> None:
    with pytest.raises(ConfigError, match="at least one runner"):
        interleaved_throughput({})
    with pytest.raises(ConfigError, match="feeds must name at least one input array"):
        interleaved_throughput({"a": (FakeRunner(), {})})


def test_compare_speed_ratios(
    torch_results: dict[str, Measurement], onnx_results: dict[str, Measurement]
) -> None:
    unknown = {"efficiency.throughput_best": measure("efficiency.throughput_best", None, reason="x")}
    results = {"torch": torch_results, "onnx": onnx_results, "broken": unknown}
    ratios = compare_speed(results, "torch")
    assert ratios["torch"] == 1.0
    t, o = torch_results["efficiency.throughput_best"].value, onnx_results["efficiency.throughput_best"].value
    assert t is not None and o is not None
    assert ratios["onnx"] == pytest.approx(o / t)
    assert math.isnan(ratios["broken"])
    assert all(math.isnan(v) for v in compare_speed(results, "broken").values())
    with pytest.raises(
        ConfigError, match=r"baseline 'nope' is not among the results \['broken', 'onnx', 'torch'\]"
    ):
        compare_speed(results, "nope")
