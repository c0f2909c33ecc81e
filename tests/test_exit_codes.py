"""Exit codes a CI job can trust: 0 a champion was chosen, 1 nothing passed, 2 bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.errors import GateFailed
from modelyard.registry import Registry

# An ONNX model cannot be attacked and this data has no OOD set: those two gates would be UNKNOWN (fail closed).
WAIVE = 'waive = ["adversarial_drop", "ood_auroc_drop"]\n'


def _optimize(model: Path, data: Path, *extra: str) -> list[str]:
    return ["optimize", "--model", str(model), "--data", str(data), "--quick", "--recipe", "onnx", *extra]


def _policy(tmp_path: Path, text: str) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(WAIVE + text)
    return str(path)


def test_optimize_exits_1_when_nothing_passes_and_still_registers(
    home: Path, tmp_path: Path, onnx_classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = onnx_classifier
    impossible = _policy(tmp_path, "[budgets]\nmax_size_mb = 0.000001\n")  # no model file is that small
    code = main(_optimize(model, data, "--policy", impossible))
    out = capsys.readouterr()
    assert code == 1, out.err
    assert "no champion" in out.out and "no champion" in out.err
    assert "failed baseline: size" in out.out and "failed onnx: size" in out.out  # every failed gate
    runs = [p for p in (home / "runs").iterdir() if not p.name.startswith(".")]
    evidence = json.loads((runs[0] / "evidence.json").read_text())
    assert evidence["champion"] is None
    reg = Registry(home)
    assert len(reg.list_versions("classifier")) == len(evidence["candidates"])  # the run is registered
    assert "champion" not in reg.list_models()[0].get("aliases", {})  # the alias was not moved


def test_optimize_exits_0_with_a_champion_and_1_does_not_move_an_existing_champion(
    home: Path, tmp_path: Path, onnx_classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = onnx_classifier
    assert main(_optimize(model, data, "--policy", _policy(tmp_path, ""))) == 0
    reg = Registry(home)
    before = reg.resolve("classifier@champion")
    impossible = _policy(tmp_path, "[budgets]\nmax_size_mb = 0.000001\n")
    assert main(_optimize(model, data, "--policy", impossible)) == 1
    assert reg.resolve("classifier@champion") == before
    capsys.readouterr()


def test_bad_input_exits_2(home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["optimize", "--model", str(tmp_path / "missing.onnx"), "--data", str(tmp_path / "d.npz")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_require_champion_raises_gate_failed_from_python() -> None:
    from modelyard.pipeline import RunResult
    from tests.helpers.evidence import classifier_evidence

    ev = classifier_evidence()
    ev["champion"] = None
    first = ev["candidates"][0]
    gate = {
        "gate": "size",
        "check": "efficiency.size_bytes",
        "value": 9.0,
        "threshold": 1.0,
        "reason": "size",
    }
    first["verdict"] = {
        "passed": False,
        "gates": [{**gate, "passed": False}, {**gate, "gate": "x", "passed": True}],
    }
    result = RunResult("r1", Path("runs/r1"), ev, None)
    with pytest.raises(GateFailed, match=rf"no candidate passed .*{first['name']}: size[;)]"):
        result.require_champion()
    assert RunResult("r2", Path("runs/r2"), ev, first["name"]).require_champion() == first["name"]
