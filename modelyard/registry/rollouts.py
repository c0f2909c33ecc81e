"""Rollouts in the registry database: the ``rollouts`` table (schema in :mod:`modelyard.registry.db`) and the
audit-log rows of their start and end.

One row per rollout: the model, the champion it started against, the challenger, the mode, the policy (JSON),
the state (``running``, then ``promoted``, ``rolled_back``, ``inconclusive`` or ``stopped``), the requests seen,
the reason and the statistics of its end, and the champion's latency p99 and error rate measured by the server
before the comparison started (so a restarted server resumes against the same baseline). A unique index allows
one running rollout per model. Every change is one ``BEGIN IMMEDIATE`` transaction; the end of a rollout and its
alias move (a promotion) or audit-log row (any other end) commit together, and only while the row is still
running, so two servers deciding at once end it once. The validation users see is in
:mod:`modelyard.rollout.control`; these functions only re-check what can race.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from modelyard.errors import RegistryError
from modelyard.registry.db import read_snapshot, transaction
from modelyard.registry.store import Registry, _now
from modelyard.security.trust import current_user

END_ACTIONS = {
    "rolled_back": "rollout-rollback",
    "inconclusive": "rollout-inconclusive",
    "stopped": "rollout-stopped",
}

_COLUMNS = (
    "r.id, m.name AS model, r.champion, r.challenger, r.mode, r.percent, r.sticky_header, r.policy, r.state, "
    "r.started_at, r.ended_at, r.requests, r.reason, r.statistics, r.champion_p99_ms, r.champion_error_rate, "
    "r.actor"
)


def _row(r: sqlite3.Row) -> dict[str, Any]:
    out = dict(r)
    out["policy"] = json.loads(out["policy"])
    out["statistics"] = json.loads(out["statistics"])
    return out


def _champion(conn: sqlite3.Connection, model_id: int) -> int | None:
    row = conn.execute(
        "SELECT version FROM aliases WHERE model_id = ? AND alias = 'champion'", (model_id,)
    ).fetchone()
    return None if row is None else int(row[0])


def insert_rollout(
    registry: Registry,
    model: str,
    *,
    challenger: int,
    mode: str,
    percent: float | None,
    sticky_header: str | None,
    policy: dict[str, Any],
    reason: str,
) -> int:
    """Start a rollout of ``challenger`` against the current champion; returns its id. RegistryError when the
    model, the version or the champion is missing, the version is the champion, or a rollout is running."""
    with registry._connect(write=True) as conn, transaction(conn):
        model_id = Registry._model_id(conn, model)
        Registry._check_version(conn, model, model_id, challenger)
        champion = _champion(conn, model_id)
        if champion is None:
            raise RegistryError(f"model {model!r} has no champion to compare with; promote a version first")
        if champion == challenger:
            raise RegistryError(
                f"version {challenger} is already the champion of {model!r}; nothing to roll out"
            )
        running = conn.execute(
            "SELECT id, challenger FROM rollouts WHERE model_id = ? AND state = 'running'", (model_id,)
        ).fetchone()
        if running is not None:
            raise RegistryError(
                f"a rollout of {model!r} is already running (version {running[1]}); stop it first "
                f"(modelyard rollout stop {model})"
            )
        cur = conn.execute(
            "INSERT INTO rollouts (model_id, champion, challenger, mode, percent, sticky_header, policy, state, "
            "started_at, actor) VALUES (?, ?, ?, ?, ?, ?, ?, 'running', ?, ?)",
            (
                model_id,
                champion,
                challenger,
                mode,
                percent,
                sticky_header,
                json.dumps(policy, sort_keys=True),
                _now(),
                current_user(),
            ),
        )
        Registry._log_event(
            conn,
            model_id,
            "champion",
            action="rollout-start",
            from_version=champion,
            to_version=challenger,
            reason=reason,
        )
        return int(cur.lastrowid or 0)


def list_rollouts(registry: Registry, model: str | None = None) -> list[dict[str, Any]]:
    """Every rollout (of ``model`` when given), newest first, as dicts (policy and statistics decoded)."""
    with registry._connect(write=False) as conn, read_snapshot(conn):
        sql = f"SELECT {_COLUMNS} FROM rollouts r JOIN models m ON m.id = r.model_id"
        args: tuple[Any, ...] = ()
        if model is not None:
            sql += " WHERE r.model_id = ?"
            args = (Registry._model_id(conn, model),)
        return [_row(r) for r in conn.execute(sql + " ORDER BY r.id DESC", args)]


def get_rollout(registry: Registry, rollout_id: int) -> dict[str, Any] | None:
    with registry._connect(write=False) as conn:
        r = conn.execute(
            f"SELECT {_COLUMNS} FROM rollouts r JOIN models m ON m.id = r.model_id WHERE r.id = ?",
            (rollout_id,),
        ).fetchone()
        return None if r is None else _row(r)


def record_progress(
    registry: Registry,
    rollout_id: int,
    *,
    requests: int,
    statistics: list[dict[str, Any]],
    champion_p99_ms: float | None = None,
    champion_error_rate: float | None = None,
) -> None:
    """The running rollout's requests and statistics so far (and its champion baseline, once)."""
    with registry._connect(write=True) as conn, transaction(conn):
        conn.execute(
            "UPDATE rollouts SET requests = ?, statistics = ?, "
            "champion_p99_ms = COALESCE(champion_p99_ms, ?), champion_error_rate = COALESCE(champion_error_rate, ?) "
            "WHERE id = ? AND state = 'running'",
            (
                int(requests),
                json.dumps(statistics, allow_nan=False, default=str),
                champion_p99_ms,
                champion_error_rate,
                rollout_id,
            ),
        )


