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
| kl (shadow, classifiers) | KL divergence of the champion's calibrated class probabilities from the challenger's, mean over the request's rows, capped at 1 nat | confidence sequence on [0, 1] | ``max_mean_kl`` (nats) |
| confidence (classifiers) | champion minus challenger calibrated confidence (mean top probability) on the same request | confidence sequence on [-1, 1] | ``max_confidence_drop_points`` / 100 |
| ood (both have an OOD rule) | challenger OOD flag minus champion OOD flag on the same request, each by its own rule | confidence sequence on [-1, 1] | ``max_ood_rate_increase`` |
| drift (the challenger has an input reference) | the rollout's first logged inputs against the challenger's own monitor reference | one calibrated max-effect drift check, taken once | its threshold at the signal's alpha |

The paired signals need the champion's answer to the same request: in shadow mode the answer the client got,
in canary mode the champion's copy run off the response path (reported later with :meth:`Controller.pair`; a
dropped copy pairs nothing). A drop of calibrated confidence on the same inputs is a label-free estimate of an
accuracy drop (a calibrated model is right as often as it is confident), so ``confidence`` sees before the
labels what ``accuracy`` confirms. ``drift`` looks once, when ``min_requests`` of the rollout's requests have
logged inputs (the server runs it, :mod:`modelyard.rollout.drift_look`), so it needs no correction for repeated
looks; a promotion waits for it, an alarm rolls back naming the features that moved.

Which signals a rollout has (``classifier``, ``ood``, ``drift``) follows from its two versions, so a restarted
server builds the same ones and splits alpha the same way.

A decision carries the reason and every signal's statistics, for the registry's audit log.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from modelyard.config import RolloutPolicy
from modelyard.errors import ConfigError
from modelyard.rollout.sequential import Comparison, OneLook, RateTest, paired_accuracy

Action = Literal["rollback", "promote", "inconclusive", "continue"]
Mode = Literal["shadow", "canary"]
Signal = RateTest | Comparison | OneLook


