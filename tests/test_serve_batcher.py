"""DynamicBatcher (grouping, waiting, isolation of bad items, queue limit, timeouts, drain) and
choose_batching (batch only where the measured curve pays within the latency budget)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest

from modelyard.errors import ConfigError
from modelyard.evaluate.evidence import measure
from modelyard.evaluate.schema import Measurement as SchemaMeasurement
from modelyard.serve.batcher import (
    THREAD_NAME_PREFIX,
    BatchingConfig,
    DynamicBatcher,
    QueueFull,
    choose_batching,
)

DEADLINE_S = 10.0


class Model:
    """A fake run_batch: records each batch and its thread; items are (name, rows) pairs.

    An item named "block" holds its batch until ``release`` is set; an item named "bad" makes the call
    raise."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.threads: set[int] = set()
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, items: list[tuple[str, int]]) -> list[str]:
        self.threads.add(threading.get_ident())
        names = [name for name, _ in items]
        self.batches.append(names)
        if "block" in names:
            self.started.set()
            if not self.release.wait(DEADLINE_S):
                raise RuntimeError("test never released the blocked batch")
        if "bad" in names:
            raise ValueError("bad item")
        return [f"out-{name}" for name in names]


def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(asyncio.wait_for(coro_fn(), DEADLINE_S))


async def until(predicate: Callable[[], bool], what: str) -> None:
    """Poll ``predicate`` on the event loop until it holds, failing after the deadline."""
    loop = asyncio.get_running_loop()
    end = loop.time() + DEADLINE_S
    while not predicate():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting until {what}")
        await asyncio.sleep(0.001)


async def submit(b: DynamicBatcher, name: str, rows: int = 1, **kw: Any) -> Any:
    return await b.submit((name, rows), rows=rows, **kw)


async def blocked(b: DynamicBatcher, model: Model) -> asyncio.Task[Any]:
    """Occupy the worker with a 'block' item, so that what is submitted next waits in the queue."""
    task = asyncio.create_task(submit(b, "block"))
    await until(model.started.is_set, "the blocking batch runs")
    return task


async def taken(b: DynamicBatcher, name: str) -> asyncio.Task[Any]:
    """Submit ``name`` and return once the consumer has taken it off the queue."""
    submitted = asyncio.Event()

    async def go() -> Any:
        submitted.set()  # submit() queues the item before its first await
        return await submit(b, name)

    task = asyncio.create_task(go())
    await until(lambda: submitted.is_set() and b.queued == 0, f"the consumer took {name!r}")
    return task


def alive(thread_ids: set[int]) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.ident in thread_ids]


@pytest.fixture
def model() -> Iterator[Model]:
    m = Model()
    yield m
    m.release.set()  # never leave a worker thread blocked after a failed test


# ---------------------------------------------------------------------------------------------------
# batch formation


def test_batches_form_up_to_max_rows_in_order_and_big_items_run_alone(model: Model) -> None:

    async def main() -> list[Any]:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=4))
        await b.start()
        block = await blocked(b, model)
        sizes = {"a": 2, "b": 2, "c": 2, "d": 1, "big": 5, "e": 1}
        tasks = [asyncio.create_task(submit(b, n, rows)) for n, rows in sizes.items()]
        await until(lambda: b.queued == len(sizes), "all items are queued")
        model.release.set()
        out = await asyncio.gather(block, *tasks)
        await b.drain()
        return out

    out = run(main)
    assert out == ["out-block", "out-a", "out-b", "out-c", "out-d", "out-big", "out-e"]
    # 2+2 fills 4; c+d = 3 and big does not fit; big (5 > 4 rows) runs alone; then e
    assert model.batches == [["block"], ["a", "b"], ["c", "d"], ["big"], ["e"]]


def test_zero_wait_runs_a_lone_item_at_once(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=8, max_wait_s=0.0))
        await b.start()
        assert await submit(b, "a") == "out-a"
        assert await submit(b, "b") == "out-b"
        await b.drain()

    run(main)
    assert model.batches == [["a"], ["b"]]


