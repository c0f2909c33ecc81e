"""Efficiency evidence: latency, throughput, peak memory, size, load time and cost of one candidate.

How the figures are taken (the same code serves the pipeline and the benchmarks):

- Raw inputs go through ``candidate.preprocessor()`` once, before any timing: tokenization is not timed.
  Inputs are tiled from ``sample_inputs`` to fill each batch size.
- Device: the candidate is loaded on the device asked for (``device="cpu"``, or "gpu" for the policy's GPU
  target); every ``efficiency.*`` measurement records the device the Runner reports (``details["device"]``,
  plus ``details["providers"]`` for ONNX Runtime), so no figure is read as another device's. The runtime,
  its version and settings (``Runner.describe()``) are in ``efficiency.load_time_s``'s ``details["runtime"]``
  (:func:`runtime_of` reads them back for the candidate's evidence).
- Latency: batch-1 calls, after warm-up calls, each timed with ``time.perf_counter``; p50 and p99 with
  distribution-free order-statistic intervals (which assume independent calls). The ranks aim at 95%; the
  coverage they actually reach is in ``details["interval_coverage"]`` (few calls cannot reach 95% for p99).
- Throughput: per batch size, timed calls for at least ``min_time_s`` in all, split over ``THROUGHPUT_ROUNDS``
  (7) interleaved rounds (every batch size takes its turn in each round, so all share the machine's drift).
  A round's figure is the median of its per-call rates (items / call time); the value is the median of the
  round figures and its interval the order-statistic interval of that median over the rounds: with 7 rounds
  that is (min, max) of the rounds, which covers the median round with probability 1 - 2 / 2**7 = 98.4%
  (rounds assumed independent; drift between rounds widens the interval, as it should). The coverage reached
  is recorded in ``details["interval_coverage"]`` for any number of rounds: 5 rounds, for instance, reach
  only 93.75%, which is why 7 are taken. The best batch size is chosen on these same rounds.
- Peak memory (:mod:`modelyard.evaluate.memory`): a fresh process (``python -m modelyard.evaluate._rss_probe``)
  loads the candidate and runs one batch of 32; its ``ru_maxrss``. An empty probe's figure is reported beside
  it. The probe loads on the CPU: for a Runner on a GPU the figure is UNKNOWN with that reason.
- Cost: :func:`cost_measurement` is the one place it is computed, from the final throughput measurement:
  ``price_usd_per_hour / 3600 / throughput * 1e6`` (one instance fully busy at the best batch size), with
  ``details["throughput_items_per_s"]`` exactly that throughput and the interval the throughput interval
  mapped through the same formula (bounds reversed). In the pipeline (``modelyard.evaluate.run``) the final
  ``throughput_best`` comes from rounds timed round-robin across all candidates, and the cost is rebuilt from
  it by the same function; the figure from these rounds stays in its details as ``sequential_items_per_s``.
"""

from __future__ import annotations

import logging
import math
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from modelyard.candidate import Candidate
from modelyard.errors import ConfigError
from modelyard.evaluate._inputs import check_positive, error_line, normalize_inputs, tile
from modelyard.evaluate.checkspec import CheckSpec, GateSpec, declare
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.evaluate.machine_load import OtherLoad
from modelyard.evaluate.memory import measure_peak_rss
from modelyard.runtime.base import Runner, describe_runner
from modelyard.runtime.device import default_threads, resolve_device

log = logging.getLogger(__name__)

Feeds = dict[str, np.ndarray]
ProgressFn = Callable[[str, float], None]

B32 = 32
THROUGHPUT_ROUNDS = 7  # (min, max) of 7 rounds covers their median with probability 98.4%
INTERVAL_CONFIDENCE = 0.95
MIN_CALLS_PER_WINDOW = 3
LOAD_REPEATS = 3
MAX_SAMPLES_KEPT = 500
MAX_DISTINCT_LATENCY_INPUTS = 64

