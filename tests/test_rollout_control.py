"""Rollouts in the registry: start, status, stop and the controller's end (promote moves the champion, the rest
keep it), with the audit log; bad input is one line and changes nothing; the CLI is a thin shell over it; a
schema-1 registry is migrated with its audit log intact."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from modelyard.cli import main
from modelyard.config import RolloutPolicy
from modelyard.registry import Registry, VersionEntry
from modelyard.registry import db as db_module
from modelyard.rollout import RolloutView, rollout_status, start_rollout, stop_rollout
from modelyard.rollout.control import (
    RolloutConflict,
    RolloutError,
    RolloutNotFound,
    finish_rollout,
    policy_of,
    signal_statistics,
)
from modelyard.rollout.decide import Controller, Observation

MODEL = "m"


def _register(reg: Registry, src: Path, run_id: str, names: list[str], champion: str | None) -> None:
    entries = []
    for name in names:
        f = src / run_id / name / "model.onnx"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(f"{run_id}:{name}".encode() * 20)
        entries.append(
            VersionEntry(name=name, files={"model.onnx": f}, manifest={"name": name, "format": "onnx"})
        )
    reg.register_run(MODEL, entries, run_id=run_id, champion=champion, reason=f"test: {run_id}")


@pytest.fixture
def reg(tmp_path: Path) -> Registry:
    r = Registry(tmp_path / "home")
    _register(r, tmp_path / "src", "run-1", ["a", "b", "c"], champion="a")  # v1 champion, v2 and v3
    return r


def _snapshot(reg: Registry) -> Any:
    return reg.list_models(), reg.audit_log(), [v.to_dict() for v in rollout_status(reg)]


def test_start_status_stop_round_trip(reg: Registry) -> None:
    view = start_rollout(reg, MODEL, 2, mode="canary", percent=25, sticky_header="X-User")
    assert isinstance(view, RolloutView)
    d = view.to_dict()
    assert set(d) == {
        "model",
        "champion",
        "challenger",
        "mode",
        "percent",
        "state",
        "started_at",
        "ended_at",
        "requests",
        "reason",
        "statistics",
    }
    assert (d["champion"], d["challenger"], d["mode"], d["percent"], d["state"]) == (
        1,
        2,
        "canary",
        25.0,
        "running",
    )
    assert d["ended_at"] is None and d["requests"] == 0 and d["statistics"] == []
    json.dumps(d)  # plain JSON
    start = reg.audit_log(MODEL)[-1]
    assert (start["action"], start["from_version"], start["to_version"]) == ("rollout-start", 1, 2)
    assert "canary of version 2 against version 1 (25% of requests)" in start["reason"]
    assert [v.state for v in rollout_status(reg, MODEL)] == ["running"]

    stopped = stop_rollout(reg, MODEL, reason="changed my mind")
    assert stopped.state == "stopped" and stopped.ended_at is not None
    assert reg.resolve(f"{MODEL}@champion") == (MODEL, 1)
    last = reg.audit_log(MODEL)[-1]
    assert (last["action"], last["to_version"]) == ("rollout-stopped", 1)
    assert "changed my mind" in last["reason"]

    second = start_rollout(reg, MODEL, 3, mode="shadow")  # a new one may start once the first ended
    assert second.percent is None
    assert [(v.challenger, v.state) for v in rollout_status(reg)] == [(3, "running"), (2, "stopped")]


def _controller(flips: int, n: int) -> Controller:
    ctl = Controller(
        RolloutPolicy(min_requests=50, max_error_rate_increase=0.05), "shadow", champion_p99_ms=10.0
    )
    for i in range(n):
        ctl.observe(Observation(error=False, latency_ms=1.0, flip=i < flips))
    return ctl


def test_promotion_moves_the_champion_and_logs_why_with_the_statistics(reg: Registry) -> None:
    start_rollout(reg, MODEL, 3, mode="shadow")
    ctl = _controller(0, 400)
    decision = ctl.decide()
    assert decision.action == "promote"
    view = finish_rollout(reg, 1, decision, signal_statistics(ctl))
    assert view is not None and view.state == "promoted" and view.requests == 400
    assert reg.resolve(f"{MODEL}@champion") == (MODEL, 3)
    row = reg.audit_log(MODEL)[-1]
    assert (row["action"], row["from_version"], row["to_version"]) == ("promote", 1, 3)
    stats = json.loads(row["reason"].split("statistics: ", 1)[1])
    assert {s["name"]: s["decision"] for s in stats} == {
        "errors": "non-inferior",
        "accuracy": "open",
        "flips": "non-inferior",
        "latency": "non-inferior",
    }
    assert {s["name"]: s["n"] for s in stats}["flips"] == 400
    assert finish_rollout(reg, 1, decision, []) is None  # ended once
    # the rollout rows are not on the alias's stack: a rollback goes back to the champion before it
    assert reg.rollback(MODEL, reason="test") == 1


def test_rollback_keeps_the_champion_and_says_why(reg: Registry) -> None:
    start_rollout(reg, MODEL, 2, mode="shadow")
    ctl = _controller(40, 100)
    decision = ctl.decide()
    assert decision.action == "rollback" and "flips" in decision.reason
    view = finish_rollout(reg, 1, decision, signal_statistics(ctl))
    assert view is not None and view.state == "rolled_back" and view.reason.startswith("rollout rollback")
    assert reg.resolve(f"{MODEL}@champion") == (MODEL, 1)
    row = reg.audit_log(MODEL)[-1]
    assert (row["action"], row["from_version"], row["to_version"]) == ("rollout-rollback", 2, 1)
    flips = next(s for s in json.loads(row["reason"].split("statistics: ", 1)[1]) if s["name"] == "flips")
    assert flips["decision"] == "worse" and flips["k"] == 40 and flips["limit"] == pytest.approx(0.02)


def test_a_promotion_after_the_champion_moved_by_hand_promotes_nothing(reg: Registry) -> None:
    start_rollout(reg, MODEL, 2, mode="shadow")
    reg.promote(MODEL, 3, reason="by hand, mid-rollout")
    ctl = _controller(0, 400)
    view = finish_rollout(reg, 1, ctl.decide(), signal_statistics(ctl))
    assert view is not None and view.state == "stopped" and "moved to version 3" in view.reason
    assert reg.resolve(f"{MODEL}@champion") == (MODEL, 3)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"model": "nope", "version": 2, "mode": "shadow"}, RolloutNotFound, r"^unknown model 'nope'"),
        ({"version": 9, "mode": "shadow"}, RolloutNotFound, r"^model 'm' has no version 9; versions: 1..3$"),
        ({"version": True, "mode": "shadow"}, RolloutNotFound, r"has no version True"),
        ({"version": 1, "mode": "shadow"}, RolloutConflict, r"^version 1 is already the champion of 'm'"),
        ({"version": 2, "mode": "blue-green"}, RolloutError, r"^the rollout mode must be shadow or canary"),
        (
            {"version": 2, "mode": "canary", "percent": 0},
            RolloutError,
            r"percent must be a number from 1 to 99",
        ),
        ({"version": 2, "mode": "canary", "percent": 100}, RolloutError, r"from 1 to 99 .*, got 100$"),
        ({"version": 2, "mode": "canary", "percent": float("nan")}, RolloutError, r"from 1 to 99"),
        ({"version": 2, "mode": "canary", "percent": "10"}, RolloutError, r"from 1 to 99"),
        ({"version": 2, "mode": "shadow", "percent": 10}, RolloutError, r"canary rollouts only"),
        ({"version": 2, "mode": "canary", "sticky_header": "a b"}, RolloutError, r"must be a header name"),
    ],
)
def test_bad_input_is_one_line_and_changes_nothing(
    reg: Registry, kwargs: dict[str, Any], error: type[Exception], message: str
) -> None:
    before = _snapshot(reg)
    args = {"model": MODEL, **kwargs}
    with pytest.raises(error, match=message) as info:
        start_rollout(reg, args.pop("model"), args.pop("version"), **args)
    assert "\n" not in str(info.value)
    assert _snapshot(reg) == before


def test_a_second_rollout_and_a_stop_without_one_are_refused(reg: Registry) -> None:
    with pytest.raises(RolloutNotFound, match=r"^no rollout of 'm' is running"):
        stop_rollout(reg, MODEL, reason="x")
    start_rollout(reg, MODEL, 2, mode="shadow")
    before = _snapshot(reg)
    with pytest.raises(RolloutConflict, match=r"^a rollout of 'm' is already running \(version 2, shadow\)"):
        start_rollout(reg, MODEL, 3, mode="canary", percent=5)
    with pytest.raises(RolloutError, match=r"a reason is required"):
        stop_rollout(reg, MODEL, reason=" ")
    assert _snapshot(reg) == before


def test_the_policy_is_stored_with_the_rollout(reg: Registry) -> None:
    policy = RolloutPolicy(min_requests=30, max_requests=90, max_flip_rate=0.1)
    start_rollout(reg, MODEL, 2, mode="shadow", policy=policy)
    from modelyard.registry.rollouts import list_rollouts

    assert policy_of(list_rollouts(reg)[0]) == policy


# ---------------------------------------------------------------------------------------------------
# the CLI


def test_cli_start_status_stop_and_bad_input_exit_2(
    reg: Registry, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = ["--home", str(reg.home)]

    def run_cli(argv: list[str]) -> tuple[int, str, str]:
        code = main(argv)
        got = capsys.readouterr()
        return code, got.out, got.err

    code, out, _ = run_cli(["rollout", "start", MODEL, "2", "--mode", "canary", "--percent", "10", *home])
    assert code == 0 and "canary rollout of v2 against v1 started (10% of requests)" in out
    before = _snapshot(reg)
    bad_policy = tmp_path / "bad.toml"
    bad_policy.write_text("[rollout]\nmax_flip_rate = 3\nmin_requests = 'many'\n")
    cases = [
        (["rollout", "start", MODEL, "3", "--mode", "shadow", *home], "already running"),
        (["rollout", "start", MODEL, "9", "--mode", "shadow", *home], "has no version 9"),
        (["rollout", "start", MODEL, "3", "--mode", "canary", "--percent", "120", *home], "from 1 to 99"),
        (["rollout", "start", MODEL, "3", "--policy", str(bad_policy), *home], "invalid policy: [rollout]"),
        (["rollout", "stop", "nope", *home], "unknown model 'nope'"),
    ]
    for argv, message in cases:
        code, out, err = run_cli(argv)
        assert code == 2, (argv, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], err
        assert "Traceback" not in err + out
    assert _snapshot(reg) == before
    code, out, _ = run_cli(["rollout", "status", "--json", *home])
    assert code == 0 and json.loads(out)["rollouts"][0]["state"] == "running"
    code, out, _ = run_cli(["rollout", "stop", MODEL, *home])
    assert code == 0 and "v1 stays champion" in out
    code, out, _ = run_cli(["rollout", "status", MODEL, *home])
    assert code == 0 and "stopped" in out


# ---------------------------------------------------------------------------------------------------
# schema migration


def test_a_schema_1_registry_is_migrated_with_its_audit_log(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "home")
    _register(reg, tmp_path / "src", "run-1", ["a", "b"], champion="a")
    reg.promote(MODEL, 2, reason="two")
    log_before = reg.audit_log()
    # turn it back into a schema-1 database: the old alias-log CHECK, no rollouts table
    conn = sqlite3.connect(reg.db_path, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("DROP TABLE rollouts")
    old = db_module._ALIAS_LOG.format(name="alias_log_v1").replace(
        db_module._ACTIONS_SQL, "'register', 'promote', 'rollback'"
    )
    conn.execute(old)
    conn.execute("INSERT INTO alias_log_v1 SELECT * FROM alias_log")
    conn.execute("DROP TABLE alias_log")
    conn.execute("ALTER TABLE alias_log_v1 RENAME TO alias_log")
    conn.execute("PRAGMA user_version = 1")
    conn.execute("COMMIT")
    conn.close()

    assert reg.audit_log() == log_before  # migrated on open, rows and order kept
    assert (
        sqlite3.connect(reg.db_path).execute("PRAGMA user_version").fetchone()[0] == db_module.SCHEMA_VERSION
    )
    start_rollout(reg, MODEL, 1, mode="shadow")
    assert [e["action"] for e in reg.audit_log()] == ["register", "promote", "rollout-start"]
    assert reg.rollback(MODEL, reason="back") == 1
