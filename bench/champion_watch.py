"""The champion watch on simulated streams: modelyard's alpha-spending watch against fixed-threshold window alerts.

A champion serves a long life of traffic: per tick 1,000 requests and 50 labels. Its offline accuracy is 92%;
healthy, it fails 0.3% of requests. Both watchers see the same ticks:

- modelyard: ``modelyard.rollout.watch.ChampionWatch`` at the default ``[rollout]`` policy (``watch_alpha`` 1%
  over the champion's whole life, thresholds: accuracy 5 points under offline, 1% failed requests, epochs of
  10,000 observations), checked every tick;
- peer: the alert rules a team writes by hand (a Prometheus-style rule on a window, re-evaluated on a schedule):
  accuracy over the last 500 labels below offline minus 5 points, or failed requests over the last 10,000
  requests above 1%, evaluated every tick; it fires when a rule holds on 2 consecutive evaluations (a ``for:``
  clause). Same thresholds as ours; no statistics.

Scenarios: healthy (92% and 0.3% for the whole life); healthy but 3 points down (89%, inside the 5-point
threshold); accuracy falls 10 points after 1,000 labels and half-way through the life (a quarter into an
epoch); failures jump to 5% half-way through (half into an epoch). The false-alarm rate is the share of lives of the healthy scenarios (2,000,000 requests,
100,000 labels each) with an alarm; a catch is counted in labels (or requests) after the change, median over
repetitions, with the share caught before the life ends.

Run: .venv/bin/python bench/champion_watch.py [--quick]
Prints the table, writes bench/out/champion_watch.md, ends with one JSON line.
"""

from __future__ import annotations

import argparse
import collections
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import json_line, log, markdown_table

from modelyard.config import RolloutPolicy
from modelyard.rollout.watch import ChampionWatch, WatchBaseline

OFFLINE = 0.92
REQUESTS_PER_TICK = 1_000
LABELS_PER_TICK = 50
HEALTHY_ERRORS = 0.003


@dataclass(frozen=True)
class Scenario:
    name: str
    accuracy: float  # before the change
    errors: float
    after_accuracy: float | None = None  # after the change
    after_errors: float | None = None
    change_tick: int | None = None


