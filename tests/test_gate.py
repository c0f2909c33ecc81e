import pytest

from modelyard.config import policy_from_dict
from modelyard.errors import ConfigError
from modelyard.evaluate.evidence import Measurement
from modelyard.evaluate.schema import CandidateEvidence, Verdict
from modelyard.evaluate.schema import Measurement as SchemaMeasurement
from modelyard.gate import choose_champion, gates_for, pareto_front, verdict


def m(value: float | None) -> Measurement:
    return Measurement("x.y", value, "", None, "ok" if value is not None else "unknown")


def cls_measurements(
    drop: float, p: float, flips: float, ece_inc: float, cost: float, acc: float = 0.97, size: float = 1000
) -> dict[str, Measurement]:
    return {
        "ood.auroc_drop": m(1.0),
        "compare.accuracy_drop": m(drop),
        "compare.accuracy_drop_upper95": m(drop + 0.4),
        "compare.mcnemar_p_holm": m(p),
        "compare.flip_rate": m(flips),
        "compare.negative_flip_rate": m(flips / 2),
        "compare.kl_mean": m(0.01),
        "calibration.ece_increase": m(ece_inc),
        "slices.worst_class_drop": m(2.0),
        "robustness.consistency_drop": m(0.5),
        "security.file_scan": m(1.0),
        "efficiency.cost_usd_per_1m": m(cost),
        "efficiency.size_bytes": m(size),
        "quality.accuracy": m(acc),
    }


ALWAYS_CLS = {
    "accuracy_drop",
    "accuracy_noninferiority",
    "accuracy_drop_significance",
    "flip_rate",
    "negative_flip_rate",
    "kl_to_baseline",
    "ece_increase",
    "worst_class_drop",
    "consistency_drop",
    "file_scan",
    # present only when the data or the model makes the check applicable: shown as "not applicable"
    "slice_drop",
    "corruption_mce",
    "adversarial_drop",
    "ood_auroc_drop",
    "backdoor_scan",
}


def test_passing_candidate() -> None:
    v = verdict(cls_measurements(0.5, 0.6, 0.01, 0.0, 1.0), "classification", policy_from_dict({}))
    assert v.passed
    assert {g.gate for g in v.gates} == ALWAYS_CLS
    na = {g.gate for g in v.gates if g.reason == "not applicable"}
    assert na == {"slice_drop", "corruption_mce", "adversarial_drop", "backdoor_scan"}


def test_a_required_check_that_is_missing_fails_closed() -> None:
    ms = cls_measurements(0.5, 0.6, 0.01, 0.0, 1.0)
    del ms["ood.auroc_drop"]  # an OOD check is UNKNOWN without an OOD set, never absent: absent fails too
    v = verdict(ms, "classification", policy_from_dict({}))
    assert [g.gate for g in v.gates if not g.passed] == ["ood_auroc_drop"]


def test_each_failed_gate_has_a_reason() -> None:
    v = verdict(cls_measurements(2.0, 0.01, 0.05, 0.03, 1.0), "classification", policy_from_dict({}))
    assert not v.passed
    failed = {g.gate: g.reason for g in v.gates if not g.passed}
    assert set(failed) == {
        "accuracy_drop",
        "accuracy_noninferiority",
        "accuracy_drop_significance",
        "flip_rate",
        "negative_flip_rate",
        "ece_increase",
    }
    assert "violates <= 1 points" in failed["accuracy_drop"]
    assert "violates < 1 points" in failed["accuracy_noninferiority"]


def test_noninferiority_is_strict_and_uses_the_upper_bound() -> None:
    ms = cls_measurements(0.2, 0.6, 0.01, 0.0, 1.0)
    ms["compare.accuracy_drop_upper95"] = m(1.0)  # point drop fine, bound at the margin: not non-inferior
    v = verdict(ms, "classification", policy_from_dict({}))
    assert [g.gate for g in v.gates if not g.passed] == ["accuracy_noninferiority"]


def test_applicable_checks_gate_when_present() -> None:
    ms = cls_measurements(0.0, 1.0, 0.0, 0.0, 1.0)
    ms["robustness.relative_mce"] = m(1.5)
    ms["security.backdoor_flagged_classes"] = m(1.0)
    ms["ood.auroc_drop"] = m(None)
    v = verdict(ms, "classification", policy_from_dict({}))
    failed = {g.gate: g.reason for g in v.gates if not g.passed}
    assert set(failed) == {"corruption_mce", "backdoor_scan", "ood_auroc_drop"}
    assert "UNKNOWN" in failed["ood_auroc_drop"]
    loose = policy_from_dict(
        {"robustness": {"max_relative_mce": 2.0}, "waive": ["backdoor_scan", "ood_auroc_drop"]}
    )
    assert verdict(ms, "classification", loose).passed


