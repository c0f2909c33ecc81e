"""The check registry: every check declared once, and everything derived from it agrees (the completeness
tests); a toy check declared here, from a test module, runs, gates, renders and is documented without any
other file changing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.config import Policy, Settings, policy_from_dict
from modelyard.data.loaders import load_dataset
from modelyard.evaluate import checks
from modelyard.evaluate.checkspec import CLASSIFIERS, CheckContext, CheckSpec, GateSpec, declared
from modelyard.evaluate.schema import RunEvidence
from modelyard.gate import budget_gates, gates_for, verdict
from modelyard.optimize.baseline import load_baseline
from modelyard.pipeline import EvalOptions, run_pipeline

README = Path(__file__).resolve().parents[1] / "README.md"
FAST = EvalOptions(batch_sizes=(1,), latency_calls=3, min_time_s=1e-3, measure_rss=False, n_resamples=200)
ALL_BUDGETS = {
    "budgets": {"max_latency_p99_ms": 5, "max_peak_rss_mb": 400, "max_size_mb": 5, "min_throughput": 10}
}


def test_names_gates_and_policy_keys_are_unique_and_consistent() -> None:
    names = [s.name for s in checks.all_checks()]
    assert len(names) == len(set(names))
    gate_names = [g.name for _, g in checks.gate_specs()]
    assert len(gate_names) == len(set(gate_names))
    assert checks.threshold_defaults()  # raises when two gates give one key different defaults
    assert {s.name for s in declared()} == set(names)  # nothing declared outside the registry's view


def test_the_policy_is_derived_from_the_registry() -> None:
    policy = Policy()
    recorded = policy.to_dict()
    for key, default in checks.threshold_defaults().items():
        section, option = key.split(".", 1)
        assert recorded[section][option] == default, key
        assert policy.threshold(key) == default
    # every gate exists once every budget is set, and nothing else does
    assert [g.name for g in gates_for(policy_from_dict(ALL_BUDGETS))] == [
        g.name for _, g in checks.gate_specs()
    ]
    assert set(budget_gates()) == {"latency_p99", "peak_rss", "size", "throughput"}
    assert [g.name for g in gates_for(policy)] == [
        g.name for _, g in checks.gate_specs() if g.default is not None
    ]


def test_the_readme_carries_the_registry_gate_table() -> None:
    text = README.read_text(encoding="utf-8")
    assert checks.readme_with_gate_table(text) == text, "run: modelyard checks --readme README.md"
    for _, gate in checks.gate_specs():
        assert f"| `{gate.name}` |" in text


def test_the_report_columns_are_the_registry_columns() -> None:
    from modelyard.report import view

    for task in ("classification", "embedding"):
        assert view.key_metrics(task) == checks.columns(task)
        assert view.expected(task) == checks.expected(task)
        assert view.MAIN_METRIC[task] in dict(checks.columns(task))
    assert view.efficiency_metrics() == checks.columns("classification", efficiency_columns=True)
    assert [n for n, _ in view.key_metrics("classification")] == [
        "quality.accuracy",
        "quality.macro_f1",
        "compare.accuracy_drop",
        "calibration.ece",
    ]


def test_the_shipped_v1_evidence_names_only_registered_checks_with_their_units() -> None:
    raw = json.loads((Path(__file__).parent / "data" / "evidence_v1.json").read_text())
    units = checks.measurement_table()
    for cand in raw["candidates"]:
        for name, m in cand["measurements"].items():
            assert name in units, name
            assert m["unit"] == units[name][0], name


# ---------------------------------------------------------------------------------------------- the toy check


def _mean_abs_logit(ctx: CheckContext) -> float:
    return float(np.mean(np.abs(ctx.cand["test"])))


TOY = CheckSpec(
    "toy.mean_abs_logit",
    "logit",
    "mean absolute logit on the test split (a toy check declared by a test)",
    "lower",
    CLASSIFIERS,
    ("labels",),
    column="Toy |logit|",
    gate=GateSpec("toy_logit", "toy.max_mean_abs_logit", 1e6, "<=", "mean absolute logit", unit="logit"),
    compute=_mean_abs_logit,
)
TOY_NEEDS_OOD = CheckSpec(
    "toy.needs_ood",
    "fraction",
    "a toy check that needs an OOD set",
    "higher",
    CLASSIFIERS,
    ("ood",),
    compute=lambda ctx: 1.0,
)
TOY_CRASHES = CheckSpec(
    "toy.crashes",
    "fraction",
    "a toy check with a bug",
    "higher",
    CLASSIFIERS,
    compute=lambda ctx: 1 / 0,
)


@pytest.fixture(scope="module")
def toy_run(onnx_classifier: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Any:
    model, data = onnx_classifier
    ds = load_dataset(data)
    base = load_baseline(model, ds)
    # an ONNX baseline cannot be attacked, and there is no OOD set: waived, as a user would
    policy = policy_from_dict({"waive": ["adversarial_drop", "ood_auroc_drop"]})
    with checks.registered(TOY, TOY_NEEDS_OOD, TOY_CRASHES):
        result = run_pipeline(
            base,
            ds,
            model_name="toy",
            model_source=str(model),
            recipes=["int8-dynamic"],
            policy=policy,
            settings=Settings(home=tmp_path_factory.mktemp("toy-home")),
            options=FAST,
            register=False,
        )
        table = checks.gate_table_markdown()
        toy_policy = policy_from_dict(
            {"toy": {"max_mean_abs_logit": 0.0}, "waive": ["adversarial_drop", "ood_auroc_drop"]}
        )
        typed = RunEvidence.model_validate(result.evidence)
        strict_verdicts = {
            c.name: verdict(c.measurements, "classification", toy_policy) for c in typed.candidates
        }
        home = tmp_path_factory.mktemp("cli-home")
        listing = main(["checks"])
    return result, table, strict_verdicts, listing, home


def test_a_toy_check_runs_on_every_candidate(toy_run: Any) -> None:
    result = toy_run[0]
    for c in result.evidence["candidates"]:
        m = c["measurements"]["toy.mean_abs_logit"]
        assert m["unit"] == "logit" and m["status"] == "ok" and m["value"] > 0
        # a need the run lacks makes it UNKNOWN with the reason; a bug is UNKNOWN, never a crashed run
        assert "out-of-distribution" in c["measurements"]["toy.needs_ood"]["details"]["reason"]
        assert "ZeroDivisionError" in c["measurements"]["toy.crashes"]["details"]["reason"]


def test_a_toy_check_gates(toy_run: Any) -> None:
    result, _, strict, _, _ = toy_run
    for c in result.evidence["candidates"]:
        gate = next(g for g in c["verdict"]["gates"] if g["gate"] == "toy_logit")
        assert gate["passed"] and gate["threshold"] == 1e6 and "mean absolute logit" in gate["reason"]
    # the policy accepts the toy's key (a new [toy] table) and the gate then fails
    for v in strict.values():
        failed = [g for g in v.gates if not g.passed]
        assert [g.gate for g in failed] == ["toy_logit"] and "violates <= 0 logit" in failed[0].reason


def test_a_toy_check_renders_in_the_report(toy_run: Any) -> None:
    result = toy_run[0]
    html = (result.run_dir / "report.html").read_text(encoding="utf-8")
    assert "Toy |logit|" in html
    assert "toy_logit" in html


def test_a_toy_check_appears_in_the_documented_gate_list(toy_run: Any) -> None:
    table = toy_run[1]
    assert (
        "| `toy_logit` | `toy.mean_abs_logit`: mean absolute logit | classifiers | `[toy] max_mean_abs_logit`"
        in table
    )
    # and leaves the registry as it was
    assert checks.get_check("toy.mean_abs_logit") is None
    assert "toy_logit" not in checks.gate_table_markdown()


def test_the_cli_lists_the_checks(toy_run: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert toy_run[3] == 0
    main(["checks"])
    out = capsys.readouterr().out
    assert "gate ood_auroc_drop: robustness.max_ood_auroc_drop_points = 5" in out
    assert "toy." not in out
    assert all(f"\n{s.name} (" in f"\n{out}" for s in checks.all_checks())
