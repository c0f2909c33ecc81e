"""SQLite plumbing of the prediction log (``monitor.db``): the schema, connections (WAL, busy timeout), the
record of served versions, and retention.

Connections use ``isolation_level=None`` and explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``. The tables are
described in :mod:`modelyard.monitor.log`; ``feedback`` is append-only (triggers refuse UPDATE and DELETE),
``predictions`` rows are never updated and only deleted by :func:`prune`, which also keeps the rollouts' table
``rollout_predictions`` (:mod:`modelyard.rollout.observations`) within the same limits.
"""

from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from modelyard.errors import DataError

SCHEMA_VERSION = 1
BUSY_TIMEOUT_S = 5.0
FILENAME = "monitor.db"
# what prune() keeps within the retention limits (``rollout_predictions``: see modelyard.rollout.observations)
PRUNED_TABLES = ("predictions", "rollout_predictions")

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL UNIQUE,
    at_unix_s REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    rows INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    outputs TEXT NOT NULL,
    confidence REAL,
    ood_score REAL,
    ood_flag INTEGER,
    latency_ms REAL
);
CREATE INDEX IF NOT EXISTS predictions_model_time ON predictions(model, version, at_unix_s);
CREATE INDEX IF NOT EXISTS predictions_time ON predictions(at_unix_s);
CREATE TABLE IF NOT EXISTS feedback (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    label TEXT NOT NULL,
    at_unix_s REAL NOT NULL,
    source TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS feedback_request ON feedback(request_id, seq);
CREATE TABLE IF NOT EXISTS served_versions (
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    task TEXT NOT NULL,
    classes TEXT,
    first_served_unix_s REAL NOT NULL,
    PRIMARY KEY (model, version)
);
CREATE TRIGGER IF NOT EXISTS predictions_no_update BEFORE UPDATE ON predictions
    BEGIN SELECT RAISE(ABORT, 'the prediction log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_no_update BEFORE UPDATE ON feedback
    BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
CREATE TRIGGER IF NOT EXISTS feedback_no_delete BEFORE DELETE ON feedback
    BEGIN SELECT RAISE(ABORT, 'feedback is append-only'); END;
"""

INSERT_PREDICTION = (
    "INSERT OR IGNORE INTO predictions (request_id, at_unix_s, model, version, endpoint, rows, inputs, "
    "outputs, confidence, ood_score, ood_flag, latency_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def default_path(home: Path | str) -> Path:
    """Where the log lives by default: ``<home>/monitor.db``, beside ``registry.db``."""
    return Path(home) / FILENAME


# ---------------------------------------------------------------------------------------------------
# connections and retention


def connect(path: Path, *, timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A read-write connection to the log at ``path`` (created with its schema when missing), WAL mode,
    ``synchronous = NORMAL``: a commit survives the process being killed (it is in the WAL file); only a power
    loss can take the last commits. Raises DataError when the file is not a usable prediction log."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot create the folder of the prediction log {path}: {e}") from e
    conn = sqlite3.connect(path, isolation_level=None, timeout=timeout_s, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
        conn.execute("PRAGMA synchronous = NORMAL")
        ready = (
            conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            and conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        )
        if not ready:
            with _init_lock(path):  # first opens take turns: the WAL switch does not wait for a lock
                conn.execute("PRAGMA journal_mode = WAL")
                _ensure_schema(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise DataError(f"cannot open the prediction log {path}: {e}; is it a modelyard monitor.db?") from e
    except BaseException:
        conn.close()
        raise
    return conn


@contextlib.contextmanager
def _init_lock(path: Path) -> Iterator[None]:
    import fcntl

    with open(path.with_name(f".{path.name}.init-lock"), "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found == SCHEMA_VERSION:
        return
    if found > SCHEMA_VERSION:
        raise DataError(
            f"{path} has schema {found}, newer than this modelyard's {SCHEMA_VERSION}; upgrade modelyard"
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        for stmt in SCHEMA.split(";\n"):  # a trigger's inner ';' is never at the end of a line
            if stmt.strip():
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def describe_version(
    conn: sqlite3.Connection, model: str, version: str, task: str, classes: Sequence[str] | None
) -> None:
    """Record a served version's task and classes (once; a version never changes)."""
    conn.execute(
        "INSERT OR IGNORE INTO served_versions (model, version, task, classes, first_served_unix_s) "
        "VALUES (?, ?, ?, ?, ?)",
        (model, version, task, None if classes is None else json.dumps(list(classes)), time.time()),
    )


def prune(
    conn: sqlite3.Connection,
    *,
    max_rows: int | None,
    max_days: float | None,
    now_unix_s: float | None = None,
    chunk: int = 5000,
) -> int:
    """Delete the oldest predictions beyond ``max_rows`` and those older than ``max_days``, in chunks of at
    most ``chunk`` rows per transaction (a writer never waits long); returns how many were deleted. The
    challenger's rows of rollouts (``rollout_predictions``, when that table exists) are kept by the same limits,
    counted on their own. Feedback is never deleted: labels of the predictions kept stay joined, labels of
    deleted ones stay in the table."""
    now = time.time() if now_unix_s is None else now_unix_s
    cut_time = now - max_days * 86400.0 if max_days is not None else None
    if max_rows is None and cut_time is None:
        return 0
    deleted = 0
    for table in PRUNED_TABLES:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone():
            deleted += _prune_table(conn, table, max_rows=max_rows, cut_time=cut_time, chunk=chunk)
    return deleted


def _prune_table(
    conn: sqlite3.Connection, table: str, *, max_rows: int | None, cut_time: float | None, chunk: int
) -> int:
    """:func:`prune` on one table (``seq`` and ``at_unix_s`` columns, rows never updated): the rows to delete
    are chosen outside the write lock, which is held only for deleting them."""
    deleted = 0
    while True:
        cut_seq = None
        if max_rows is not None:
            row = conn.execute(
                f"SELECT seq FROM {table} ORDER BY seq DESC LIMIT 1 OFFSET ?", (max_rows,)
            ).fetchone()
            cut_seq = None if row is None else int(row[0])
        if cut_seq is None and cut_time is None:
            return deleted
        where = "(seq <= ? OR at_unix_s < ?)"
        bounds = (-1 if cut_seq is None else cut_seq, -math.inf if cut_time is None else cut_time)
        found = conn.execute(
            f"SELECT COUNT(*), MAX(seq) FROM (SELECT seq FROM {table} WHERE {where} ORDER BY seq LIMIT ?)",
            (*bounds, chunk),
        ).fetchone()
        if not found[0]:
            return deleted
        conn.execute("BEGIN IMMEDIATE")
        try:  # new rows get higher seqs; a concurrent prune may have deleted some of these already
            cur = conn.execute(f"DELETE FROM {table} WHERE seq <= ? AND {where}", (int(found[1]), *bounds))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        deleted += cur.rowcount
        if found[0] < chunk:
            return deleted