@dataclass(frozen=True)
class Observation:
    """One request the challenger answered. ``flip`` and ``kl``: shadow only (None in canary).
    ``challenger_correct`` / ``champion_correct``: set once a label arrived (the champion's only when it
    answered the same request). ``confidence_drop`` (champion minus challenger confidence, in [-1, 1]) and
    ``ood_increase`` (challenger minus champion OOD flag, -1, 0 or 1): where both answered the request."""

    error: bool
    latency_ms: float | None = None
    flip: bool | None = None
    challenger_correct: bool | None = None
    champion_correct: bool | None = None
    kl: float | None = None
    confidence_drop: float | None = None
    ood_increase: float | None = None


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
    compared; None turns the latency signal off). ``classifier``: both versions answer class probabilities
    (the kl and confidence signals); ``ood``: both have an OOD rule; ``drift``: the challenger has an input
    reference the server can look at once."""

    policy: RolloutPolicy
    mode: Mode
    champion_p99_ms: float | None = None
    champion_error_rate: float = 0.0
    classifier: bool = False
    ood: bool = False
    drift: bool = False
    requests: int = 0
    _signals: dict[str, Signal] = field(init=False)

    def __post_init__(self) -> None:
        if self.mode not in ("shadow", "canary"):
            raise ConfigError(f"rollout mode must be shadow or canary, got {self.mode!r}")
        p = self.policy
        shadow = self.mode == "shadow"
        k = (
            2
            + shadow
            + (self.champion_p99_ms is not None)
            + (self.classifier and shadow)
            + self.classifier
            + self.ood
            + self.drift
        )
        a = p.alpha / k
        self._signals = {
            "errors": RateTest(
                "errors", limit=min(0.5, self.champion_error_rate + p.max_error_rate_increase), alpha=a
            ),
            "accuracy": Comparison("accuracy", margin=p.max_accuracy_drop_points / 100.0, alpha=a),
        }
        if shadow:
            self._signals["flips"] = RateTest("flips", limit=p.max_flip_rate, alpha=a)
        if self.champion_p99_ms is not None:
            self._signals["latency"] = RateTest("latency", limit=p.max_slow_rate, alpha=a)
        if self.classifier and shadow:
            self._signals["kl"] = Comparison("kl", margin=p.max_mean_kl, low=0.0, high=1.0, alpha=a)
        if self.classifier:
            self._signals["confidence"] = Comparison(
                "confidence", margin=p.max_confidence_drop_points / 100.0, alpha=a
            )
        if self.ood:
            self._signals["ood"] = Comparison("ood", margin=p.max_ood_rate_increase, alpha=a)
        if self.drift:
            self._signals["drift"] = OneLook("drift", alpha=a)

    def _event(self, name: str, happened: bool) -> None:
        sig = self._signals.get(name)
        if isinstance(sig, RateTest):
            sig.add(happened)

    def _value(self, name: str, value: float | None) -> None:
        sig = self._signals.get(name)
        if value is not None and isinstance(sig, Comparison):
            sig.add(value)

    def observe(self, obs: Observation) -> None:
        self.requests += 1
        self._event("errors", obs.error)
        if obs.latency_ms is not None and self.champion_p99_ms is not None and not obs.error:
            self._event("latency", obs.latency_ms > self.champion_p99_ms)
        if obs.flip is not None:
            self._event("flips", obs.flip)
        if obs.challenger_correct is not None and obs.champion_correct is not None:
            self._value("accuracy", paired_accuracy(obs.challenger_correct, obs.champion_correct))
        self._value("kl", obs.kl)
        self.pair(confidence_drop=obs.confidence_drop, ood_increase=obs.ood_increase)

    def label(self, *, challenger_correct: bool, champion_correct: bool) -> None:
        """A label arrived for a request both answered: one paired accuracy observation (not a new request)."""
        self._value("accuracy", paired_accuracy(challenger_correct, champion_correct))

    def pair(self, *, confidence_drop: float | None = None, ood_increase: float | None = None) -> None:
        """The champion's answer to a request the challenger answered arrived (a canary's copy): the paired
        confidence and OOD observations (not a new request)."""
        self._value("confidence", confidence_drop)
        self._value("ood", ood_increase)

    @property
    def drift_pending(self) -> bool:
        """Whether the drift signal waits for its one look."""
        sig = self._signals.get("drift")
        return isinstance(sig, OneLook) and not sig.looked

    def record_drift(self, *, alarm: bool, n: int, **details: Any) -> None:
        """The drift signal's one look (ConfigError when there is no drift signal or it looked already)."""
        sig = self._signals.get("drift")
        if not isinstance(sig, OneLook):
            raise ConfigError("this rollout has no drift signal (the challenger has no input reference)")
        sig.record(alarm=alarm, n=n, **details)

    @property
    def signals(self) -> dict[str, Signal]:
        """Each signal's running test, by name (read them; ``observe``, ``label``, ``pair`` and
        ``record_drift`` feed them)."""
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
            and not self.drift_pending
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


_WHAT = {"accuracy": "drop", "confidence": "drop", "ood": "rate increase"}


def _describe(sig: Signal) -> str:
    if isinstance(sig, RateTest):
        return f"{sig.name} ({sig.k} of {sig.n}, limit {sig.limit:.3g})"
    if isinstance(sig, OneLook):
        d = sig.details
        stat, threshold = d.get("statistic"), d.get("threshold")
        text = f"{sig.name} (max effect {_num(stat)} over threshold {_num(threshold)} on {sig.n} rows"
        return text + (f"; moved: {d['moved']})" if d.get("moved") else ")")
    lo, hi = sig.interval()
    if sig.name == "kl":
        return f"kl (mean {sig.mean or 0:.3g} nats, interval [{lo:.3g}, {hi:.3g}], margin {sig.margin:.3g})"
    what = _WHAT.get(sig.name, "difference")
    return f"{sig.name} ({what} {100 * (sig.mean or 0):.2f} points, interval [{100 * lo:.2f}, {100 * hi:.2f}], margin {100 * sig.margin:.2f})"


def _num(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, int | float) else "?"
