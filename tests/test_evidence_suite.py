"""The evidence suite inside the pipeline: every check on every candidate, audits first, serving rules
travelling with each registered candidate, and the checks shown in the CLI table, report and card."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.config import Policy, Settings
from modelyard.pipeline import EvalOptions, run_pipeline
from modelyard.registry import Registry

QUICK = EvalOptions(batch_sizes=(1, 8), latency_calls=10, min_time_s=0.05, measure_rss=False, n_resamples=300)

CLASSIFIER_CHECKS = {
    "compare.accuracy_drop_upper95",
    "compare.macro_f1_drop",
    "compare.negative_flip_rate",
    "compare.kl_mean",
    "calibration.temperature",
    "calibration.ece_calibrated",
    "slices.worst_class_recall",
    "slices.worst_class_drop",
    "robustness.corruption_accuracy",
    "robustness.relative_mce",
    "robustness.consistency",
    "robustness.consistency_drop",
    "robustness.adversarial_accuracy",
    "robustness.attack_success_rate",
    "robustness.adversarial_accuracy_drop",
    "ood.auroc",
    "ood.fpr95",
    "ood.auroc_drop",
    "security.file_scan",
    "security.backdoor_flagged_classes",
    "quality.accuracy_clean",
}


@pytest.fixture(scope="module")
def digits_run(digits: Any, tmp_path_factory: pytest.TempPathFactory) -> Any:
    home = tmp_path_factory.mktemp("suite-home")
    return run_pipeline(
        digits.baseline,
        digits.dataset,
        model_name="digits-cnn",
        model_source="test",
        recipes=["onnx", "onnx > int8-static"],
        policy=Policy(),
        settings=Settings(home=home),
        options=QUICK,
    )


def test_every_check_runs_on_every_candidate(digits_run: Any) -> None:
    ev = digits_run.evidence
    for c in ev["candidates"]:
        ms = c["measurements"]
        missing = CLASSIFIER_CHECKS - set(ms)
        assert not missing, (c["name"], missing)
        unknown = {
            k: m["details"].get("reason")
            for k, m in ms.items()
            if k in CLASSIFIER_CHECKS and m["value"] is None
        }
        assert not unknown, (c["name"], unknown)
    by = {c["name"]: c["measurements"] for c in ev["candidates"]}
    # the baseline compared with itself
    assert by["baseline"]["robustness.relative_mce"]["value"] == pytest.approx(1.0)
    assert by["baseline"]["compare.kl_mean"]["value"] == pytest.approx(0.0, abs=1e-12)
    # the exported copy behaves like the baseline on every input set
    assert by["onnx"]["robustness.adversarial_accuracy_drop"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert by["onnx"]["ood.auroc_drop"]["value"] == pytest.approx(0.0, abs=1e-6)
    adv = by["onnx>int8-static"]["robustness.adversarial_accuracy"]["details"]
    assert adv["crafted_on"] == "baseline" and adv["transfer"] is True and adv["epsilon_text"]


def test_audits_and_suite_facts_are_in_the_evidence(digits_run: Any) -> None:
    ev = digits_run.evidence
    data = ev["audit"]["data"]
    assert data["status"] == "ok" and data["leakage"]["n_test"] == 360
    assert ev["audit"]["model"]["scan"]["status"] == "PASS"
    assert ev["audit"]["model"]["backdoor"]["status"] == "ok"
    assert ev["audit"]["model"]["backdoor"]["flagged_classes"] == []  # clean digits: no flag
    seconds = ev["suite"]["seconds"]
    assert {"predictions", "compare", "robustness", "ood", "audit.data"} <= set(seconds)
    assert ev["suite"]["sample_sizes"]["robustness"]["n"] == 360
    assert "declared calibration split" in ev["suite"]["calibration_split"]
    clean = ev["candidates"][0]["measurements"]["quality.accuracy_clean"]
    assert clean["details"]["n"] == len(data["clean_test_indices"])


def test_serving_rules_travel_with_each_registered_candidate(digits_run: Any, digits: Any) -> None:
    assert "serving" not in digits.baseline.meta  # the user's Candidate is not changed by a run
    reg = Registry(digits_run.run_dir.parent.parent)
    for name, version in digits_run.versions.items():
        manifest = reg.get_version("digits-cnn", version)["manifest"]
        serving = manifest["meta"]["serving"]
        assert serving["temperature"] > 0, name
        rule = serving["ood"]
        assert rule["score"] == "energy" and rule["flag"] == "score > threshold"
        assert rule["fitted_on"] == "calibration split" and np.isfinite(rule["threshold"])
        contract = serving["input_contract"]["inputs"][0]
        assert contract["name"] == "pixels" and contract["value_range"] == [0.0, 1.0]
        json.dumps(serving)


def test_report_and_card_show_the_new_checks(digits_run: Any) -> None:
    html = (digits_run.run_dir / "report.html").read_text()
    card = (digits_run.run_dir / "MODEL_CARD.md").read_text()
    for section in ("Robustness", "Out-of-distribution", "Per-class", "Audit"):
        assert section in html, section
    assert "NIST AI RMF" in card and "ISO/IEC 42001" in card and "supports" in card
    assert "complies" not in card.lower() and "compliant" not in card.lower()


def test_evidence_json_is_valid_current_schema_evidence(digits_run: Any) -> None:
    """evidence.json of a real run loads as RunEvidence, the models the shipped JSON Schema is exported from
    (test_evidence_schema pins the two equal; jsonschema is not installed to check the file against it)."""
    from modelyard.evaluate.schema import SCHEMA_VERSION, load_evidence

    path = digits_run.outputs["evidence.json"]
    data = json.loads(path.read_text())
    ev = load_evidence(path)
    assert data["schema"] == ev.schema_version == SCHEMA_VERSION
    assert ev.model_dump(mode="json", by_alias=True, exclude_unset=True) == data  # nothing is lost or added
    assert ev.champion == digits_run.champion and {c.name for c in ev.candidates} == {
        "baseline",
        "onnx",
        "onnx>int8-static",
    }


def test_every_candidates_cost_recomputes_from_its_own_throughput(digits_run: Any) -> None:
    """Every candidate of the run, as written to evidence.json: the cost is the price over the throughput in
    its own details, that throughput is the final throughput_best (from the interleaved rounds), the cost's
    interval is the throughput's mapped through the formula, and every efficiency figure names its device."""
    ev = json.loads((digits_run.run_dir / "evidence.json").read_text())
    price = ev["hardware"]["price_usd_per_hour"]
    assert ev["hardware"]["efficiency_device"] == "cpu"
    assert len(ev["candidates"]) == 3
    for c in ev["candidates"]:
        ms = c["measurements"]
        best, cost = ms["efficiency.throughput_best"], ms["efficiency.cost_usd_per_1m"]
        assert cost["details"]["price_usd_per_hour"] == price
        assert cost["value"] == pytest.approx(price / 3600 / cost["details"]["throughput_items_per_s"] * 1e6)
        assert cost["details"]["throughput_items_per_s"] == best["value"], c["name"]
        lo, hi = best["interval"]
        assert 0 < lo <= best["value"] <= hi
        assert cost["interval"] == pytest.approx([price / 3600 / hi * 1e6, price / 3600 / lo * 1e6])
        assert best["details"]["sequential_items_per_s"] > 0  # re-timed round-robin, sequential kept
        assert best["value"] == pytest.approx(float(np.median(best["details"]["rounds_items_per_s"])))
        for name, m in ms.items():
            if name.startswith("efficiency."):
                assert m["details"]["device"] == "cpu", (c["name"], name)
                if c["format"] == "onnx":
                    assert m["details"]["providers"] == ["CPUExecutionProvider"], (c["name"], name)