COST_ASSUMPTION = (
    "one instance kept fully busy at the best batch size measured; excludes idle time, "
    "preprocessing (e.g. tokenization) and network"
)
_BUDGET = "budgets."
CHECKS = declare(
    CheckSpec(
        "efficiency.size_bytes",
        "bytes",
        "artifact size on disk",
        "lower",
        column="Size",
        gate=GateSpec("size", _BUDGET + "max_size_mb", None, "<=", "size budget", scale=1 / 2**20, unit="MB"),
    ),
    CheckSpec(
        "efficiency.latency_p50_ms", "ms", "median latency of one batch-1 call", "lower", column="Latency p50"
    ),
    CheckSpec(
        "efficiency.latency_p99_ms",
        "ms",
        "99th percentile latency of one batch-1 call",
        "lower",
        gate=GateSpec(
            "latency_p99", _BUDGET + "max_latency_p99_ms", None, "<=", "p99 latency budget", unit="ms"
        ),
    ),
    CheckSpec(
        "efficiency.throughput_b32",
        "items/s",
        "throughput at batch 32, order-statistic interval over timing rounds",
        "higher",
    ),
    CheckSpec(
        "efficiency.throughput_best",
        "items/s",
        "throughput at the best batch size measured, order-statistic interval over timing rounds",
        "higher",
        column="Throughput (best batch)",
        gate=GateSpec(
            "throughput", _BUDGET + "min_throughput", None, ">=", "throughput floor", unit="items/s"
        ),
    ),
    CheckSpec("efficiency.load_time_s", "s", "time to load the artifact into a ready Runner", "lower"),
    CheckSpec(
        "efficiency.cost_usd_per_1m",
        "USD",
        "hardware cost of 1 million predictions at the best throughput (price / 3600 / throughput * 1e6)",
        "lower",
        column="Cost per 1M predictions",
    ),
)


# ---------------------------------------------------------------------------------------------------
# timing primitives shared by measure_efficiency, interleaved_throughput and the benchmarks


def _batch_len(feeds: Mapping[str, np.ndarray]) -> int:
    if not feeds:
        raise ConfigError("feeds must name at least one input array; got an empty dict")
    first = np.asarray(next(iter(feeds.values())))
    if first.ndim == 0:
        raise ConfigError("feeds must be batched arrays (batch on axis 0); got a 0-d array")
    return int(first.shape[0])


def _call_s(runner: Runner, feeds: Feeds) -> float:
    t0 = time.perf_counter()
    runner.run(feeds)
    return time.perf_counter() - t0


def _rate_window(runner: Runner, feeds: Feeds, items: int, min_time_s: float) -> list[float]:
    """Per-call rates (items/s) of calls repeated for at least ``min_time_s`` (and a few calls)."""
    rates: list[float] = []
    start = time.perf_counter()
    while True:
        rates.append(items / max(_call_s(runner, feeds), 1e-12))
        if len(rates) >= MIN_CALLS_PER_WINDOW and time.perf_counter() - start >= min_time_s:
            return rates


