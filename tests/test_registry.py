"""Registry: versions, lineage, aliases, audit log, content-addressed files, crash consistency."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from modelyard.errors import RegistryError
from modelyard.evaluate.evidence import measure
from modelyard.evaluate.schema import Measurement as SchemaMeasurement
from modelyard.evaluate.schema import Verdict, VersionEvidence
from modelyard.registry import Registry, VersionEntry
from modelyard.registry import db as db_module
from modelyard.registry.store import CHECKPOINTS

REPO = Path(__file__).resolve().parents[1]
SHARED_VOCAB = b"[PAD]\n[UNK]\nhello\nworld\n"


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _entries(src: Path, tag: str) -> list[VersionEntry]:
    """Three candidates: a baseline and two children; all share one identical file (the vocab)."""
    out = []
    for name, parent in (("baseline", None), ("int8", "baseline"), ("pruned", "baseline")):
        folder = src / tag / name
        files = {
            "model.onnx": _write(folder / "model.onnx", f"{tag}:{name}:weights".encode() * 50),
            "tokenizer/vocab.txt": _write(folder / "vocab.txt", SHARED_VOCAB),
        }
        out.append(
            VersionEntry(
                name=name,
                files=files,
                manifest={"name": name, "format": "onnx", "parent": parent},
                evidence=VersionEvidence(
                    run_id=tag,
                    measurements={
                        "quality.accuracy": SchemaMeasurement.model_validate(
                            measure("quality.accuracy", 0.9).to_dict()
                        )
                    },
                    verdict=Verdict(passed=True, gates=[]),
                ),
                parent=parent,
                passes=[] if parent is None else [{"pass": name, "config": {"bits": 8}}],
                data_sha256="d" * 64,
                artifact_sha256=hashlib.sha256(f"{tag}{name}".encode()).hexdigest(),
            )
        )
    return out


def _blobs_on_disk(home: Path) -> list[Path]:
    return sorted(p for p in (home / "artifacts" / "sha256").rglob("*") if p.is_file())


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "home")
    r.register_run(
        "digits-cnn", _entries(tmp_path / "src", "r1"), run_id="run-1", champion="int8", reason="first"
    )
    return r


# ------------------------------------------------------------------------------------- register


def test_register_run_versions_lineage_aliases(tmp_path: Path) -> None:
    r = Registry(tmp_path / "home")
    assert not (tmp_path / "home").exists()  # lazy: nothing on disk before the first write
    assert r.list_models() == []
    assert not (tmp_path / "home").exists()  # reads of an empty home create nothing

    got = r.register_run(
        "digits-cnn",
        _entries(tmp_path / "src", "r1"),
        run_id="run-1",
        champion="int8",
        reason="cheapest passing",
    )
    assert got == {"baseline": 1, "int8": 2, "pruned": 3}

    versions = r.list_versions("digits-cnn")
    assert [v["version"] for v in versions] == [1, 2, 3]
    assert [v["candidate"] for v in versions] == ["baseline", "int8", "pruned"]
    assert [v["parent_version"] for v in versions] == [None, 1, 1]
    assert [v["parent_candidate"] for v in versions] == [None, "baseline", "baseline"]
    assert [v["aliases"] for v in versions] == [[], ["champion"], []]
    assert {v["run_id"] for v in versions} == {"run-1"}

    models = r.list_models()
    assert len(models) == 1
    assert {k: models[0][k] for k in ("name", "versions", "latest", "aliases")} == {
        "name": "digits-cnn",
        "versions": 3,
        "latest": 3,
        "aliases": {"champion": 2},
    }

    # A second run numbers on; its lineage points inside the run.
    got2 = r.register_run(
        "digits-cnn", _entries(tmp_path / "src", "r2"), run_id="run-2", champion=None, reason="r2"
    )
    assert got2 == {"baseline": 4, "int8": 5, "pruned": 6}
    assert r.get_version("digits-cnn", 6)["parent_version"] == 4
    assert r.list_models()[0]["aliases"] == {"champion": 2}  # no champion given: alias unchanged

    db = sqlite3.connect(tmp_path / "home" / "registry.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_get_version_returns_everything_stored(reg: Registry, tmp_path: Path) -> None:
    entry = _entries(tmp_path / "src", "r1")[1]
    v = reg.get_version("digits-cnn", 2)
    assert v["model"] == "digits-cnn"
    assert v["candidate"] == "int8"
    assert v["manifest"] == entry.manifest
    assert v["evidence"] == entry.evidence
    assert v["passes"] == entry.passes
    assert v["data_sha256"] == "d" * 64
    assert v["artifact_sha256"] == entry.artifact_sha256
    expected_files = [
        {
            "path": rel,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
            "size_bytes": p.stat().st_size,
        }
        for rel, p in sorted(entry.files.items())
    ]
    assert v["files"] == expected_files
    assert v["size_bytes"] == sum(p.stat().st_size for p in entry.files.values())


def test_materialize_round_trips_files_and_dedups(reg: Registry, tmp_path: Path) -> None:
    entries = _entries(tmp_path / "src", "r1")
    for version, entry in enumerate(entries, start=1):
        dest = reg.materialize("digits-cnn", version, tmp_path / "out" / str(version))
        assert dest == tmp_path / "out" / str(version)
        rebuilt = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
        assert rebuilt == sorted(entry.files)
        for rel, src in entry.files.items():
            assert (dest / rel).read_bytes() == src.read_bytes()

    # 3 distinct model files + 1 vocab shared by all three candidates = 4 stored files, each named by its hash.
    blobs = _blobs_on_disk(reg.home)
    assert len(blobs) == 4
    for b in blobs:
        assert b.name == hashlib.sha256(b.read_bytes()).hexdigest()
        assert b.parent.name == b.name[:2]
    vocab_hash = hashlib.sha256(SHARED_VOCAB).hexdigest()
    assert sum(b.name == vocab_hash for b in blobs) == 1

    # Registering identical content again stores nothing new.
    reg.register_run("digits-cnn", entries, run_id="run-again", champion=None, reason="same files")
    assert _blobs_on_disk(reg.home) == blobs


def test_materialize_refuses_corrupt_missing_and_nonempty(reg: Registry, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    _write(busy / "x.txt", b"x")
    with pytest.raises(RegistryError, match=r"is not an empty folder; choose a new or empty folder"):
        reg.materialize("digits-cnn", 1, busy)

    model_hash = reg.get_version("digits-cnn", 1)["files"][0]["sha256"]
    blob = reg.artifacts.path_for(model_hash)
    blob.chmod(0o644)
    blob.write_bytes(b"tampered")
    with pytest.raises(
        RegistryError, match=r"digits-cnn:1 model.onnx is corrupt: sha256 [0-9a-f]{64}, expected"
    ):
        reg.materialize("digits-cnn", 1, tmp_path / "bad")
    assert not (tmp_path / "bad" / "model.onnx").exists()

    blob.unlink()
    with pytest.raises(RegistryError, match=r"digits-cnn:1 model.onnx \(sha256 [0-9a-f]{64}\) is missing"):
        reg.materialize("digits-cnn", 1, tmp_path / "gone")


def test_register_run_validation(tmp_path: Path) -> None:
    r = Registry(tmp_path / "home")
    src = tmp_path / "src"
    good = _entries(src, "r1")

    def run(entries: list[VersionEntry], **kw: Any) -> None:
        opts: dict[str, Any] = {"run_id": "run-x", "champion": None, "reason": "test"}
        opts.update(kw)
        model = opts.pop("model", "digits-cnn")
        r.register_run(model, entries, **opts)

    with pytest.raises(RegistryError, match=r"invalid model name 'bad name'; use up to 128 letters, digits"):
        run(good, model="bad name")
    with pytest.raises(RegistryError, match=r"invalid run id name '../x'"):
        run(good, run_id="../x")
    with pytest.raises(RegistryError, match=r"a reason is required for the audit log, got '  '"):
        run(good, reason="  ")
    with pytest.raises(RegistryError, match=r"at least one candidate"):
        run([])
    with pytest.raises(
        RegistryError, match=r"candidate names must be unique within a run; repeated: baseline"
    ):
        run([good[0], good[0]])
    with pytest.raises(
        RegistryError, match=r"names parent 'baseline', which is not another candidate.*: int8$"
    ):
        run([good[1]])
    with pytest.raises(
        RegistryError, match=r"champion 'fp16' is not a candidate of this run; candidates: baseline"
    ):
        run(good, champion="fp16")
    bad_path = VersionEntry("baseline", {"../escape.bin": src / "r1" / "baseline" / "model.onnx"}, {})
    with pytest.raises(RegistryError, match=r"invalid artifact file path '../escape.bin'"):
        run([bad_path])
    nan = VersionEntry("baseline", dict(good[0].files), {"ece": float("nan")})
    with pytest.raises(RegistryError, match=r"manifest of candidate 'baseline' is not plain JSON"):
        run([nan])
    untyped = VersionEntry("baseline", dict(good[0].files), {}, {"ece": 0.1})  # type: ignore[arg-type]
    with pytest.raises(RegistryError, match=r"evidence of candidate 'baseline' must be a VersionEvidence"):
        run([untyped])
    missing = VersionEntry("baseline", {"model.onnx": src / "nope.onnx"}, {})
    with pytest.raises(RegistryError, match=r"nope.onnx' does not exist or is not a file"):
        run([missing])

    # None of the refused calls left a model behind.
    assert r.list_models() == []

    run(good, run_id="run-1")
    with pytest.raises(
        RegistryError, match=r"run 'run-1' is already registered \(model 'digits-cnn', versions 1..3\)"
    ):
        run(good, run_id="run-1")


# ------------------------------------------------------------------------------- aliases, audit


def test_promote_rollback_walks_history_and_logs(reg: Registry) -> None:
    reg.promote("digits-cnn", 3, reason="pruned is smaller")
    reg.promote("digits-cnn", 1, reason="back to baseline for a test")
    assert reg.resolve("digits-cnn") == ("digits-cnn", 1)

    assert reg.rollback("digits-cnn", reason="baseline too slow") == 3
    assert reg.rollback("digits-cnn", reason="pruned drifted") == 2  # walks back, no ping-pong to 1
    with pytest.raises(
        RegistryError, match=r"alias 'champion' of 'digits-cnn' has no earlier version to roll back"
    ):
        reg.rollback("digits-cnn", reason="again")
    assert reg.resolve("digits-cnn@champion") == ("digits-cnn", 2)

    # A promotion after rollbacks starts a new branch of the history.
    reg.promote("digits-cnn", 3, reason="retry pruned")
    assert reg.rollback("digits-cnn", reason="no") == 2

    log = reg.audit_log("digits-cnn")
    moves = [(e["action"], e["from_version"], e["to_version"], e["reason"]) for e in log]
    assert moves == [
        ("register", None, 2, "first"),
        ("promote", 2, 3, "pruned is smaller"),
        ("promote", 3, 1, "back to baseline for a test"),
        ("rollback", 1, 3, "baseline too slow"),
        ("rollback", 3, 2, "pruned drifted"),
        ("promote", 2, 3, "retry pruned"),
        ("rollback", 3, 2, "no"),
    ]
    assert {e["model"] for e in log} == {"digits-cnn"}
    assert {e["alias"] for e in log} == {"champion"}
    assert log[0]["run_id"] == "run-1"
    assert all(e["actor"] for e in log)
    for e in log:
        when = datetime.fromisoformat(e["when"])
        assert when.utcoffset() == timedelta(0)
    assert reg.audit_log() == log  # only one model


def test_custom_alias_and_rollback_errors(reg: Registry) -> None:
    with pytest.raises(RegistryError, match=r"model 'digits-cnn' has no alias 'staging'; aliases: champion"):
        reg.rollback("digits-cnn", alias="staging", reason="none yet")
    reg.promote("digits-cnn", 3, alias="staging", reason="try pruned")
    with pytest.raises(RegistryError, match=r"alias 'staging' of 'digits-cnn' has no earlier version"):
        reg.rollback("digits-cnn", alias="staging", reason="only one move")
    assert reg.list_models()[0]["aliases"] == {"champion": 2, "staging": 3}
    assert reg.resolve("digits-cnn@staging") == ("digits-cnn", 3)
    with pytest.raises(RegistryError, match=r"alias 'staging' of 'digits-cnn' already points at version 3"):
        reg.promote("digits-cnn", 3, alias="staging", reason="again")
    with pytest.raises(RegistryError, match=r"model 'digits-cnn' has no version 9; versions: 1..3"):
        reg.promote("digits-cnn", 9, reason="nope")
    with pytest.raises(RegistryError, match=r"invalid alias name 'pro d'"):
        reg.promote("digits-cnn", 1, alias="pro d", reason="nope")
    with pytest.raises(RegistryError, match=r"a reason is required"):
        reg.rollback("digits-cnn", reason="")
    with pytest.raises(RegistryError, match=r"unknown model 'other'; registered models: digits-cnn"):
        reg.audit_log("other")


@pytest.mark.parametrize("table", [*db_module._APPEND_ONLY, "aliases"])
@pytest.mark.parametrize("statement", ["UPDATE", "DELETE"])
def test_every_history_table_refuses_update_and_delete(reg: Registry, table: str, statement: str) -> None:
    db = sqlite3.connect(reg.db_path)
    try:
        assert db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0] > 0  # the trigger has a row to guard
        column = db.execute(f"SELECT * FROM {table} LIMIT 1").description[0][0]
        sql = f"UPDATE {table} SET {column} = {column}" if statement == "UPDATE" else f"DELETE FROM {table}"
        if table == "aliases" and statement == "UPDATE":  # aliases move by UPDATE; every move is logged
            db.execute(sql)
            return
        with pytest.raises(sqlite3.IntegrityError, match="append-only"):
            db.execute(sql)
    finally:
        db.close()


def test_history_is_append_only(reg: Registry) -> None:
    db = sqlite3.connect(reg.db_path)
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM versions")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE alias_log SET reason = 'edited'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM aliases")
    db.close()


# ---------------------------------------------------------------------------------------- resolve


def test_resolve_ref_forms(reg: Registry, tmp_path: Path) -> None:
    assert reg.resolve("digits-cnn") == ("digits-cnn", 2)  # champion
    assert reg.resolve("digits-cnn@champion") == ("digits-cnn", 2)
    assert reg.resolve("digits-cnn:3") == ("digits-cnn", 3)
    reg.register_run("tab.mlp_v2", _entries(tmp_path / "src", "t"), run_id="run-t", champion=None, reason="t")
    assert reg.resolve("tab.mlp_v2") == ("tab.mlp_v2", 3)  # no champion: latest
    assert reg.resolve("tab.mlp_v2:1") == ("tab.mlp_v2", 1)


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("nope", r"^unknown model 'nope'; registered models: digits-cnn$"),
        ("nope@champion", r"^unknown model 'nope'; registered models: digits-cnn$"),
        ("nope:1", r"^unknown model 'nope'; registered models: digits-cnn$"),
        ("digits-cnn:4", r"^model 'digits-cnn' has no version 4; versions: 1..3$"),
        ("digits-cnn:0", r"^model 'digits-cnn' has no version 0; versions: 1..3$"),
        (
            "digits-cnn:v2",
            r"^version in 'digits-cnn:v2' must be a positive integer; use e.g. 'digits-cnn:1'$",
        ),
        ("digits-cnn@prod", r"^model 'digits-cnn' has no alias 'prod'; aliases: champion$"),
        ("digits-cnn@", r"^invalid alias name ''"),
        ("", r"^empty model reference"),
    ],
)
def test_resolve_errors(reg: Registry, ref: str, message: str) -> None:
    with pytest.raises(RegistryError, match=message):
        reg.resolve(ref)


def test_unknown_names_on_empty_registry(tmp_path: Path) -> None:
    r = Registry(tmp_path / "home")
    with pytest.raises(
        RegistryError, match=r"unknown model 'x'; registered models: none yet \(register a run first\)"
    ):
        r.resolve("x")
    with pytest.raises(RegistryError, match=r"unknown model 'x'"):
        r.get_version("x", 1)
    assert r.audit_log() == []
    assert not (tmp_path / "home").exists()


# ----------------------------------------------------------------------------- crash consistency

_CHILD = """
import json, os, signal, sys
from pathlib import Path
from modelyard.evaluate.schema import VersionEvidence
from modelyard.registry import Registry, VersionEntry
entries = [
    VersionEntry(**{
        **e,
        "files": {k: Path(v) for k, v in e["files"].items()},
        "evidence": VersionEvidence.model_validate(e["evidence"]),
    })
    for e in json.loads(sys.argv[2])
]
def crash_at(point):  # killed without any cleanup at the chosen checkpoint
    if point == sys.argv[3]:
        os.kill(os.getpid(), signal.SIGKILL)
