"""Policy x Evidence -> Verdict per candidate; the champion; the quality-vs-cost Pareto frontier."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modelyard.config import Policy
from modelyard.errors import ConfigError


@dataclass(frozen=True)
class Gate:
    name: str
    check: str  # measurement name
    op: str  # "<=", "<" or ">="
    threshold: float
    scale: float = 1.0  # measurement value is multiplied by this before comparing (e.g. bytes -> MB)
    unit: str = ""
    task: str | None = None  # None: every task
    when: Callable[[dict[str, Any]], bool] | None = None  # skip (pass) the gate when this returns False
    why: str = ""


# Budget gates exist only when the policy sets a budget, but may be waived by name at any time.
BUDGET_GATES = ("latency_p99", "peak_rss", "size", "throughput")


def _drop_positive(measurements: dict[str, Any]) -> bool:
    drop = measurements.get("compare.accuracy_drop", {}).get("value")
    return drop is not None and drop > 0


def _present(check: str) -> Callable[[dict[str, Any]], bool]:
    """For checks that exist only for some data (user slices, image corruptions): absent = not applicable.
    A check that applies but could not run is present with an UNKNOWN value, and fails unless waived."""

    def applies(measurements: dict[str, Any]) -> bool:
        return check in measurements

    return applies


def gates_for(policy: Policy) -> list[Gate]:
    """Every gate of the policy with its threshold; quality and robustness gates always exist (waivable by
    name), budget gates only when the policy sets a budget."""
    q, r, b = policy.quality, policy.robustness, policy.budgets
    cls = "classification"
    gates = [
        Gate(
            "accuracy_drop",
            "compare.accuracy_drop",
            "<=",
            q.max_accuracy_drop_points,
            unit="points",
            task=cls,
            why="accuracy drop against the baseline",
        ),
        Gate(
            "accuracy_noninferiority",
            "compare.accuracy_drop_upper95",
            "<",
            q.max_accuracy_drop_points,
            unit="points",
            task=cls,
            why="upper bound of the one-sided 95% interval of the accuracy drop (non-inferiority margin)",
        ),
        Gate(
            "accuracy_drop_significance",
            "compare.mcnemar_p_holm",
            ">=",
            q.significance_alpha,
            unit="p",
            task=cls,
            when=_drop_positive,
            why="a drop that McNemar's exact test finds significant after Holm correction",
        ),
        Gate(
            "flip_rate",
            "compare.flip_rate",
            "<=",
            q.max_flip_rate,
            task=cls,
            why="share of predictions that changed",
        ),
        Gate(
            "negative_flip_rate",
            "compare.negative_flip_rate",
            "<=",
            q.max_negative_flip_rate,
            task=cls,
            why="share of items the baseline got right and the candidate gets wrong",
        ),
        Gate(
            "kl_to_baseline",
            "compare.kl_mean",
            "<=",
            q.max_kl_nats,
            unit="nats",
            task=cls,
            why="mean KL divergence from the baseline's probabilities",
        ),
        Gate(
            "ece_increase",
            "calibration.ece_increase",
            "<=",
            q.max_ece_increase,
            task=cls,
            why="calibration error increase",
        ),
        Gate(
            "worst_class_drop",
            "slices.worst_class_drop",
            "<=",
            q.max_class_recall_drop_points,
            unit="points",
            task=cls,
            why="largest per-class recall drop against the baseline",
        ),
        Gate(
            "slice_drop",
            "slices.worst_slice_drop",
            "<=",
            q.max_slice_drop_points,
            unit="points",
            task=cls,
            when=_present("slices.worst_slice_drop"),
            why="largest accuracy drop on a declared slice",
        ),
        Gate(
            "corruption_mce",
            "robustness.relative_mce",
            "<=",
            r.max_relative_mce,
            task=cls,
            when=_present("robustness.relative_mce"),
            why="corruption error relative to the baseline's",
        ),
        Gate(
            "consistency_drop",
            "robustness.consistency_drop",
            "<=",
            r.max_consistency_drop_points,
            unit="points",
            task=cls,
            why="drop in prediction consistency under perturbations",
        ),
        Gate(
            "adversarial_drop",
            "robustness.adversarial_accuracy_drop",
            "<=",
            r.max_adversarial_drop_points,
            unit="points",
            task=cls,
            when=_present("robustness.adversarial_accuracy_drop"),
            why="drop in accuracy under PGD adversarials crafted on the baseline",
        ),
        Gate(
            "ood_auroc_drop",
            "ood.auroc_drop",
            "<=",
            r.max_ood_auroc_drop_points,
            unit="points",
            when=_present("ood.auroc_drop"),
            why="drop in out-of-distribution detection AUROC",
        ),
        Gate(
            "file_scan",
            "security.file_scan",
            ">=",
            1.0,
            why="the artifact's file scan (1 = PASS)",
        ),
        Gate(
            "backdoor_scan",
            "security.backdoor_flagged_classes",
            "<=",
            0.0,
            unit="classes",
            task=cls,
            when=_present("security.backdoor_flagged_classes"),
            why="classes the backdoor scans flag in the training data",
        ),
        Gate(
            "cosine_mean",
            "quality.cosine_mean",
            ">=",
            q.min_cosine_mean,
            task="embedding",
            why="mean cosine to the baseline's embeddings",
        ),
        Gate(
            "cosine_p5",
            "quality.cosine_p5",
            ">=",
            q.min_cosine_p5,
            task="embedding",
            why="5th-percentile cosine to the baseline's embeddings",
        ),
        Gate(
            "top10_agreement",
            "quality.top10_agreement",
            ">=",
            q.min_top10_agreement,
            task="embedding",
            why="agreement of the 10 nearest neighbours with the baseline's",
        ),
    ]
    if b.max_latency_p99_ms is not None:
        gates.append(
            Gate(
                "latency_p99",
                "efficiency.latency_p99_ms",
                "<=",
                b.max_latency_p99_ms,
                unit="ms",
                why="p99 latency budget",
            )
        )
    if b.max_peak_rss_mb is not None:
        gates.append(
            Gate(
                "peak_rss",
                "efficiency.peak_rss_bytes",
                "<=",
                b.max_peak_rss_mb,
                scale=1 / 2**20,
                unit="MB",
                why="memory budget",
            )
        )
    if b.max_size_mb is not None:
        gates.append(
            Gate(
                "size",
                "efficiency.size_bytes",
                "<=",
                b.max_size_mb,
                scale=1 / 2**20,
                unit="MB",
                why="size budget",
            )
        )
    if b.min_throughput is not None:
        gates.append(
            Gate(
                "throughput",
                "efficiency.throughput_best",
                ">=",
                b.min_throughput,
                unit="items/s",
                why="throughput floor",
            )
        )
    known = {g.name for g in gates} | set(BUDGET_GATES)
    unknown = [w for w in policy.waive if w not in known]
    if unknown:
        raise ConfigError(
            f"policy waives unknown gate(s) {', '.join(map(repr, unknown))}; known gates: {', '.join(sorted(known))}"
        )
    return gates


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": lambda v, t: v <= t,
    "<": lambda v, t: v < t,
    ">=": lambda v, t: v >= t,
}


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def verdict(measurements: dict[str, dict[str, Any]], task: str, policy: Policy) -> dict[str, Any]:
    """Apply every gate of the policy to one candidate's measurements (Measurement dicts)."""
    results = []
    for gate in gates_for(policy):
        if gate.task is not None and gate.task != task:
            continue
        if gate.when is not None and not gate.when(measurements):
            results.append(
                {
                    "gate": gate.name,
                    "check": gate.check,
                    "passed": True,
                    "value": None,
                    "threshold": gate.threshold,
                    "reason": "not applicable",
                }
            )
            continue
        m = measurements.get(gate.check)
        value = None if m is None else m.get("value")
        if value is None:
            waived = gate.name in policy.waive
            results.append(
                {
                    "gate": gate.name,
                    "check": gate.check,
                    "passed": waived,
                    "value": None,
                    "threshold": gate.threshold,
                    "reason": f"{gate.check} is UNKNOWN"
                    + (
                        " (waived by policy)"
                        if waived
                        else "; UNKNOWN fails unless the policy waives this gate"
                    ),
                }
            )
            continue
        shown = float(value) * gate.scale
        ok = _OPS[gate.op](shown, gate.threshold)
        unit = f" {gate.unit}" if gate.unit else ""
        reason = (
            f"{gate.why}: {_fmt(shown)}{unit} {'meets' if ok else 'violates'} "
            f"{gate.op} {_fmt(gate.threshold)}{unit}"
        )
        if not ok and gate.name in policy.waive:
            reason += " (waived by policy)"
        results.append(
            {
                "gate": gate.name,
                "check": gate.check,
                "passed": ok or gate.name in policy.waive,
                "value": shown,
                "threshold": gate.threshold,
                "reason": reason,
            }
        )
    return {"passed": all(r["passed"] for r in results), "gates": results}