def _interleave(
    entries: Mapping[str, tuple[Runner, Feeds]],
    *,
    rounds: int,
    min_time_s: float,
    warmup: int,
    progress: ProgressFn | None = None,
) -> dict[str, list[list[float]]]:
    """Per-call rates for every entry, one list per round. Round r starts at entry r (rotating order), so no
    entry always runs first or last; every entry sees the same stretch of the machine's drift."""
    names = list(entries)
    items = {name: _batch_len(feeds) for name, (_, feeds) in entries.items()}
    for name in names:
        runner, feeds = entries[name]
        for _ in range(warmup):
            runner.run(feeds)
    out: dict[str, list[list[float]]] = {name: [] for name in names}
    for r in range(rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            runner, feeds = entries[name]
            out[name].append(_rate_window(runner, feeds, items[name], min_time_s))
        if progress is not None:
            progress(f"throughput round {r + 1}/{rounds}", 0.0)
    return out


def interleaved_throughput(
    runners: Mapping[str, tuple[Runner, Feeds]],
    *,
    rounds: int = THROUGHPUT_ROUNDS,
    min_time_s: float = 0.3,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Items per second of each runner per round, timing the runners in turn, round-robin.

    ``runners`` maps a name to ``(runner, feeds)``; the feeds are already preprocessed and their batch size
    (axis 0 of the first array) is the number of items per call. Each runner first gets ``warmup`` untimed
    calls; then in each of ``rounds`` rounds every runner is called repeatedly for at least ``min_time_s``
    and the round's figure is the median of its per-call rates. Interleaving makes all runners share the
    machine's drift (noisy neighbours, clock changes), so compare them round by round or by median;
    :func:`throughput_measurement` turns one runner's rounds into a measurement with its interval.
    """
    if not runners:
        raise ConfigError("interleaved_throughput needs at least one runner; got an empty mapping")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ConfigError(f"rounds must be an integer >= 1, got {rounds!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ConfigError(f"warmup must be an integer >= 0, got {warmup!r}")
    check_positive("min_time_s", min_time_s)
    per_call = _interleave(runners, rounds=rounds, min_time_s=min_time_s, warmup=warmup)
    return {name: [float(statistics.median(w)) for w in windows] for name, windows in per_call.items()}


# ---------------------------------------------------------------------------------------------------
# statistics


class OrderInterval(NamedTuple):
    """An interval for a quantile between two order statistics, and the probability it covers the quantile."""

    low: float
    high: float
    coverage: float
    ranks: tuple[int, int]


def order_statistic_interval(
    samples: Sequence[float], q: float, *, confidence: float = INTERVAL_CONFIDENCE
) -> OrderInterval | None:
    """Distribution-free interval for the ``q``-quantile of the distribution ``samples`` come from.

    The ranks (1-based) are the binomial ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles,
    clamped to ``[1, n]``; ``coverage`` is what those ranks actually give for independent draws from a
    continuous distribution, ``P(l <= K <= u - 1)`` with ``K ~ Binomial(n, q)``. It is at least
    ``confidence`` unless clamping cut the ranks short (few samples, or a quantile near 0 or 1): then it is
    less, and the caller must say so. None for fewer than two samples.
    """
    n = len(samples)
    if n < 2:
        return None
    if not 0.0 < q < 1.0 or not 0.0 < confidence < 1.0:
        raise ConfigError(f"q and confidence must be in (0, 1), got q={q!r}, confidence={confidence!r}")
    from scipy.stats import binom

    xs = sorted(float(x) for x in samples)
    alpha = 1.0 - confidence
    lo_rank = max(int(binom.ppf(alpha / 2, n, q)), 1)
    hi_rank = min(int(binom.ppf(1 - alpha / 2, n, q)) + 1, n)
    coverage = float(binom.cdf(hi_rank - 1, n, q) - binom.cdf(lo_rank - 1, n, q))
    return OrderInterval(xs[lo_rank - 1], xs[hi_rank - 1], coverage, (lo_rank, hi_rank))


def _interval_details(iv: OrderInterval | None, what: str) -> dict[str, Any]:
    if iv is None:
        return {"interval_method": f"none: fewer than two {what}"}
    return {
        "interval_method": f"order statistics {iv.ranks[0]} and {iv.ranks[1]} of the {what} "
        "(distribution-free; assumes independent " + what + ")",
        "interval_coverage": round(iv.coverage, 4),
    }


def throughput_measurement(name: str, rounds_items_per_s: Sequence[float], **details: Any) -> Measurement:
    """A throughput measurement (``efficiency.throughput_best`` or ``_b32``) from per-round figures: the value
    is their median, the interval the order-statistic interval of that median over the rounds (its coverage
    in ``details["interval_coverage"]``). ``rounds_items_per_s`` are kept in the details."""
    rounds = [float(r) for r in rounds_items_per_s]
    if not rounds:
        return measure(name, None, reason="no timing rounds", **details)
    value = float(statistics.median(rounds))
    iv = order_statistic_interval(rounds, 0.5)
    return measure(
        name,
        value,
        (iv.low, iv.high) if iv is not None else None,
        **details,
        rounds_items_per_s=rounds,
        **_interval_details(iv, "rounds"),
    )


def cost_measurement(throughput: Measurement, *, price_usd_per_hour: float) -> Measurement:
    """``efficiency.cost_usd_per_1m`` from a final ``efficiency.throughput_best`` measurement: the one place
    the cost is computed. value = price / 3600 / throughput * 1e6; ``details["throughput_items_per_s"]`` is
    exactly ``throughput.value``; the interval is the throughput interval through the same formula (a higher
    throughput is a lower cost, so the bounds swap). The device travels with it."""
    check_positive("price_usd_per_hour", price_usd_per_hour, allow_zero=True)
    price = float(price_usd_per_hour)
    details: dict[str, Any] = {
        "price_usd_per_hour": price,
        "assumption": COST_ASSUMPTION,
        "formula": "price_usd_per_hour / 3600 / throughput_items_per_s * 1e6",
        "best_batch": throughput.details.get("best_batch"),
        **{k: throughput.details[k] for k in ("device", "providers") if k in throughput.details},
    }
    tp = throughput.value
    if throughput.status != "ok" or tp is None or not tp > 0:
        reason = throughput.details.get("reason") or "not positive"
        return measure("efficiency.cost_usd_per_1m", None, reason=f"throughput unknown: {reason}", **details)

    def per_1m(items_per_s: float) -> float:
        return price / 3600.0 / items_per_s * 1e6

    interval = None
    if throughput.interval is not None and throughput.interval[0] > 0:
        interval = (per_1m(throughput.interval[1]), per_1m(throughput.interval[0]))
    return measure(
        "efficiency.cost_usd_per_1m",
        per_1m(tp),
        interval,
        **details,
        throughput_items_per_s=tp,
        throughput_interval=list(throughput.interval) if throughput.interval is not None else None,
        interval_method="the throughput interval through the formula (bounds swapped)",
        interval_coverage=throughput.details.get("interval_coverage"),
    )


# ---------------------------------------------------------------------------------------------------
# measure_efficiency


def _validate(
    batch_sizes: Sequence[int], latency_calls: int, min_time_s: float, threads: int | None, price: float
) -> tuple[int, ...]:
    problems = []
    sizes = tuple(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int | np.integer) or b < 1 for b in sizes):
        problems.append(f"batch_sizes must be a non-empty sequence of integers >= 1, got {batch_sizes!r}")
    if isinstance(latency_calls, bool) or not isinstance(latency_calls, int) or latency_calls < 1:
        problems.append(f"latency_calls must be an integer >= 1, got {latency_calls!r}")
    if not isinstance(min_time_s, int | float) or not math.isfinite(min_time_s) or min_time_s <= 0:
        problems.append(f"min_time_s must be a finite number > 0, got {min_time_s!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        problems.append(f"threads must be None or an integer >= 1, got {threads!r}")
    if not isinstance(price, int | float) or not math.isfinite(price) or price < 0:
        problems.append(f"price_usd_per_hour must be a finite number >= 0, got {price!r}")
    if problems:
        raise ConfigError("; ".join(problems))
    return tuple(sorted({int(b) for b in sizes}))


def _effective_threads(candidate: Candidate, threads: int | None) -> int:
    """Threads the loaded runner computes with: ONNX Runtime and OpenVINO use ``threads`` or all cores;
    PyTorch runners use the process-wide torch setting (which ``threads`` sets when given)."""
    if candidate.format in ("torch", "hf") and "torch" in sys.modules:
        return int(sys.modules["torch"].get_num_threads())
    return threads or default_threads()


def _silent(msg: str, advance: float = 0.0) -> None:
    """The default progress callback: says nothing."""


def runner_device(runner: Runner) -> dict[str, Any]:
    """``{"device": ...}`` (plus ``"providers"`` for ONNX Runtime) of a loaded Runner, for a measurement's
    details."""
    out: dict[str, Any] = {"device": str(getattr(runner, "device", "unknown"))}
    providers = getattr(runner, "providers", None)
    if providers:
        out["providers"] = [str(p) for p in providers]
    return out


RUNTIME_KEY = "runtime"  # efficiency.load_time_s details[RUNTIME_KEY]: describe_runner of the timed Runner


def runtime_of(measurements: Mapping[str, Measurement]) -> dict[str, Any] | None:
    """The runtime description the efficiency checks recorded (``efficiency.load_time_s`` details), or None
    when they recorded none."""
    m = measurements.get("efficiency.load_time_s")
    runtime = m.details.get(RUNTIME_KEY) if m is not None else None
    return dict(runtime) if isinstance(runtime, Mapping) else None


def measure_efficiency(
    candidate: Candidate,
    sample_inputs: Any,
    *,
    price_usd_per_hour: float,
    batch_sizes: Sequence[int] = (1, 8, 32, 64),
    latency_calls: int = 200,
    min_time_s: float = 0.5,
    threads: int | None = None,
    measure_rss: bool = True,
    device: str = "cpu",
    progress: ProgressFn | None = None,
) -> dict[str, Measurement]:
    """Every ``efficiency.*`` measurement of one candidate on this machine.

    ``sample_inputs``: raw inputs (a numeric array, batch on axis 0, or a list of texts), tiled to fill each
    batch size. Throughput is measured at ``batch_sizes`` and at 32 (``efficiency.throughput_b32``); the
    curve and ``throughput_best`` cover all of them. A batch size the model cannot run is left out of the
    curve with its reason. Set ``measure_rss=False`` to skip the fresh-process memory probe (UNKNOWN then).
    ``device``: "cpu" or "gpu" (see ``Candidate.load``); every measurement records the device the Runner
    reports. ``efficiency.cost_usd_per_1m`` is :func:`cost_measurement` of ``throughput_best``.
    """
    sizes = _validate(batch_sizes, latency_calls, min_time_s, threads, price_usd_per_hour)
    resolve_device(device)
    inputs = normalize_inputs(sample_inputs)
    is_text = isinstance(inputs, list)
    say: ProgressFn = progress if progress is not None else _silent
    measured_sizes = tuple(sorted({*sizes, B32}))
    prep_note = (
        "inputs tokenized before timing (tokenization not timed); each batch padded to its longest text"
        if is_text
        else "inputs converted to the model's input dtype before timing (conversion not timed)"
    )
    common: dict[str, Any] = {"preprocessing": prep_note}
    out: dict[str, Measurement] = {}

    # load time: construct the Runner three times; keep the last one for timing
    say(f"{candidate.name}: loading", 0.0)
    load_s: list[float] = []
    runner: Runner | None = None
    for _ in range(LOAD_REPEATS):
        runner = None  # let the previous runner go before the next load
        t0 = time.perf_counter()
        runner = candidate.load(threads=threads, device=device)
        load_s.append(time.perf_counter() - t0)
    if runner is None:  # pragma: no cover - LOAD_REPEATS >= 1
        raise ConfigError("LOAD_REPEATS must be >= 1")
    where = runner_device(runner)
    common["threads"] = _effective_threads(candidate, threads)
    common.update(where)
    load_details: dict[str, Any] = {**where, RUNTIME_KEY: describe_runner(runner)}
    out["efficiency.load_time_s"] = measure(
        "efficiency.load_time_s",
        statistics.median(load_s),
        runs_s=load_s,
        first_s=load_s[0],
        note="median of 3 Runner constructions in one process; library imports paid by the first, "
        "files likely in the page cache",
        **load_details,
    )

    # preprocess once, before any timing; warm-up call per batch size (also finds sizes the model rejects)
    pre = candidate.preprocessor()
    batch_feeds: dict[int, Feeds] = {}
    failed: dict[str, str] = {}
    for b in measured_sizes:
        feeds = pre(tile(inputs, b))
        try:
            runner.run(feeds)
        except Exception as exc:  # a model with a fixed batch size, or out of memory at large batches
            failed[str(b)] = error_line(exc)
            log.warning("%s cannot run at batch %d: %s", candidate.name, b, failed[str(b)])
            continue
        batch_feeds[b] = feeds

    # latency: batch-1 calls cycling over distinct examples, after warm-up calls
    say(f"{candidate.name}: latency", 0.0)
    warmup_calls = min(10, max(2, latency_calls // 10))
    single = [
        pre(tile(inputs, 1, i)) for i in range(min(len(inputs), latency_calls, MAX_DISTINCT_LATENCY_INPUTS))
    ]
    meter = OtherLoad()
    try:
        for i in range(warmup_calls):
            runner.run(single[i % len(single)])
        start = meter.snapshot()
        times_ms = [_call_s(runner, single[i % len(single)]) * 1e3 for i in range(latency_calls)]
        lat_load = meter.details_since(start)
    except Exception as exc:
        reason = f"batch-1 calls failed: {error_line(exc)}"
        for key in ("efficiency.latency_p50_ms", "efficiency.latency_p99_ms"):
            out[key] = measure(key, None, reason=reason, **where)
    else:
        lat: dict[str, Any] = {
            **common,
            "calls": latency_calls,
            "warmup_calls": warmup_calls,
            "distinct_inputs": len(single),
            **lat_load,
        }
        for q, key in ((50, "efficiency.latency_p50_ms"), (99, "efficiency.latency_p99_ms")):
            value = float(np.percentile(times_ms, q))
            iv = order_statistic_interval(times_ms, q / 100)
            extra: dict[str, Any] = (
                {
                    "samples_ms": [round(t, 4) for t in times_ms[:MAX_SAMPLES_KEPT]],
                    "samples_note": f"the first {MAX_SAMPLES_KEPT} calls at most, in call order",
                }
                if q == 50
                else {"samples_in": "efficiency.latency_p50_ms"}
            )
            interval = (min(iv.low, value), max(iv.high, value)) if iv is not None else None
            out[key] = measure(key, value, interval, **lat, **extra, **_interval_details(iv, "calls"))

    # throughput: interleaved rounds over the batch sizes; a round's figure is the median of its per-call
    # rates, a batch size's figure the median of its rounds
    say(f"{candidate.name}: throughput", 0.0)
    start = meter.snapshot()
    per_call = (
        _interleave(
            {str(b): (runner, f) for b, f in batch_feeds.items()},
            rounds=THROUGHPUT_ROUNDS,
            min_time_s=min_time_s / THROUGHPUT_ROUNDS,
            warmup=1,
            progress=lambda msg, adv: say(f"{candidate.name}: {msg}", adv),
        )
        if batch_feeds
        else {}
    )
    repeats = {k: [float(statistics.median(w)) for w in windows] for k, windows in per_call.items()}
    curve = {k: float(statistics.median(r)) for k, r in repeats.items()}
    calls = {k: sum(len(w) for w in windows) for k, windows in per_call.items()}
    tp: dict[str, Any] = {
        **common,
        **meter.details_since(start),
        "method": f"median of {THROUGHPUT_ROUNDS} interleaved rounds (a round: the median per-call rate over "
        f">= {min_time_s / THROUGHPUT_ROUNDS:.3g} s and >= {MIN_CALLS_PER_WINDOW} calls), "
        f">= {min_time_s:g} s per batch size in all",
    }
    key32 = str(B32)
    if key32 in curve:
        out["efficiency.throughput_b32"] = throughput_measurement(
            "efficiency.throughput_b32", repeats[key32], **tp, calls=calls[key32]
        )
    else:
        out["efficiency.throughput_b32"] = measure(
            "efficiency.throughput_b32",
            None,
            reason=f"batch 32 failed: {failed.get(key32, 'not run')}",
            **where,
        )
    best_key = max(curve, key=lambda k: curve[k]) if curve else None
    if best_key is not None:
        out["efficiency.throughput_best"] = throughput_measurement(
            "efficiency.throughput_best",
            repeats[best_key],
            **tp,
            curve=curve,
            best_batch=int(best_key),
            repeats=repeats,
            calls=calls,
            failed_batch_sizes=failed,
            batch_selection="the batch size with the highest median, chosen on these same rounds",
        )
    else:
        out["efficiency.throughput_best"] = measure(
            "efficiency.throughput_best",
            None,
            reason="no batch size ran",
            failed_batch_sizes=failed,
            **where,
        )

    # size on disk
    try:
        files = candidate.files()
        out["efficiency.size_bytes"] = measure(
            "efficiency.size_bytes", candidate.size_bytes(), files=[p.name for p in files], **where
        )
    except OSError as exc:
        out["efficiency.size_bytes"] = measure("efficiency.size_bytes", None, reason=error_line(exc), **where)

    # peak memory in a fresh process (which loads on the CPU)
    if measure_rss and where["device"] == "cpu":
        say(f"{candidate.name}: peak memory (fresh process)", 0.0)
        rss = measure_peak_rss(candidate, inputs, threads=threads)
        out["efficiency.peak_rss_bytes"] = measure(
            rss.name, rss.value, rss.interval, **{**rss.details, **where}
        )
    else:
        why = (
            "not measured (measure_rss=False)"
            if not measure_rss
            else f"not measured: the memory probe loads on the CPU and this Runner runs on {where['device']}"
        )
        out["efficiency.peak_rss_bytes"] = measure("efficiency.peak_rss_bytes", None, reason=why, **where)

    # cost per million predictions, from the throughput measurement above
    out["efficiency.cost_usd_per_1m"] = cost_measurement(
        out["efficiency.throughput_best"], price_usd_per_hour=price_usd_per_hour
    )
    say(f"{candidate.name}: efficiency measured", 1.0)
    return out


def compare_speed(results: Mapping[str, Mapping[str, Measurement]], baseline: str) -> dict[str, float]:
    """Each candidate's ``efficiency.throughput_best`` divided by the baseline's (> 1 = faster).

    A candidate, or the baseline, without a known best throughput gets NaN.
    """
    if baseline not in results:
        raise ConfigError(
            f"baseline {baseline!r} is not among the results {sorted(results)}; pass the name of one of them"
        )

    def best(name: str) -> float | None:
        m = results[name].get("efficiency.throughput_best")
        return m.value if m is not None and m.status == "ok" and m.value else None

    ref = best(baseline)
    out: dict[str, float] = {}
    for name in results:
        t = best(name)
        out[name] = t / ref if t is not None and ref is not None else math.nan
    return out