Registry(Path(sys.argv[1])).register_run(
    "digits-cnn", entries, run_id="run-2", champion="pruned", reason="crash test", checkpoint=crash_at
)
"""


def _snapshot(r: Registry, versions: list[int]) -> dict[str, Any]:
    return {
        # Everything stored about the versions, less which aliases point at them now (checked apart).
        "versions": [
            {k: v for k, v in r.get_version("digits-cnn", n).items() if k != "aliases"} for n in versions
        ],
        "log": [e for e in r.audit_log("digits-cnn") if e["run_id"] != "run-2"],
    }


def _check_consistent(r: Registry) -> None:
    db = sqlite3.connect(r.db_path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
        files = db.execute("SELECT sha256, size_bytes FROM version_files").fetchall()
    finally:
        db.close()
    # Whatever lies under a final (hash) name is complete; only ".tmp-*" files may be left by a crash.
    for blob in _blobs_on_disk(r.home):
        if not blob.name.startswith(".tmp-"):
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == blob.name
    for digest, size in files:
        blob = r.artifacts.path_for(digest)
        assert blob.is_file()
        assert blob.stat().st_size == size
        assert hashlib.sha256(blob.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize(
    ("point", "committed"),
    [("mid_artifact", False), ("after_artifacts", False), ("mid_transaction", False), ("after_commit", True)],
)
def test_killed_register_run_leaves_all_or_nothing(
    reg: Registry, tmp_path: Path, point: str, committed: bool
) -> None:
    reg.promote("digits-cnn", 3, reason="before the crash")
    before = _snapshot(reg, [1, 2, 3])

    spec = [
        {
            **dataclasses.asdict(e),
            "files": {k: str(v) for k, v in e.files.items()},
            "evidence": e.evidence.model_dump(mode="json") if e.evidence is not None else None,
        }
        for e in _entries(tmp_path / "src", "r2")
    ]
    assert point in CHECKPOINTS
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", _CHILD, str(reg.home), json.dumps(spec), point],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr

    _check_consistent(reg)
    assert _snapshot(reg, [1, 2, 3]) == before  # the earlier run is intact
    runs_2 = [v for v in reg.list_versions("digits-cnn") if v["run_id"] == "run-2"]
    moves_2 = [e for e in reg.audit_log("digits-cnn") if e["run_id"] == "run-2"]
    if committed:
        assert [v["version"] for v in runs_2] == [4, 5, 6]
        assert [v["parent_version"] for v in runs_2] == [None, 4, 4]
        assert [(e["from_version"], e["to_version"]) for e in moves_2] == [(3, 6)]
        assert reg.resolve("digits-cnn") == ("digits-cnn", 6)
    else:
        assert runs_2 == []
        assert moves_2 == []
        assert reg.list_models()[0]["versions"] == 3
        assert reg.resolve("digits-cnn") == ("digits-cnn", 3)
        db = sqlite3.connect(reg.db_path)
        assert db.execute("SELECT COUNT(*) FROM runs WHERE run_id = 'run-2'").fetchone() == (0,)
        db.close()
        # The run can simply be registered again.
        got = reg.register_run(
            "digits-cnn", _entries(tmp_path / "src", "r2"), run_id="run-2", champion="pruned", reason="retry"
        )
        assert got == {"baseline": 4, "int8": 5, "pruned": 6}
        _check_consistent(reg)
    dest = reg.materialize("digits-cnn", 6, tmp_path / "v6")
    assert (dest / "model.onnx").read_bytes() == b"r2:pruned:weights" * 50


def test_checkpoints_are_called_in_order_and_production_reads_no_test_variable(
    reg: Registry, tmp_path: Path
) -> None:
    seen: list[str] = []
    reg.register_run(
        "digits-cnn",
        _entries(tmp_path / "src", "r2"),
        run_id="run-2",
        champion=None,
        reason="x",
        checkpoint=seen.append,
    )
    assert seen[-3:] == ["after_artifacts", "mid_transaction", "after_commit"]
    assert set(seen) == set(CHECKPOINTS) and seen.index("mid_artifact") < seen.index("after_artifacts")
    source = (REPO / "modelyard").rglob("*.py")
    assert not [p for p in source if "MODELYARD_TEST_" in p.read_text(encoding="utf-8")]


def test_manifest_json_is_stored_as_text(reg: Registry) -> None:
    db = sqlite3.connect(reg.db_path)
    manifest, evidence = db.execute("SELECT manifest, evidence FROM versions WHERE version = 1").fetchone()
    db.close()
    assert json.loads(manifest) == {"name": "baseline", "format": "onnx", "parent": None}
    assert json.loads(evidence)["run_id"] == "r1"


def test_concurrent_runs_get_distinct_contiguous_versions(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    home = tmp_path / "home"
    runs = [_entries(tmp_path / "src", "w0"), _entries(tmp_path / "src", "w1")]

    def register(i: int) -> dict[str, int]:
        # One Registry per worker, as separate processes would have; identical files race into the store.
        return Registry(home).register_run(
            "digits-cnn", runs[i % 2], run_id=f"run-{i}", champion=None, reason="race"
        )

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(register, range(4)))
    blocks = sorted(tuple(sorted(res.values())) for res in results)
    assert blocks == [(1, 2, 3), (4, 5, 6), (7, 8, 9), (10, 11, 12)]
    r = Registry(home)
    _check_consistent(r)
    assert len(_blobs_on_disk(home)) == 7  # 2 x 3 distinct model files + the shared vocab