def test_significance_gate_only_applies_to_a_drop() -> None:
    v = verdict(cls_measurements(-1.0, 0.001, 0.01, 0.0, 1.0), "classification", policy_from_dict({}))
    assert v.passed


def test_unknown_fails_unless_waived() -> None:
    ms = cls_measurements(0.0, 1.0, 0.0, 0.0, 1.0)
    ms["calibration.ece_increase"] = m(None)
    assert not verdict(ms, "classification", policy_from_dict({})).passed
    assert verdict(ms, "classification", policy_from_dict({"waive": ["ece_increase"]})).passed


def test_waiving_an_unknown_gate_is_an_error() -> None:
    with pytest.raises(ConfigError, match="waives unknown gate"):
        gates_for(policy_from_dict({"waive": ["nope"]}))


def test_budgets_in_mb() -> None:
    pol = policy_from_dict({"budgets": {"max_size_mb": 1.0}})
    ms = cls_measurements(0, 1, 0, 0, 1, size=2 * 2**20)
    v = verdict(ms, "classification", pol)
    assert (
        not v.passed
        and "size budget: 2 MB violates <= 1 MB" in next(g for g in v.gates if g.gate == "size").reason
    )


def test_embedding_gates() -> None:
    ms = {
        "quality.cosine_mean": m(0.995),
        "quality.cosine_p5": m(0.97),
        "quality.top10_agreement": m(0.96),
        "security.file_scan": m(1.0),
        "ood.auroc_drop": m(0.5),
    }
    v = verdict(ms, "embedding", policy_from_dict({}))
    assert [g.gate for g in v.gates if not g.passed] == ["cosine_p5"]


def _cand(name: str, cost: float, acc: float, passed: bool = True, size: float = 1000) -> CandidateEvidence:
    ms = {
        k: SchemaMeasurement(name=k, value=v.value, unit="", interval=None, status=v.status, details={})
        for k, v in cls_measurements(0, 1, 0, 0, cost, acc, size).items()
    }
    return CandidateEvidence(
        name=name,
        parent=None,
        format="onnx",
        passes=[],
        artifact_sha256="0" * 64,
        size_bytes=int(size),
        notes=[],
        meta={},
        serving=None,
        measurements=ms,
        verdict=Verdict(passed=passed, gates=[]),
    )


def test_champion_is_cheapest_passing() -> None:
    cands = [_cand("base", 10, 0.97), _cand("a", 2, 0.96), _cand("b", 1, 0.95, passed=False)]
    name, reason = choose_champion(cands, "classification", policy_from_dict({}))
    assert name == "a" and "lowest cost" in reason


def test_near_tie_goes_to_quality_then_size() -> None:
    cands = [_cand("fp32", 1.00, 0.978, size=160_000), _cand("int8", 0.98, 0.975, size=50_000)]
    name, reason = choose_champion(cands, "classification", policy_from_dict({}))
    assert name == "fp32" and "tie" in reason
    strict = policy_from_dict({"objective": {"tie_tolerance": 0.0}})
    assert choose_champion(cands, "classification", strict)[0] == "int8"


def test_no_champion_when_nothing_passes() -> None:
    assert (
        choose_champion([_cand("a", 1, 0.9, passed=False)], "classification", policy_from_dict({}))[0] is None
    )


def test_pareto_front() -> None:
    cands = [_cand("a", 1, 0.90), _cand("b", 2, 0.95), _cand("c", 3, 0.94), _cand("d", 0.5, 0.80)]
    assert set(pareto_front(cands, "classification")) == {"a", "b", "d"}


def test_every_gate_is_documented_in_the_readme() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    pol = policy_from_dict(
        {"budgets": {"max_latency_p99_ms": 5, "max_peak_rss_mb": 400, "max_size_mb": 5, "min_throughput": 10}}
    )
    budget = {"latency_p99", "peak_rss", "size", "throughput"}
    missing = [g.name for g in gates_for(pol) if g.name not in budget and f"`{g.name}`" not in readme]
    assert not missing, f"gates missing from README: {missing}"
