"""Rollout decisions on simulated streams: modelyard's controller against a Flagger-style fixed-threshold peer.

Both deciders see the same simulated requests of a challenger served beside a champion (shadow mode: every
request answered by both, 20% of them labelled later):

- modelyard: ``modelyard.rollout.decide.Controller`` at the default ``[rollout]`` policy (alpha 5% overall;
  margins: 1 accuracy point, 2% flips, errors 0.5 points over the champion's rate, 5% of answers slower than
  the champion's p99, a mean KL of 0.05 nats, 2 points of confidence, 2 points of OOD rate), checked
  after every ``--check-every`` requests, with all eight signals a shadow rollout of a classifier with an OOD
  rule and an input reference has (alpha split eight ways). The label-free signals are drawn paired: the
  champion's confidence and OOD flag per request, the challenger's equal up to symmetric noise (confidence
  +- 3 points sd, OOD flags differing 0.5% each way), KL(champion || challenger) small where the two agree and
  large where they flip; the input drift look is a real one (``modelyard.monitor.drift``) of the first
  ``min_requests`` requests' inputs against a 2,000-row reference of the same distribution. Every scenario
  keeps these at the identical challenger's (so the worse ones are caught by their own signal, and the
  false-rollback rate covers the new signals); "worse by 3 points, calibrated" also lowers the challenger's
  calibrated confidence by 3 points, as a calibrated worse model would, for the label-free catch;
- peer: Flagger's built-in checks at its documented defaults, on windows of ``--interval`` requests (one
  analysis interval): request success rate >= 99% and p99 latency <= 500 ms; a failed window counts one
  failed check, rollback at 5 failed checks, promotion after 10 passing windows (maxWeight 50 / stepWeight 5).
  The peer sees only HTTP signals (errors and latency), which is what it monitors by design; it is given no
  model signal.

Scenarios: an identical challenger; challengers worse by 1, 3 and 5 accuracy points; one that flips 5% of
predictions with no accuracy change; one 2x slower; one that fails 1% of requests. For each: the decision
counts over repetitions, and the median number of requests to the decision. The false-rollback rate is the
identical challenger's, over ``--reps-identical`` repetitions.

Run: .venv/bin/python bench/rollout.py [--quick]
Prints the table, writes bench/out/rollout.md, ends with one JSON line.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import json_line, log, markdown_table

from modelyard.config import RolloutPolicy
from modelyard.monitor.drift import DEFAULT_RESAMPLES, Reference
from modelyard.rollout.decide import Controller, Observation
from modelyard.runtime.device import cpu_info

CHAMPION_ERROR = 0.002
LABELLED = 0.2
BASE_DISAGREE = 0.0025  # each way: an identical-quality challenger still differs on a few items
CONFIDENCE_NOISE = 0.03  # sd of the challenger's calibrated confidence around the champion's, same request
CHAMPION_OOD = 0.03  # share of requests the champion's OOD rule flags
OOD_DISAGREE = 0.005  # each way: the challenger's own rule flags a few other requests
DRIFT_FEATURES = 5


@dataclass(frozen=True)
class Scenario:
    name: str
    drop_points: float = 0.0  # accuracy
    flips: float = 0.0  # extra flips with no accuracy change
    slowdown: float = 1.0
    error: float = CHAMPION_ERROR
    confidence_drop_points: float = 0.0  # the challenger's calibrated confidence, lower on the same requests


SCENARIOS = [
    Scenario("identical"),
    Scenario("worse by 1 point", drop_points=1.0),
    Scenario("worse by 3 points", drop_points=3.0),
    Scenario("worse by 3 points, calibrated", drop_points=3.0, confidence_drop_points=3.0),
    Scenario("worse by 5 points", drop_points=5.0),
    Scenario("5% flips", flips=0.05),
    Scenario("2x slower", slowdown=2.0),
    Scenario("fails 1% of requests", error=CHAMPION_ERROR + 0.01),
]


def _stream(s: Scenario, n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per request: the challenger failed, its latency, a flip, and (labelled ones) who was right."""
    only_champion = BASE_DISAGREE + s.drop_points / 100 + s.flips / 2
    only_challenger = BASE_DISAGREE + s.flips / 2
    u = rng.random(n)
    champ_right = np.where(u < only_champion, 1, np.where(u < only_champion + only_challenger, 0, -1))
    latency = rng.lognormal(np.log(5.0), 0.25, n) * s.slowdown
    flip = champ_right >= 0
    champ_conf = 0.5 + 0.5 * rng.beta(5.0, 1.0, n)
    conf = champ_conf - s.confidence_drop_points / 100 + rng.normal(0.0, CONFIDENCE_NOISE, n)
    champ_ood = rng.random(n) < CHAMPION_OOD
    v = rng.random(n)
    ood = np.where(champ_ood, v >= OOD_DISAGREE / CHAMPION_OOD, v < OOD_DISAGREE / (1 - CHAMPION_OOD))
    return {
        "error": rng.random(n) < s.error,
        "latency": latency,
        "flip": flip,
        "who": champ_right,  # 1: only the champion right, 0: only the challenger, -1: they agree
        "labelled": rng.random(n) < LABELLED,
        "champ_error": rng.random(n) < CHAMPION_ERROR,
        "champ_latency": rng.lognormal(np.log(5.0), 0.25, n),
        "kl": np.where(flip, rng.uniform(0.1, 0.6, n), rng.exponential(0.005, n)).clip(0.0, 1.0),
        "confidence_drop": (champ_conf - conf.clip(0.0, 1.0)).clip(-1.0, 1.0),
        "ood_increase": ood.astype(float) - champ_ood.astype(float),
    }