def _objective_value(c: dict[str, Any], minimize: str) -> float | None:
    key = {
        "cost": "efficiency.cost_usd_per_1m",
        "latency": "efficiency.latency_p50_ms",
        "size": "efficiency.size_bytes",
    }[minimize]
    v = c["measurements"].get(key, {}).get("value")
    return None if v is None else float(v)


def quality_value(c: dict[str, Any], task: str) -> float | None:
    key = "quality.accuracy" if task == "classification" else "quality.cosine_mean"
    v = c["measurements"].get(key, {}).get("value")
    return None if v is None else float(v)


def choose_champion(candidates: list[dict[str, Any]], task: str, policy: Policy) -> tuple[str | None, str]:
    """The cheapest passing candidate by the policy's objective; near-ties (within tie_tolerance) go to the
    higher-quality, then smaller candidate. Returns (name or None, reason)."""
    minimize = policy.objective.minimize
    passing: list[tuple[dict[str, Any], float]] = []
    for c in candidates:
        v = _objective_value(c, minimize)
        if c["verdict"]["passed"] and v is not None:
            passing.append((c, v))
    if not passing:
        return None, "no candidate passed every gate"
    best = min(v for _, v in passing)
    tol = policy.objective.tie_tolerance
    tied = [c for c, v in passing if v <= best * (1 + tol)]

    def key(c: dict[str, Any]) -> tuple[float, float]:
        q = quality_value(c, task)
        size = c["measurements"].get("efficiency.size_bytes", {}).get("value") or 0.0
        return (-(q if q is not None else -1.0), float(size))

    champ = sorted(tied, key=key)[0]
    reason = f"lowest {minimize} among {len(passing)} passing candidate(s)"
    if len(tied) > 1:
        others = ", ".join(c["name"] for c in tied if c is not champ)
        reason += f"; within {tol:.0%} of it ({others}) counted as a tie and decided by quality, then size"
    return champ["name"], reason


def pareto_front(candidates: list[dict[str, Any]], task: str) -> list[str]:
    """Names of candidates not dominated in (lower cost, higher quality)."""
    pts = []
    for c in candidates:
        cost, q = _objective_value(c, "cost"), quality_value(c, task)
        if cost is not None and q is not None:
            pts.append((c["name"], cost, q))
    front = []
    for name, cost, q in pts:
        dominated = any(
            (c2 <= cost and q2 >= q) and (c2 < cost or q2 > q) for n2, c2, q2 in pts if n2 != name
        )
        if not dominated:
            front.append(name)
    return front
