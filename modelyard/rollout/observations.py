"""What a rollout saw, in the prediction log (``monitor.db``): table ``rollout_predictions``.

One row per request the challenger was asked, under the request's own id (the id the client got and labels
name): ``returned`` 0 for a shadow copy (answered off the response path, never returned) and 1 for a canary
request the challenger answered; ``version`` the challenger, ``champion_version`` the champion; ``error``,
``latency_ms`` (the challenger's time in its batcher), ``flip`` (shadow: the predicted classes differ), both
versions' predicted classes (JSON lists; the champion's from its answer in shadow mode, from a copy run off the
response path in canary mode, null when that copy was dropped), and the challenger's output summary
(:func:`modelyard.monitor.summary.summarize_outputs`); where the champion's answer to the same request is
known, its ``champion_confidence`` and ``champion_ood_flag`` (each version's own calibration and OOD rule) and,
in shadow mode, ``kl`` (:func:`mean_kl`). The table lives beside ``predictions`` (whose request ids are unique:
a shadowed request's champion row stays there, and its logged inputs are what the rollout's drift look reads,
:func:`logged_inputs`), and is created on first use; a table of an earlier release gains the newer columns
(``ALTER TABLE ... ADD COLUMN``, null in its old rows).

A restarted server rebuilds a rollout's controller from these rows (:func:`replay`) and its paired accuracy
from the labels posted for them (:func:`labelled_pairs`).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Generator, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

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
    ood_flag INTEGER,
    champion_confidence REAL,
    champion_ood_flag INTEGER,
    kl REAL
)""",
    "CREATE INDEX IF NOT EXISTS rollout_predictions_rollout ON rollout_predictions(rollout_id, seq)",
    "CREATE INDEX IF NOT EXISTS rollout_predictions_request ON rollout_predictions(request_id)",
)
# columns added after the table's first release: added to an existing table when missing
ADDED_COLUMNS = (("champion_confidence", "REAL"), ("champion_ood_flag", "INTEGER"), ("kl", "REAL"))
KL_CAP_NATS = 1.0


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
    champion_confidence: float | None = None
    champion_ood_flag: bool | None = None
    kl: float | None = None

    def observation(self) -> Observation:
        """The controller's observation of this request (the paired values where both answers are known)."""
        return observation_of(
            error=self.error,
            latency_ms=self.latency_ms,
            flip=self.flip,
            kl=self.kl,
            confidence=self.confidence,
            champion_confidence=self.champion_confidence,
            ood_flag=self.ood_flag,
            champion_ood_flag=self.champion_ood_flag,
        )


def observation_of(
    *,
    error: bool,
    latency_ms: float | None,
    flip: bool | None,
    kl: float | None,
    confidence: float | None,
    champion_confidence: float | None,
    ood_flag: bool | None,
    champion_ood_flag: bool | None,
) -> Observation:
    """An observation from a row's columns: a failed request pairs nothing."""
    paired = not error
    return Observation(
        error=error,
        latency_ms=latency_ms,
        flip=flip,
        kl=kl if paired else None,
        confidence_drop=confidence_drop(champion_confidence, confidence) if paired else None,
        ood_increase=ood_increase(champion_ood_flag, ood_flag) if paired else None,
    )


def confidence_drop(champion: float | None, challenger: float | None) -> float | None:
    """Champion minus challenger confidence, clipped to [-1, 1] (None unless both are known, or when the
    champion's is not a number; a challenger's that is not a number counts as the largest drop)."""
    if champion is None or challenger is None or not math.isfinite(champion):
        return None
    if not math.isfinite(challenger):
        return 1.0
    return min(1.0, max(-1.0, float(champion) - float(challenger)))


def ood_increase(champion: bool | None, challenger: bool | None) -> float | None:
    """Challenger minus champion OOD flag: -1, 0 or 1 (None unless both versions have an OOD rule)."""
    if champion is None or challenger is None:
        return None
    return float(bool(challenger)) - float(bool(champion))


