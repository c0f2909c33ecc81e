"""The prediction log's writer: a background thread fed by a bounded queue.

The request path only calls :meth:`PredictionLogWriter.submit`, a non-blocking ``put_nowait``: when the queue
is full (``max_queue`` items, or ``max_queue_bytes`` of arrays held by queued
:class:`~modelyard.monitor.pending.PendingPrediction` s) the record is dropped and counted, never waited for.
A pending prediction is summarized in the writer's thread (:meth:`PendingPrediction.build`), so the request
path pays for a reference and a queue put only. The thread takes records in batches and commits
each batch in one transaction, at the latest ``flush_s`` after the batch's first record was taken (or as soon
as ``max_batch`` records are in), so a killed process loses at most the records of the last ``flush_s`` plus
one commit. Every ``retention_every_s`` it deletes the predictions past the retention limits
(:func:`modelyard.monitor.db.prune`). :meth:`close` refuses new records, writes every queued one, and closes.

Nothing the writer does raises into its caller: a failed batch is dropped, counted (reason ``error``) and
logged (at most once a minute).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from modelyard.monitor.db import INSERT_PREDICTION, connect, describe_version, prune
from modelyard.monitor.log import PredictionRecord
from modelyard.monitor.pending import PendingPrediction, build_records

log = logging.getLogger(__name__)

DROP_REASONS = ("queue_full", "error", "duplicate_id", "closed")
ERROR_LOG_EVERY_S = 60.0

_STOP = object()
_FLUSH = object()


class PredictionLogWriter:
    """Writes :class:`~modelyard.monitor.log.PredictionRecord` s to the log at ``path`` from one thread.

    ``on_dropped(reason, n)`` and ``on_written(n)`` are called (from any thread) as records are dropped or
    committed; ``reason`` is one of ``DROP_REASONS``: ``queue_full`` (the request path found the queue full),
    ``error`` (building or writing the record failed), ``duplicate_id`` (a request id already logged; the first
    record is kept), ``closed`` (submitted after :meth:`close`)."""

    def __init__(
        self,
        path: Path | str,
        *,
        max_queue: int = 10_000,
        max_queue_bytes: int = 64 * 2**20,
        flush_s: float = 0.25,
        max_batch: int = 1000,
        max_rows: int | None = None,
        max_days: float | None = None,
        retention_every_s: float = 60.0,
        on_dropped: Callable[[str, int], None] | None = None,
        on_written: Callable[[int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.flush_s = float(flush_s)
        self.max_batch = int(max_batch)
        self.max_rows = max_rows
        self.max_days = max_days
        self.retention_every_s = float(retention_every_s)
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max_queue)
        self.max_queue_bytes = int(max_queue_bytes)
        self._queued_bytes = 0
        self._on_dropped = on_dropped
        self._on_written = on_written
        self._cond = threading.Condition()
        self._submitted = 0
        self._processed = 0
        self._finished = False
        self._closed = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error_log = -float("inf")
        self.written = 0
        self.dropped = dict.fromkeys(DROP_REASONS, 0)

    # -- the request side ------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the log (DataError when it cannot be used) and start the thread."""
        conn = connect(self.path)
        self._thread = threading.Thread(
            target=self._run, args=(conn,), name="modelyard-monitor-writer", daemon=True
        )
        self._thread.start()

    def submit(self, record: PredictionRecord | PendingPrediction) -> bool:
        """Queue ``record`` without waiting; False (and counted) when it was dropped."""
        if self._closed:
            self.count_dropped("closed")
            return False
        size = record.nbytes if isinstance(record, PendingPrediction) else 0
        with self._cond:
            full = bool(size) and self._queued_bytes + size > self.max_queue_bytes
            if not full:
                try:
                    self._queue.put_nowait(record)
                except queue.Full:
                    full = True
                else:
                    self._submitted += 1
                    self._queued_bytes += size
        if full:
            self.count_dropped("queue_full")
        return not full

    def count_dropped(self, reason: str, n: int = 1) -> None:
        """Count ``n`` records dropped for ``reason`` (never raises)."""
        with self._cond:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        if self._on_dropped is not None:
            with contextlib.suppress(Exception):
                self._on_dropped(reason, n)

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    @property
    def pending(self) -> int:
        """Records submitted and not yet written (or dropped by the thread)."""
        with self._cond:
            return self._submitted - self._processed

    def describe(self, model: str, version: str, task: str, classes: Sequence[str] | None) -> None:
        """Record a served version's task and classes (its own connection; call it off the event loop)."""
        conn = connect(self.path)
        try:
            describe_version(conn, model, version, task, classes)
        finally:
            conn.close()

    def flush(self, timeout_s: float) -> bool:
        """Wait (at most ``timeout_s``) until every record submitted before this call is committed; True when
        it is. The thread is asked to commit at once instead of at its next deadline."""
        with self._cond:
            target = self._submitted
            if self._processed >= target:
                return True
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_FLUSH)
        with self._cond:
            self._cond.wait_for(lambda: self._processed >= target or self._finished, timeout_s)
            return self._processed >= target

    def close(self, timeout_s: float = 30.0) -> None:
        """Refuse new records, write every queued one, stop the thread and close the log."""
        self._closed = True
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_STOP)
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.warning("the prediction log writer did not finish within %g s", timeout_s)

    # -- the thread ------------------------------------------------------------------------------------

    def _run(self, conn: sqlite3.Connection) -> None:
        next_prune = time.monotonic()
        try:
            while True:
                if time.monotonic() >= next_prune:
                    self._prune(conn)
                    next_prune = time.monotonic() + self.retention_every_s
                taken = self._collect(wait_s=max(0.0, min(next_prune - time.monotonic(), 1.0)))
                batch = self._built(taken)
                if batch:
                    self._write(conn, batch)
                with self._cond:
                    self._processed += len(taken)
                    self._cond.notify_all()
                if self._stopping.is_set() and self._queue.empty():
                    break
        finally:
            conn.close()
            with self._cond:
                self._finished = True
                self._cond.notify_all()

    def _built(self, taken: list[PredictionRecord | PendingPrediction]) -> list[PredictionRecord]:
        """The records of a batch: pending predictions summarized here; one that fails is dropped (``error``)."""
        ready = [item for item in taken if isinstance(item, PredictionRecord)]
        records, failed = build_records([item for item in taken if isinstance(item, PendingPrediction)])
        if failed:
            self.count_dropped("error", failed)
        return ready + records

    def _collect(self, *, wait_s: float) -> list[PredictionRecord | PendingPrediction]:
        """The next batch: waits up to ``wait_s`` for a first record, then gathers more until ``flush_s``
        after it, ``max_batch`` records, a flush request, or (when stopping) an empty queue."""
        batch: list[PredictionRecord | PendingPrediction] = []
        deadline: float | None = None
        while len(batch) < self.max_batch:
            stopping = self._stopping.is_set()
            if stopping:
                timeout = 0.0
            elif deadline is None:
                timeout = wait_s
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            try:
                item = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _FLUSH:
                break
            if item is _STOP:
                continue
            if isinstance(item, PendingPrediction):
                with self._cond:
                    self._queued_bytes -= item.nbytes
                batch.append(item)
            elif isinstance(item, PredictionRecord):
                batch.append(item)
            if deadline is None:
                deadline = time.monotonic() + self.flush_s
        return batch

    def _write(self, conn: sqlite3.Connection, batch: list[PredictionRecord]) -> None:
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                cur = conn.executemany(INSERT_PREDICTION, [r.row() for r in batch])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except Exception as exc:
            self.count_dropped("error", len(batch))
            self._log_error(f"writing {len(batch)} prediction records to {self.path} failed: {exc}")
            return
        written = max(0, cur.rowcount)
        self.written += written
        if written < len(batch):
            self.count_dropped("duplicate_id", len(batch) - written)
        if self._on_written is not None:
            with contextlib.suppress(Exception):
                self._on_written(written)

    def _prune(self, conn: sqlite3.Connection) -> None:
        if self.max_rows is None and self.max_days is None:
            return
        try:
            deleted = prune(conn, max_rows=self.max_rows, max_days=self.max_days)
        except Exception as exc:
            self._log_error(f"applying the retention limits to {self.path} failed: {exc}")
            return
        if deleted:
            log.info("prediction log: deleted %d predictions past the retention limits", deleted)

    def _log_error(self, message: str) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= ERROR_LOG_EVERY_S:
            self._last_error_log = now
            log.warning("%s (logged at most once a minute; counted in the dropped records)", message)