def test_onnx_baseline_marks_attacks_unknown_with_the_way_out(
    onnx_classifier: tuple[Path, Path], tmp_path: Path
) -> None:
    from modelyard.data.loaders import load_dataset
    from modelyard.optimize.baseline import load_baseline

    model, data = onnx_classifier
    ds = load_dataset(data)
    base = load_baseline(model, ds)
    run = run_pipeline(
        base,
        ds,
        model_name="clf",
        model_source="test",
        recipes=[],
        policy=Policy(),
        settings=Settings(home=tmp_path / "h"),
        options=QUICK,
        register=False,
    )
    ms = run.evidence["candidates"][0]["measurements"]
    adv = ms["robustness.adversarial_accuracy_drop"]
    assert adv["value"] is None and "waive 'adversarial_drop'" in adv["details"]["reason"]
    assert ms["ood.auroc"]["value"] is None and "--ood-data" in ms["ood.auroc"]["details"]["reason"]
    gates = {g["gate"]: g for g in run.evidence["candidates"][0]["verdict"]["gates"]}
    assert not gates["adversarial_drop"]["passed"] and "UNKNOWN" in gates["adversarial_drop"]["reason"]


def test_audit_model_command_exits_1_on_a_malicious_file(
    tmp_path: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import pickle

    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            import os

            return (os.system, ("echo pwned",))

    bad = tmp_path / "model.bin"
    bad.write_bytes(pickle.dumps(Evil()))
    assert main(["audit", "model", str(bad), "--out", str(tmp_path / "scan.json")]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "os" in out
    assert json.loads((tmp_path / "scan.json").read_text())["status"] == "FAIL"

    import torch
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.zeros(2, 2)}, str(good))
    assert main(["audit", "model", str(good)]) == 0
    assert "PASS" in capsys.readouterr().out


def test_audit_data_command_on_a_demo(home: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_file = tmp_path / "audit.json"
    assert main(["audit", "data", "--demo", "tabular", "--out", str(out_file)]) == 0
    out = capsys.readouterr().out
    assert "train/test leakage" in out and "backdoor scans" in out and str(out_file) in out
    report = json.loads(out_file.read_text())
    assert report["data"]["provenance"]["license"]
    assert report["backdoor"]["status"] == "ok"


def test_audit_data_needs_one_source(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["audit", "data"]) == 2
    assert "give exactly one of --data FILE or --demo NAME" in capsys.readouterr().err
