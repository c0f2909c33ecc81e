"""The rollout controller's decision: a challenger against the champion on the model's own signals.

``Controller`` takes one ``Observation`` per request the challenger answered (in shadow mode every request is
answered by both, so the comparison is paired on identical inputs) and decides, after every request:

- **rollback** as soon as the challenger is worse than the policy's margin on any signal, at confidence
  1 - alpha / k for k signals (Bonferroni), so a challenger as good as the champion is rolled back with
  probability at most alpha over the whole rollout, however often it is checked;
- **promote** once it is non-inferior on every signal that has data, after ``min_requests``;
- **inconclusive** (the champion is kept) at ``max_requests``;
- **continue** otherwise.

Signals (``[rollout]`` policy table, ``modelyard.config.RolloutPolicy``):

| signal | observation | test | margin |
| --- | --- | --- | --- |
| errors | the challenger's request failed | beta-binomial mixture SPRT | the champion's error rate before the rollout + ``max_error_rate_increase`` |
| latency | the challenger's answer was slower than the champion's p99 (measured before the rollout) | mixture SPRT | ``max_slow_rate`` |
| flips (shadow) | the two predicted classes differ | mixture SPRT | ``max_flip_rate`` |
| accuracy | champion correct minus challenger correct, on labelled requests both answered | empirical-Bernstein confidence sequence | ``max_accuracy_drop_points`` / 100 |

A decision carries the reason and every signal's statistics, for the registry's audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.config import RolloutPolicy
from modelyard.errors import ConfigError
from modelyard.rollout.sequential import Comparison, RateTest, paired_accuracy

Action = Literal["rollback", "promote", "inconclusive", "continue"]
Mode = Literal["shadow", "canary"]


@dataclass(frozen=True)
class Observation:
    """One request the challenger answered. ``flip``: shadow only (None in canary). ``challenger_correct`` /
    ``champion_correct``: set once a label arrived (the champion's only when it answered the same request)."""

    error: bool
    latency_ms: float | None = None
    flip: bool | None = None
    challenger_correct: bool | None = None
    champion_correct: bool | None = None


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str
    requests: int
    statistics: list[dict[str, Any]]


@dataclass
class Controller:
    """The running comparison of one rollout. ``champion_p99_ms`` and ``champion_error_rate``: the champion's p99
    latency and share of failed requests measured before the rollout started (on other requests than the ones
    compared; None turns the latency signal off)."""

    policy: RolloutPolicy
    mode: Mode
    champion_p99_ms: float | None = None
    champion_error_rate: float = 0.0
    requests: int = 0
    _signals: dict[str, RateTest | Comparison] = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in ("shadow", "canary"):
            raise ConfigError(f"rollout mode must be shadow or canary, got {self.mode!r}")
        p = self.policy
        k = 2 + (self.mode == "shadow") + (self.champion_p99_ms is not None)
        a = p.alpha / k
        self._signals = {
            "errors": RateTest(
                "errors", limit=min(0.5, self.champion_error_rate + p.max_error_rate_increase), alpha=a
            ),
            "accuracy": Comparison("accuracy", margin=p.max_accuracy_drop_points / 100.0, alpha=a),
        }
        if self.mode == "shadow":
            self._signals["flips"] = RateTest("flips", limit=p.max_flip_rate, alpha=a)
        if self.champion_p99_ms is not None:
            self._signals["latency"] = RateTest("latency", limit=p.max_slow_rate, alpha=a)

    def _event(self, name: str, happened: bool) -> None:
        sig = self._signals.get(name)
        if isinstance(sig, RateTest):
            sig.add(happened)

    def observe(self, obs: Observation) -> None:
        self.requests += 1
        self._event("errors", obs.error)
        if obs.latency_ms is not None and self.champion_p99_ms is not None and not obs.error:
            self._event("latency", obs.latency_ms > self.champion_p99_ms)
        if obs.flip is not None:
            self._event("flips", obs.flip)
        accuracy = self._signals["accuracy"]
        if (
            obs.challenger_correct is not None
            and obs.champion_correct is not None
            and isinstance(accuracy, Comparison)
        ):
            accuracy.add(paired_accuracy(obs.challenger_correct, obs.champion_correct))

    def label(self, *, challenger_correct: bool, champion_correct: bool) -> None:
        """A label arrived for a request both answered: one paired accuracy observation (not a new request)."""
        accuracy = self._signals["accuracy"]
        if isinstance(accuracy, Comparison):
            accuracy.add(paired_accuracy(challenger_correct, champion_correct))

    @property
    def signals(self) -> dict[str, RateTest | Comparison]:
        """Each signal's running test, by name (read them; ``observe`` and ``label`` feed them)."""
        return dict(self._signals)

    def statistics(self) -> list[dict[str, Any]]:
        return [sig.summary() for sig in self._signals.values()]

    def decide(self) -> Decision:
        p = self.policy
        states = {name: sig.decision(min_n=0) for name, sig in self._signals.items()}
        worse = [name for name, d in states.items() if d == "worse"]
        observed = [n for n, sig in self._signals.items() if sig.n > 0]
        if worse:
            detail = "; ".join(_describe(self._signals[n]) for n in worse)
            action: Action = "rollback"
            reason = f"the challenger is worse than the margin on {detail}"
        elif (
            self.requests >= p.min_requests
            and observed
            and all(states[n] == "non-inferior" for n in observed)
        ):
            action = "promote"
            reason = f"non-inferior on every signal with data ({', '.join(observed)}) after {self.requests} requests"
        elif self.requests >= p.max_requests:
            still = ", ".join(n for n, d in states.items() if d != "non-inferior")
            action = "inconclusive"
            reason = f"no decision after {self.requests} requests (still open: {still}); the champion is kept"
        else:
            return Decision("continue", "collecting evidence", self.requests, [])
        return Decision(action, reason, self.requests, self.statistics())


def _describe(sig: RateTest | Comparison) -> str:
    if isinstance(sig, RateTest):
        return f"{sig.name} ({sig.k} of {sig.n}, limit {sig.limit:.3g})"
    lo, hi = sig.interval()
    return f"{sig.name} (drop {100 * (sig.mean or 0):.2f} points, interval [{100 * lo:.2f}, {100 * hi:.2f}], margin {100 * sig.margin:.2f})"
