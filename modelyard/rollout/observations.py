"""What a rollout saw, in the prediction log (``monitor.db``): table ``rollout_predictions``.

One row per request the challenger was asked, under the request's own id (the id the client got and labels
name): ``returned`` 0 for a shadow copy (answered off the response path, never returned) and 1 for a canary
request the challenger answered; ``version`` the challenger, ``champion_version`` the champion; ``error``,
``latency_ms`` (the challenger's time in its batcher), ``flip`` (shadow: the predicted classes differ), both
versions' predicted classes (JSON lists; the champion's from its answer in shadow mode, from a copy run off the
response path in canary mode, null when that copy was dropped), and the challenger's output summary
(:func:`modelyard.monitor.summary.summarize_outputs`). The table lives beside ``predictions`` (whose request ids
are unique: a shadowed request's champion row stays there), and is created on first use.

A restarted server rebuilds a rollout's controller from these rows (:func:`replay`) and its paired accuracy
from the labels posted for them (:func:`labelled_pairs`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.monitor.db import connect
from modelyard.rollout.decide import Observation

SCHEMA = (
    """CREATE TABLE IF NOT EXISTS rollout_predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout_id INTEGER NOT NULL,
    request_id TEXT NOT NULL,
    at_unix_s REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    champion_version TEXT NOT NULL,
    mode TEXT NOT NULL,
    returned INTEGER NOT NULL,
    error INTEGER NOT NULL,
    latency_ms REAL,
    flip INTEGER,
    challenger_predicted TEXT,
    champion_predicted TEXT,
    outputs TEXT,
    confidence REAL,
    ood_score REAL,
    ood_flag INTEGER
)""",
    "CREATE INDEX IF NOT EXISTS rollout_predictions_rollout ON rollout_predictions(rollout_id, seq)",
    "CREATE INDEX IF NOT EXISTS rollout_predictions_request ON rollout_predictions(request_id)",
)


@dataclass(frozen=True)
class RolloutRow:
    """One row of ``rollout_predictions`` (see the module docstring)."""

    rollout_id: int
    request_id: str
    at_unix_s: float
    model: str
    version: str
    champion_version: str
    mode: str
    returned: bool
    error: bool
    latency_ms: float | None
    flip: bool | None
    challenger_predicted: list[int] | None
    champion_predicted: list[int] | None
    outputs_json: str | None = None
    confidence: float | None = None
    ood_score: float | None = None
    ood_flag: bool | None = None

    def observation(self) -> Observation:
        return Observation(error=self.error, latency_ms=self.latency_ms, flip=self.flip)


def predicted_classes(outputs: dict[str, Any]) -> list[int] | None:
    """A classifier answer's predicted class per row (None for an embedder)."""
    logits = outputs.get("logits")
    if logits is None:
        return None
    arr = np.asarray(logits)
    if arr.ndim != 2 or arr.shape[0] == 0:
        return None
    return [int(i) for i in np.argmax(arr, axis=1)]


def _open(path: Path) -> sqlite3.Connection:
    conn = connect(path)
    for stmt in SCHEMA:
        conn.execute(stmt)
    return conn


def _json(value: Sequence[int] | None) -> str | None:
    return None if value is None else json.dumps(list(value))


def write_rows(path: Path, rows: Iterable[RolloutRow]) -> int:
    """Append ``rows`` in one transaction; returns how many."""
    batch = [
        (
            r.rollout_id,
            r.request_id,
            r.at_unix_s,
            r.model,
            r.version,
            r.champion_version,
            r.mode,
            int(r.returned),
            int(r.error),
            r.latency_ms,
            None if r.flip is None else int(r.flip),
            _json(r.challenger_predicted),
            _json(r.champion_predicted),
            r.outputs_json,
            r.confidence,
            r.ood_score,
            None if r.ood_flag is None else int(r.ood_flag),
        )
        for r in rows
    ]
    if not batch:
        return 0
    conn = _open(path)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "INSERT INTO rollout_predictions (rollout_id, request_id, at_unix_s, model, version, "
                "champion_version, mode, returned, error, latency_ms, flip, challenger_predicted, "
                "champion_predicted, outputs, confidence, ood_score, ood_flag) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                batch,
            )
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    finally:
        conn.close()
    return len(batch)


def replay(path: Path, rollout_id: int) -> list[Observation]:
    """The observations a rollout made, in order, from its logged rows (empty when there are none)."""
    if not path.exists():
        return []
    conn = _open(path)
    try:
        rows = conn.execute(
            "SELECT error, latency_ms, flip FROM rollout_predictions WHERE rollout_id = ? ORDER BY seq",
            (rollout_id,),
        ).fetchall()
    finally:
        conn.close()
    return [
        Observation(
            error=bool(e), latency_ms=None if lat is None else float(lat), flip=None if f is None else bool(f)
        )
        for e, lat, f in rows
    ]


def _one(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if len(value) == 1 else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def labelled_pairs(path: Path, rollout_id: int, *, seen: set[str]) -> list[tuple[str, bool, bool]]:
    """``(request id, challenger correct, champion correct)`` for one-row requests of the rollout that both
    versions answered and that have a label (the latest), leaving out the ids in ``seen``."""
    if not path.exists():
        return []
    conn = _open(path)
    try:
        rows = conn.execute(
            "SELECT r.request_id, r.challenger_predicted, r.champion_predicted, f.label FROM rollout_predictions r "
            "JOIN feedback f ON f.seq = (SELECT MAX(g.seq) FROM feedback g WHERE g.request_id = r.request_id) "
            "WHERE r.rollout_id = ? AND r.error = 0 AND r.challenger_predicted IS NOT NULL "
            "AND r.champion_predicted IS NOT NULL ORDER BY r.seq",
            (rollout_id,),
        ).fetchall()
    finally:
        conn.close()
    out = []
    for rid, ch, champ, label in rows:
        if rid in seen:
            continue
        ch_pred, champ_pred, truth = json.loads(ch), json.loads(champ), _one(json.loads(label))
        if truth is None or len(ch_pred) != 1 or len(champ_pred) != 1:
            continue
        out.append((str(rid), ch_pred[0] == truth, champ_pred[0] == truth))
    return out
