"""The champion watch: the serving champion's own live signals against the policy's alarm thresholds, with a
false-alarm guarantee that holds for as long as it serves.

A rollout ends, so a test valid at every look over its stream (:mod:`modelyard.rollout.sequential`) bounds its
error. A champion's watch never ends, and a stream with no end needs more: one test run forever dilutes a late
change into all that came before it, and a test restarted every window with a fresh alpha is certain to
alarm some day. The watch **spends** its alpha: each signal's observations are cut into epochs of
``watch_epoch``; epoch j (1, 2, ...) runs a fresh test that is valid at every look (Ville's inequality) at
level a / (j (j + 1)), with a = ``watch_alpha`` / k for k signals. These levels sum to a, so a champion whose
signals stay within the thresholds is alarmed on with probability at most ``watch_alpha`` over its whole time
as champion, however often it is checked. The price is paid late: epoch j's threshold is log(j (j + 1)) nats
above the first epoch's (about 12 at epoch 500, a million requests at the default epoch of 2,000), and a
change is judged on its own from the next epoch's start at the latest (``bench/champion_watch.py`` measures
both).

Signals (each needs what the version's monitor reference holds; one without it is left out):

| signal | observation | test | alarm threshold |
| --- | --- | --- | --- |
| errors | a request failed | beta-binomial mixture SPRT | ``watch_max_error_rate`` |
| accuracy | a labelled one-row request was wrong | mixture SPRT | 1 - offline accuracy + ``watch_max_accuracy_drop_points`` |
| estimated accuracy | the request's calibrated confidence, below the reference's mean | empirical-Bernstein confidence sequence | ``watch_max_accuracy_drop_points`` |
| OOD rate | a row flagged by the OOD rule | mixture SPRT | the rule's offline rate + ``watch_max_ood_rate_increase`` |

Mean calibrated confidence is the label-free estimate of accuracy (exact where the calibration holds); its drop
against the same estimate on the reference's held-out calibration items is the estimated accuracy drop.

:class:`ChampionWatch` is pure: the server (:mod:`modelyard.serve.champion_watch`) feeds it from the
prediction log and the request counters, stores :meth:`ChampionWatch.state` so a restart resumes, and acts on
an alarm (rolls the champion back, or only alarms: ``on_champion_alarm``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from modelyard.config import RolloutPolicy
from modelyard.errors import ConfigError
from modelyard.rollout.sequential import Comparison, RateTest

STATE_SCHEMA = 1


@dataclass(frozen=True)
class WatchBaseline:
    """What the champion is compared with, from its monitor reference: the offline accuracy (its evidence),
    the mean calibrated confidence on the held-out calibration items, and the OOD rule's offline flag rate.
    None leaves the signal out."""

    offline_accuracy: float | None = None
    reference_confidence: float | None = None
    offline_ood_rate: float | None = None


def epoch_alpha(alpha: float, epoch: int) -> float:
    """The level of epoch ``epoch`` (1-based) when ``alpha`` is spent as alpha / (j (j + 1)): the levels of all
    epochs sum to ``alpha``."""
    if epoch < 1:
        raise ConfigError(f"epochs count from 1, got {epoch!r}")
    return alpha / (epoch * (epoch + 1))


Test = RateTest | Comparison


@dataclass
class _Signal:
    """One signal's current epoch: its test at that epoch's level, rebuilt fresh when the epoch ends."""

    name: str
    kind: str  # "rate" (indicators, RateTest) or "mean" (bounded values, Comparison)
    limit: float  # the rate limit, or the margin of the mean
    alpha: float  # this signal's share of watch_alpha, spent over its epochs
    epoch_size: int
    low: float = 0.0
    high: float = 1.0
    epoch: int = 1
    test: Test = field(init=False)

    def __post_init__(self) -> None:
        self.test = self._fresh()

    def _fresh(self) -> Test:
        a = epoch_alpha(self.alpha, self.epoch)
        if self.kind == "rate":
            return RateTest(self.name, limit=self.limit, alpha=a)
        return Comparison(self.name, margin=self.limit, low=self.low, high=self.high, alpha=a)

    def _roll(self) -> None:
        if self.test.n >= self.epoch_size and self.test.decision() != "worse":
            self.epoch += 1
            self.test = self._fresh()

    def add_events(self, events: int, n: int) -> None:
        """``n`` indicators of which ``events`` happened (a rate signal); epochs end on their size."""
        self.add_runs([(events, n)])

    def add_runs(self, runs: Iterable[tuple[int, int]]) -> None:
        """Runs of ``(events, n)`` indicators, in order. The test looks only when an epoch fills (to know
        whether the epoch ends: a full epoch whose test says "worse" is kept, and later indicators are not
        added to it); :meth:`ChampionWatch.alarm` looks after. The test is valid at every look, so looking
        once per run of a tick instead of after every request keeps its level and costs one boundary search
        per epoch instead of one per request."""
        assert isinstance(self.test, RateTest)
        for events, n in runs:
            while n > 0:
                self._roll()
                if self.test.n >= self.epoch_size:
                    return  # this epoch is "worse": the alarm stands
                take = min(n, self.epoch_size - self.test.n)
                hit = min(events, take)
                self.test.n += take
                self.test.k += hit
                n, events = n - take, events - hit

    def add_value(self, value: float) -> None:
        assert isinstance(self.test, Comparison)
        self._roll()
        self.test.add(min(self.high, max(self.low, value)))

    @property
    def worse(self) -> bool:
        return self.test.decision() == "worse"

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "epoch": self.epoch,
            "n": self.test.n,
            "alpha": self.test.alpha,
            "decision": "worse" if self.worse else "open",
        }
        if isinstance(self.test, RateTest):
            out.update(
                k=self.test.k, rate=self.test.rate, limit=self.limit, method="beta-binomial mixture SPRT"
            )
        else:
            lower, upper = self.test.interval()
            out.update(
                mean=self.test.mean,
                lower=lower,
                upper=upper,
                margin=self.limit,
                method="empirical-Bernstein confidence sequence",
            )
        return out


@dataclass(frozen=True)
class WatchAlarm:
    """The signals over their thresholds, why in one line, and every signal's statistics."""

    signals: tuple[str, ...]
    reason: str
    statistics: list[dict[str, Any]]