def end_rollout(
    registry: Registry,
    rollout_id: int,
    *,
    state: str,
    reason: str,
    requests: int | None = None,
    statistics: list[dict[str, Any]] | None = None,
) -> dict[str, Any] | None:
    """End a running rollout: ``promoted`` moves the champion alias to the challenger (a ``promote`` row),
    any other state leaves it and writes a ``rollout-*`` row; both with ``reason``. Returns the ended row, or
    None when it was not running any more (ended by someone else). A promotion whose champion moved since the
    start promotes nothing and ends the rollout as ``stopped``."""
    if state != "promoted" and state not in END_ACTIONS:
        raise RegistryError(f"a rollout ends as promoted, {', '.join(END_ACTIONS)}; got {state!r}")
    with registry._connect(write=True) as conn, transaction(conn):
        row = conn.execute(
            "SELECT model_id, champion, challenger, requests, statistics FROM rollouts WHERE id = ? AND "
            "state = 'running'",
            (rollout_id,),
        ).fetchone()
        if row is None:
            return None
        model_id, champion, challenger = int(row[0]), int(row[1]), int(row[2])
        current = _champion(conn, model_id)
        if state == "promoted" and current != champion:
            state = "stopped"
            reason = (
                f"the champion moved to version {current} during the rollout; nothing promoted ({reason})"
            )
        stats_json = row[4] if statistics is None else json.dumps(statistics, allow_nan=False, default=str)
        conn.execute(
            "UPDATE rollouts SET state = ?, ended_at = ?, reason = ?, requests = ?, statistics = ? WHERE id = ?",
            (
                state,
                _now(),
                reason,
                int(row[3]) if requests is None else int(requests),
                stats_json,
                rollout_id,
            ),
        )
        if state == "promoted":
            Registry._move_alias(
                conn,
                model_id,
                "champion",
                from_version=champion,
                to_version=challenger,
                action="promote",
                reason=reason,
            )
        else:
            Registry._log_event(
                conn,
                model_id,
                "champion",
                action=END_ACTIONS[state],
                from_version=challenger,
                to_version=current if current is not None else champion,
                reason=reason,
            )
    ended = get_rollout(registry, rollout_id)
    if state == "promoted" and ended is not None:
        registry.aliases_moved(str(ended["model"]))
    return ended
