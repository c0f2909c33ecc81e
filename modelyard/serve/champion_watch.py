"""The champion watch inside the server: each served champion's live signals, fed from the prediction log and
the request counters to :class:`~modelyard.rollout.watch.ChampionWatch`, and acted on when they cross.

Every ``WATCH_TICK_S`` :class:`ChampionWatcher` takes, for each served model that follows its champion alias
(``NAME`` or ``NAME@champion``), the requests the champion answered and failed since the last tick, its new
rows in the prediction log (confidence and OOD flags) and the first label posted for each of its one-row
requests. The policy is the ``[rollout]`` table of the policy the champion was chosen under (its evidence);
the baseline is its monitor reference (offline accuracy, mean calibrated confidence on the calibration items,
the OOD rule's offline rate).

State lives in the prediction log's database, table ``champion_watch`` (one row per model: the version
watched, the tests' state, the log cursors, the alarm), written every tick that saw something, so a
restarted server resumes the watch where it was; a new champion starts a fresh watch.

On an alarm, with ``on_champion_alarm = "rollback"`` the champion alias is rolled back in the registry (an
audit-log row whose reason holds the alarm and every signal's statistics) and the server swaps the earlier
version in at once; with ``"alarm"``, or when there is no earlier champion to return to, it only alarms. Either
way ``modelyard_champion_watch_alarm{model,version}`` is set to 1, the alarm is logged and stored, and the
watch of that version stops (its alarm stands until the champion changes).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from prometheus_client import Gauge

from modelyard.config import RolloutPolicy
from modelyard.errors import ModelyardError, first_line
from modelyard.monitor.db import connect
from modelyard.monitor.status import reference_for
from modelyard.rollout.watch import ChampionWatch, WatchAlarm, WatchBaseline
from modelyard.serve.loop import every
from modelyard.serve.metrics import PREFIX
from modelyard.serve.rollout_manager import follows_champion

if TYPE_CHECKING:
    from modelyard.registry import Registry
    from modelyard.serve.state import ModelSlot, ServerState

log = logging.getLogger(__name__)

WATCH_TICK_S = 1.0
MAX_ROWS_PER_TICK = 20_000  # log rows read per model and tick (the rest next tick)

SCHEMA = """CREATE TABLE IF NOT EXISTS champion_watch (
    model TEXT PRIMARY KEY,
    version TEXT NOT NULL,
    state TEXT NOT NULL,
    alarm TEXT,
    updated_unix_s REAL NOT NULL
)"""


# ---------------------------------------------------------------------------------------------------
# what the watch reads and keeps in the prediction log's database


def _open(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    conn.execute(SCHEMA)
    return conn


def _max_seq(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute(f"SELECT MAX(seq) FROM {table}").fetchone()
    return int(row[0] or 0)


@dataclass
class LogCursor:
    """How far the watch has read the log: the last prediction and feedback rows seen."""

    predictions: int = 0
    feedback: int = 0


def start_cursor(path: Path) -> LogCursor:
    """A cursor at the log's end now (a new watch judges the traffic from its start on)."""
    conn = _open(path)
    try:
        return LogCursor(_max_seq(conn, "predictions"), _max_seq(conn, "feedback"))
    finally:
        conn.close()


@dataclass
class LogBatch:
    """What the log gained for one version since a cursor: per request, its rows, confidence, OOD flag and
    rows flagged; per label, whether the one-row request was right."""

    requests: list[tuple[int, float | None, bool | None, int | None]] = field(default_factory=list)
    correct: list[bool] = field(default_factory=list)
    cursor: LogCursor = field(default_factory=LogCursor)


def _label_value(raw: str) -> int | None:
    value = json.loads(raw)
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def read_since(path: Path, model: str, version: str, cursor: LogCursor) -> LogBatch:
    """The version's logged requests after ``cursor`` and the first labels posted for its one-row requests
    (a label can only be posted for a logged request, so none is missed)."""
    conn = _open(path)
    try:
        conn.execute("PRAGMA query_only = ON")
        rows = conn.execute(
            "SELECT seq, rows, confidence, ood_flag, json_extract(outputs, '$.ood_flagged') FROM predictions "
            "WHERE seq > ? AND model = ? AND version = ? ORDER BY seq LIMIT ?",
            (cursor.predictions, model, version, MAX_ROWS_PER_TICK),
        ).fetchall()
        top = int(rows[-1][0]) if len(rows) == MAX_ROWS_PER_TICK else _max_seq(conn, "predictions")
        labels = conn.execute(
            "SELECT f.seq, json_extract(p.outputs, '$.predicted[0]'), f.label FROM feedback f "
            "JOIN predictions p ON p.request_id = f.request_id "
            "WHERE f.seq > ? AND p.model = ? AND p.version = ? AND p.rows = 1 "
            "AND f.seq = (SELECT MIN(g.seq) FROM feedback g WHERE g.request_id = f.request_id) "
            "ORDER BY f.seq LIMIT ?",
            (cursor.feedback, model, version, MAX_ROWS_PER_TICK),
        ).fetchall()
        last_label = int(labels[-1][0]) if len(labels) == MAX_ROWS_PER_TICK else _max_seq(conn, "feedback")
    finally:
        conn.close()
    batch = LogBatch(cursor=LogCursor(max(cursor.predictions, top), max(cursor.feedback, last_label)))
    for _, n_rows, confidence, flag, flagged in rows:
        batch.requests.append(
            (
                int(n_rows),
                None if confidence is None else float(confidence),
                None if flag is None else bool(flag),
                None if flagged is None else int(flagged),
            )
        )
    for _, predicted, label in labels:
        truth = _label_value(label)
        if truth is not None and predicted is not None:
            batch.correct.append(int(predicted) == truth)
    return batch


