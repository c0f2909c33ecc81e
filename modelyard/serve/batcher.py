"""Dynamic batching: requests wait in a bounded queue and run in groups on one inference thread.

- One consumer task takes the oldest waiting item, then gathers more until the batch holds
  ``max_batch_size`` rows or ``max_wait_s`` has passed since that oldest item arrived. With ``max_wait_s = 0``
  (Triton's default) it takes only what is already queued: batches then form by themselves under load, while
  the previous batch runs, and a lone request never waits.
- Items are taken in arrival order; an item with more rows than ``max_batch_size`` runs alone.
- ``run_batch`` runs in a dedicated single-thread executor, never on the event loop.
- When ``run_batch`` raises for a batch of several items, each item is run again alone, so one bad item
  fails only its own request.
- A full queue refuses at once (:class:`QueueFull`, with a ``retry_after_s`` for a Retry-After header).
- :meth:`DynamicBatcher.drain` refuses new items, finishes the queued ones, and stops the thread.

:func:`choose_batching` picks the batching settings from the candidate's measured throughput curve: batch only
where batching measurably pays within the latency budget, otherwise one request at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelyard.errors import ConfigError, ModelyardError

if TYPE_CHECKING:
    from modelyard.evaluate.schema import Measurement as SchemaMeasurement

log = logging.getLogger(__name__)

THREAD_NAME_PREFIX = "modelyard-batch"
DEFAULT_LATENCY_BUDGET_MS = 100.0
MIN_THROUGHPUT_GAIN = 0.10
BATCH_TIME_EMA_WEIGHT = 0.2

RunBatch = Callable[[list[Any]], list[Any]]


class QueueFull(ModelyardError):
    """The batcher's queue is full, or it is draining; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = float(retry_after_s)


@dataclass
class BatchingConfig:
    """How requests are grouped: at most ``max_batch_size`` rows per call, waiting at most ``max_wait_s`` for
    a batch to fill, with at most ``max_queue`` requests waiting. ``why`` says how the values were chosen."""

    max_batch_size: int = 1
    max_wait_s: float = 0.0
    max_queue: int = 256
    why: str = ""

    def __post_init__(self) -> None:
        problems = []
        mbs = self.max_batch_size
        if isinstance(mbs, bool) or not isinstance(mbs, int) or mbs < 1:
            problems.append(f"max_batch_size must be an integer >= 1, got {mbs!r}")
        if (
            isinstance(self.max_wait_s, bool)
            or not isinstance(self.max_wait_s, int | float)
            or not math.isfinite(self.max_wait_s)
            or self.max_wait_s < 0
        ):
            problems.append(f"max_wait_s must be a finite number of seconds >= 0, got {self.max_wait_s!r}")
        if isinstance(self.max_queue, bool) or not isinstance(self.max_queue, int) or self.max_queue < 1:
            problems.append(f"max_queue must be an integer >= 1, got {self.max_queue!r}")
        if problems:
            raise ConfigError("; ".join(problems))


# ---------------------------------------------------------------------------------------------------
# choose_batching


def _curve_from(measurements: Mapping[str, SchemaMeasurement]) -> tuple[dict[int, float] | None, str]:
    """The measured items-per-second per batch size, or None with the reason it is missing."""
    m = measurements.get("efficiency.throughput_best")
    if m is None:
        return None, "the candidate has no efficiency.throughput_best measurement"
    raw = m.details.get("curve")
    if not isinstance(raw, Mapping) or not raw:
        return None, "efficiency.throughput_best has no throughput-per-batch-size curve"
    curve: dict[int, float] = {}
    for key, value in raw.items():
        try:
            b, rate = int(key), float(value)
        except (TypeError, ValueError):
            continue
        if b >= 1 and math.isfinite(rate) and rate > 0:
            curve[b] = rate
    if 1 not in curve:
        return None, "the measured throughput curve has no batch-1 point to compare against"
    return curve, ""


