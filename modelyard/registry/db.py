"""SQLite plumbing of the registry: schema, connections (WAL, foreign keys, busy timeout), transactions.

Connections use ``isolation_level=None`` and explicit ``BEGIN IMMEDIATE`` ... ``COMMIT``, so a
transaction is exactly what the code between them does. History tables are append-only: triggers
refuse UPDATE and DELETE on them; only ``aliases`` rows change, and never disappear; ``rollouts`` rows (one per
rollout, see :mod:`modelyard.rollout.control`) change as a rollout progresses and ends, and are never deleted.

Schema versions: 1 (versions, aliases, the alias log), 2 (adds ``rollouts`` and the alias log's ``rollout-*``
actions: a rollout started or ended without moving the champion). A version-1 registry is migrated on its first
write open, in one transaction (the alias log is rebuilt with its rows and ids as they were).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from modelyard.errors import RegistryError

SCHEMA_VERSION = 2
BUSY_TIMEOUT_S = 30.0

_APPEND_ONLY = ("models", "runs", "blobs", "versions", "version_files", "alias_log")

# Alias-log actions: alias moves, then rollout events that leave the alias where it is (from_version: the
# champion at the start, the challenger at the end; to_version: the challenger at the start, the champion kept).
ALIAS_ACTIONS = ("register", "promote", "rollback")
ROLLOUT_ACTIONS = ("rollout-start", "rollout-rollback", "rollout-inconclusive", "rollout-stopped")
_ACTIONS_SQL = ", ".join(f"'{a}'" for a in (*ALIAS_ACTIONS, *ROLLOUT_ACTIONS))

_ALIAS_LOG = f"""
CREATE TABLE IF NOT EXISTS {{name}} (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    model_id INTEGER NOT NULL REFERENCES models(id),
    alias TEXT NOT NULL,
    action TEXT NOT NULL CHECK (action IN ({_ACTIONS_SQL})),
    from_version INTEGER,
    to_version INTEGER NOT NULL,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL,
    run_id TEXT
);"""

SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    model_id INTEGER NOT NULL REFERENCES models(id),
    created TEXT NOT NULL,
    champion TEXT,
    reason TEXT NOT NULL,
    actor TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS blobs (
    sha256 TEXT PRIMARY KEY,
    size_bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS versions (
    model_id INTEGER NOT NULL REFERENCES models(id),
    version INTEGER NOT NULL CHECK (version >= 1),
    candidate TEXT NOT NULL,
    run_id TEXT NOT NULL REFERENCES runs(run_id),
    created TEXT NOT NULL,
    parent_version INTEGER,
    artifact_sha256 TEXT NOT NULL,
    data_sha256 TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    manifest TEXT NOT NULL,
    evidence TEXT NOT NULL,
    passes TEXT NOT NULL,
    PRIMARY KEY (model_id, version),
    UNIQUE (run_id, candidate),
    FOREIGN KEY (model_id, parent_version) REFERENCES versions(model_id, version)
        DEFERRABLE INITIALLY DEFERRED
);
CREATE TABLE IF NOT EXISTS version_files (
    model_id INTEGER NOT NULL,
    version INTEGER NOT NULL,
    path TEXT NOT NULL,
    sha256 TEXT NOT NULL REFERENCES blobs(sha256),
    size_bytes INTEGER NOT NULL,
    PRIMARY KEY (model_id, version, path),
    FOREIGN KEY (model_id, version) REFERENCES versions(model_id, version)
);
CREATE TABLE IF NOT EXISTS aliases (
    model_id INTEGER NOT NULL REFERENCES models(id),
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated TEXT NOT NULL,
    PRIMARY KEY (model_id, alias),
    FOREIGN KEY (model_id, version) REFERENCES versions(model_id, version)
);
"""
    + _ALIAS_LOG.format(name="alias_log")
    + """
CREATE TABLE IF NOT EXISTS rollouts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id INTEGER NOT NULL REFERENCES models(id),
    champion INTEGER NOT NULL,
    challenger INTEGER NOT NULL,
    mode TEXT NOT NULL CHECK (mode IN ('shadow', 'canary')),
    percent REAL,
    sticky_header TEXT,
    policy TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'promoted', 'rolled_back', 'inconclusive', 'stopped')),
    started_at TEXT NOT NULL,
    ended_at TEXT,
    requests INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    statistics TEXT NOT NULL DEFAULT '[]',
    champion_p99_ms REAL,
    champion_error_rate REAL,
    actor TEXT NOT NULL,
    FOREIGN KEY (model_id, champion) REFERENCES versions(model_id, version),
    FOREIGN KEY (model_id, challenger) REFERENCES versions(model_id, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS rollouts_one_running ON rollouts(model_id) WHERE state = 'running';
CREATE TRIGGER IF NOT EXISTS rollouts_no_delete BEFORE DELETE ON rollouts
    BEGIN SELECT RAISE(ABORT, 'the registry is append-only'); END;
CREATE INDEX IF NOT EXISTS alias_log_model ON alias_log(model_id, alias, id);
CREATE TRIGGER IF NOT EXISTS aliases_no_delete BEFORE DELETE ON aliases
    BEGIN SELECT RAISE(ABORT, 'the registry is append-only'); END;
"""
    + "".join(
        f"""
CREATE TRIGGER IF NOT EXISTS {t}_no_update BEFORE UPDATE ON {t}
    BEGIN SELECT RAISE(ABORT, 'the registry is append-only'); END;
CREATE TRIGGER IF NOT EXISTS {t}_no_delete BEFORE DELETE ON {t}
    BEGIN SELECT RAISE(ABORT, 'the registry is append-only'); END;
"""
        for t in _APPEND_ONLY
    )
)


