"""Rollouts inside the server: the challenger loaded beside the champion, copies off the response path, and the
controller deciding on live traffic.

:class:`~modelyard.serve.rollout_manager.RolloutManager` runs as a background task of :class:`~modelyard.serve.state.ServerState`. Every
``TICK_S`` it reads the registry's running rollouts (:mod:`modelyard.rollout.control`) and, for each served model
that follows its champion alias (``NAME`` or ``NAME@champion``):

- a new running rollout is attached: the challenger is loaded and warmed with its own batcher, the champion's
  latency p99 and error rate before the rollout are taken from its recent answers (or measured on warm-up
  inputs when it answered fewer than ``BASELINE_MIN_SAMPLES``) and stored with the rollout, and a
  :class:`~modelyard.rollout.decide.Controller` is built; after a restart it first replays the rollout's logged
  observations (:mod:`modelyard.rollout.observations`), so the rollout resumes where it was;
- an attached rollout writes its new observations to the prediction log, feeds the labels that arrived for
  requests both versions answered into the paired accuracy test, takes its one input drift look once
  ``min_requests`` of its requests have logged inputs (:mod:`modelyard.rollout.drift_look`, off the event loop;
  the result is stored with the rollout's statistics at once, and read back on a restart), and decides: a promotion moves the champion
  alias and swaps the challenger in (one assignment; the old champion drains), a rollback or an inconclusive end
  leaves the champion and retires the challenger; the end, its reason and statistics go to the registry and
  its audit log in one transaction;
- a rollout that was stopped (``modelyard rollout stop``, ``DELETE /v2/models/NAME/rollout``) or whose champion
  moved is detached.

On the request path (:meth:`ServerState.infer`): in **shadow** mode the champion answers and a copy of the
request goes into a bounded queue that ``COPY_WORKERS`` tasks feed to the challenger; when the queue is full
the copy is dropped and counted (``modelyard_rollout_copies_dropped_total``), never waited for. Metrics:
``modelyard_rollout_running{model,version,mode}`` (1 while attached), ``modelyard_rollout_observations_total``. In **canary**
mode ``percent`` % of the requests (by a hash of the sticky header's value when one is set, else at random) are
answered by the challenger; a request the challenger fails is answered by the champion (counted as the
challenger's error), and a copy of each canary request goes to the champion off the response path, so a label
that arrives later is a paired comparison (and the two answers' confidences and OOD flags are paired at once;
in shadow mode also the KL between their class probabilities). A shadow copy's latency is corrected for load: when the champion
was slower than its p99 on the same request, the copy's time is scaled down by that factor, so a machine that
stalls does not make an equally fast challenger look slow.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import Counter, Gauge

from modelyard.errors import first_line
from modelyard.monitor.summary import summarize_outputs
from modelyard.rollout import drift_look
from modelyard.rollout.decide import Controller, Observation
from modelyard.rollout.observations import (
    RolloutRow,
    class_probabilities,
    confidence_drop,
    mean_kl,
    ood_increase,
    predicted_classes,
)
from modelyard.serve.batcher import QueueFull
from modelyard.serve.inputs import PreparedInput
from modelyard.serve.metrics import PREFIX

if TYPE_CHECKING:
    from modelyard.serve.model import ServedModel
    from modelyard.serve.state import Deployment

log = logging.getLogger(__name__)

COPY_QUEUE = 256  # copies waiting for the other version; more are dropped and counted
COPY_WORKERS = 4
MAX_PENDING_ROWS = 50_000  # observations waiting to be written (at most TICK_S of traffic in practice)

Prepare = Callable[["ServedModel"], PreparedInput]


@dataclass(frozen=True)
class CopyJob:
    """A request to run on the other version off the response path (see the module docstring)."""

    request_id: str
    prepare: Prepare
    outputs: dict[str, Any]  # the answer the client got
    at_unix_s: float
    latency_ms: float | None = None  # canary: the challenger's time
    champion_ms: float | None = None  # shadow: the champion's time on this request


class RolloutMetrics:
    """The rollout counters, in the server's own metrics registry."""

    def __init__(self, registry: Any) -> None:
        self.copies_dropped = Counter(
            f"{PREFIX}_rollout_copies_dropped",
            "Copies of requests for the other version of a rollout dropped because its queue was full.",
            ("model", "version"),
            registry=registry,
        )
        self.running = Gauge(
            f"{PREFIX}_rollout_running",
            "1 while this server compares the challenger version with the champion, else 0.",
            ("model", "version", "mode"),
            registry=registry,
        )
        self.observations = Counter(
            f"{PREFIX}_rollout_observations",
            "Requests a rollout's challenger was compared on, by mode and whether it failed.",
            ("model", "version", "mode", "error"),
            registry=registry,
        )


