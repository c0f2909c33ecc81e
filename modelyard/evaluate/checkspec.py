"""What a check declares, once: its name, unit, direction, tasks, needs and, where it gates, its gate.

A check module declares its checks with ``declare(CheckSpec(...), ...)`` next to the code that computes
them; ``modelyard.evaluate.checks`` gathers every declaration (the built-in modules, then the plugins a
caller declared) and derives from them the policy's threshold keys and defaults, the gates, the report's
columns and the documented gate list. Nothing else lists checks.

A check that needs something the run does not have is either **not applicable** (the need is a property of
the data: image corruptions for images, declared slices, paraphrase pairs) and then absent from the evidence,
or **UNKNOWN** with the reason (the need is something the user can give: labels, an OOD set, a
differentiable baseline), which fails its gate unless the policy waives it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from modelyard.evaluate.evidence import Measurement

Task = Literal["classification", "embedding"]
TASKS: tuple[Task, ...] = ("classification", "embedding")
CLASSIFIERS: tuple[Task, ...] = ("classification",)
EMBEDDERS: tuple[Task, ...] = ("embedding",)
Direction = Literal["higher", "lower"]
Stage = Literal["offline", "live"]
STAGES: tuple[Stage, ...] = ("offline", "live")
Op = Literal["<=", "<", ">="]
ThresholdKind = Literal["number", "fraction"]

# need -> (missing makes the check "absent" (not applicable) or "unknown" (fails unless waived), what it is)
NEEDS: dict[str, tuple[Literal["absent", "unknown"], str]] = {
    "labels": ("unknown", "test labels"),
    "calibration": ("unknown", "a calibration split (or train items to hold one out of)"),
    "ood": ("unknown", "an out-of-distribution set (--ood-data)"),
    "gradients": ("unknown", "a differentiable (PyTorch) baseline to craft adversarials on"),
    "perturbations": ("unknown", "a label-preserving perturbation for this input type"),
    "tensor_inputs": ("absent", "numeric inputs (images or tabular) that a gradient attack can move"),
    "images": ("absent", "image inputs (corruptions are defined for images)"),
    "slices": ("absent", "declared slice columns (--slice-column)"),
    "pairs": ("absent", "paraphrase pairs in the data"),
    "audit": ("absent", "a data audit of the test split"),
    "backdoor": ("absent", "a backdoor scan of the training data"),
    "holm": ("absent", "a candidate other than the baseline (Holm's correction runs across the candidates)"),
}


@dataclass(frozen=True)
class GateSpec:
    """How a check gates: ``value * scale <op> threshold`` passes. The threshold is the policy's ``key``
    (``section.name`` in the policy TOML), ``default`` when the policy does not set it; a ``default`` of None
    is a budget: no gate until the policy sets one. ``why`` is the words of the reason ("<why>: 1.2 points
    violates <= 1 points"). ``only_if`` = (measurement, ">", number): the gate applies only when that other
    measurement's value is above the number (e.g. a significance gate only for a positive drop)."""

    name: str
    key: str | None  # None: a fixed threshold (``default``) that no policy key changes
    default: float | None
    op: Op
    why: str
    scale: float = 1.0
    unit: str = ""
    kind: ThresholdKind = "number"
    meaning: str = ""  # the policy key's comment in the documented defaults
    only_if: tuple[str, Literal[">"], float] | None = None

    @property
    def section(self) -> str | None:
        return None if self.key is None else self.key.split(".", 1)[0]


@dataclass(frozen=True)
class CheckContext:
    """What a plugin check computes from: one candidate's and the baseline's predictions on the test split
    (logits for classifiers, embeddings for embedders), the test labels when there are any, and the run."""

    task: Task
    candidate: str
    is_baseline: bool
    y: Any  # np.ndarray of test labels, or None
    base: Mapping[str, Any]  # input set -> the baseline's outputs ("test" always)
    cand: Mapping[str, Any]  # input set -> this candidate's outputs
    dataset: Any  # modelyard.data.dataset.Dataset
    policy: Any  # modelyard.config.Policy


Compute = Callable[[CheckContext], "Measurement | float | None"]


@dataclass(frozen=True)
class CheckSpec:
    """One check. ``name`` is the stable dotted measurement name; ``unit`` the unit of its value; ``direction``
    which way is better (None: neither, e.g. a fitted temperature); ``tasks`` the model kinds it applies to;
    ``needs`` (keys of ``NEEDS``) what the run must have; ``column`` the candidates table's column label (None:
    not a column); ``gate`` how it gates, if it does; ``compute`` for a plugin check (the built-in checks are
    computed by their module's evidence functions, which the suite calls). ``stage``: ``offline`` checks measure
    candidates before release (the evidence, the gates, the report); ``live`` checks measure served traffic
    (:mod:`modelyard.monitor.checks`): they share the names, units and Measurement shape, never gate a
    candidate and are not part of a run's evidence."""

    name: str
    unit: str
    meaning: str
    direction: Direction | None
    tasks: tuple[Task, ...] = TASKS
    needs: tuple[str, ...] = ()
    column: str | None = None
    gate: GateSpec | None = None
    compute: Compute | None = field(default=None, compare=False)
    stage: Stage = "offline"

    def __post_init__(self) -> None:
        parts = self.name.split(".")
        if len(parts) < 2 or not all(parts):
            raise ValueError(f"check name {self.name!r} must be dotted, e.g. 'calibration.ece'")
        unknown = [n for n in self.needs if n not in NEEDS]
        if unknown:
            raise ValueError(f"check {self.name}: unknown needs {unknown}; known: {', '.join(NEEDS)}")
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise ValueError(f"check {self.name}: unknown tasks {bad}; known: {', '.join(TASKS)}")
        if self.gate is not None and self.gate.key is not None and "." not in self.gate.key:
            raise ValueError(f"check {self.name}: gate key {self.gate.key!r} must be 'section.name'")
        if self.stage not in STAGES:
            raise ValueError(f"check {self.name}: unknown stage {self.stage!r}; known: {', '.join(STAGES)}")
        if self.stage == "live" and (self.gate is not None or self.compute is not None or self.column):
            raise ValueError(
                f"check {self.name}: a live check is computed by the monitor on served traffic; it takes no gate, "
                "compute or report column"
            )

    def absent_when_missing(self) -> bool:
        """True when some need of this check makes it not applicable (absent) rather than UNKNOWN."""
        return any(NEEDS[n][0] == "absent" for n in self.needs)


_DECLARED: dict[str, CheckSpec] = {}


def declare(*specs: CheckSpec) -> tuple[CheckSpec, ...]:
    """Declare checks (a module's ``CHECKS = declare(...)``). Declaring the same spec again is a no-op; a
    different spec under a name already declared is refused."""
    for spec in specs:
        old = _DECLARED.get(spec.name)
        if old is not None and old != spec:
            raise ValueError(f"check {spec.name!r} is already declared differently")
        _DECLARED[spec.name] = spec
    return specs


def undeclare(name: str) -> None:
    """Remove a declared check (for plugins and tests)."""
    _DECLARED.pop(name, None)


def declared() -> tuple[CheckSpec, ...]:
    """Every check declared so far, in declaration order."""
    return tuple(_DECLARED.values())


def unit_of(name: str) -> str | None:
    spec = _DECLARED.get(name)
    return None if spec is None else spec.unit


def meaning_of(name: str) -> str | None:
    spec = _DECLARED.get(name)
    return None if spec is None else spec.meaning