def test_wait_window_holds_a_partial_batch_for_more_items(model: Model) -> None:

    async def main() -> None:
        # a long window: the batch only leaves early because it fills
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=2, max_wait_s=60.0))
        await b.start()
        first = await taken(b, "a")
        for _ in range(20):  # give the consumer many chances to run: it must keep waiting
            await asyncio.sleep(0)
        assert model.batches == []
        second = asyncio.create_task(submit(b, "b"))
        assert await asyncio.gather(first, second) == ["out-a", "out-b"]
        await b.drain()

    run(main)
    assert model.batches == [["a", "b"]]


def test_wait_window_expiry_runs_the_partial_batch(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=8, max_wait_s=0.01))
        await b.start()
        assert await submit(b, "a") == "out-a"
        await b.drain()

    run(main)
    assert model.batches == [["a"]]


def test_drain_during_a_wait_window_runs_the_batch_at_once(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=8, max_wait_s=60.0))
        await b.start()
        task = await taken(b, "a")
        await b.drain()
        assert await task == "out-a"

    run(main)
    assert model.batches == [["a"]]


# ---------------------------------------------------------------------------------------------------
# failures


def test_one_bad_item_fails_only_its_own_request(model: Model) -> None:

    async def main() -> list[Any]:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=8))
        await b.start()
        block = await blocked(b, model)
        tasks = [asyncio.create_task(submit(b, n)) for n in ("a", "bad", "c")]
        await until(lambda: b.queued == 3, "the items are queued")
        model.release.set()
        out = await asyncio.gather(block, *tasks, return_exceptions=True)
        await b.drain()
        return out

    out = run(main)
    assert out[0] == "out-block" and out[1] == "out-a" and out[3] == "out-c"
    assert isinstance(out[2], ValueError) and str(out[2]) == "bad item"
    # the mixed batch failed once, then each item ran alone
    assert model.batches == [["block"], ["a", "bad", "c"], ["a"], ["bad"], ["c"]]


def test_wrong_number_of_results_is_an_error_not_a_hang() -> None:
    async def main() -> None:
        b = DynamicBatcher(lambda items: [], config=BatchingConfig())
        await b.start()
        with pytest.raises(Exception, match="returned 0 results for 1 items"):
            await b.submit("x")
        await b.drain()

    run(main)


def test_a_failing_metrics_callback_does_not_break_serving() -> None:
    def broken(*args: Any) -> None:
        raise RuntimeError("metrics down")

    async def main() -> None:
        b = DynamicBatcher(Model(), config=BatchingConfig(), on_batch=broken, on_queue=broken)
        await b.start()
        assert await submit(b, "a") == "out-a"
        await b.drain()

    run(main)


# ---------------------------------------------------------------------------------------------------
# queue limit, timeouts, drain


def test_queue_full_refuses_at_once_with_retry_after(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=1, max_queue=2))
        await b.start()
        block = await blocked(b, model)
        queued = [asyncio.create_task(submit(b, n)) for n in ("a", "c")]
        await until(lambda: b.queued == 2, "the queue is full")
        with pytest.raises(QueueFull, match="queue is full") as info:
            await submit(b, "refused")
        assert info.value.retry_after_s >= 1.0
        assert info.value.retry_after_s == int(info.value.retry_after_s)
        model.release.set()
        assert await asyncio.gather(block, *queued) == ["out-block", "out-a", "out-c"]
        await b.drain()

    run(main)
    assert ["refused"] not in model.batches


def test_retry_after_grows_with_the_measured_batch_time() -> None:
    async def main() -> None:
        b = DynamicBatcher(Model(), config=BatchingConfig(max_batch_size=2))
        await b.start()
        assert b.retry_after_s() == 1.0  # nothing measured yet: the floor
        b._batch_s_avg = 1.5  # as if batches took 1.5 s
        for _ in range(5):
            b._pending.append(_fake_entry(b))
        # 5 queued rows = 3 batches of 2, plus the running one: 4 x 1.5 s = 6 s
        assert b.retry_after_s() == 6.0
        b._pending.clear()
        await b.drain()

    run(main)