def choose_batching(
    measurements: Mapping[str, SchemaMeasurement] | None,
    *,
    latency_budget_ms: float | None,
    max_queue: int = 256,
) -> BatchingConfig:
    """Batching settings from the candidate's measured throughput per batch size.

    ``measurements``: the candidate's Evidence measurements (dotted name -> typed Measurement); the curve is
    ``efficiency.throughput_best``'s ``details["curve"]`` (batch size -> items/s). A batch size qualifies when
    it gains at least 10% throughput over batch 1 and its own latency (``b / throughput_b``) stays within half
    the latency budget (100 ms when None); the qualifying size with the highest throughput wins. Otherwise, or
    without a curve, requests run one at a time. ``max_wait_s`` stays 0: batches form from what queues up
    while the previous batch runs, so a lone request never waits.
    """
    if latency_budget_ms is None:
        budget_ms = DEFAULT_LATENCY_BUDGET_MS
    elif (
        isinstance(latency_budget_ms, bool)
        or not isinstance(latency_budget_ms, int | float)
        or not math.isfinite(latency_budget_ms)
        or latency_budget_ms <= 0
    ):
        raise ConfigError(
            f"latency_budget_ms must be a finite number > 0 (or None for {DEFAULT_LATENCY_BUDGET_MS:g} ms), "
            f"got {latency_budget_ms!r}"
        )
    else:
        budget_ms = float(latency_budget_ms)
    if not measurements:
        return BatchingConfig(
            max_queue=max_queue, why="batching off: no efficiency measurements to judge whether it pays"
        )
    curve, missing = _curve_from(measurements)
    if curve is None:
        return BatchingConfig(max_queue=max_queue, why=f"batching off: {missing}")
    base = curve[1]
    half_ms = budget_ms / 2.0
    best_b, best_rate = 1, base
    too_slow: list[int] = []
    for b in sorted(curve):
        rate = curve[b]
        if b == 1 or rate < base * (1.0 + MIN_THROUGHPUT_GAIN):
            continue
        if b / rate * 1e3 > half_ms:
            too_slow.append(b)
            continue
        if rate > best_rate:
            best_b, best_rate = b, rate
    if best_b == 1:
        reason = (
            f"batches {too_slow} gain throughput but take longer than half the {budget_ms:g} ms latency budget"
            if too_slow
            else f"no measured batch size gains {MIN_THROUGHPUT_GAIN:.0%} throughput over batch 1 "
            f"({base:.1f} items/s)"
        )
        return BatchingConfig(max_queue=max_queue, why=f"batching off: {reason}")
    return BatchingConfig(
        max_batch_size=best_b,
        max_wait_s=0.0,
        max_queue=max_queue,
        why=f"batches up to {best_b}: measured {best_rate:.1f} items/s against {base:.1f} at batch 1 "
        f"({best_rate / base:.2f}x), {best_b / best_rate * 1e3:.1f} ms per batch, within half the "
        f"{budget_ms:g} ms latency budget",
    )


# ---------------------------------------------------------------------------------------------------
# DynamicBatcher


@dataclass(eq=False, repr=False)
class _Pending:
    item: Any
    rows: int
    future: asyncio.Future[Any]
    enqueued_at: float


def _call_safely(callback: Callable[..., None] | None, *args: Any) -> None:
    if callback is None:
        return
    try:
        callback(*args)
    except Exception:  # a metrics callback must never break serving
        log.exception("batcher callback %r failed", callback)


