"""The rollout controller: a worse challenger is rolled back with the reason and statistics, a good one is
promoted after the minimum, the champion is kept when nothing is decided by the maximum."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from modelyard.config import RolloutPolicy, policy_from_dict
from modelyard.errors import ConfigError
from modelyard.monitor.db import connect
from modelyard.monitor.reference import FILE_NAME, InputReference, MonitorReference, write_reference
from modelyard.monitor.summary import summarize_inputs, summarize_outputs
from modelyard.rollout import drift_look
from modelyard.rollout.control import signal_statistics
from modelyard.rollout.decide import Controller, Decision, Observation
from modelyard.rollout.observations import (
    RolloutRow,
    class_probabilities,
    confidence_drop,
    mean_kl,
    ood_increase,
    replay,
    write_rows,
)

POLICY = RolloutPolicy(min_requests=200, max_requests=4000)


def _drive(ctl: Controller, rng: np.random.Generator, *, flip: float, error: float, slow: float) -> str:
    for _ in range(ctl.policy.max_requests):
        ctl.observe(
            Observation(
                error=bool(rng.random() < error),
                latency_ms=20.0 if rng.random() < slow else 5.0,
                flip=bool(rng.random() < flip),
            )
        )
        d = ctl.decide()
        if d.action != "continue":
            return d.action
    raise AssertionError("the controller never ended at max_requests")


def test_a_flipping_challenger_is_rolled_back_with_the_statistics() -> None:
    ctl = Controller(POLICY, "shadow", champion_p99_ms=10.0, champion_error_rate=0.001)
    assert _drive(ctl, np.random.default_rng(0), flip=0.10, error=0.0, slow=0.0) == "rollback"
    d = ctl.decide()
    assert d.action == "rollback" and "flips" in d.reason and d.requests < 500
    by = {s["signal"]: s for s in d.statistics}
    assert set(by) == {"errors", "accuracy", "flips", "latency"} and by["flips"]["rate"] > 0.05
    assert "valid at every look" in str(by["flips"]["method"])


def test_a_slow_or_failing_challenger_is_rolled_back() -> None:
    slow = Controller(POLICY, "canary", champion_p99_ms=10.0)
    assert _drive(slow, np.random.default_rng(1), flip=0.0, error=0.0, slow=0.5) == "rollback"
    assert "latency" in slow.decide().reason
    failing = Controller(POLICY, "canary", champion_p99_ms=10.0, champion_error_rate=0.0)
    assert _drive(failing, np.random.default_rng(2), flip=0.0, error=0.05, slow=0.0) == "rollback"
    assert "errors" in failing.decide().reason


def test_a_good_challenger_is_promoted_after_the_minimum() -> None:
    ctl = Controller(POLICY, "shadow", champion_p99_ms=10.0, champion_error_rate=0.001)
    assert _drive(ctl, np.random.default_rng(3), flip=0.0, error=0.0, slow=0.0) == "promote"
    assert ctl.requests >= POLICY.min_requests


def test_labels_drive_the_accuracy_signal() -> None:
    ctl = Controller(RolloutPolicy(min_requests=10, max_requests=20_000), "canary")
    rng = np.random.default_rng(4)
    while ctl.decide().action == "continue":
        champ_right = bool(rng.random() < 0.9)
        ctl.observe(
            Observation(
                error=False,
                challenger_correct=champ_right and rng.random() > 0.2,
                champion_correct=champ_right,
            )
        )
    assert ctl.decide().action == "rollback" and "accuracy" in ctl.decide().reason


def test_nothing_decided_by_the_maximum_keeps_the_champion() -> None:
    policy = RolloutPolicy(min_requests=10, max_requests=50)
    ctl = Controller(policy, "canary")
    for _ in range(50):
        ctl.observe(Observation(error=False))
    d = ctl.decide()
    assert d.action == "inconclusive" and "champion is kept" in d.reason


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"rollout": {"alpha": 1.5}}, r"\[rollout\] alpha is a fraction"),
        ({"rollout": {"min_requests": 900, "max_requests": 100}}, "min_requests .* is above max_requests"),
        ({"rollout": {"on_champion_alarm": "panic"}}, "must be one of rollback, alarm"),
        ({"rollout": {"max_flips": 0.1}}, "unknown key 'max_flips' in \\[rollout\\]"),
        ({"rollout": {"max_mean_kl": 2}}, r"\[rollout\] max_mean_kl is a fraction"),
        ({"rollout": {"max_ood_rate_increase": -0.1}}, r"max_ood_rate_increase must be a finite number >= 0"),
        ({"rollout": {"max_confidence_drop_points": "two"}}, r"max_confidence_drop_points must be a number"),
    ],
)
def test_a_malformed_rollout_table_is_refused_in_one_line(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        policy_from_dict(raw)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="shadow or canary"):
        Controller(POLICY, "blue-green")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------
# the paired label-free signals (kl, confidence, ood) and the one-look drift signal

# errors and flips lenient, so that the signal under test is the one that decides
PAIRED = RolloutPolicy(min_requests=200, max_requests=8000, max_error_rate_increase=0.05, max_flip_rate=0.3)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def _answers(rng: np.random.Generator, *, noise: float, temperature: float) -> tuple[dict, dict]:
    """One request's two answers: the champion's calibrated probabilities, and the challenger's from the same
    logits (plus ``noise``) over ``temperature`` (a blurrier challenger when above 1)."""
    logits = rng.normal(0.0, 3.0, size=(1, 3))
    champion = {"probabilities": _softmax(logits)}
    challenger = {"probabilities": _softmax((logits + rng.normal(0.0, noise, size=(1, 3))) / temperature)}
    return champion, challenger


def _flagged(outputs: dict, threshold: float) -> dict:
    """``outputs`` with an msp-style OOD flag: top probability below ``threshold`` (the version's own rule)."""
    return {**outputs, "ood_flag": np.asarray(outputs["probabilities"]).max(axis=1) < threshold}


def _kl(rng: np.random.Generator, worse: bool) -> Observation:
    champion, challenger = _answers(rng, noise=2.5 if worse else 0.02, temperature=1.0)
    kl = mean_kl(class_probabilities(champion), class_probabilities(challenger))
    return Observation(error=False, flip=False, kl=kl)


def _confidence(rng: np.random.Generator, worse: bool) -> Observation:
    champion, challenger = _answers(rng, noise=0.02, temperature=1.6 if worse else 1.0)
    drop = confidence_drop(summarize_outputs(champion).confidence, summarize_outputs(challenger).confidence)
    return Observation(error=False, flip=False, confidence_drop=drop)


def _ood(rng: np.random.Generator, worse: bool) -> Observation:
    champion, challenger = _answers(rng, noise=0.02, temperature=1.0)
    ours = summarize_outputs(_flagged(champion, 0.6)).ood_flag
    theirs = summarize_outputs(_flagged(challenger, 0.75 if worse else 0.6)).ood_flag
    return Observation(error=False, flip=False, ood_increase=ood_increase(ours, theirs))


def _until_decided(ctl: Controller, draw: Callable[[], Observation]) -> Decision:
    while True:
        ctl.observe(draw())
        if ctl.requests % 10 == 0 and (d := ctl.decide()).action != "continue":
            return d


@pytest.mark.parametrize(("name", "draw"), [("kl", _kl), ("confidence", _confidence), ("ood", _ood)])
def test_each_paired_signal_rolls_back_a_worse_challenger_and_promotes_an_identical_one(
    name: str, draw: Callable[[np.random.Generator, bool], Observation]
) -> None:
    worse = Controller(PAIRED, "shadow", classifier=True, ood=True)
    rng = np.random.default_rng(11)
    d = _until_decided(worse, lambda: draw(rng, True))
    assert d.action == "rollback" and f"worse than the margin on {name} (" in d.reason, d.reason
    by = {s["signal"]: s for s in d.statistics}
    assert by[name]["low"] > by[name]["margin"] and by[name]["mean"] > by[name]["margin"]

    same = Controller(PAIRED, "shadow", classifier=True, ood=True)
    d = _until_decided(same, lambda: draw(rng, False))
    assert d.action == "promote" and name in d.reason, d.reason
    assert same.signals[name].decision() == "non-inferior" and same.signals[name].n == same.requests


def test_the_paired_signals_split_alpha_with_the_others_and_say_what_they_measure() -> None:
    shadow = Controller(PAIRED, "shadow", champion_p99_ms=10.0, classifier=True, ood=True, drift=True)
    assert list(shadow.signals) == [
        "errors",
        "accuracy",
        "flips",
        "latency",
        "kl",
        "confidence",
        "ood",
        "drift",
    ]
    assert all(s.alpha == pytest.approx(PAIRED.alpha / 8) for s in shadow.signals.values())
    canary = Controller(PAIRED, "canary", classifier=True, ood=False)  # kl and flips: shadow only
    assert list(canary.signals) == ["errors", "accuracy", "confidence"]
    stats = {s["name"]: s for s in signal_statistics(shadow)}
    assert "capped at 1 nat" in stats["kl"]["of"] and stats["kl"]["margin"] == pytest.approx(0.05)
    assert stats["confidence"]["margin"] == pytest.approx(0.02)
    assert stats["ood"]["margin"] == pytest.approx(0.02) and stats["drift"]["decision"] == "open"


def test_mean_kl_is_zero_for_equal_answers_and_capped_at_one_nat() -> None:
    p = np.asarray([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    assert mean_kl(p, p) == pytest.approx(0.0, abs=1e-12)
    q = np.asarray([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]])
    expected = np.mean(np.sum(p * np.log(p / q), axis=1))
    assert mean_kl(p, q) == pytest.approx(expected)
    assert mean_kl(p, np.asarray([[0.0, 0.5, 0.5], [0.1, 0.1, 0.8]])) == 1.0  # infinite on row 0
    assert mean_kl(p, q[:1]) is None
    # an answer that is not a number: the challenger's counts as the worst, the champion's pairs nothing
    assert mean_kl(p, np.full_like(p, np.nan)) == 1.0 and mean_kl(np.full_like(p, np.nan), p) is None
    assert confidence_drop(0.9, float("nan")) == 1.0 and confidence_drop(float("nan"), 0.9) is None
    assert confidence_drop(0.2, 0.9) == pytest.approx(-0.7) and ood_increase(None, True) is None
    # logits only: the version's temperature makes the probabilities
    z = np.asarray([[2.0, 0.0, -1.0]])
    assert class_probabilities({"logits": z}, 2.0) == pytest.approx(_softmax(z / 2.0))


def test_the_drift_signal_looks_once_and_a_promotion_waits_for_it() -> None:
    policy = RolloutPolicy(min_requests=50, max_requests=5000, max_error_rate_increase=0.2)
    ctl = Controller(policy, "canary", drift=True)
    for _ in range(400):
        ctl.observe(Observation(error=False))
    assert ctl.signals["errors"].decision() == "non-inferior"
    assert ctl.drift_pending and ctl.decide().action == "continue"  # waits for the look
    ctl.record_drift(alarm=False, n=120, statistic=0.1, threshold=0.3, features="3 compared")
    assert ctl.decide().action == "promote" and "drift" in ctl.decide().reason
    with pytest.raises(ConfigError, match="one look was taken already"):
        ctl.record_drift(alarm=True, n=120)

    alarmed = Controller(policy, "canary", drift=True)
    alarmed.observe(Observation(error=False))
    alarmed.record_drift(alarm=True, n=120, statistic=0.9, threshold=0.3, moved="b 0.9 (mean +1 sd)")
    d = alarmed.decide()
    assert d.action == "rollback" and "on drift (max effect 0.9 over threshold 0.3 on 120 rows" in d.reason
    assert "moved: b 0.9 (mean +1 sd)" in d.reason
    entry = next(s for s in signal_statistics(alarmed) if s["name"] == "drift")
    assert (entry["decision"], entry["n"], entry["threshold"]) == ("worse", 120, 0.3)
    with pytest.raises(ConfigError, match="no drift signal"):
        Controller(policy, "canary").record_drift(alarm=True, n=1)


# ---------------------------------------------------------------------------------------------------
# the prediction log: rows carry the paired values, replay rebuilds them, an old table is migrated


def _rows(mode: str, n: int, rng: np.random.Generator) -> Iterator[RolloutRow]:
    for i in range(n):
        champion, challenger = _answers(rng, noise=0.5, temperature=1.2)
        mine = summarize_outputs(_flagged(challenger, 0.6))
        theirs = summarize_outputs(_flagged(champion, 0.6))
        error = i % 37 == 5
        yield RolloutRow(
            1,
            f"r{i}",
            float(i),
            "m",
            "2",
            "1",
            mode,
            returned=mode == "canary",
            error=error,
            latency_ms=None if error else 5.0,
            flip=None if error or mode == "canary" else bool(i % 9 == 0),
            challenger_predicted=None if error else [0],
            champion_predicted=[0],
            confidence=None if error else mine.confidence,
            ood_flag=None if error else mine.ood_flag,
            champion_confidence=theirs.confidence,
            champion_ood_flag=theirs.ood_flag,
            kl=None
            if error or mode == "canary"
            else mean_kl(class_probabilities(champion), class_probabilities(challenger)),
        )


@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_replay_restores_the_paired_signals(tmp_path: Path, mode: str) -> None:
    path = tmp_path / "monitor.db"
    rows = list(_rows(mode, 300, np.random.default_rng(5)))
    live = Controller(PAIRED, mode, champion_p99_ms=10.0, classifier=True, ood=True)  # type: ignore[arg-type]
    for row in rows:  # as the server feeds them: a canary's pair arrives after its request
        obs = row.observation()
        if mode == "canary":
            live.observe(Observation(error=obs.error, latency_ms=obs.latency_ms))
            live.pair(confidence_drop=obs.confidence_drop, ood_increase=obs.ood_increase)
        else:
            live.observe(obs)
    assert write_rows(path, rows) == 300
    restarted = Controller(PAIRED, mode, champion_p99_ms=10.0, classifier=True, ood=True)  # type: ignore[arg-type]
    for obs in replay(path, 1):
        restarted.observe(obs)
    assert signal_statistics(restarted) == signal_statistics(live)
    paired = {"kl", "confidence", "ood"} if mode == "shadow" else {"confidence", "ood"}
    answered = sum(not r.error for r in rows)
    assert all(live.signals[n].n == answered for n in paired)  # every answered request is paired


def test_an_existing_rollout_table_gains_the_new_columns(tmp_path: Path) -> None:
    path = tmp_path / "monitor.db"
    old = sqlite3.connect(path)  # the table as the previous release created it
    old.execute(
        "CREATE TABLE rollout_predictions (seq INTEGER PRIMARY KEY AUTOINCREMENT, rollout_id INTEGER NOT NULL, "
        "request_id TEXT NOT NULL, at_unix_s REAL NOT NULL, model TEXT NOT NULL, version TEXT NOT NULL, "
        "champion_version TEXT NOT NULL, mode TEXT NOT NULL, returned INTEGER NOT NULL, error INTEGER NOT NULL, "
        "latency_ms REAL, flip INTEGER, challenger_predicted TEXT, champion_predicted TEXT, outputs TEXT, "
        "confidence REAL, ood_score REAL, ood_flag INTEGER)"
    )
    old.execute(
        "INSERT INTO rollout_predictions (rollout_id, request_id, at_unix_s, model, version, champion_version, "
        "mode, returned, error, latency_ms, flip, confidence, ood_flag) "
        "VALUES (1, 'old', 0, 'm', '2', '1', 'shadow', 0, 0, 4.0, 1, 0.9, 0)"
    )
    old.commit()
    old.close()
    new = next(_rows("shadow", 1, np.random.default_rng(0)))
    assert write_rows(path, [new]) == 1
    got = replay(path, 1)
    assert got[0] == Observation(error=False, latency_ms=4.0, flip=True)  # kept, nothing paired
    assert got[1] == new.observation() and got[1].kl is not None and got[1].confidence_drop is not None
    conn = sqlite3.connect(path)
    columns = [r[1] for r in conn.execute("PRAGMA table_info(rollout_predictions)")]
    conn.close()
    assert columns[-3:] == ["champion_confidence", "champion_ood_flag", "kl"]


# ---------------------------------------------------------------------------------------------------
# the drift look against the challenger's own reference, through the prediction log


def _reference(folder: Path, rng: np.random.Generator) -> None:
    rows = rng.normal(0.0, 1.0, size=(800, 3))
    inputs = InputReference("values", "x", ("a", "b", "c"), rows, None, "test reference")
    ref = MonitorReference("classification", "tabular", "c", inputs, None, None, None, None, ())
    write_reference(ref, folder / FILE_NAME)


def _log_requests(path: Path, x: np.ndarray, *, version: str) -> None:
    conn = connect(path)
    for i, row in enumerate(x):
        summary = summarize_inputs({"x": row[None, :].astype(np.float32)}, None, rows=1)
        conn.execute(
            "INSERT INTO predictions (request_id, at_unix_s, model, version, endpoint, rows, inputs, outputs) "
            "VALUES (?, ?, 'm', ?, 'infer', 1, ?, '{}')",
            (f"q{i}", float(i), version, summary),
        )
    conn.close()
    write_rows(
        path,
        [
            RolloutRow(1, f"q{i}", float(i), "m", "2", "1", "shadow", False, False, 5.0, False, [0], [0])
            for i in range(len(x))
        ],
    )


@pytest.mark.parametrize("shift", [0.0, 1.0])
def test_the_drift_look_compares_the_rollouts_inputs_with_the_challengers_reference(
    tmp_path: Path, shift: float
) -> None:
    rng = np.random.default_rng(3)
    _reference(tmp_path / "v2", rng)
    plan, why = drift_look.plan(
        tmp_path / "v2",
        mode="shadow",
        champion_version=1,
        challenger_version=2,
        champion_projection=None,
        alpha_share=0.01,
    )
    assert plan is not None and why == "" and plan.max_rows == 200 and plan.versions == {"1", "2"}
    path = tmp_path / "monitor.db"
    x = rng.normal(0.0, 1.0, size=(150, 3))
    x[:, 1] += shift
    _log_requests(path, x, version="1")  # the champion logged the shadowed requests' inputs
    assert drift_look.look(path, 1, plan, requests=151, alpha=0.01) is None  # not enough logged yet
    got = drift_look.look(path, 1, plan, requests=120, alpha=0.01)
    assert got is not None and (got["n"], got["window_requests"], got["level"]) == (120, 120, 0.01)
    assert got["alarm"] is (shift > 0) and got["threshold"] > 0
    assert ("moved" in got) is (shift > 0) and (shift == 0 or got["moved"].startswith("b "))
    # the same look again (a restart that lost it) is the same result, not a fresh draw
    assert drift_look.look(path, 1, plan, requests=120, alpha=0.01) == got
    ctl = Controller(PAIRED, "shadow", drift=True)
    ctl.record_drift(**got)
    stats = json.loads(json.dumps(signal_statistics(ctl)))  # as the registry stores them
    assert drift_look.restore(stats) == got


def test_no_drift_signal_without_a_usable_reference(tmp_path: Path) -> None:
    def plan(folder: Path, **kw: object) -> str:
        args = {"mode": "shadow", "champion_version": 1, "challenger_version": 2, "champion_projection": None}
        return drift_look.plan(folder, **{**args, "alpha_share": 0.01, **kw})[1]  # type: ignore[arg-type]

    assert plan(tmp_path / "none") == "the challenger has no monitor reference"
    _reference(tmp_path / "v2", np.random.default_rng(0))
    assert "below what the drift test resolves" in plan(tmp_path / "v2", alpha_share=1e-4)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / FILE_NAME).write_text("{}")
    assert "does not load" in plan(tmp_path / "bad")
