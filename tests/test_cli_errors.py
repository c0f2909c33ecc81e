"""Every bad input gets a one-line error, exit code 2, and leaves the home folder as it was."""

from __future__ import annotations

import hashlib
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from modelyard.cli import main
from modelyard.registry import Registry, VersionEntry
from tests.helpers.cli import assert_one_line_error


def _snapshot(home: Path) -> dict[str, str]:
    if not home.exists():
        return {}
    out = {}
    for p in sorted(home.rglob("*")):
        if p.is_file() and not p.name.endswith(("-wal", "-shm")):
            out[str(p.relative_to(home))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def populated_home(home: Path, tmp_path: Path) -> Path:
    f = tmp_path / "weights.bin"
    f.write_bytes(b"existing model")
    Registry(home).register_run(
        "existing",
        [VersionEntry(name="baseline", files={"weights.bin": f}, manifest={})],
        run_id="run-0",
        champion="baseline",
        reason="setup",
    )
    return home


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.err + captured.out


def _bad_inputs(tmp_path: Path, onnx_classifier: tuple[Path, Path]) -> dict[str, tuple[list[str], str]]:
    model, data = onnx_classifier
    unknown = tmp_path / "model.bin"
    unknown.write_bytes(b"\x00\x01garbage that is not a model" * 10)
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(model.read_bytes()[: len(model.read_bytes()) // 2])
    pkl = tmp_path / "checkpoint.pt"
    pkl.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=4))
    wrong_shape = tmp_path / "wrong_shape.npz"
    np.savez(wrong_shape, x=np.zeros((20, 5), dtype=np.float32), y=np.arange(20) % 3)
    bad_labels = tmp_path / "bad_labels.npz"
    np.savez(bad_labels, x=np.zeros((20, 6), dtype=np.float32), y=np.arange(20) % 7)
    empty = tmp_path / "empty.npz"
    np.savez(empty, x=np.zeros((0, 6), dtype=np.float32), y=np.zeros(0, dtype=np.int64))
    unknown_key = tmp_path / "unknown_key.toml"
    unknown_key.write_text("[quality]\nmax_flips = 0.1\n")
    bad_value = tmp_path / "bad_value.toml"
    bad_value.write_text("[quality]\nmax_flip_rate = -3\n")
    waive_unknown = tmp_path / "waive_unknown.toml"
    waive_unknown.write_text('waive = ["backdoor_scna"]\n')
    ood_wrong = tmp_path / "ood_wrong.npz"
    np.savez(ood_wrong, x=np.zeros((30, 5), dtype=np.float32))
    csv = tmp_path / "table.csv"
    csv.write_text("a,b,c,d,e,f,label\n" + "\n".join(f"{i},1,2,3,4,5,{i % 3}" for i in range(30)))
    sheet = tmp_path / "sheet.toml"
    sheet.write_text("source = [1, 2\n")
    m, d = str(model), str(data)
    return {
        "missing file": (["optimize", "--model", str(tmp_path / "nope.onnx"), "--data", d], "does not exist"),
        "unknown format": (
            ["optimize", "--model", str(unknown), "--data", d],
            "cannot tell what kind of model",
        ),
        "corrupt onnx": (["optimize", "--model", str(corrupt), "--data", d], "corrupt.onnx"),
        "pickle without trust": (["optimize", "--model", str(pkl), "--data", d], "--trust-pickle"),
        "shape mismatch": (["optimize", "--model", m, "--data", str(wrong_shape)], "expects"),
        "labels outside classes": (
            ["optimize", "--model", m, "--data", str(bad_labels)],
            "labels go up to 6",
        ),
        "empty dataset": (["optimize", "--model", m, "--data", str(empty)], "is empty"),
        "policy unknown key": (
            ["optimize", "--model", m, "--data", d, "--policy", str(unknown_key)],
            "unknown key 'max_flips' in [quality]",
        ),
        "policy bad value": (
            ["optimize", "--model", m, "--data", d, "--policy", str(bad_value)],
            "max_flip_rate must be a finite number >= 0",
        ),
        "unknown pass": (
            ["optimize", "--model", m, "--data", d, "--recipe", "onnx > int4-magic"],
            "unknown pass 'int4-magic'",
        ),
        "policy waives an unknown check": (
            ["optimize", "--model", m, "--data", d, "--policy", str(waive_unknown)],
            "waives unknown gate(s) 'backdoor_scna'",
        ),
        "OOD set of the wrong shape": (
            ["optimize", "--model", m, "--data", d, "--ood-data", str(ood_wrong)],
            "OOD set has items of shape (5,)",
        ),
        "slice column that does not exist": (
            ["optimize", "--model", m, "--data", str(csv), "--slice-column", "region"],
            "no slice column(s) 'region'",
        ),
        "unreadable datasheet": (
            ["optimize", "--model", m, "--data", d, "--datasheet", str(sheet)],
            "cannot read datasheet",
        ),
    }


CASES = [
    "missing file",
    "unknown format",
    "corrupt onnx",
    "pickle without trust",
    "shape mismatch",
    "labels outside classes",
    "empty dataset",
    "policy unknown key",
    "policy bad value",
    "unknown pass",
    "policy waives an unknown check",
    "OOD set of the wrong shape",
    "slice column that does not exist",
    "unreadable datasheet",
]


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_cleanly(
    case: str,
    tmp_path: Path,
    populated_home: Path,
    onnx_classifier: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, match = _bad_inputs(tmp_path, onnx_classifier)[case]
    before = _snapshot(populated_home)
    code, out = _run(argv, capsys)
    assert_one_line_error(code, out, match)
    assert _snapshot(populated_home) == before
    reg = Registry(populated_home)
    assert [m["name"] for m in reg.list_models()] == ["existing"]
    assert not (populated_home / "runs").exists() or not any((populated_home / "runs").iterdir())


def test_real_process_prints_no_traceback(tmp_path: Path, onnx_classifier: tuple[Path, Path]) -> None:
    _, data = onnx_classifier
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "modelyard.cli",
            "optimize",
            "--model",
            str(tmp_path / "missing.onnx"),
            "--data",
            str(data),
        ],
        capture_output=True,
        text=True,
        env={"MODELYARD_HOME": str(tmp_path / "h"), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "does not exist" in proc.stderr
    assert not (tmp_path / "h").exists()


def test_recipes_spelling_is_accepted(
    onnx_classifier: tuple[Path, Path], home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = onnx_classifier
    code, out = _run(
        ["optimize", "--model", str(model), "--data", str(data), "--recipes", "onnx > int4-magic"], capsys
    )
    assert_one_line_error(code, out, "unknown pass 'int4-magic'")


@pytest.mark.parametrize("argv", [["bogus"], ["optimize", "--nope"], ["models", "show"]])
def test_usage_errors_exit_2_without_a_traceback(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    from modelyard.cli import main

    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Error:" in err and "Traceback" not in err and "╭" not in err