def _fake_entry(b: DynamicBatcher) -> Any:
    from modelyard.serve.batcher import _Pending

    fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    fut.cancel()
    return _Pending(("x", 1), 1, fut, 0.0)


def test_timeout_removes_the_waiting_item(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=8))
        await b.start()
        block = await blocked(b, model)
        with pytest.raises(TimeoutError):
            await submit(b, "late", timeout_s=0.01)
        assert b.queued == 0
        model.release.set()
        assert await block == "out-block"
        assert await submit(b, "after") == "out-after"
        await b.drain()

    run(main)
    assert all("late" not in batch for batch in model.batches)


def test_cancelled_submitter_leaves_the_queue(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=8))
        await b.start()
        block = await blocked(b, model)
        gone = asyncio.create_task(submit(b, "gone"))
        await until(lambda: b.queued == 1, "the item is queued")
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert b.queued == 0
        model.release.set()
        await block
        await b.drain()

    run(main)
    assert model.batches == [["block"]]


def test_drain_finishes_queued_work_refuses_new_and_stops_the_thread(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=1))
        await b.start()
        block = await blocked(b, model)
        assert [t.name for t in alive(model.threads)] == [f"{THREAD_NAME_PREFIX}_0"]
        queued = [asyncio.create_task(submit(b, n)) for n in ("a", "c")]
        await until(lambda: b.queued == 2, "the items are queued")
        drain = asyncio.create_task(b.drain())
        await until(lambda: b.draining, "the drain began")
        with pytest.raises(QueueFull, match="shutting down"):
            await submit(b, "new")
        model.release.set()
        await drain
        assert await asyncio.gather(block, *queued) == ["out-block", "out-a", "out-c"]
        assert not b.running
        assert alive(model.threads) == []
        with pytest.raises(ConfigError, match="cannot start again"):
            await b.start()

    run(main)
    assert model.batches == [["block"], ["a"], ["c"]]


def test_drain_with_a_timeout_refuses_what_is_still_queued(model: Model) -> None:

    async def main() -> None:
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=1))
        await b.start()
        block = await blocked(b, model)
        queued = asyncio.create_task(submit(b, "a"))
        await until(lambda: b.queued == 1, "the item is queued")
        await b.drain(timeout_s=0.01)
        with pytest.raises(QueueFull, match="shut down before this request ran"):
            await queued
        with pytest.raises(QueueFull, match="shut down while this request ran"):
            await block
        model.release.set()
        await until(lambda: alive(model.threads) == [], "the abandoned thread ends")

    run(main)
    assert model.batches == [["block"]]


def test_submit_before_start_says_how_to_fix_it() -> None:
    async def main() -> None:
        b = DynamicBatcher(Model(), config=BatchingConfig())
        with pytest.raises(ConfigError, match="start"):
            await b.submit("x")

    run(main)


# ---------------------------------------------------------------------------------------------------
# threads and callbacks


def test_run_batch_runs_off_the_event_loop_thread_on_one_worker(model: Model) -> None:
    loop_threads: list[int] = []

    async def main() -> None:
        loop_threads.append(threading.get_ident())
        b = DynamicBatcher(model, config=BatchingConfig(max_batch_size=2))
        await b.start()
        await asyncio.gather(*(submit(b, f"x{i}") for i in range(6)))
        await b.drain()

    run(main)
    assert len(model.threads) == 1
    assert loop_threads[0] not in model.threads


def test_callbacks_report_rows_and_times(model: Model) -> None:
    batches: list[tuple[int, float]] = []
    queue_s: list[float] = []

    async def main() -> None:
        b = DynamicBatcher(
            model,
            config=BatchingConfig(max_batch_size=8),
            on_batch=lambda rows, s: batches.append((rows, s)),
            on_queue=queue_s.append,
        )
        await b.start()
        block = await blocked(b, model)
        tasks = [asyncio.create_task(submit(b, n, rows)) for n, rows in (("a", 3), ("c", 2))]
        await until(lambda: b.queued == 2, "the items are queued")
        model.release.set()
        await asyncio.gather(block, *tasks)
        await b.drain()

    run(main)
    assert [rows for rows, _ in batches] == [1, 5]
    assert all(s >= 0 for _, s in batches)
    assert len(queue_s) == 3 and all(s >= 0 for s in queue_s)