class DynamicBatcher:
    """Groups submitted items into batches for ``run_batch``, which runs on one dedicated worker thread.

    ``run_batch(items)`` returns one result per item, in order. ``on_batch(rows, seconds)`` is called after
    each call of ``run_batch`` and ``on_queue(seconds)`` for each item when its batch starts (seconds spent
    queued); both are called on the event loop, and an exception in them is logged, never raised.
    """

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        config: BatchingConfig,
        on_batch: Callable[[int, float], None] | None = None,
        on_queue: Callable[[float], None] | None = None,
    ) -> None:
        self._run_batch = run_batch
        self.config = config
        self._on_batch = on_batch
        self._on_queue = on_queue
        self._pending: deque[_Pending] = deque()
        self._wakeup = asyncio.Event()
        self._executor: ThreadPoolExecutor | None = None
        self._consumer: asyncio.Task[None] | None = None
        self._draining = False
        self._batch_s_avg: float | None = None

    # -- state ------------------------------------------------------------------------------------

    @property
    def queued(self) -> int:
        """Items waiting for a batch (not counting those running now)."""
        return len(self._pending)

    @property
    def queued_rows(self) -> int:
        """Rows waiting for a batch."""
        return sum(p.rows for p in self._pending)

    @property
    def draining(self) -> bool:
        """True once :meth:`drain` was called: new items are refused."""
        return self._draining

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`drain`."""
        return self._consumer is not None and not self._consumer.done()

    def retry_after_s(self) -> float:
        """Whole seconds (at least 1) a refused client should wait: the average batch time times the batches
        queued ahead of it, plus the one running."""
        batches = math.ceil(self.queued_rows / self.config.max_batch_size) + 1
        estimate = (self._batch_s_avg or 0.0) * batches
        return float(max(1, math.ceil(estimate)))

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the worker thread and the consumer task; calling it again while running does nothing."""
        if self._draining:
            raise ConfigError("this batcher was drained and cannot start again; create a new DynamicBatcher")
        if self.running:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_NAME_PREFIX)
        self._consumer = asyncio.get_running_loop().create_task(self._consume(), name=THREAD_NAME_PREFIX)

    async def submit(self, item: Any, *, rows: int = 1, timeout_s: float | None = None) -> Any:
        """Queue ``item`` (``rows`` rows) and return its result from ``run_batch``.

        Raises :class:`QueueFull` at once when ``max_queue`` items wait or the batcher is draining,
        ``TimeoutError`` (= ``asyncio.TimeoutError``) after ``timeout_s`` (the item leaves the queue if it has
        not started), and the item's own exception when ``run_batch`` fails for it.
        """
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise ConfigError(f"rows must be an integer >= 1, got {rows!r}")
        if timeout_s is not None and not (timeout_s > 0):
            raise ConfigError(f"timeout_s must be None or a number of seconds > 0, got {timeout_s!r}")
        if self._draining:
            raise QueueFull(
                "the server is shutting down and accepts no new requests; retry on another instance"
            )
        if not self.running:
            raise ConfigError("the batcher is not running; await DynamicBatcher.start() before submit()")
        if len(self._pending) >= self.config.max_queue:
            wait_s = self.retry_after_s()
            raise QueueFull(
                f"the request queue is full ({self.config.max_queue} waiting); retry after {wait_s:g} s",
                retry_after_s=wait_s,
            )
        loop = asyncio.get_running_loop()
        entry = _Pending(item, rows, loop.create_future(), time.monotonic())
        self._pending.append(entry)
        self._wakeup.set()
        try:
            if timeout_s is None:
                return await entry.future
            return await asyncio.wait_for(entry.future, timeout_s)
        finally:
            # timed out or cancelled: leave the queue if not started (a started batch just drops the result)
            # (an answered entry was taken off the queue already; only a cancelled one may still be queued:
            # the check matters, a deque scan per request is not free)
            if not entry.future.done():
                entry.future.cancel()
            if entry.future.cancelled():
                with contextlib.suppress(ValueError):
                    self._pending.remove(entry)

    async def drain(self, *, timeout_s: float | None = None) -> None:
        """Refuse new items, finish every queued one, then stop the consumer and the worker thread.

        With ``timeout_s``, items still queued when it runs out fail with :class:`QueueFull` and a batch still
        running is abandoned (its thread ends when ``run_batch`` returns). Cancelling ``drain`` does the same.
        """
        if timeout_s is not None and not (timeout_s > 0):
            raise ConfigError(f"timeout_s must be None or a number of seconds > 0, got {timeout_s!r}")
        self._draining = True
        self._wakeup.set()
        consumer = self._consumer
        if consumer is not None and not consumer.done():
            try:
                await asyncio.wait_for(asyncio.shield(consumer), timeout_s)
            except TimeoutError:
                log.warning("drain gave up after %g s; %d queued items refused", timeout_s, self.queued)
                self._stop_now()
                return
            except asyncio.CancelledError:
                self._stop_now()
                raise
        if self._executor is not None:
            self._executor.shutdown(wait=True)  # idle by now: the consumer awaited its last batch
            self._executor = None

    def _stop_now(self) -> None:
        """Stop without finishing: queued items fail, the consumer is cancelled, the thread is let go."""
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                entry.future.set_exception(
                    QueueFull("the server shut down before this request ran; retry on another instance")
                )
        if self._consumer is not None:
            self._consumer.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None

    # -- consumer ---------------------------------------------------------------------------------

    def _take_next(self) -> _Pending | None:
        """Pop the oldest item still wanted (skipping ones whose submitter gave up)."""
        while self._pending:
            entry = self._pending.popleft()
            if not entry.future.done():
                return entry
        return None

    def _fill(self, batch: list[_Pending], rows: int) -> tuple[int, bool]:
        """Add queued items in order while they fit; returns (rows, whether the batch is closed)."""
        limit = self.config.max_batch_size
        while self._pending and rows < limit:
            head = self._pending[0]
            if head.future.done():
                self._pending.popleft()
                continue
            if rows + head.rows > limit:
                return rows, True
            batch.append(self._pending.popleft())
            rows += head.rows
        return rows, rows >= limit

    async def _collect(self) -> list[_Pending] | None:
        """The next batch, or None when draining and nothing is left."""
        while True:
            first = self._take_next()
            if first is not None:
                break
            if self._draining:
                return None
            self._wakeup.clear()
            await self._wakeup.wait()
        batch = [first]
        if first.rows >= self.config.max_batch_size:
            return batch
        rows, closed = self._fill(batch, first.rows)
        deadline = first.enqueued_at + self.config.max_wait_s
        while not closed and not self._draining:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            rows, closed = self._fill(batch, rows)
        return batch

    async def _consume(self) -> None:
        while True:
            batch = await self._collect()
            if batch is None:
                return
            live = [p for p in batch if not p.future.done()]
            if not live:
                continue
            try:
                await self._run(live)
            except asyncio.CancelledError:
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(
                            QueueFull("the server shut down while this request ran; retry")
                        )
                raise
            except Exception as exc:  # never leave a submitter hanging
                log.exception("batch of %d items failed outside run_batch", len(live))
                for p in live:
                    if not p.future.done():
                        p.future.set_exception(exc)

    async def _call(self, items: list[Any], rows: int) -> list[Any]:
        """One call of run_batch on the worker thread; checks it returned one result per item."""
        assert self._executor is not None  # set by start()
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        try:
            results = await loop.run_in_executor(self._executor, self._run_batch, items)
        finally:
            seconds = time.monotonic() - t0
            a = BATCH_TIME_EMA_WEIGHT
            self._batch_s_avg = (
                seconds if self._batch_s_avg is None else (1 - a) * self._batch_s_avg + a * seconds
            )
            _call_safely(self._on_batch, rows, seconds)
        if not isinstance(results, list | tuple) or len(results) != len(items):
            got = len(results) if isinstance(results, list | tuple) else type(results).__name__
            raise ModelyardError(
                f"run_batch returned {got} results for {len(items)} items; it must return one result per item"
            )
        return list(results)

    async def _run(self, batch: list[_Pending]) -> None:
        now = time.monotonic()
        for p in batch:
            _call_safely(self._on_queue, now - p.enqueued_at)
        try:
            results = await self._call([p.item for p in batch], sum(p.rows for p in batch))
        except Exception as exc:
            if len(batch) == 1:
                if not batch[0].future.done():
                    batch[0].future.set_exception(exc)
                return
            log.warning("a batch of %d items failed (%s); running each item alone", len(batch), exc)
            for p in batch:
                if p.future.done():
                    continue
                try:
                    (result,) = await self._call([p.item], p.rows)
                except Exception as item_exc:
                    if not p.future.done():
                        p.future.set_exception(item_exc)
                else:
                    if not p.future.done():
                        p.future.set_result(result)
            return
        for p, result in zip(batch, results, strict=True):
            if not p.future.done():
                p.future.set_result(result)
