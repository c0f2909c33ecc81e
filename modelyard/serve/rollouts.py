"""Rollouts inside the server: the challenger loaded beside the champion, copies off the response path, and the
controller deciding on live traffic.

:class:`RolloutManager` runs as a background task of :class:`~modelyard.serve.state.ServerState`. Every
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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Counter, Gauge

from modelyard.config import RolloutPolicy
from modelyard.errors import first_line
from modelyard.monitor.summary import summarize_outputs
from modelyard.registry import rollouts as table
from modelyard.rollout import control, drift_look
from modelyard.rollout.decide import Controller, Mode, Observation
from modelyard.rollout.observations import (
    RolloutRow,
    class_probabilities,
    confidence_drop,
    labelled_pairs,
    mean_kl,
    ood_increase,
    predicted_classes,
    replay,
    write_rows,
)
from modelyard.serve.batcher import QueueFull
from modelyard.serve.inputs import PreparedInput
from modelyard.serve.metrics import PREFIX

if TYPE_CHECKING:
    from modelyard.serve.model import ServedModel
    from modelyard.serve.state import Deployment, ModelSlot, ServerState

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often rollouts are synced with the registry, logged and decided
PROGRESS_EVERY_S = 1.0  # how often a running rollout's requests and statistics are written to the registry
COPY_QUEUE = 256  # copies waiting for the other version; more are dropped and counted
COPY_WORKERS = 4
MAX_PENDING_ROWS = 50_000  # observations waiting to be written (at most TICK_S of traffic in practice)
BASELINE_MIN_SAMPLES = 100
BASELINE_CALLS = 100
DRIFT_RETRY_S = 30.0  # after a failed drift look (the log unreadable, ...), wait this long to try again
DRIFT_WAIT_S = 1.0  # while too few of the rollout's requests have logged inputs, read the log this often

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


def _follows_champion(slot: ModelSlot) -> bool:
    return slot.follows_alias and slot.ref in (slot.name, f"{slot.name}@champion")


class RolloutManager:
    """Syncs the server's rollouts with the registry and decides them (see the module docstring)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.metrics = RolloutMetrics(state.metrics.registry)
        self._waiting: set[int] = set()  # rollouts logged as waiting for the champion, so once

    @property
    def monitor_path(self) -> Path | None:
        writer = self.state.monitor
        return None if writer is None else writer.path

    async def run(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            if self.state.shutting_down:
                return
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:  # a registry hiccup must not end rollouts: try again next tick
                log.warning("the rollout loop failed; retrying", exc_info=True)

    async def tick(self) -> None:
        rows = await asyncio.to_thread(table.list_rollouts, self.state.registry)
        running = {r["model"]: r for r in rows if r["state"] == "running"}
        for slot in list(self.state.slots.values()):
            live: LiveRollout | None = slot.rollout
            row = running.get(slot.name)
            if live is not None:
                if row is None or int(row["id"]) != live.id:
                    log.info(
                        "rollout of %s version %s ended outside this server",
                        slot.name,
                        live.challenger_version,
                    )
                    await self.detach(slot, promoted=False)
                elif slot.current.model.version != live.champion_version:
                    await asyncio.to_thread(
                        control.end_with_reason,
                        self.state.registry,
                        live.id,
                        state="stopped",
                        reason=f"rollout stopped: the served champion moved to version "
                        f"{slot.current.model.version} during the rollout",
                    )
                    await self.detach(slot, promoted=False)
                else:
                    await self.step(slot, live)
            elif row is not None and _follows_champion(slot) and not self.state.shutting_down:
                await self.attach(slot, row)

    # -- attach ----------------------------------------------------------------------------------------

    async def attach(self, slot: ModelSlot, row: dict[str, Any]) -> None:
        rid = int(row["id"])
        if slot.current.model.version != int(row["champion"]):
            if rid not in self._waiting:
                self._waiting.add(rid)
                log.warning(
                    "rollout of %s waits: this server serves version %s, the rollout's champion is %s",
                    slot.name,
                    slot.current.model.version,
                    row["champion"],
                )
            return
        policy = control.policy_of(row)
        try:
            dep = await self.state._deploy(f"{slot.name}:{row['challenger']}")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            reason = f"rollout rolled back: the challenger failed to load ({first_line(exc)})"
            log.error("%s version %s: %s", slot.name, row["challenger"], reason)
            await asyncio.to_thread(
                control.end_with_reason, self.state.registry, rid, state="rolled_back", reason=reason
            )
            return
        p99, error_rate = row["champion_p99_ms"], row["champion_error_rate"]
        if p99 is None:
            p99, error_rate = await self._baseline(slot)
            await asyncio.to_thread(
                table.record_progress,
                self.state.registry,
                rid,
                requests=0,
                statistics=[],
                champion_p99_ms=p99,
                champion_error_rate=error_rate,
            )
        path = self.monitor_path
        controller, drift = await self._controller(slot, dep, row, policy, p99, float(error_rate or 0.0))
        earlier = [] if path is None else await asyncio.to_thread(replay, path, rid)
        for obs in earlier:
            controller.observe(obs)
        stored = drift_look.restore(list(row.get("statistics") or []))
        if stored is not None and controller.drift_pending:  # looked before the restart: never twice
            controller.record_drift(**stored)
        live = LiveRollout(
            row,
            challenger=dep,
            champion=lambda: slot.current,
            controller=controller,
            metrics=self.metrics,
            timeout_s=self.state.settings.request_timeout_s,
        )
        live.drift = drift
        live.last_progress = (controller.requests, 0)
        live.start()
        slot.rollout = live
        self.metrics.running.labels(slot.name, str(live.challenger_version), live.mode).set(1)
        log.info(
            "rollout of %s: %s of version %s against version %s%s (champion p99 %.3g ms)",
            slot.name,
            live.mode,
            live.challenger_version,
            live.champion_version,
            f", resumed after {len(earlier)} logged requests" if earlier else "",
            p99,
        )

    async def _controller(
        self,
        slot: ModelSlot,
        dep: Deployment,
        row: dict[str, Any],
        policy: RolloutPolicy,
        p99: float,
        error_rate: float,
    ) -> tuple[Controller, drift_look.DriftPlan | None]:
        """The rollout's controller with the signals its two versions allow (the same on every attach, so a
        restarted server splits alpha the same way), and its drift look's plan."""
        mode: Mode = "canary" if row["mode"] == "canary" else "shadow"
        champ, chal = slot.current.model, dep.model
        classifier = champ.task == "classification" and chal.task == "classification"
        ood = classifier and champ.ood_rule is not None and chal.ood_rule is not None

        def build(drift: bool) -> Controller:
            return Controller(
                policy,
                mode,
                champion_p99_ms=p99,
                champion_error_rate=error_rate,
                classifier=classifier,
                ood=ood,
                drift=drift,
            )

        controller = build(True)
        plan, why = None, "the prediction log is off"
        if self.monitor_path is not None:
            plan, why = await asyncio.to_thread(
                drift_look.plan,
                chal.folder,
                mode=mode,
                champion_version=champ.version,
                challenger_version=chal.version,
                champion_projection=champ.input_projection,
                alpha_share=controller.signals["drift"].alpha,
            )
        if plan is None:
            log.info("rollout of %s: no input drift signal (%s)", slot.name, why)
            controller = build(False)
        return controller, plan

    async def _baseline(self, slot: ModelSlot) -> tuple[float, float]:
        """The champion's latency p99 (ms) and error rate before the rollout."""
        samples = list(slot.latencies_ms)
        done = slot.answered + slot.failed
        error_rate = slot.failed / done if done else 0.0
        if len(samples) < BASELINE_MIN_SAMPLES:
            dep = slot.current
            for _ in range(BASELINE_CALLS):
                item = dep.model.typical_input()
                started = time.perf_counter()
                await dep.batcher.submit(
                    item, rows=item.rows, timeout_s=self.state.settings.request_timeout_s
                )
                samples.append((time.perf_counter() - started) * 1000.0)
        return float(np.percentile(samples, 99)), min(error_rate, 0.4)

    # -- step and end ----------------------------------------------------------------------------------

    async def step(self, slot: ModelSlot, live: LiveRollout) -> None:
        path = self.monitor_path
        rows, live.pending = live.pending, []
        if path is not None:
            try:
                await asyncio.to_thread(write_rows, path, rows)
                pairs = await asyncio.to_thread(labelled_pairs, path, live.id, seen=set(live.labelled))
            except Exception as exc:
                log.warning("rollout of %s: the prediction log failed (%s)", slot.name, first_line(exc))
                pairs = []
            for request_id, challenger_correct, champion_correct in pairs:
                live.labelled.add(request_id)
                live.controller.label(
                    challenger_correct=challenger_correct, champion_correct=champion_correct
                )
        ctl = live.controller
        if path is not None and await self._look_for_drift(slot, live, path):
            live.last_progress, live.last_progress_at = (-1, -1), 0.0  # the look's result is stored at once
        if ctl.champion_p99_ms is not None and len(slot.latencies_ms) >= BASELINE_MIN_SAMPLES:
            # the champion's p99 over its latest answers, not only the one before the rollout: when the machine's
            # load changes mid-rollout, both versions' times move, and only the challenger's own slowness counts
            ctl.champion_p99_ms = float(np.percentile(list(slot.latencies_ms), 99))
        decision = ctl.decide()
        if decision.action == "continue":
            progress = (ctl.requests, len(live.labelled))
            now = time.monotonic()
            if progress != live.last_progress and now - live.last_progress_at >= PROGRESS_EVERY_S:
                live.last_progress, live.last_progress_at = progress, now
                await asyncio.to_thread(
                    table.record_progress,
                    self.state.registry,
                    live.id,
                    requests=ctl.requests,
                    statistics=control.signal_statistics(ctl),
                )
            return
        view = await asyncio.to_thread(
            control.finish_rollout, self.state.registry, live.id, decision, control.signal_statistics(ctl)
        )
        promoted = view is not None and view.state == "promoted"
        log.info(
            "rollout of %s version %s: %s",
            slot.name,
            live.challenger_version,
            "ended elsewhere" if view is None else f"{view.state}: {decision.reason}",
        )
        await self.detach(slot, promoted=promoted)

    async def _look_for_drift(self, slot: ModelSlot, live: LiveRollout, path: Path) -> bool:
        """Take the rollout's one drift look once ``min_requests`` of its requests have logged inputs; whether
        it was taken now."""
        ctl, plan = live.controller, live.drift
        if plan is None or not ctl.drift_pending or ctl.requests < ctl.policy.min_requests:
            return False
        if time.monotonic() < live.drift_retry_at:
            return False
        alpha = ctl.signals["drift"].alpha
        try:
            got = await asyncio.to_thread(
                drift_look.look, path, live.id, plan, requests=ctl.policy.min_requests, alpha=alpha
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            live.drift_retry_at = time.monotonic() + DRIFT_RETRY_S
            log.warning(
                "rollout of %s: the drift look failed (%s); retrying later", slot.name, first_line(exc)
            )
            return False
        if got is None:  # fewer of the rollout's requests have logged inputs yet
            live.drift_retry_at = time.monotonic() + DRIFT_WAIT_S
            return False
        ctl.record_drift(**got)
        log.info(
            "rollout of %s: input drift against version %s's reference: %s",
            slot.name,
            live.challenger_version,
            "ALARM" if got["alarm"] else "no alarm",
        )
        return True

    async def detach(self, slot: ModelSlot, *, promoted: bool) -> None:
        """Take the rollout off ``slot``: the challenger becomes the champion (``promoted``) or is retired."""
        live: LiveRollout | None = slot.rollout
        if live is None:
            return
        slot.rollout = None
        self.metrics.running.labels(slot.name, str(live.challenger_version), live.mode).set(0)
        await live.stop()
        if promoted:
            old, slot.current = slot.current, live.challenger
            slot.failed_version = None
            slot.latencies_ms.clear()
            log.info("%s now serves version %s (promoted by its rollout)", slot.name, live.challenger_version)
            self.state.retire_later(old)
        else:
            self.state.retire_later(live.challenger)

    async def close(self) -> None:
        """Detach every rollout (shut-down): the challengers drain; the rollouts stay running in the registry."""
        for slot in self.state.slots.values():
            live: LiveRollout | None = slot.rollout
            if live is not None:
                slot.rollout = None
                await live.stop()
                await self.state._retire(
                    live.challenger, timeout_s=self.state.settings.drain_timeout_s or 0.001
                )