_REFERENCE = Reference(
    np.random.default_rng(12345).normal(size=(2000, DRIFT_FEATURES)),
    [f"x{i}" for i in range(DRIFT_FEATURES)],
    n_resamples=DEFAULT_RESAMPLES,
    seed=0,
)


def drift_alarm(rng: np.random.Generator, rows: int, alpha: float) -> bool:
    """The rollout's one input drift look: a window of ``rows`` inputs from the reference's distribution."""
    return _REFERENCE.check(rng.normal(size=(rows, DRIFT_FEATURES)), alpha=alpha).alarm


def run_ours(
    s: Scenario, rng: np.random.Generator, policy: RolloutPolicy, p99: float, every: int = 1
) -> tuple[str, int]:
    x = _stream(s, policy.max_requests, rng)
    ctl = Controller(
        policy,
        "shadow",
        champion_p99_ms=p99,
        champion_error_rate=CHAMPION_ERROR,
        classifier=True,
        ood=True,
        drift=True,
    )
    for i in range(policy.max_requests):
        labelled = bool(x["labelled"][i])
        who = int(x["who"][i])
        error = bool(x["error"][i])
        ctl.observe(
            Observation(
                error=error,
                latency_ms=float(x["latency"][i]),
                flip=bool(x["flip"][i]),
                challenger_correct=(who != 1) if labelled else None,
                champion_correct=(who != 0) if labelled else None,
                kl=None if error else float(x["kl"][i]),
                confidence_drop=None if error else float(x["confidence_drop"][i]),
                ood_increase=None if error else float(x["ood_increase"][i]),
            )
        )
        if ctl.drift_pending and ctl.requests >= policy.min_requests:
            rows = min(policy.min_requests, _REFERENCE.n_rows // 4)
            ctl.record_drift(alarm=drift_alarm(rng, rows, ctl.signals["drift"].alpha), n=rows)
        if ctl.requests % every == 0 or ctl.requests == policy.max_requests:
            d = ctl.decide()
            if d.action != "continue":
                return d.action, ctl.requests
    return "inconclusive", policy.max_requests


def run_peer(s: Scenario, rng: np.random.Generator, interval: int, max_requests: int) -> tuple[str, int]:
    """Flagger's analysis at its defaults: success rate >= 99%, p99 <= 500 ms per interval; 5 failed checks
    roll back; 10 passing intervals (50% max weight in 5% steps) promote."""
    x = _stream(s, max_requests, rng)
    failed = passed = 0
    for start in range(0, max_requests - interval + 1, interval):
        window = slice(start, start + interval)
        ok_rate = 1.0 - float(np.mean(x["error"][window]))
        p99 = float(np.percentile(x["latency"][window], 99))
        if ok_rate >= 0.99 and p99 <= 500.0:
            passed += 1
        else:
            failed += 1
        if failed >= 5:
            return "rollback", start + interval
        if passed >= 10:
            return "promote", start + interval
    return "inconclusive", max_requests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (noisier rates)")
    ap.add_argument("--reps", type=int, default=200, help="repetitions per scenario")
    ap.add_argument(
        "--reps-identical", type=int, default=1000, help="repetitions of the identical challenger"
    )
    ap.add_argument("--interval", type=int, default=100, help="requests per peer analysis interval")
    ap.add_argument(
        "--check-every",
        type=int,
        default=10,
        help="requests between modelyard's decisions (its tests are valid at any schedule of looks; 1 = every "
        "request, slower to simulate)",
    )
    ap.add_argument(
        "--served",
        action="store_true",
        help="also the real served run (bench/rollout_served.py): a ruined canary and an identical shadow "
        "challenger through `modelyard serve` on 127.0.0.1, counting failed client requests",
    )
    args = ap.parse_args()
    reps, reps_identical = (40, 200) if args.quick else (args.reps, args.reps_identical)
    policy = RolloutPolicy()
    rng = np.random.default_rng(0)
    p99 = float(np.percentile(rng.lognormal(np.log(5.0), 0.25, 2000), 99))  # measured before the rollout
    rows, results = [], {}
    t0 = time.perf_counter()
    for s in SCENARIOS:
        n = reps_identical if s.name == "identical" else reps
        log(f"{s.name}: {n} repetitions")
        ours = [run_ours(s, rng, policy, p99, args.check_every) for _ in range(n)]
        peer = [run_peer(s, rng, args.interval, policy.max_requests) for _ in range(n)]
        results[s.name] = {"ours": ours, "peer": peer}

        def fmt(runs: list[tuple[str, int]]) -> tuple[str, str]:
            counts = {a: sum(1 for r, _ in runs if r == a) for a in ("rollback", "promote", "inconclusive")}
            text = ", ".join(f"{a} {100 * c / len(runs):.1f}%" for a, c in counts.items() if c)
            return text, f"{np.median([k for _, k in runs]):.0f}"

        (o_text, o_n), (p_text, p_n) = fmt(ours), fmt(peer)
        rows.append([s.name, n, o_text, o_n, p_text, p_n])
    elapsed = time.perf_counter() - t0

    def rate(name: str, who: str, action: str) -> float:
        runs = results[name][who]
        return sum(1 for r, _ in runs if r == action) / len(runs)

    def to_catch(name: str) -> float | None:
        caught = [k for r, k in results[name]["ours"] if r == "rollback"]
        return float(np.median(caught)) if caught else None

    cpu = cpu_info()
    flags = ", ".join(k for k, v in cpu["isa"].items() if v)
    table = markdown_table(
        [
            "challenger",
            "reps",
            "modelyard decision",
            "requests (median)",
            "Flagger-style peer",
            "requests (median)",
        ],
        rows,
        align="lrlrlr",
    )
    text = (
        f"# Rollout decisions on simulated streams\n\nCPU: {cpu['cpu']} ({os.cpu_count()} cores; {flags}); "
        f"{elapsed:.0f} s. Shadow mode, {int(LABELLED * 100)}% of requests labelled; modelyard decides every "
        f"{args.check_every} requests; the peer sees only errors and latency (its design), on intervals of "
        f"{args.interval} requests (its default analysis, a different setting from ours).\n\n{table}\n"
    )
    served: dict[str, Any] | None = None
    if args.served:
        from rollout_served import served_run

        log("the served run (bench/rollout_served.py) ...")
        served = served_run()
        lines = [
            f"| {step} | {served[step]['state']} | {served[step]['rollout_requests']} | "
            f"{served[step]['client_requests']} | {served[step]['seconds']} |"
            for step in ("canary_ruined", "shadow_identical")
        ]
        text += (
            f"\n## One real served run\n\n`modelyard serve` of the digits champion on 127.0.0.1, "
            f"{served['clients']} closed-loop clients posting each answer's label by id, default `[rollout]` margins; "
            f"a canary ({served['percent']:g}% of requests) of a ruined challenger (output rows rotated), then an "
            "identical challenger in shadow.\n\n| rollout | decision | requests compared | client requests meanwhile | "
            "seconds |\n| --- | --- | ---: | ---: | ---: |\n"
            + "\n".join(lines)
            + f"\n\nClient requests sent: "
            f"{served['sent']}; failed (not 200): {served['failed_client_requests']}.\n"
        )
    print(text)
    out = Path(__file__).resolve().parent / "out"
    out.mkdir(exist_ok=True)
    (out / "rollout.md").write_text(text)
    payload: dict[str, Any] = {
        "bench": "rollout",
        "false_rollback_rate": rate("identical", "ours", "rollback"),
        "requests_to_catch_flip5": to_catch("5% flips"),
        "requests_to_catch_acc3": to_catch("worse by 3 points"),
        "requests_to_catch_acc3_calibrated": to_catch("worse by 3 points, calibrated"),
        "peer_false_rollback_rate": rate("identical", "peer", "rollback"),
        "peer_catches_acc3": rate("worse by 3 points", "peer", "rollback"),
        # the real served run (--served): client requests that failed through both rollouts and the swap
        "failed_client_requests": None if served is None else served["failed_client_requests"],
    }
    log(f"wrote {out / 'rollout.md'}")
    print(json_line(payload))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
