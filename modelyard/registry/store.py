"""The model registry: numbered versions per model, lineage, aliases with an append-only move log.

Layout under the home folder::

    <home>/registry.db                                SQLite (WAL, foreign keys on), schema in ``db.py``
    <home>/artifacts/sha256/<first 2 hex>/<full hex>  content-addressed files (see ``artifacts.py``)

A run is registered in two steps: every file is first copied into the artifact store (atomic per
file, deduplicated by hash), then one ``BEGIN IMMEDIATE`` ... ``COMMIT`` transaction inserts the
run, its versions, their files and lineage and the alias move. A process killed at any moment
therefore leaves the database either without the run or with all of it, and every file the
database names is already on disk. Nothing is ever deleted: triggers refuse UPDATE and DELETE on
the history tables; only the current target of an alias changes, and each change is logged.

A version's manifest keeps the trust record of a pickle-based or factory-built model (``meta["trust"]``: who
let it in, with which flag, when, and the scan; see :mod:`modelyard.security.trust`); ``register_run`` refuses
a malformed one, and ``get_version`` returns it as ``trust``.

Rollback walks the alias's history as a stack: a promotion pushes a version, a rollback pops one,
so two rollbacks after promotions 1 -> 2 -> 3 land on 1, not back on 3. Rollout events in the log
(``rollout-*`` actions: a rollout started, rolled back, stopped or inconclusive, the alias left in place) are
not on that stack; a rollout's promotion is an ordinary ``promote``. Rollouts themselves are in
:mod:`modelyard.registry.rollouts`.

``register_run`` takes an optional ``checkpoint`` callable, called with the name of each point where a crash
must leave all or nothing (``CHECKPOINTS``: ``mid_artifact``, ``after_artifacts``, ``mid_transaction``,
``after_commit``). Production code passes none; the crash-consistency tests inject one that kills the process.
"""

from __future__ import annotations

import json
import logging
import re
import sqlite3
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelyard.errors import RegistryError
from modelyard.registry.artifacts import ArtifactStore, check_relpath
from modelyard.registry.db import connect, read_snapshot, transaction
from modelyard.registry.entries import VersionEntry, evidence_of, trust_of, validate_entries
from modelyard.security.trust import current_user

log = logging.getLogger(__name__)

CHECKPOINTS = ("mid_artifact", "after_artifacts", "mid_transaction", "after_commit")

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def _check_name(kind: str, name: object) -> str:
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise RegistryError(
            f"invalid {kind} name {name!r}; use up to 128 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit"
        )
    return name


def _check_reason(reason: object) -> str:
    if not isinstance(reason, str) or not reason.strip():
        raise RegistryError(f"a reason is required for the audit log, got {reason!r}; say why in one line")
    return reason.strip()


def _versions_text(n: int) -> str:
    return "none" if n == 0 else ("1" if n == 1 else f"1..{n}")


def alias_history(moves: Iterable[tuple[str, Any]]) -> list[int]:
    """An alias's versions as a stack, from its audit-log rows ``(action, to_version)`` oldest first: promotions
    and registrations push, rollbacks pop, rollout events (which leave the alias where it is) are skipped. The
    top is where the alias points; the one below it is where a rollback goes."""
    stack: list[int] = []
    for action, to_version in moves:
        if str(action).startswith("rollout-"):
            continue
        if action == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(int(to_version))
    return stack


