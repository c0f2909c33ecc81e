"""The prediction log: ``monitor.db`` (SQLite, WAL) beside the registry; its rows and the read API.

Tables:

- ``predictions``: one row per logged request: ``request_id`` (unique), ``at_unix_s``, ``model``,
  ``version``, ``endpoint`` (``infer`` or ``predict``), ``rows`` (items in the request), ``inputs`` and
  ``outputs`` (bounded JSON summaries, see :mod:`modelyard.monitor.summary`), ``confidence`` (the mean over the
  request's rows of the largest calibrated probability; classifiers only), ``ood_score`` (the largest over the
  rows) and ``ood_flag`` (any row flagged; both only when the model has an OOD rule), ``latency_ms`` (the
  server's whole request). Rows are never updated; retention deletes the oldest
  (:func:`modelyard.monitor.db.prune`).
- ``feedback``: labels posted later by request id (``request_id``, ``label`` as JSON, ``at_unix_s``,
  ``source``). Append-only: triggers refuse UPDATE and DELETE. A request labelled twice keeps both rows; the
  readers use the latest (highest ``seq``).
- ``served_versions``: the task and class names of every version the server logged for, so labels can be
  checked against the classes of the version that answered.

The server writes through :class:`~modelyard.monitor.writer.PredictionLogWriter` (a background thread);
labels arrive through :mod:`modelyard.monitor.feedback`. Consumers (drift monitors, the dashboard) read with
:class:`PredictionLog`, which never creates the file. The schema and connections are in
:mod:`modelyard.monitor.db`.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from modelyard.errors import DataError
from modelyard.monitor.db import connect, default_path

__all__ = [
    "Feedback",
    "Labelled",
    "Prediction",
    "PredictionLog",
    "PredictionRecord",
    "ServedVersion",
    "default_path",
    "input_rows",
    "row_confidences",
]

# ---------------------------------------------------------------------------------------------------
# rows


@dataclass(frozen=True)
class PredictionRecord:
    """One request as the server logs it (the JSON summaries already encoded, so a queued record is small)."""

    request_id: str
    at_unix_s: float
    model: str
    version: str
    endpoint: str
    rows: int
    inputs_json: str
    outputs_json: str
    confidence: float | None
    ood_score: float | None
    ood_flag: bool | None
    latency_ms: float | None

    def row(self) -> tuple[Any, ...]:
        return (
            self.request_id,
            self.at_unix_s,
            self.model,
            self.version,
            self.endpoint,
            self.rows,
            self.inputs_json,
            self.outputs_json,
            self.confidence,
            self.ood_score,
            None if self.ood_flag is None else int(self.ood_flag),
            self.latency_ms,
        )


@dataclass(frozen=True)
class Prediction:
    """A logged request, read back. ``inputs`` / ``outputs`` are the summaries (see
    :mod:`modelyard.monitor.summary`); ``predicted`` the predicted class of each summarized row."""

    seq: int
    request_id: str
    at_unix_s: float
    model: str
    version: str
    endpoint: str
    rows: int
    inputs: Mapping[str, Any]
    outputs: Mapping[str, Any]
    confidence: float | None
    ood_score: float | None
    ood_flag: bool | None
    latency_ms: float | None

    @property
    def predicted(self) -> list[int] | None:
        got = self.outputs.get("predicted")
        return [int(v) for v in got] if isinstance(got, list) else None

    def values(self, name: str) -> list[list[Any]] | None:
        """The logged values of tabular input ``name`` (its first rows, one list per row); None when the
        summary kept statistics only or the input is not logged."""
        entry = (self.inputs.get("inputs") or {}).get(name)
        if not isinstance(entry, Mapping) or entry.get("kind") != "values":
            return None
        return [list(row) for row in entry["values"]]


@dataclass(frozen=True)
class Feedback:
    """One label posted for a request (``label``: a class index for a classifier whose classes are known,
    else the value given; a list when the request had several rows)."""

    seq: int
    request_id: str
    label: Any
    at_unix_s: float
    source: str


@dataclass(frozen=True)
class Labelled:
    """A logged request with its latest label."""

    prediction: Prediction
    feedback: Feedback

    @property
    def label(self) -> Any:
        return self.feedback.label

    @property
    def correct(self) -> bool | None:
        """Whether a one-row classifier request predicted its label (None when that cannot be said)."""
        predicted = self.prediction.predicted
        if predicted is None or self.prediction.rows != 1 or not predicted:
            return None
        label = self.label[0] if isinstance(self.label, list) and len(self.label) == 1 else self.label
        return isinstance(label, int) and not isinstance(label, bool) and label == predicted[0]


@dataclass(frozen=True)
class ServedVersion:
    """A version the server logged for: its task and, for a classifier, its class names (index order)."""

    model: str
    version: str
    task: str
    classes: tuple[str, ...] | None
    first_served_unix_s: float


# ---------------------------------------------------------------------------------------------------
# reading


def input_rows(predictions: Sequence[Prediction], name: str) -> np.ndarray:
    """The logged rows of tabular input ``name`` across ``predictions``, stacked: shape (rows, features), in
    log order; requests whose summary kept statistics only are left out. For drift checks on a window."""
    rows = [np.asarray(r, dtype=np.float64).ravel() for p in predictions for r in p.values(name) or []]
    if not rows:
        return np.zeros((0, 0))
    return np.stack(rows)


def row_confidences(predictions: Sequence[Prediction]) -> np.ndarray:
    """The largest calibrated probability of every logged row (a classifier's), in log order."""
    got = [float(c) for p in predictions for c in p.outputs.get("confidence") or []]
    return np.asarray(got, dtype=np.float64)


def _when(value: float | datetime | None) -> float | None:
    if value is None or isinstance(value, float | int):
        return value
    return value.timestamp()


class PredictionLog:
    """Read access to a prediction log (a missing file reads as empty and is not created).

    Every method returns frozen dataclasses, oldest first. ``since`` / ``until`` take unix seconds or an aware
    datetime; ``last_n`` keeps the most recent ``n`` of what matches."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def at_home(cls, home: Path | str) -> PredictionLog:
        return cls(default_path(home))

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection | None]:
        if not self.path.exists():
            yield None
            return
        conn = connect(self.path)
        try:
            conn.execute("PRAGMA query_only = ON")
            yield conn
        finally:
            conn.close()

    def window(
        self,
        model: str,
        *,
        version: str | int | None = None,
        last_n: int | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
    ) -> list[Prediction]:
        """The logged requests of ``model`` (one version when given) in a stretch of time."""
        sql, args = _select("SELECT p.* FROM predictions p", model, version, since, until, last_n)
        with self._reading() as conn:
            rows = [] if conn is None else conn.execute(sql, args).fetchall()
        return [_prediction(r) for r in rows]

    def labelled(
        self,
        model: str,
        *,
        version: str | int | None = None,
        last_n: int | None = None,
        since: float | datetime | None = None,
        until: float | datetime | None = None,
    ) -> list[Labelled]:
        """The logged requests of ``model`` that have a label, each with its latest label (``since`` /
        ``until`` / ``last_n`` select by the request's time)."""
        sql, args = _select(
            "SELECT p.*, f.seq AS f_seq, f.label AS f_label, f.at_unix_s AS f_at, f.source AS f_source "
            "FROM predictions p JOIN feedback f ON f.seq = (SELECT MAX(seq) FROM feedback g WHERE "
            "g.request_id = p.request_id)",
            model,
            version,
            since,
            until,
            last_n,
        )
        with self._reading() as conn:
            rows = [] if conn is None else conn.execute(sql, args).fetchall()
        return [
            Labelled(
                _prediction(r[:13]),
                Feedback(int(r[13]), str(r[1]), json.loads(r[14]), float(r[15]), str(r[16])),
            )
            for r in rows
        ]

    def get(self, request_id: str) -> Prediction | None:
        with self._reading() as conn:
            row = (
                None
                if conn is None
                else conn.execute("SELECT * FROM predictions WHERE request_id = ?", (request_id,)).fetchone()
            )
        return None if row is None else _prediction(row)

    def feedback(self, request_id: str) -> list[Feedback]:
        """Every label posted for ``request_id``, oldest first (the last one is the one that counts)."""
        with self._reading() as conn:
            rows = (
                []
                if conn is None
                else conn.execute(
                    "SELECT seq, request_id, label, at_unix_s, source FROM feedback WHERE request_id = ? "
                    "ORDER BY seq",
                    (request_id,),
                ).fetchall()
            )
        return [Feedback(int(r[0]), str(r[1]), json.loads(r[2]), float(r[3]), str(r[4])) for r in rows]

    def count(self, model: str | None = None) -> tuple[int, int]:
        """``(predictions, feedback rows)`` in the log, for one model's requests when given."""
        with self._reading() as conn:
            if conn is None:
                return 0, 0
            if model is None:
                n = conn.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]
                f = conn.execute("SELECT COUNT(*) FROM feedback").fetchone()[0]
            else:
                n = conn.execute("SELECT COUNT(*) FROM predictions WHERE model = ?", (model,)).fetchone()[0]
                f = conn.execute(
                    "SELECT COUNT(*) FROM feedback f JOIN predictions p ON p.request_id = f.request_id "
                    "WHERE p.model = ?",
                    (model,),
                ).fetchone()[0]
        return int(n), int(f)

    def versions(self) -> list[ServedVersion]:
        with self._reading() as conn:
            rows = (
                []
                if conn is None
                else conn.execute(
                    "SELECT model, version, task, classes, first_served_unix_s FROM served_versions "
                    "ORDER BY model, first_served_unix_s"
                ).fetchall()
            )
        return [
            ServedVersion(
                str(r[0]),
                str(r[1]),
                str(r[2]),
                None if r[3] is None else tuple(json.loads(r[3])),
                float(r[4]),
            )
            for r in rows
        ]


def _select(
    head: str,
    model: str,
    version: str | int | None,
    since: float | datetime | None,
    until: float | datetime | None,
    last_n: int | None,
) -> tuple[str, list[Any]]:
    if last_n is not None and (isinstance(last_n, bool) or not isinstance(last_n, int) or last_n < 1):
        raise DataError(f"last_n must be an integer >= 1 (or None for all), got {last_n!r}")
    where = ["p.model = ?"]
    args: list[Any] = [model]
    if version is not None:
        where.append("p.version = ?")
        args.append(str(version))
    lo, hi = _when(since), _when(until)
    if lo is not None:
        where.append("p.at_unix_s >= ?")
        args.append(lo)
    if hi is not None:
        where.append("p.at_unix_s < ?")
        args.append(hi)
    sql = f"{head} WHERE {' AND '.join(where)} ORDER BY p.seq DESC"
    if last_n is not None:
        sql += " LIMIT ?"
        args.append(last_n)
    return f"SELECT * FROM ({sql}) q ORDER BY q.seq", args


def _prediction(r: Sequence[Any]) -> Prediction:
    return Prediction(
        seq=int(r[0]),
        request_id=str(r[1]),
        at_unix_s=float(r[2]),
        model=str(r[3]),
        version=str(r[4]),
        endpoint=str(r[5]),
        rows=int(r[6]),
        inputs=json.loads(r[7]),
        outputs=json.loads(r[8]),
        confidence=None if r[9] is None else float(r[9]),
        ood_score=None if r[10] is None else float(r[10]),
        ood_flag=None if r[11] is None else bool(r[11]),
        latency_ms=None if r[12] is None else float(r[12]),
    )