class LiveRollout:
    """One attached rollout: the challenger's deployment, the controller, the copy queue and its workers."""

    def __init__(
        self,
        row: dict[str, Any],
        *,
        challenger: Deployment,
        champion: Callable[[], Deployment],
        controller: Controller,
        metrics: RolloutMetrics,
        timeout_s: float,
    ) -> None:
        self.id = int(row["id"])
        self.model = str(row["model"])
        self.mode = str(row["mode"])
        self.percent = None if row["percent"] is None else float(row["percent"])
        self.sticky_header = row["sticky_header"]
        self.champion_version = int(row["champion"])
        self.challenger_version = int(row["challenger"])
        self.challenger = challenger
        self.champion = champion
        self.controller = controller
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.queue: asyncio.Queue[CopyJob] = asyncio.Queue(maxsize=COPY_QUEUE)
        self.pending: list[RolloutRow] = []
        self.labelled: set[str] = set()
        self.dropped = 0
        self.last_progress = (-1, -1)
        self.last_progress_at = 0.0
        self.drift: drift_look.DriftPlan | None = None  # the one input drift look, when the rollout has one
        self.drift_retry_at = 0.0
        self._rng = random.Random()
        self._workers: list[asyncio.Task[None]] = []

    # -- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._workers = [
            loop.create_task(self._work(), name=f"modelyard-rollout-copy-{i}") for i in range(COPY_WORKERS)
        ]

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        for task in self._workers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._workers = []

    # -- the request path ------------------------------------------------------------------------------

    def routes_to_challenger(self, headers: Mapping[str, str] | None) -> bool:
        """Whether a canary request goes to the challenger: by the sticky header's hash, else at random."""
        if self.mode != "canary" or self.percent is None:
            return False
        value = None if headers is None or not self.sticky_header else headers.get(self.sticky_header)
        if value is None:
            return self._rng.random() * 100.0 < self.percent
        digest = hashlib.sha256(value.encode("utf-8", "replace")).digest()
        return int.from_bytes(digest[:4], "big") % 10_000 < self.percent * 100.0

    async def answer(
        self, prepare: Prepare, request_id: str | None
    ) -> tuple[dict[str, Any], PreparedInput] | None:
        """A canary request answered by the challenger: its outputs and inputs, or None when it failed (counted
        as its error; the caller answers with the champion)."""
        dep = self.challenger
        started = time.perf_counter()
        try:
            item = prepare(dep.model)
            outputs = await dep.batcher.submit(item, rows=item.rows, timeout_s=self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, QueueFull) and dep.batcher.draining:
                return None  # the rollout is ending: not the challenger's fault
            log.debug("canary request %s failed on the challenger: %s", request_id, first_line(exc))
            self.controller.observe(Observation(error=True))
            self._count(error=True)
            self._record(
                self._row(
                    request_id or "",
                    time.time(),
                    "canary",
                    returned=False,
                    error=True,
                    latency_ms=None,
                    flip=None,
                    challenger_predicted=None,
                    champion_predicted=None,
                )
            )
            return None
        latency_ms = (time.perf_counter() - started) * 1000.0
        self.controller.observe(Observation(error=False, latency_ms=latency_ms))
        self._count(error=False)
        job = CopyJob(request_id or "", prepare, outputs, time.time(), latency_ms)
        if not request_id or not self._offer(job):
            self.pending_row(job, champion_outputs=None)
        return outputs, item

    def shadow(
        self, prepare: Prepare, outputs: dict[str, Any], request_id: str | None, champion_ms: float
    ) -> None:
        """Queue a copy of a request the champion answered (in ``champion_ms``) for the challenger (dropped when
        the queue is full)."""
        if request_id:
            self._offer(CopyJob(request_id, prepare, outputs, time.time(), champion_ms=champion_ms))

    def _offer(self, job: CopyJob) -> bool:
        try:
            self.queue.put_nowait(job)
        except asyncio.QueueFull:
            self.dropped += 1
            self.metrics.copies_dropped.labels(self.model, str(self.challenger_version)).inc()
            return False
        return True

    # -- the copies ------------------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            job = await self.queue.get()
            try:
                await self._copy(job)
            except asyncio.CancelledError:
                raise
            except Exception:  # a copy never takes the worker down
                log.warning("a rollout copy of request %s failed", job.request_id, exc_info=True)

    async def _run(self, dep: Deployment, prepare: Prepare) -> tuple[dict[str, Any] | None, float]:
        """``dep``'s answer and its batcher time, measured as the champion's is (preparing the inputs is not
        part of it: the champion's time starts after its own)."""
        started = time.perf_counter()
        try:
            item = prepare(dep.model)
            started = time.perf_counter()
            out = await dep.batcher.submit(item, rows=item.rows, timeout_s=self.timeout_s)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.debug("rollout copy on %s:%s failed: %s", dep.model.name, dep.model.version, first_line(exc))
            return None, (time.perf_counter() - started) * 1000.0
        return out, (time.perf_counter() - started) * 1000.0

    async def _copy(self, job: CopyJob) -> None:
        if self.mode == "canary":  # the champion's answer to the canary request, for paired labels
            out, _ = await self._run(self.champion(), job.prepare)
            self.pending_row(job, champion_outputs=out)
            return
        out, latency_ms = await self._run(self.challenger, job.prepare)
        latency_ms = self._load_corrected(latency_ms, job.champion_ms)
        error = out is None
        mine = None if out is None else predicted_classes(out)
        theirs = predicted_classes(job.outputs)
        flip = None if mine is None or theirs is None else mine != theirs
        summary = self._summary(out)
        paired = {} if out is None else self._paired(job.outputs, out, kl=True)
        row = self._row(
            job.request_id,
            job.at_unix_s,
            "shadow",
            returned=False,
            error=error,
            latency_ms=None if error else latency_ms,
            flip=None if error else flip,
            challenger_predicted=mine,
            champion_predicted=theirs,
            **summary,
            **paired,
        )
        self.controller.observe(row.observation())
        self._count(error=error)
        self._record(row)

    def _load_corrected(self, latency_ms: float, champion_ms: float | None) -> float:
        """A shadow copy's time, scaled down by how much slower than its p99 the champion was on the same request:
        when the machine stalls both are slow, and only the challenger's own slowness should count."""
        p99 = self.controller.champion_p99_ms
        if champion_ms is None or p99 is None or p99 <= 0 or champion_ms <= p99:
            return latency_ms
        return latency_ms * p99 / champion_ms

    def pending_row(self, job: CopyJob, *, champion_outputs: dict[str, Any] | None) -> None:
        """The row of a canary request the challenger answered (champion's answer None when not copied); with
        the champion's answer, its paired confidence and OOD observations go to the controller."""
        summary = self._summary(job.outputs)
        paired = {} if champion_outputs is None else self._paired(champion_outputs, job.outputs, kl=False)
        if paired:
            self.controller.pair(
                confidence_drop=confidence_drop(paired.get("champion_confidence"), summary.get("confidence")),
                ood_increase=ood_increase(paired.get("champion_ood_flag"), summary.get("ood_flag")),
            )
        self._record(
            self._row(
                job.request_id,
                job.at_unix_s,
                "canary",
                returned=True,
                error=False,
                latency_ms=job.latency_ms,
                flip=None,
                challenger_predicted=predicted_classes(job.outputs),
                champion_predicted=None if champion_outputs is None else predicted_classes(champion_outputs),
                **summary,
                **paired,
            )
        )

    def _row(self, request_id: str, at_unix_s: float, mode: str, **fields: Any) -> RolloutRow:
        """A row of this rollout (its id, model and versions filled in)."""
        return RolloutRow(
            self.id,
            request_id,
            at_unix_s,
            self.model,
            str(self.challenger_version),
            str(self.champion_version),
            mode,
            **fields,
        )

    def _summary(self, outputs: dict[str, Any] | None) -> dict[str, Any]:
        if outputs is None:
            return {}
        try:
            s = summarize_outputs(outputs, projection=self.challenger.model.output_projection)
        except Exception:
            return {}
        return {
            "outputs_json": s.json,
            "confidence": s.confidence,
            "ood_score": s.ood_score,
            "ood_flag": s.ood_flag,
        }

    def _paired(self, champion: dict[str, Any], challenger: dict[str, Any], *, kl: bool) -> dict[str, Any]:
        """The champion's side of a request both answered: its confidence and OOD flag (as summarize_outputs
        computes them with the champion's own calibration and rule) and, with ``kl``, the mean KL between the
        two answers' calibrated class probabilities."""
        champ = self.champion().model
        try:
            s = summarize_outputs(champion, projection=champ.output_projection)
            out: dict[str, Any] = {"champion_confidence": s.confidence, "champion_ood_flag": s.ood_flag}
            if kl:
                out["kl"] = mean_kl(
                    class_probabilities(champion, champ.temperature),
                    class_probabilities(challenger, self.challenger.model.temperature),
                )
        except Exception:
            return {}
        return out

    def _record(self, row: RolloutRow) -> None:
        if len(self.pending) < MAX_PENDING_ROWS:
            self.pending.append(row)

    def _count(self, *, error: bool) -> None:
        self.metrics.observations.labels(
            self.model, str(self.challenger_version), self.mode, "true" if error else "false"
        ).inc()
