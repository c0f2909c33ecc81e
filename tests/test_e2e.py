"""End to end through the CLI: a user's ONNX classifier, a Hugging Face folder, and the digits demo."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard.cli import main
from modelyard.registry import Registry
from tests.helpers.json_schema import assert_valid_against_shipped_schema
from tests.helpers.models import build_tiny_bert, sentiment_texts
from tests.helpers.same_seed import assert_same_evidence, summarize


def _waiving(tmp_path: Path) -> str:
    """A policy waiving the two gates these models cannot be measured on (an ONNX or text baseline cannot be
    attacked with gradients; these datasets come without an OOD set): UNKNOWN fails closed otherwise."""
    path = tmp_path / "policy.toml"
    path.write_text('waive = ["adversarial_drop", "ood_auroc_drop"]\n')
    return str(path)


def _outputs(home: Path) -> tuple[Path, dict]:
    runs = [p for p in (home / "runs").iterdir() if not p.name.startswith(".")]
    assert len(runs) == 1
    run = runs[0]
    for name in ("evidence.json", "report.html", "MODEL_CARD.md"):
        assert (run / name).is_file(), name
    evidence = json.loads((run / "evidence.json").read_text())
    card = (run / "MODEL_CARD.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "model-index" in front
    return run, evidence


def test_user_onnx_classifier_with_npz(
    home: Path, tmp_path: Path, onnx_classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = onnx_classifier
    code = main(
        [
            "optimize",
            "--model",
            str(model),
            "--data",
            str(data),
            "--quick",
            "--policy",
            _waiving(tmp_path),
            "--recipe",
            "onnx",
            "--recipe",
            "onnx > int8-dynamic(exclude_op_types=())",
            "--recipe",
            "int8-static",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "champion:" in out.out and "outputs:" in out.out
    _, ev = _outputs(home)
    names = [c["name"] for c in ev["candidates"]]
    assert names[0] == "baseline" and "int8-static" in names
    # an ONNX baseline has nothing to export: the 'onnx' recipe just graph-optimizes it, or is skipped with a reason
    for s in ev["skipped"]:
        assert s["reason"]
    base = ev["candidates"][0]["measurements"]
    assert base["compare.flip_rate"]["value"] == 0.0
    assert 0.0 <= base["quality.accuracy"]["interval"][0] <= base["quality.accuracy"]["value"]
    reg = Registry(home)
    assert reg.list_models()[0]["name"] == "classifier"
    versions = reg.list_versions("classifier")
    assert len(versions) == len(ev["candidates"])
    assert ev["champion"] is not None  # exit 0 means a champion was chosen
    name, v = reg.resolve("classifier@champion")
    assert reg.get_version(name, v)["candidate"] == ev["champion"]


def test_hugging_face_folder_with_jsonl(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = build_tiny_bert(tmp_path / "bert", classification=True)
    data = tmp_path / "reviews.jsonl"
    data.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in sentiment_texts()))
    code = main(
        [
            "optimize",
            "--model",
            str(folder),
            "--data",
            str(data),
            "--quick",
            "--policy",
            _waiving(tmp_path),
            "--name",
            "tiny-bert",
            "--recipe",
            "onnx",
            "--recipe",
            "onnx > int8-dynamic",
        ]
    )
    out = capsys.readouterr()
    # an untrained tiny model on a few test texts: non-inferiority cannot be shown, nothing passes -> exit 1
    assert code == 1, out.err
    assert "no champion" in out.err and "accuracy_noninferiority" in out.err
    _, ev = _outputs(home)
    by_name = {c["name"]: c for c in ev["candidates"]}
    assert {"baseline", "onnx", "onnx>int8-dynamic"} <= set(by_name)
    assert by_name["onnx"]["measurements"]["compare.flip_rate"]["value"] == 0.0
    assert by_name["onnx"]["format"] == "onnx"


@pytest.mark.slow
def test_digits_demo_picks_a_measured_cheaper_variant(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "digits", "--quick"])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "champion:" in out.out
    # the checks beyond accuracy are in the table `make demo` prints
    for column in ("beyond accuracy", "neg. flips", "worst-class drop", "rel. mCE", "PGD acc", "OOD AUROC"):
        assert column in out.out, column
    assert "model file scan PASS" in out.out
    run, ev = _outputs(home)
    by_name = {c["name"]: c for c in ev["candidates"]}
    champ = ev["champion"]
    assert champ is not None and champ != "baseline"
    cost = lambda n: by_name[n]["measurements"]["efficiency.cost_usd_per_1m"]["value"]  # noqa: E731
    assert cost(champ) < cost("baseline")
    assert by_name[champ]["verdict"]["passed"]
    assert len(by_name) == 7  # the baseline and every step of the four default recipes
    for c in ev["candidates"]:  # every cost recomputes from the throughput in its own details
        ms = c["measurements"]
        cost, best = ms["efficiency.cost_usd_per_1m"], ms["efficiency.throughput_best"]
        per_item = ev["hardware"]["price_usd_per_hour"] / 3600 / cost["details"]["throughput_items_per_s"]
        assert cost["value"] == pytest.approx(per_item * 1e6), c["name"]
        assert cost["details"]["throughput_items_per_s"] == best["value"], c["name"]
    assert ev["pareto"]
    assert Registry(home).resolve("digits-cnn@champion")[0] == "digits-cnn"
    _same_evidence_as_before_the_refactor(ev)
    assert_valid_against_shipped_schema(run / "evidence.json")
    html, card = (run / "report.html").read_text(), (run / "MODEL_CARD.md").read_text()
    assert "Robustness" in html and "Out-of-distribution" in html and "Audit" in html
    assert "NIST AI RMF" in card and "Data audit" in card


def test_evaluate_measures_without_registering(
    home: Path, tmp_path: Path, onnx_classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = onnx_classifier
    args = ["evaluate", "--model", str(model), "--data", str(data), "--quick"]
    assert main(args) == 1  # by default the unmeasurable gates fail closed: exit 1 says so
    capsys.readouterr()
    shutil.rmtree(home / "runs")
    assert main([*args, "--policy", _waiving(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "baseline" in out and "outputs:" in out
    _, ev = _outputs(home)
    assert [c["name"] for c in ev["candidates"]] == ["baseline"]
    assert Registry(home).list_models() == []


def _same_evidence_as_before_the_refactor(ev: dict[str, Any]) -> None:
    """The evidence of `demo digits --quick` is, measurement by measurement and gate by gate (timings excepted),
    what the code before the check registry wrote on the same seed in this test (commit 5ffa90a, AMD EPYC,
    AVX2, torch on one thread). On a CPU with other instruction sets the kernels round differently (the
    baseline is trained here): the comparison is then of which measurements and gates exist, their units and
    statuses."""
    old = json.loads((Path(__file__).parent / "data" / "evidence_digits_quick_v2_5ffa90a.json").read_text())
    new = summarize(ev)
    if {flag: new["isa"].get(flag) for flag in old["isa"]} != old["isa"]:  # flags added since: not compared
        for part in (old, new):
            for cand in part["candidates"].values():
                cand["measurements"] = {k: v[2:] for k, v in cand["measurements"].items()}
                cand["gates"] = dict.fromkeys(cand["gates"])
                cand["passed"] = None
    assert_same_evidence(old, new)