def load_stored(path: Path, model: str) -> dict[str, Any] | None:
    """The stored watch of ``model``: version, state, alarm (None when there is none)."""
    conn = _open(path)
    try:
        row = conn.execute(
            "SELECT version, state, alarm, updated_unix_s FROM champion_watch WHERE model = ?", (model,)
        ).fetchone()
    finally:
        conn.close()
    if row is None:
        return None
    return {
        "version": str(row[0]),
        "state": json.loads(row[1]),
        "alarm": None if row[2] is None else json.loads(row[2]),
        "updated_unix_s": float(row[3]),
    }


def store(path: Path, model: str, version: str, state: dict[str, Any], alarm: dict[str, Any] | None) -> None:
    conn = _open(path)
    try:
        with conn:
            conn.execute(
                "INSERT INTO champion_watch (model, version, state, alarm, updated_unix_s) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(model) DO UPDATE SET version = excluded.version, state = excluded.state, "
                "alarm = excluded.alarm, updated_unix_s = excluded.updated_unix_s",
                (
                    model,
                    version,
                    json.dumps(state, allow_nan=False, default=str),
                    None if alarm is None else json.dumps(alarm, allow_nan=False, default=str),
                    time.time(),
                ),
            )
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------------------
# the champion's policy and baseline


def policy_of_version(registry: Registry, model: str, version: int) -> RolloutPolicy:
    """The ``[rollout]`` table of the policy ``model:version`` was chosen under (defaults without evidence)."""
    evidence = registry.get_version(model, version).get("evidence")
    raw = getattr(evidence, "policy", None) or {}
    table = raw.get("rollout") if isinstance(raw, dict) else None
    if not isinstance(table, dict):
        return RolloutPolicy()
    known = {f.name for f in fields(RolloutPolicy)}
    try:
        return RolloutPolicy(**{k: v for k, v in table.items() if k in known})
    except (TypeError, ValueError, ModelyardError) as exc:
        log.warning("%s v%s: its policy's [rollout] table is unusable (%s); defaults", model, version, exc)
        return RolloutPolicy()


def baseline_of_version(registry: Registry, model: str, version: int) -> WatchBaseline:
    """The champion's offline figures from its monitor reference (an empty baseline without one: only the
    error rate is then watched)."""
    try:
        ref = reference_for(registry, model, version)
    except ModelyardError as exc:
        log.info("%s v%s: the champion watch checks errors only (%s)", model, version, first_line(exc))
        return WatchBaseline()
    confidence = None
    if ref.predictions is not None and len(ref.predictions.confidence):
        confidence = float(np.mean(ref.predictions.confidence))
    return WatchBaseline(
        offline_accuracy=None if ref.accuracy is None else float(ref.accuracy.accuracy),
        reference_confidence=confidence,
        offline_ood_rate=None if ref.ood is None else float(ref.ood.offline_rate),
    )


# ---------------------------------------------------------------------------------------------------
# the server's side


@dataclass
class Watched:
    """One champion under watch: the version, the watch, the log cursor and the request counters seen."""

    model: str
    version: int
    watch: ChampionWatch
    cursor: LogCursor
    answered: int
    failed: int
    alarm: dict[str, Any] | None = None