class Registry:
    """Versions, lineage and aliases of models, in ``<home>/registry.db`` plus ``<home>/artifacts/``.

    Nothing touches the disk until the first call that writes; reads of a home without a registry
    see an empty one. Each call opens its own SQLite connection, so one Registry may be shared by
    threads, and several processes may use the same home at once.
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home)
        self.db_path = self.home / "registry.db"
        self.artifacts = ArtifactStore(self.home / "artifacts")

    def __repr__(self) -> str:
        return f"Registry({str(self.home)!r})"

    # ----------------------------------------------------------------------------------- plumbing

    def _connect(self, *, write: bool) -> AbstractContextManager[sqlite3.Connection]:
        return connect(self.db_path, write=write)

    @staticmethod
    def _model_id(conn: sqlite3.Connection, model: str) -> int:
        _check_name("model", model)
        row = conn.execute("SELECT id FROM models WHERE name = ?", (model,)).fetchone()
        if row is None:
            names = [r[0] for r in conn.execute("SELECT name FROM models ORDER BY name")]
            known = ", ".join(names) if names else "none yet (register a run first)"
            raise RegistryError(f"unknown model {model!r}; registered models: {known}")
        return int(row[0])

    @staticmethod
    def _check_version(conn: sqlite3.Connection, model: str, model_id: int, version: object) -> int:
        n = int(conn.execute("SELECT COUNT(*) FROM versions WHERE model_id = ?", (model_id,)).fetchone()[0])
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= n:
            raise RegistryError(f"model {model!r} has no version {version!r}; versions: {_versions_text(n)}")
        return version

    @staticmethod
    def _alias_version(conn: sqlite3.Connection, model: str, model_id: int, alias: str) -> int:
        row = conn.execute(
            "SELECT version FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias)
        ).fetchone()
        if row is None:
            names = [
                r[0]
                for r in conn.execute(
                    "SELECT alias FROM aliases WHERE model_id = ? ORDER BY alias", (model_id,)
                )
            ]
            known = ", ".join(names) if names else "none (set one with promote)"
            raise RegistryError(f"model {model!r} has no alias {alias!r}; aliases: {known}")
        return int(row[0])

    @staticmethod
    def _move_alias(
        conn: sqlite3.Connection,
        model_id: int,
        alias: str,
        *,
        from_version: int | None,
        to_version: int,
        action: str,
        reason: str,
        run_id: str | None = None,
    ) -> None:
        now = _now()
        conn.execute(
            "INSERT INTO aliases (model_id, alias, version, updated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (model_id, alias) DO UPDATE SET version = excluded.version, updated = excluded.updated",
            (model_id, alias, to_version, now),
        )
        conn.execute(
            "INSERT INTO alias_log (at, model_id, alias, action, from_version, to_version, reason, actor, run_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (now, model_id, alias, action, from_version, to_version, reason, current_user(), run_id),
        )

    @staticmethod
    def _log_event(
        conn: sqlite3.Connection,
        model_id: int,
        alias: str,
        *,
        action: str,
        from_version: int | None,
        to_version: int,
        reason: str,
    ) -> None:
        """An audit-log row that does not move the alias (a rollout started or ended with the champion kept)."""
        conn.execute(
            "INSERT INTO alias_log (at, model_id, alias, action, from_version, to_version, reason, actor, run_id) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL)",
            (_now(), model_id, alias, action, from_version, to_version, reason, current_user()),
        )

    # ----------------------------------------------------------------------------------- writes

    def register_run(
        self,
        model: str,
        entries: list[VersionEntry],
        *,
        run_id: str,
        champion: str | None,
        reason: str,
        checkpoint: Callable[[str], None] | None = None,
        move_champion: bool = True,
    ) -> dict[str, int]:
        """Store the candidates of one run as new versions of ``model``; returns {candidate name: version}.

        Files go to the content-addressed store first; then one transaction inserts the versions
        (numbered on from the model's latest), their lineage, and, when ``champion`` names an entry,
        moves the "champion" alias to it with ``reason`` in the audit log. ``move_champion=False`` records the
        run's champion but leaves the alias where it is (a rollout moves it later).
        """
        _check_name("model", model)
        _check_name("run id", run_id)
        reason = _check_reason(reason)
        rows = validate_entries(entries, champion)

        at: Callable[[str], None] = checkpoint or (lambda point: None)  # see CHECKPOINTS

        with self._connect(write=True) as conn:
            self._check_new_run(conn, run_id)

            # 1. Files, outside any transaction: each is atomic on its own, and unreferenced until commit.
            hook = None if checkpoint is None else (lambda: at("mid_artifact"))
            stored: list[dict[str, tuple[str, int]]] = []
            for entry in entries:
                stored.append(
                    {
                        rel: self.artifacts.put(src, before_rename=hook)
                        for rel, src in sorted(entry.files.items())
                    }
                )
            at("after_artifacts")

            # 2. One transaction for the run, its versions, files, lineage and the alias move.
            with transaction(conn):
                self._check_new_run(conn, run_id)
                now = _now()
                row = conn.execute("SELECT id FROM models WHERE name = ?", (model,)).fetchone()
                if row is None:
                    model_id = int(
                        conn.execute(
                            "INSERT INTO models (name, created) VALUES (?, ?)", (model, now)
                        ).lastrowid
                        or 0
                    )
                else:
                    model_id = int(row[0])
                conn.execute(
                    "INSERT INTO runs (run_id, model_id, created, champion, reason, actor) VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, model_id, now, champion, reason, current_user()),
                )
                latest = int(
                    conn.execute(
                        "SELECT COALESCE(MAX(version), 0) FROM versions WHERE model_id = ?", (model_id,)
                    ).fetchone()[0]
                )
                numbers = {entry.name: latest + i + 1 for i, entry in enumerate(entries)}
                for i, (entry, (manifest, evidence, passes)) in enumerate(zip(entries, rows, strict=True)):
                    files = stored[i]
                    conn.execute(
                        "INSERT INTO versions (model_id, version, candidate, run_id, created, parent_version, "
                        "artifact_sha256, data_sha256, size_bytes, manifest, evidence, passes) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (
                            model_id,
                            numbers[entry.name],
                            entry.name,
                            run_id,
                            now,
                            numbers[entry.parent] if entry.parent is not None else None,
                            entry.artifact_sha256,
                            entry.data_sha256,
                            sum(size for _, size in files.values()),
                            manifest,
                            evidence,
                            passes,
                        ),
                    )
                    if i == len(entries) // 2:
                        at("mid_transaction")
                    for rel, (digest, size) in files.items():
                        conn.execute(
                            "INSERT OR IGNORE INTO blobs (sha256, size_bytes) VALUES (?, ?)", (digest, size)
                        )
                        conn.execute(
                            "INSERT INTO version_files (model_id, version, path, sha256, size_bytes) "
                            "VALUES (?, ?, ?, ?, ?)",
                            (model_id, numbers[entry.name], rel, digest, size),
                        )
                if champion is not None and move_champion:
                    current = conn.execute(
                        "SELECT version FROM aliases WHERE model_id = ? AND alias = 'champion'", (model_id,)
                    ).fetchone()
                    self._move_alias(
                        conn,
                        model_id,
                        "champion",
                        from_version=int(current[0]) if current else None,
                        to_version=numbers[champion],
                        action="register",
                        reason=reason,
                        run_id=run_id,
                    )
            at("after_commit")
        return numbers

    @staticmethod
    def _check_new_run(conn: sqlite3.Connection, run_id: str) -> None:
        row = conn.execute(
            "SELECT m.name, MIN(v.version), MAX(v.version) FROM runs r JOIN models m ON m.id = r.model_id "
            "LEFT JOIN versions v ON v.run_id = r.run_id WHERE r.run_id = ? GROUP BY r.run_id",
            (run_id,),
        ).fetchone()
        if row is not None:
            raise RegistryError(
                f"run {run_id!r} is already registered (model {row[0]!r}, versions {row[1]}..{row[2]}); "
                "use a new run id"
            )

    def promote(self, model: str, version: int, *, alias: str = "champion", reason: str) -> None:
        """Point ``alias`` of ``model`` at ``version``, logging the move with ``reason``."""
        _check_name("alias", alias)
        reason = _check_reason(reason)
        with self._connect(write=True) as conn, transaction(conn):
            model_id = self._model_id(conn, model)
            self._check_version(conn, model, model_id, version)
            row = conn.execute(
                "SELECT version FROM aliases WHERE model_id = ? AND alias = ?", (model_id, alias)
            ).fetchone()
            current = int(row[0]) if row else None
            if current == version:
                raise RegistryError(
                    f"alias {alias!r} of {model!r} already points at version {version}; nothing to do"
                )
            self._move_alias(
                conn,
                model_id,
                alias,
                from_version=current,
                to_version=version,
                action="promote",
                reason=reason,
            )

    def aliases_moved(self, model: str) -> None:
        """Called after ``model``'s aliases moved other than through :meth:`promote` / :meth:`rollback` (a
        rollout's decision); a mirrored registry (:mod:`modelyard.registry.mlflow_backend`) follows here."""

    def rollback(self, model: str, *, alias: str = "champion", reason: str) -> int:
        """Move ``alias`` back to the version it pointed at before its latest (not rolled back) move.

        Promotions push onto the alias's history and rollbacks pop it, so repeated rollbacks walk further
        back. Returns the version the alias now points at.
        """
        _check_name("alias", alias)
        reason = _check_reason(reason)
        with self._connect(write=True) as conn, transaction(conn):
            model_id = self._model_id(conn, model)
            current = self._alias_version(conn, model, model_id, alias)
            stack = alias_history(
                conn.execute(
                    "SELECT action, to_version FROM alias_log WHERE model_id = ? AND alias = ? ORDER BY id",
                    (model_id, alias),
                )
            )
            if not stack or stack[-1] != current:
                raise RegistryError(
                    f"the audit log of {model}@{alias} does not end at version {current}; the registry was edited "
                    "outside modelyard, promote a version explicitly"
                )
            if len(stack) < 2:
                raise RegistryError(
                    f"alias {alias!r} of {model!r} has no earlier version to roll back to (it only ever pointed at "
                    f"version {current} since its last rollback); promote a version instead"
                )
            target = stack[-2]
            self._move_alias(
                conn,
                model_id,
                alias,
                from_version=current,
                to_version=target,
                action="rollback",
                reason=reason,
            )
            return target

    def rollback_target(self, model: str, *, alias: str = "champion") -> int | None:
        """The version :meth:`rollback` would move ``alias`` to now (None when there is none)."""
        stack = alias_history(
            (e["action"], e["to_version"]) for e in self.audit_log(model) if e["alias"] == alias
        )
        return stack[-2] if len(stack) >= 2 else None

    # ----------------------------------------------------------------------------------- reads

    def list_models(self) -> list[dict[str, Any]]:
        """One dict per model, by name: name, created, versions (count), latest (version), aliases {alias: version}."""
        with self._connect(write=False) as conn, read_snapshot(conn):
            out = []
            for r in conn.execute(
                "SELECT m.id, m.name, m.created, COUNT(v.version) AS n, MAX(v.version) AS latest "
                "FROM models m LEFT JOIN versions v ON v.model_id = m.id GROUP BY m.id ORDER BY m.name"
            ):
                aliases = {
                    a: int(v)
                    for a, v in conn.execute(
                        "SELECT alias, version FROM aliases WHERE model_id = ? ORDER BY alias", (r["id"],)
                    )
                }
                out.append(
                    {
                        "name": r["name"],
                        "created": r["created"],
                        "versions": int(r["n"]),
                        "latest": r["latest"],
                        "aliases": aliases,
                    }
                )
            return out

    def list_versions(self, model: str) -> list[dict[str, Any]]:
        """Summary of every version of ``model``, oldest first (no manifest or evidence; see get_version)."""
        with self._connect(write=False) as conn, read_snapshot(conn):
            model_id = self._model_id(conn, model)
            aliases = self._aliases_by_version(conn, model_id)
            rows = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS} FROM versions v LEFT JOIN versions p "
                "ON p.model_id = v.model_id AND p.version = v.parent_version "
                "WHERE v.model_id = ? ORDER BY v.version",
                (model_id,),
            ).fetchall()
            return [_summary(model, r, aliases) for r in rows]

    def get_version(self, model: str, version: int) -> dict[str, Any]:
        """Everything stored about one version: the summary fields plus manifest, evidence, passes, files and
        ``trust`` (the trust record kept in the manifest, None when the version has none)."""
        with self._connect(write=False) as conn, read_snapshot(conn):
            model_id = self._model_id(conn, model)
            self._check_version(conn, model, model_id, version)
            r = conn.execute(
                f"SELECT {_SUMMARY_COLUMNS}, v.manifest, v.evidence, v.passes FROM versions v LEFT JOIN versions p "
                "ON p.model_id = v.model_id AND p.version = v.parent_version "
                "WHERE v.model_id = ? AND v.version = ?",
                (model_id, version),
            ).fetchone()
            out = _summary(model, r, self._aliases_by_version(conn, model_id))
            out["manifest"] = json.loads(r["manifest"])
            out["trust"] = trust_of(out["manifest"])
            out["evidence"] = evidence_of(model, version, r["evidence"])
            out["passes"] = json.loads(r["passes"])
            out["files"] = [
                {"path": f["path"], "sha256": f["sha256"], "size_bytes": int(f["size_bytes"])}
                for f in conn.execute(
                    "SELECT path, sha256, size_bytes FROM version_files WHERE model_id = ? AND version = ? "
                    "ORDER BY path",
                    (model_id, version),
                )
            ]
            return out

    @staticmethod
    def _aliases_by_version(conn: sqlite3.Connection, model_id: int) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {}
        for alias, version in conn.execute(
            "SELECT alias, version FROM aliases WHERE model_id = ? ORDER BY alias", (model_id,)
        ):
            out.setdefault(int(version), []).append(alias)
        return out

    def resolve(self, ref: str) -> tuple[str, int]:
        """``"name"`` (the champion if set, else the latest version), ``"name@alias"`` or ``"name:3"`` -> (name, version)."""
        if not isinstance(ref, str) or not ref:
            raise RegistryError(f"empty model reference {ref!r}; use 'name', 'name@alias' or 'name:3'")
        with self._connect(write=False) as conn, read_snapshot(conn):
            if "@" in ref:
                model, _, alias = ref.partition("@")
                model_id = self._model_id(conn, model)
                _check_name("alias", alias)
                return model, self._alias_version(conn, model, model_id, alias)
            if ":" in ref:
                model, _, number = ref.partition(":")
                model_id = self._model_id(conn, model)
                if not number.isdigit():
                    raise RegistryError(
                        f"version in {ref!r} must be a positive integer; use e.g. '{model}:1'"
                    )
                return model, self._check_version(conn, model, model_id, int(number))
            model_id = self._model_id(conn, ref)
            row = conn.execute(
                "SELECT version FROM aliases WHERE model_id = ? AND alias = 'champion'", (model_id,)
            ).fetchone()
            if row is not None:
                return ref, int(row[0])
            latest = conn.execute(
                "SELECT MAX(version) FROM versions WHERE model_id = ?", (model_id,)
            ).fetchone()[0]
            if latest is None:
                raise RegistryError(f"model {ref!r} has no versions; register a run first")
            return ref, int(latest)

    def audit_log(self, model: str | None = None) -> list[dict[str, Any]]:
        """Every alias move and rollout event, oldest first: when (UTC ISO), model, alias, action, from/to version,
        reason, actor, run_id."""
        with self._connect(write=False) as conn, read_snapshot(conn):
            sql = (
                "SELECT l.at, m.name, l.alias, l.action, l.from_version, l.to_version, l.reason, l.actor, l.run_id "
                "FROM alias_log l JOIN models m ON m.id = l.model_id"
            )
            params: tuple[Any, ...] = ()
            if model is not None:
                sql += " WHERE l.model_id = ?"
                params = (self._model_id(conn, model),)
            return [
                {
                    "when": r[0],
                    "model": r[1],
                    "alias": r[2],
                    "action": r[3],
                    "from_version": r[4],
                    "to_version": r[5],
                    "reason": r[6],
                    "actor": r[7],
                    "run_id": r[8],
                }
                for r in conn.execute(sql + " ORDER BY l.id", params)
            ]

    def materialize(self, model: str, version: int, dest: Path) -> Path:
        """Rebuild the files of ``model:version`` under ``dest`` (a new or empty folder), checking every hash."""
        dest = Path(dest)
        if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
            raise RegistryError(
                f"destination {str(dest)!r} is not an empty folder; choose a new or empty folder"
            )
        files = self.get_version(model, version)["files"]
        dest.mkdir(parents=True, exist_ok=True)
        for f in files:
            rel = check_relpath(f["path"])
            self.artifacts.copy_out(f["sha256"], dest / rel, label=f"{model}:{version} {rel}")
        return dest


_SUMMARY_COLUMNS = (
    "v.version, v.candidate, v.run_id, v.created, v.parent_version, p.candidate AS parent_candidate, "
    "v.artifact_sha256, v.data_sha256, v.size_bytes"
)


def _summary(model: str, r: sqlite3.Row, aliases: dict[int, list[str]]) -> dict[str, Any]:
    return {
        "model": model,
        "version": int(r["version"]),
        "candidate": r["candidate"],
        "run_id": r["run_id"],
        "created": r["created"],
        "parent_version": r["parent_version"],
        "parent_candidate": r["parent_candidate"],
        "artifact_sha256": r["artifact_sha256"],
        "data_sha256": r["data_sha256"],
        "size_bytes": int(r["size_bytes"]),
        "aliases": aliases.get(int(r["version"]), []),
    }
