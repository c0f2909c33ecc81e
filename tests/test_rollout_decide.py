"""The rollout controller: a worse challenger is rolled back with the reason and statistics, a good one is
promoted after the minimum, the champion is kept when nothing is decided by the maximum."""

from __future__ import annotations

import numpy as np
import pytest

from modelyard.config import RolloutPolicy, policy_from_dict
from modelyard.errors import ConfigError
from modelyard.rollout.decide import Controller, Observation

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
    ],
)
def test_a_malformed_rollout_table_is_refused_in_one_line(raw: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        policy_from_dict(raw)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ConfigError, match="shadow or canary"):
        Controller(POLICY, "blue-green")  # type: ignore[arg-type]
