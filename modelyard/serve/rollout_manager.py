"""The rollouts' background task in the server: :class:`RolloutManager` syncs the registry's running rollouts
with the served models, attaches a :class:`~modelyard.serve.rollouts.LiveRollout` (the challenger beside the
champion), feeds and decides it, and ends it (see :mod:`modelyard.serve.rollouts` for the whole story)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from modelyard.config import RolloutPolicy
from modelyard.errors import first_line
from modelyard.registry import rollouts as table
from modelyard.rollout import control, drift_look
from modelyard.rollout.decide import Controller, Mode
from modelyard.rollout.observations import (
    labelled_pairs,
    replay,
    write_rows,
)
from modelyard.serve.loop import every
from modelyard.serve.rollouts import LiveRollout, RolloutMetrics

if TYPE_CHECKING:
    from modelyard.serve.state import Deployment, ModelSlot, ServerState

log = logging.getLogger(__name__)

TICK_S = 0.5  # how often rollouts are synced with the registry, logged and decided
PROGRESS_EVERY_S = 1.0  # how often a running rollout's requests and statistics are written to the registry
BASELINE_MIN_SAMPLES = 100
BASELINE_CALLS = 100
DRIFT_RETRY_S = 30.0  # after a failed drift look (the log unreadable, ...), wait this long to try again
DRIFT_WAIT_S = 1.0  # while too few of the rollout's requests have logged inputs, read the log this often


def follows_champion(slot: ModelSlot) -> bool:
    """Whether ``slot`` serves its model's champion alias (``NAME`` or ``NAME@champion``)."""
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
        await every(self.state, lambda: TICK_S, self.tick, "the rollout loop")

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
            elif row is not None and follows_champion(slot) and not self.state.shutting_down:
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