class ChampionWatcher:
    """Watches every served champion (see the module docstring)."""

    def __init__(self, state: ServerState) -> None:
        self.state = state
        self.watched: dict[str, Watched] = {}
        self.alarm_gauge = Gauge(
            f"{PREFIX}_champion_watch_alarm",
            "1 when the champion watch alarmed on this version (its live signals crossed the policy's thresholds).",
            ("model", "version"),
            registry=state.metrics.registry,
        )

    @property
    def path(self) -> Path | None:
        writer = self.state.monitor
        return None if writer is None else writer.path

    async def run(self) -> None:
        await every(self.state, lambda: WATCH_TICK_S, self.tick, "the champion watch")

    async def tick(self) -> None:
        path = self.path
        if path is None:
            return
        for slot in list(self.state.slots.values()):
            if not follows_champion(slot):
                continue
            w = self.watched.get(slot.name)
            if w is None or w.version != slot.current.model.version:
                w = await asyncio.to_thread(self._begin, path, slot)
                self.watched[slot.name] = w
            if w.alarm is not None:
                continue
            await self._step(path, slot, w)

    def _begin(self, path: Path, slot: ModelSlot) -> Watched:
        model, version = slot.name, slot.current.model.version
        registry = self.state.registry
        watch = ChampionWatch(
            policy_of_version(registry, model, version), baseline_of_version(registry, model, version)
        )
        stored = load_stored(path, model)
        if stored is not None and stored["version"] == str(version):
            saved = stored["state"]
            watch.restore(saved.get("watch") or {})
            cursor = LogCursor(**saved.get("cursor", {}))
            alarm = stored["alarm"]
            log.info("%s v%s: champion watch resumed%s", model, version, " (alarmed)" if alarm else "")
        else:
            cursor, alarm = start_cursor(path), None
            store(path, model, str(version), {"watch": watch.state(), "cursor": vars(cursor)}, None)
        if alarm is not None:
            self.alarm_gauge.labels(model, str(version)).set(1)
        return Watched(model, version, watch, cursor, slot.answered, slot.failed, alarm)

    async def _step(self, path: Path, slot: ModelSlot, w: Watched) -> None:
        answered, failed = slot.answered - w.answered, slot.failed - w.failed
        w.answered, w.failed = slot.answered, slot.failed
        batch = await asyncio.to_thread(read_since, path, w.model, str(w.version), w.cursor)
        seen = answered + failed + len(batch.requests) + len(batch.correct)
        watch = w.watch
        watch.requests(answered=max(0, answered), failed=max(0, failed))
        ood: list[tuple[int, int]] = []
        for rows, confidence, flag, flagged in batch.requests:
            if confidence is not None:
                watch.confidence(confidence)
            if flagged is not None:
                ood.append((flagged, rows))
            elif flag is not None and rows == 1:
                ood.append((int(flag), 1))
        watch.ood_many(ood)
        right = sum(batch.correct)
        watch.labels(right=right, wrong=len(batch.correct) - right)
        w.cursor = batch.cursor
        alarm = watch.alarm()
        if alarm is not None:
            await self._alarm(path, slot, w, alarm)
        elif seen:
            await asyncio.to_thread(
                store, path, w.model, str(w.version), {"watch": watch.state(), "cursor": vars(w.cursor)}, None
            )

    async def _alarm(self, path: Path, slot: ModelSlot, w: Watched, alarm: WatchAlarm) -> None:
        statistics = json.dumps(alarm.statistics, allow_nan=False, default=str, sort_keys=True)
        action = w.watch.policy.on_champion_alarm
        outcome = "alarm only (the policy's on_champion_alarm is 'alarm')"
        rolled_to: int | None = None
        if action == "rollback":
            try:
                rolled_to = await asyncio.to_thread(
                    self.state.registry.rollback,
                    w.model,
                    reason=f"champion watch: {alarm.reason}; statistics: {statistics}",
                )
                outcome = f"rolled back to version {rolled_to}"
            except ModelyardError as exc:
                outcome = f"alarm only: the champion could not be rolled back ({first_line(exc)})"
        w.alarm = {
            "at_unix_s": time.time(),
            "signals": list(alarm.signals),
            "reason": alarm.reason,
            "outcome": outcome,
            "statistics": alarm.statistics,
        }
        self.alarm_gauge.labels(w.model, str(w.version)).set(1)
        log.error("%s v%s: %s; %s", w.model, w.version, alarm.reason, outcome)
        await asyncio.to_thread(
            store,
            path,
            w.model,
            str(w.version),
            {"watch": w.watch.state(), "cursor": vars(w.cursor)},
            w.alarm,
        )
        if rolled_to is not None and not self.state.shutting_down:
            await self.state._follow(
                slot
            )  # swap the earlier version in now, whether or not aliases are followed

    def status(self) -> list[dict[str, Any]]:
        """Each watched champion's signals and alarm, for the dashboard and the API."""
        return [
            {
                "model": w.model,
                "version": w.version,
                "alarm": w.alarm,
                "statistics": w.watch.statistics(),
                "on_champion_alarm": w.watch.policy.on_champion_alarm,
                "watch_alpha": w.watch.policy.watch_alpha,
            }
            for w in self.watched.values()
        ]
