"""Policy x Evidence -> Verdict per candidate; the champion; the quality-vs-cost Pareto frontier."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from modelyard.config import Policy
from modelyard.errors import ConfigError
from modelyard.evaluate.checks import gate_specs
from modelyard.evaluate.evidence import Measurement as EvidenceMeasurement
from modelyard.evaluate.schema import CandidateEvidence, GateResult, Verdict
from modelyard.evaluate.schema import Measurement as SchemaMeasurement

MeasurementLike = (
    EvidenceMeasurement | SchemaMeasurement
)  # what a check returned, or what evidence.json holds


@dataclass(frozen=True)
class Gate:
    """One gate of a policy: the check it reads and the threshold the policy gives it."""

    name: str
    check: str  # measurement name
    op: str  # "<=", "<" or ">="
    threshold: float
    scale: float = 1.0  # measurement value is multiplied by this before comparing (e.g. bytes -> MB)
    unit: str = ""
    tasks: tuple[str, ...] = ("classification", "embedding")
    absent_is_not_applicable: bool = False  # the check can be absent by nature (e.g. slices, images)
    only_if: tuple[str, str, float] | None = None
    why: str = ""


def budget_gates() -> tuple[str, ...]:
    """Gates that exist only when the policy sets a threshold (budgets); they may be waived by name anyway."""
    return tuple(g.name for _, g in gate_specs() if g.default is None)


def gates_for(policy: Policy) -> list[Gate]:
    """Every gate of the registry with the policy's threshold; a gate whose threshold is None (a budget the
    policy does not set) does not exist. Waivers must name known gates."""
    gates = []
    for spec, g in gate_specs():
        threshold = g.default if g.key is None else policy.threshold(g.key)
        if threshold is None:
            continue
        gates.append(
            Gate(
                g.name,
                spec.name,
                g.op,
                float(threshold),
                scale=g.scale,
                unit=g.unit,
                tasks=spec.tasks,
                absent_is_not_applicable=spec.absent_when_missing(),
                only_if=g.only_if,
                why=g.why,
            )
        )
    known = {g.name for _, g in gate_specs()}
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


def _value(measurements: Mapping[str, MeasurementLike], name: str) -> float | None:
    m = measurements.get(name)
    return None if m is None else m.value


def _applies(gate: Gate, measurements: Mapping[str, MeasurementLike]) -> bool:
    """False when the gate is not applicable: its check is absent by nature, or its ``only_if`` is not met.
    A check that applies but could not run is present with an UNKNOWN value, and fails unless waived."""
    if gate.absent_is_not_applicable and gate.check not in measurements:
        return False
    if gate.only_if is not None:
        other = _value(measurements, gate.only_if[0])
        return other is not None and other > gate.only_if[2]
    return True


def verdict(measurements: Mapping[str, MeasurementLike], task: str, policy: Policy) -> Verdict:
    """Apply every gate of the policy to one candidate's measurements."""
    results = []
    for gate in gates_for(policy):
        if task not in gate.tasks:
            continue
        waived = gate.name in policy.waive
        if not _applies(gate, measurements):
            results.append(
                GateResult(
                    gate=gate.name,
                    check=gate.check,
                    passed=True,
                    value=None,
                    threshold=gate.threshold,
                    reason="not applicable",
                )
            )
            continue
        value = _value(measurements, gate.check)
        if value is None:
            reason = f"{gate.check} is UNKNOWN" + (
                " (waived by policy)" if waived else "; UNKNOWN fails unless the policy waives this gate"
            )
            results.append(
                GateResult(
                    gate=gate.name,
                    check=gate.check,
                    passed=waived,
                    value=None,
                    threshold=gate.threshold,
                    reason=reason,
                )
            )
            continue
        shown = float(value) * gate.scale
        ok = _OPS[gate.op](shown, gate.threshold)
        unit = f" {gate.unit}" if gate.unit else ""
        reason = (
            f"{gate.why}: {_fmt(shown)}{unit} {'meets' if ok else 'violates'} "
            f"{gate.op} {_fmt(gate.threshold)}{unit}"
        )
        if not ok and waived:
            reason += " (waived by policy)"
        results.append(
            GateResult(
                gate=gate.name,
                check=gate.check,
                passed=ok or waived,
                value=shown,
                threshold=gate.threshold,
                reason=reason,
            )
        )
    return Verdict(passed=all(r.passed for r in results), gates=results)


def _objective_value(c: CandidateEvidence, minimize: str) -> float | None:
    key = {
        "cost": "efficiency.cost_usd_per_1m",
        "latency": "efficiency.latency_p50_ms",
        "size": "efficiency.size_bytes",
    }[minimize]
    return _value(c.measurements, key)


def quality_value(c: CandidateEvidence, task: str) -> float | None:
    key = "quality.accuracy" if task == "classification" else "quality.cosine_mean"
    return _value(c.measurements, key)


def choose_champion(
    candidates: Sequence[CandidateEvidence], task: str, policy: Policy
) -> tuple[str | None, str]:
    """The cheapest passing candidate by the policy's objective; near-ties (within tie_tolerance) go to the
    higher-quality, then smaller candidate. Returns (name or None, reason)."""
    minimize = policy.objective.minimize
    passing: list[tuple[CandidateEvidence, float]] = []
    for c in candidates:
        v = _objective_value(c, minimize)
        if c.verdict.passed and v is not None:
            passing.append((c, v))
    if not passing:
        return None, "no candidate passed every gate"
    best = min(v for _, v in passing)
    tol = policy.objective.tie_tolerance
    tied = [c for c, v in passing if v <= best * (1 + tol)]

    def key(c: CandidateEvidence) -> tuple[float, float]:
        q = quality_value(c, task)
        size = _value(c.measurements, "efficiency.size_bytes") or 0.0
        return (-(q if q is not None else -1.0), float(size))

    champ = sorted(tied, key=key)[0]
    reason = f"lowest {minimize} among {len(passing)} passing candidate(s)"
    if len(tied) > 1:
        others = ", ".join(c.name for c in tied if c is not champ)
        reason += f"; within {tol:.0%} of it ({others}) counted as a tie and decided by quality, then size"
    return champ.name, reason


def pareto_front(candidates: Sequence[CandidateEvidence], task: str) -> list[str]:
    """Names of candidates not dominated in (lower cost, higher quality)."""
    pts = []
    for c in candidates:
        cost, q = _objective_value(c, "cost"), quality_value(c, task)
        if cost is not None and q is not None:
            pts.append((c.name, cost, q))
    front = []
    for name, cost, q in pts:
        dominated = any(
            (c2 <= cost and q2 >= q) and (c2 < cost or q2 > q) for n2, c2, q2 in pts if n2 != name
        )
        if not dominated:
            front.append(name)
    return front
