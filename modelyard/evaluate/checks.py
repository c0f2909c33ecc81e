"""The check registry: every check the suite runs, declared once (``checkspec.CheckSpec``) in the module that
computes it, and everything derived from the declarations.

Derived here, and nowhere else: the units and meanings of measurement names (``measurement_table``), the
policy's threshold keys and their defaults (``threshold_defaults``), the gates (``gate_specs``), the report's
columns (``columns``), the measurements a complete run has (``expected``) and the documented gate list
(``gate_table_markdown``, which the README carries; a test keeps the two equal).

Adding a check: declare it with ``declare(CheckSpec(..., compute=fn))`` (a plugin: ``fn`` takes a
``CheckContext`` and returns a Measurement, a number, or None for UNKNOWN) and it runs on every candidate of
the tasks it names, gates when it declares a gate, appears in the report and in the gate list.

Two stages share the registry (``CheckSpec.stage``): ``offline`` checks measure candidates before release and
are all that the evidence, the gates, the policy, the report and the plugins see; ``live`` checks
(:mod:`modelyard.monitor.checks`) measure served traffic. ``all_checks``, ``get_check`` and
``measurement_table`` (names, units, meanings) cover both; everything else here is offline only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from modelyard.evaluate import calibration, compare, efficiency, memory, ood, quality, robustness, slices
from modelyard.evaluate.checkspec import (
    NEEDS,
    CheckContext,
    CheckSpec,
    GateSpec,
    Stage,
    declare,
    declared,
    undeclare,
)
from modelyard.evaluate.evidence import Measurement, measure
from modelyard.monitor import checks as live
from modelyard.security import audit as security_audit

__all__ = [
    "BUILTIN",
    "CheckContext",
    "CheckSpec",
    "GateSpec",
    "all_checks",
    "checks_for",
    "columns",
    "expected",
    "gate_specs",
    "gate_table_markdown",
    "get_check",
    "live_checks",
    "measurement_table",
    "registered",
    "run_plugins",
    "threshold_defaults",
]

# The built-in checks in the order the report, the gates and the documentation list them.
BUILTIN: tuple[CheckSpec, ...] = (
    *quality.CHECKS[:9],  # accuracy, macro F1, drop, flips, McNemar, ECE, Brier, NLL
    *compare.CHECKS,
    *calibration.CHECKS,
    *slices.CHECKS,
    quality.CHECKS[9],  # accuracy on the items the data audit kept
    *robustness.CHECKS,
    *ood.CHECKS,
    *security_audit.CHECKS,
    *quality.CHECKS[10:],  # embedders
    *efficiency.CHECKS[:3],  # size, latency p50, p99
    *memory.CHECKS,  # peak memory
    *efficiency.CHECKS[3:],
    *live.CHECKS,  # measured on served traffic by the monitor
)


def all_checks() -> tuple[CheckSpec, ...]:
    """The built-in checks, then every plugin declared since, in declaration order; both stages."""
    builtin = {s.name for s in BUILTIN}
    return (*BUILTIN, *(s for s in declared() if s.name not in builtin))


def get_check(name: str) -> CheckSpec | None:
    return next((s for s in all_checks() if s.name == name), None)


def checks_for(task: str, *, stage: Stage = "offline") -> tuple[CheckSpec, ...]:
    """The checks of ``stage`` that apply to ``task``, in registry order."""
    return tuple(s for s in all_checks() if task in s.tasks and s.stage == stage)


def live_checks() -> tuple[CheckSpec, ...]:
    """The checks the monitor measures on served traffic."""
    return tuple(s for s in all_checks() if s.stage == "live")


@contextmanager
def registered(*specs: CheckSpec) -> Iterator[tuple[CheckSpec, ...]]:
    """Declare plugin checks for the duration of a ``with`` block (then undeclare them)."""
    try:
        yield declare(*specs)
    finally:
        for spec in specs:
            undeclare(spec.name)


def measurement_table() -> dict[str, tuple[str, str]]:
    """Measurement name -> (unit, one-line meaning), for every registered check (offline and live)."""
    return {s.name: (s.unit, s.meaning) for s in all_checks()}


def gate_specs() -> list[tuple[CheckSpec, GateSpec]]:
    """Every gate with the (offline) check it reads, in registry order."""
    return [(s, s.gate) for s in all_checks() if s.gate is not None and s.stage == "offline"]


def threshold_defaults() -> dict[str, float | None]:
    """Policy key ("quality.max_flip_rate") -> its default threshold (None: a budget, no gate until set).
    Two gates may share a key (the accuracy drop and its non-inferiority bound); their defaults must agree."""
    out: dict[str, float | None] = {}
    for spec, gate in gate_specs():
        if gate.key is None:
            continue
        if gate.key in out and out[gate.key] != gate.default:
            raise ValueError(
                f"policy key {gate.key} has two defaults: {out[gate.key]} and {gate.default} ({spec.name})"
            )
        out[gate.key] = gate.default
    return out


def threshold_kinds() -> dict[str, str]:
    """Policy key -> "fraction" (must lie in [0, 1]) or "number"."""
    return {g.key: g.kind for _, g in gate_specs() if g.key is not None}


def columns(task: str, *, efficiency_columns: bool = False) -> list[tuple[str, str]]:
    """The candidates table's (measurement, column label) for ``task``: the quality columns, or with
    ``efficiency_columns`` the efficiency ones."""
    return [
        (s.name, s.column)
        for s in checks_for(task)
        if s.column is not None and s.name.startswith("efficiency.") == efficiency_columns
    ]


def expected(task: str) -> list[str]:
    """Measurements every complete run of ``task`` has (a check with a need that can make it not applicable
    is left out): absent ones are reported as not measured."""
    return [s.name for s in checks_for(task) if not s.absent_when_missing()]


def _fmt_default(gate: GateSpec) -> str:
    if gate.default is None:
        return "none: no gate until set"
    return f"{gate.default:g}" + (f" {gate.unit}" if gate.unit else "")


def gate_table_markdown() -> str:
    """The documented gate list: one row per gate, derived from the registry (the README carries it)."""
    rows = [
        "| gate | what it reads | applies to | policy key | default | passes when |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for spec, gate in gate_specs():
        tasks = ", ".join("classifiers" if t == "classification" else "embedders" for t in spec.tasks)
        absent = [NEEDS[n][1] for n in spec.needs if NEEDS[n][0] == "absent"]
        if absent:
            tasks += ", with " + " and ".join(absent)
        if gate.key is None:
            key = "fixed"
        else:
            section, option = gate.key.split(".", 1)
            key = f"`[{section}] {option}`"
        scaled = f" in {gate.unit}" if gate.scale != 1.0 and gate.unit else ""
        rule = f"value{scaled} {gate.op} threshold"
        if gate.only_if is not None:
            rule += f"; applies only when `{gate.only_if[0]}` {gate.only_if[1]} {gate.only_if[2]:g}"
        rows.append(
            f"| `{gate.name}` | `{spec.name}`: {gate.why} | {tasks} | {key} | {_fmt_default(gate)} | {rule} |"
        )
    return "\n".join(rows) + "\n"


def missing_needs(spec: CheckSpec, unmet: Mapping[str, str]) -> tuple[bool, str | None]:
    """(applies, why UNKNOWN): a check with an unmet need of kind "absent" does not apply; one with an unmet
    need of kind "unknown" applies and is UNKNOWN with the reason ``unmet`` gives for that need."""
    for need in spec.needs:
        if need in unmet and NEEDS[need][0] == "absent":
            return False, None
    for need in spec.needs:
        if need in unmet:
            return True, unmet[need]
    return True, None


def run_plugins(
    ctx: CheckContext, measurements: dict[str, Measurement], unmet: Mapping[str, str]
) -> dict[str, Measurement]:
    """Run every plugin check (one with ``compute``) that applies to ``ctx.task`` and is not measured yet; a
    check whose need is unmet, or that fails, is UNKNOWN with the reason, never a crashed run."""
    from modelyard.errors import first_line

    out: dict[str, Measurement] = {}
    for spec in checks_for(ctx.task):
        if spec.compute is None or spec.name in measurements:
            continue
        applies, why = missing_needs(spec, unmet)
        if not applies:
            continue
        if why is not None:
            out[spec.name] = measure(spec.name, None, reason=why)
            continue
        try:
            result: Any = spec.compute(ctx)
        except Exception as exc:  # a plugin bug is UNKNOWN with its reason
            out[spec.name] = measure(
                spec.name, None, reason=f"the check failed: {type(exc).__name__}: {first_line(exc)}"
            )
            continue
        if isinstance(result, Measurement):
            out[spec.name] = result
        elif result is None or (isinstance(result, float) and not math.isfinite(result)):
            out[spec.name] = measure(spec.name, None, reason="the check returned no value")
        else:
            out[spec.name] = measure(spec.name, float(result))
    return out


README_BEGIN = "<!-- gates:begin (generated from the check registry: modelyard checks --readme README.md) -->"
README_END = "<!-- gates:end -->"


def readme_with_gate_table(text: str) -> str:
    """``text`` (the README) with the block between the gate markers replaced by ``gate_table_markdown``."""
    try:
        head, rest = text.split(README_BEGIN, 1)
        _, tail = rest.split(README_END, 1)
    except ValueError:
        raise ValueError(f"the README has no {README_BEGIN!r} ... {README_END!r} block") from None
    return f"{head}{README_BEGIN}\n{gate_table_markdown()}{README_END}{tail}"