class ChampionWatch:
    """The running watch of one champion version (see the module docstring)."""

    def __init__(self, policy: RolloutPolicy, baseline: WatchBaseline) -> None:
        self.policy = policy
        self.baseline = baseline
        p = policy
        drop = p.watch_max_accuracy_drop_points / 100.0
        specs: list[dict[str, Any]] = [{"name": "errors", "kind": "rate", "limit": p.watch_max_error_rate}]
        if baseline.offline_accuracy is not None:
            limit = 1.0 - baseline.offline_accuracy + drop
            if 0 < limit < 1:
                specs.append({"name": "accuracy", "kind": "rate", "limit": limit})
        if baseline.reference_confidence is not None:
            ref = baseline.reference_confidence
            specs.append(
                {"name": "estimated_accuracy", "kind": "mean", "limit": drop, "low": ref - 1.0, "high": ref}
            )
        if baseline.offline_ood_rate is not None:
            limit = baseline.offline_ood_rate + p.watch_max_ood_rate_increase
            if 0 < limit < 1:
                specs.append({"name": "ood_rate", "kind": "rate", "limit": limit})
        share = p.watch_alpha / len(specs)
        self.signals = {s["name"]: _Signal(alpha=share, epoch_size=p.watch_epoch, **s) for s in specs}

    # -- feeding ---------------------------------------------------------------------------------------

    def requests(self, *, answered: int, failed: int) -> None:
        """Requests the champion answered and failed since the last call."""
        if answered < 0 or failed < 0:
            raise ConfigError(f"request counts cannot be negative, got {answered!r}, {failed!r}")
        if answered + failed:
            self.signals["errors"].add_events(failed, answered + failed)

    def confidence(self, value: float) -> None:
        """One answered request's calibrated confidence (its rows' mean top probability)."""
        sig = self.signals.get("estimated_accuracy")
        if sig is not None and math.isfinite(value):
            ref = self.baseline.reference_confidence
            assert ref is not None
            sig.add_value(ref - value)

    def ood(self, *, flagged: int, rows: int) -> None:
        """One answered request's rows and how many of them the OOD rule flagged."""
        self.ood_many([(flagged, rows)])

    def ood_many(self, requests: Iterable[tuple[int, int]]) -> None:
        """Many answered requests' ``(flagged, rows)``, in order (one look for all of them)."""
        sig = self.signals.get("ood_rate")
        if sig is not None:
            sig.add_runs((min(flagged, rows), rows) for flagged, rows in requests if rows > 0)

    def labels(self, *, right: int, wrong: int) -> None:
        """Labels that arrived for one-row requests the champion answered: how many it got right and wrong."""
        if right < 0 or wrong < 0:
            raise ConfigError(f"label counts cannot be negative, got {right!r}, {wrong!r}")
        sig = self.signals.get("accuracy")
        if sig is not None and right + wrong:
            sig.add_events(wrong, right + wrong)

    # -- deciding --------------------------------------------------------------------------------------

    def statistics(self) -> list[dict[str, Any]]:
        return [sig.describe() for sig in self.signals.values()]

    def alarm(self) -> WatchAlarm | None:
        """The alarm when a signal is over its threshold at its epoch's level, else None."""
        worse = [sig for sig in self.signals.values() if sig.worse]
        if not worse:
            return None
        parts = []
        for sig in worse:
            d = sig.describe()
            if sig.kind == "rate":
                parts.append(f"{sig.name} {d['k']} of {d['n']} (limit {sig.limit:.3g}, epoch {sig.epoch})")
            else:
                parts.append(
                    f"{sig.name} down {100 * (d['mean'] or 0):.2f} points, interval "
                    f"[{100 * d['lower']:.2f}, {100 * d['upper']:.2f}] (limit {100 * sig.limit:.2f}, epoch {sig.epoch})"
                )
        reason = (
            f"the champion's live signals crossed the policy's alarm thresholds: {'; '.join(parts)} "
            f"(false-alarm rate {self.policy.watch_alpha:g} over its whole time as champion)"
        )
        return WatchAlarm(tuple(sig.name for sig in worse), reason, self.statistics())

    # -- state -----------------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """What a restarted server needs to resume: each signal's epoch and test (JSON-ready)."""
        return {
            "schema": STATE_SCHEMA,
            "signals": {
                name: {"epoch": sig.epoch, "test": asdict(sig.test)} for name, sig in self.signals.items()
            },
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state`'s output (signals this watch no longer has, or an unknown schema, are
        ignored: the watch then starts that signal afresh)."""
        if not isinstance(state, dict) or state.get("schema") != STATE_SCHEMA:
            return
        for name, saved in dict(state.get("signals") or {}).items():
            sig = self.signals.get(name)
            if sig is None or not isinstance(saved, dict):
                continue
            try:
                sig.epoch = max(1, int(saved["epoch"]))
                kind = RateTest if sig.kind == "rate" else Comparison
                sig.test = kind(**saved["test"])
            except (KeyError, TypeError, ValueError, ConfigError):
                sig.epoch, sig.test = 1, sig._fresh()