class Peer:
    """Window alert rules evaluated every tick, firing after 2 consecutive true evaluations."""

    def __init__(self, policy: RolloutPolicy) -> None:
        self.labels: collections.deque[tuple[int, int]] = collections.deque(maxlen=500 // LABELS_PER_TICK)
        self.requests: collections.deque[tuple[int, int]] = collections.deque(
            maxlen=10_000 // REQUESTS_PER_TICK
        )
        self.accuracy_floor = OFFLINE - policy.watch_max_accuracy_drop_points / 100.0
        self.max_errors = policy.watch_max_error_rate
        self.streak = 0

    def tick(self, wrong: int, failed: int) -> bool:
        self.labels.append((wrong, LABELS_PER_TICK))
        self.requests.append((failed, REQUESTS_PER_TICK))
        w, n = map(sum, zip(*self.labels, strict=True))
        f, m = map(sum, zip(*self.requests, strict=True))
        holds = (1.0 - w / n) < self.accuracy_floor or f / m > self.max_errors
        self.streak = self.streak + 1 if holds else 0
        return self.streak >= 2


def one_life(
    sc: Scenario, ticks: int, rng: np.random.Generator, policy: RolloutPolicy
) -> tuple[int | None, int | None]:
    """The tick each watcher alarmed at (None: never) over one simulated life."""
    watch = ChampionWatch(policy, WatchBaseline(offline_accuracy=OFFLINE))
    peer = Peer(policy)
    ours = theirs = None
    for t in range(ticks):
        changed = sc.change_tick is not None and t >= sc.change_tick
        acc = sc.after_accuracy if changed and sc.after_accuracy is not None else sc.accuracy
        err = sc.after_errors if changed and sc.after_errors is not None else sc.errors
        wrong = int(rng.binomial(LABELS_PER_TICK, 1.0 - acc))
        failed = int(rng.binomial(REQUESTS_PER_TICK, err))
        if ours is None:
            watch.requests(answered=REQUESTS_PER_TICK - failed, failed=failed)
            watch.labels(right=LABELS_PER_TICK - wrong, wrong=wrong)
            if watch.alarm() is not None:
                ours = t
        if theirs is None and peer.tick(wrong, failed):
            theirs = t
        if ours is not None and theirs is not None:
            break
    return ours, theirs


def _summary(sc: Scenario, alarms: list[int | None], reps: int) -> tuple[str, float | None, float]:
    """(what is shown, median units to catch after the change, share alarmed)."""
    hit = [a for a in alarms if a is not None]
    share = len(hit) / reps
    if sc.change_tick is None:
        return f"{100 * share:.1f}% false alarms", None, share
    after = [a - sc.change_tick for a in hit if a >= sc.change_tick]
    early = len(hit) - len(after)
    unit = LABELS_PER_TICK if sc.after_accuracy is not None else REQUESTS_PER_TICK
    if not after:
        return f"never caught ({early} alarmed before the change)", None, share
    median = float(np.median(after)) * unit + unit
    what = "labels" if unit == LABELS_PER_TICK else "requests"
    note = f", {early} before the change" if early else ""
    return f"{median:,.0f} {what} ({100 * len(after) / reps:.0f}% caught{note})", median, share


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and a shorter life")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--epoch", type=int, default=None, help="watch_epoch (default: the policy's)")
    args = ap.parse_args()
    reps = args.reps or (40 if args.quick else 200)
    ticks = 400 if args.quick else 2_000  # a life of 2,000,000 requests and 100,000 labels
    policy = RolloutPolicy() if args.epoch is None else RolloutPolicy(watch_epoch=args.epoch)
    scenarios = [
        Scenario("healthy", OFFLINE, HEALTHY_ERRORS),
        Scenario("healthy, 3 points down", OFFLINE - 0.03, HEALTHY_ERRORS),
        Scenario(
            "-10 points after 1,000 labels", OFFLINE, HEALTHY_ERRORS, after_accuracy=0.82, change_tick=20
        ),
        Scenario(  # mid-epoch: a quarter of an epoch (10,000 labels) already seen at the change
            f"-10 points after {(ticks // 2 + 50) * LABELS_PER_TICK:,} labels",
            OFFLINE,
            HEALTHY_ERRORS,
            after_accuracy=0.82,
            change_tick=ticks // 2 + 50,
        ),
        Scenario(  # mid-epoch: half an epoch (10,000 requests) already seen at the change
            f"5% failures after {(ticks // 2 + 5) * REQUESTS_PER_TICK:,} requests",
            OFFLINE,
            HEALTHY_ERRORS,
            after_errors=0.05,
            change_tick=ticks // 2 + 5,
        ),
    ]
    rng = np.random.default_rng(0)
    rows, out = [], {}
    started = time.perf_counter()
    for sc in scenarios:
        log(f"{sc.name}: {reps} lives of {ticks} ticks")
        lives = [one_life(sc, ticks, rng, policy) for _ in range(reps)]
        ours = _summary(sc, [o for o, _ in lives], reps)
        theirs = _summary(sc, [p for _, p in lives], reps)
        rows.append([sc.name, ours[0], theirs[0]])
        out[sc.name] = (ours, theirs)
    table = markdown_table(["scenario", "modelyard watch", "window alert (peer)"], rows, align="lll")
    cpu = platform.processor() or platform.machine()
    head = (
        f"Champion watch, {reps} simulated lives per scenario of {ticks * REQUESTS_PER_TICK:,} requests and "
        f"{ticks * LABELS_PER_TICK:,} labels (decisions counted in requests and labels, so the machine ({cpu}) "
        f"does not change them; {time.perf_counter() - started:.0f} s). Same thresholds for both; ours at "
        f"watch_alpha {policy.watch_alpha:g} over the whole life."
    )
    print(head)
    print()
    print(table)
    Path(__file__).resolve().parent.joinpath("out").mkdir(exist_ok=True)
    Path(__file__).resolve().parent.joinpath("out", "champion_watch.md").write_text(f"{head}\n\n{table}\n")
    healthy = [out[s.name] for s in scenarios[:2]]
    late_acc, fail = out[scenarios[3].name], out[scenarios[4].name]
    print(
        json_line(
            {
                "bench": "champion_watch",
                "false_alarm_rate": max(h[0][2] for h in healthy),
                "peer_false_alarm_rate": max(h[1][2] for h in healthy),
                "labels_to_catch_acc10_late": late_acc[0][1],
                "peer_labels_to_catch_acc10_late": late_acc[1][1],
                "requests_to_catch_fail5_late": fail[0][1],
                "peer_requests_to_catch_fail5_late": fail[1][1],
                "reps": reps,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