def test_config_is_validated() -> None:
    with pytest.raises(ConfigError, match="max_batch_size must be an integer >= 1, got 0"):
        BatchingConfig(max_batch_size=0)
    with pytest.raises(ConfigError, match="max_wait_s") as info:
        BatchingConfig(max_wait_s=-1.0, max_queue=0)
    assert "max_queue" in str(info.value)


# ---------------------------------------------------------------------------------------------------
# choose_batching


def evidence(curve: dict[str, float] | None) -> dict[str, SchemaMeasurement]:
    """Measurements shaped as measure_efficiency stores them (typed, as the registry returns them)."""
    details: dict[str, Any] = {"method": "median of per-call rates"}
    if curve is not None:
        details |= {"curve": curve, "best_batch": int(max(curve, key=lambda k: curve[k]))}
    best = measure("efficiency.throughput_best", max(curve.values()) if curve else None, **details)
    b32 = measure("efficiency.throughput_b32", (curve or {}).get("32"))
    return {m.name: SchemaMeasurement.model_validate(m.to_dict()) for m in (best, b32)}


def test_choose_batching_batches_where_the_curve_pays_within_budget() -> None:
    # batch 8: 800/s, 10 ms per batch; batch 32: 1000/s, 32 ms; batch 64: 1050/s, 61 ms > 50 ms
    cfg = choose_batching(
        evidence({"1": 200.0, "8": 800.0, "32": 1000.0, "64": 1050.0}), latency_budget_ms=100.0
    )
    assert cfg.max_batch_size == 32
    assert cfg.max_wait_s == 0.0
    assert "32" in cfg.why and "5.00x" in cfg.why


def test_choose_batching_default_budget_is_100_ms() -> None:
    curve = {"1": 200.0, "8": 800.0, "32": 1000.0, "64": 1050.0}
    assert choose_batching(evidence(curve), latency_budget_ms=None) == choose_batching(
        evidence(curve), latency_budget_ms=100.0
    )
    # a tighter budget (half = 15 ms) leaves only batch 8
    assert choose_batching(evidence(curve), latency_budget_ms=30.0).max_batch_size == 8


def test_choose_batching_stays_at_one_when_batching_does_not_pay() -> None:
    # the small-encoder-on-2-cores case: batch 32 only 1.05x batch 1
    cfg = choose_batching(evidence({"1": 60.0, "8": 62.0, "32": 63.0}), latency_budget_ms=100.0)
    assert cfg.max_batch_size == 1
    assert "10%" in cfg.why


def test_choose_batching_stays_at_one_when_batches_are_too_slow() -> None:
    cfg = choose_batching(evidence({"1": 20.0, "8": 60.0, "32": 80.0}), latency_budget_ms=100.0)
    assert cfg.max_batch_size == 1
    assert "longer than half" in cfg.why and "[8, 32]" in cfg.why


@pytest.mark.parametrize(
    ("measurements", "reason"),
    [
        (None, "no efficiency measurements"),
        ({}, "no efficiency measurements"),
        (
            {
                "quality.accuracy": SchemaMeasurement.model_validate(
                    measure("quality.accuracy", 0.9).to_dict()
                )
            },
            "no efficiency.throughput_best",
        ),
        (evidence(None), "no throughput-per-batch-size curve"),
        (evidence({"8": 500.0, "32": 900.0}), "no batch-1 point"),
    ],
)
def test_choose_batching_without_a_curve_falls_back_to_one(measurements: Any, reason: str) -> None:
    cfg = choose_batching(measurements, latency_budget_ms=None, max_queue=17)
    assert cfg.max_batch_size == 1 and cfg.max_queue == 17
    assert reason in cfg.why


def test_choose_batching_rejects_a_bad_budget() -> None:
    with pytest.raises(ConfigError, match="latency_budget_ms must be a finite number > 0"):
        choose_batching({}, latency_budget_ms=0)