def class_probabilities(outputs: Mapping[str, Any], temperature: float = 1.0) -> NDArray[np.float64] | None:
    """A classifier answer's calibrated class probabilities (rows, classes): its ``probabilities`` (softmax of
    the logits over the version's temperature, as the server computes them), else the softmax of its
    ``logits`` over ``temperature``; None for an embedder."""
    probs = outputs.get("probabilities")
    if probs is not None:
        p = np.asarray(probs, dtype=np.float64)
        return p if p.ndim == 2 and p.shape[0] > 0 else None
    logits = outputs.get("logits")
    if logits is None:
        return None
    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        return None
    z = z / temperature
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float64)


def mean_kl(champion: NDArray[np.float64] | None, challenger: NDArray[np.float64] | None) -> float | None:
    """KL(champion || challenger) in nats, per row of two (rows, classes) probability arrays, averaged over the
    rows and capped at ``KL_CAP_NATS`` (1 nat: a class the challenger gives probability 0 would make it
    infinite, and so does a challenger's answer that is not a number); None when the shapes differ or the
    champion's answer is not a number."""
    if champion is None or challenger is None or champion.shape != challenger.shape:
        return None
    if not np.isfinite(champion).all():
        return None
    if not np.isfinite(challenger).all():
        return KL_CAP_NATS
    p, q = champion, challenger
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    value = float(np.mean(terms.sum(axis=1)))  # +inf where q = 0 and p > 0: capped below
    return min(KL_CAP_NATS, max(0.0, value))


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
    have = {str(r[1]) for r in conn.execute("PRAGMA table_info(rollout_predictions)").fetchall()}
    for name, kind in ADDED_COLUMNS:
        if name not in have:
            try:
                conn.execute(f"ALTER TABLE rollout_predictions ADD COLUMN {name} {kind}")
            except sqlite3.OperationalError as exc:  # another connection added it first
                if "duplicate column" not in str(exc):
                    raise
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
            r.champion_confidence,
            None if r.champion_ood_flag is None else int(r.champion_ood_flag),
            r.kl,
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
                "champion_predicted, outputs, confidence, ood_score, ood_flag, champion_confidence, "
                "champion_ood_flag, kl) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
            "SELECT error, latency_ms, flip, kl, confidence, champion_confidence, ood_flag, champion_ood_flag "
            "FROM rollout_predictions WHERE rollout_id = ? ORDER BY seq",
            (rollout_id,),
        ).fetchall()
    finally:
        conn.close()
    return [
        observation_of(
            error=bool(e),
            latency_ms=None if lat is None else float(lat),
            flip=None if f is None else bool(f),
            kl=None if kl is None else float(kl),
            confidence=None if conf is None else float(conf),
            champion_confidence=None if c_conf is None else float(c_conf),
            ood_flag=None if ood is None else bool(ood),
            champion_ood_flag=None if c_ood is None else bool(c_ood),
        )
        for e, lat, f, kl, conf, c_conf, ood, c_ood in rows
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


def logged_inputs(path: Path, rollout_id: int) -> Generator[tuple[str, dict[str, Any]], None, None]:
    """``(logged version, inputs summary)`` of the rollout's requests whose inputs the prediction log holds,
    in the rollout's order (its rows joined by request id to ``predictions``); empty without that table.
    Close the generator when done early (``contextlib.closing``)."""
    if not path.exists():
        return
    conn = _open(path)
    try:
        try:
            cursor = conn.execute(
                "SELECT p.version, p.inputs FROM rollout_predictions r JOIN predictions p "
                "ON p.request_id = r.request_id WHERE r.rollout_id = ? ORDER BY r.seq",
                (rollout_id,),
            )
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return
            raise
        for version, inputs in cursor:
            try:
                doc = json.loads(inputs)
            except (TypeError, ValueError):
                continue
            if isinstance(doc, dict):
                yield str(version), doc
    finally:
        conn.close()