@contextmanager
def connect(db_path: Path, *, write: bool) -> Iterator[sqlite3.Connection]:
    """A connection to the registry at ``db_path``, schema ensured, closed on exit.

    For reads (``write=False``) of a registry that does not exist yet, an empty in-memory one is used,
    so that looking does not create files.
    """
    if not write and not db_path.exists():
        conn = sqlite3.connect(":memory:", isolation_level=None)
        conn.executescript(SCHEMA)
    else:
        db_path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        try:
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            ready = (
                conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
                and conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
            )
            if not ready:
                # Switching to WAL needs an exclusive lock, and SQLite answers "database is locked" at once
                # (no busy wait) when another connection is switching too: first opens take turns.
                with _init_lock(db_path):
                    conn.execute("PRAGMA journal_mode = WAL")
                    _ensure_schema(conn, db_path)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise RegistryError(f"cannot open {db_path}: {e}; is it a modelyard registry?") from e
        except BaseException:
            conn.close()
            raise
    conn.row_factory = sqlite3.Row
    try:
        yield conn
    finally:
        conn.close()


@contextmanager
def _init_lock(db_path: Path) -> Iterator[None]:
    """An exclusive lock (``.<db>.init-lock`` beside it, flock) held while a registry database is set up,
    so concurrent first opens, in threads or processes, do not race for the journal-mode switch."""
    import fcntl

    with open(db_path.with_name(f".{db_path.name}.init-lock"), "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _ensure_schema(conn: sqlite3.Connection, db_path: Path) -> None:
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found == SCHEMA_VERSION:
        return
    if found > SCHEMA_VERSION:
        raise RegistryError(
            f"{db_path} has schema {found}, newer than this modelyard's {SCHEMA_VERSION}; upgrade modelyard"
        )
    with transaction(conn):
        if found == 1:
            _migrate_alias_log(conn)
        # executescript would commit; run the statements one by one inside our transaction.
        for stmt in _split_sql(SCHEMA):
            conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _migrate_alias_log(conn: sqlite3.Connection) -> None:
    """Schema 1 -> 2: rebuild the alias log with the rollout actions allowed (SQLite cannot alter a CHECK),
    keeping every row and id; its index and triggers are recreated by the schema script that follows."""
    conn.execute(_ALIAS_LOG.format(name="alias_log_v2"))
    conn.execute("INSERT INTO alias_log_v2 SELECT * FROM alias_log")
    conn.execute("DROP TABLE alias_log")  # drops its index and triggers too
    conn.execute("ALTER TABLE alias_log_v2 RENAME TO alias_log")


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as e:
        raise RegistryError(f"the registry is locked by another process ({e}); retry when it is done") from e
    try:
        yield
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


@contextmanager
def read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """A read transaction, so that the several SELECTs of one call see one snapshot."""
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.execute("COMMIT")


def _split_sql(script: str) -> list[str]:
    """Split the schema script into statements (triggers contain ';' inside BEGIN ... END)."""
    out: list[str] = []
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out
