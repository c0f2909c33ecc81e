"""`modelyard models list | show | promote | rollback | log` over a registry with two runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelyard.cli import main
from modelyard.evaluate.schema import Verdict, VersionEvidence
from modelyard.registry import Registry, VersionEntry


@pytest.fixture
def two_runs(home: Path, tmp_path: Path) -> Registry:
    reg = Registry(home)
    for run, champ in (("run-a", "fast"), ("run-b", "faster")):
        entries = []
        for name in ("baseline", champ):
            f = tmp_path / f"{run}-{name}.onnx"
            f.write_bytes(f"{run}/{name}".encode())
            entries.append(
                VersionEntry(
                    name=name,
                    files={"model.onnx": f},
                    manifest={"name": name},
                    evidence=VersionEvidence(
                        run_id=run, measurements={}, verdict=Verdict(passed=True, gates=[])
                    ),
                    parent=None if name == "baseline" else "baseline",
                    passes=[] if name == "baseline" else [{"pass": "onnx", "config": {}}],
                )
            )
        reg.register_run("m", entries, run_id=run, champion=champ, reason=f"{run} champion")
    return reg


def test_list_show_promote_rollback_log(two_runs: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "champion→v4" in out and "v4" in out

    assert main(["models", "show", "m"]) == 0
    out = capsys.readouterr().out
    assert "faster" in out and "pass" in out

    assert main(["models", "show", "m@champion"]) == 0
    assert "faster" in capsys.readouterr().out

    assert main(["models", "rollback", "m", "--reason", "bad canary"]) == 0
    assert "v2" in capsys.readouterr().out
    assert two_runs.resolve("m@champion") == ("m", 2)

    assert main(["models", "promote", "m", "3", "--reason", "approved"]) == 0
    assert two_runs.resolve("m@champion") == ("m", 3)

    assert main(["models", "log", "m"]) == 0
    out = capsys.readouterr().out
    for reason in ("run-a champion", "run-b champion", "bad canary", "approved"):
        assert reason in out


def test_unknown_model_and_version(two_runs: Registry, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "show", "nope@champion"]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["models", "promote", "m", "99"]) == 2
    assert "99" in capsys.readouterr().err
