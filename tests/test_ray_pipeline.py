"""`--ray`: candidates built and checked as Ray tasks give the same champion and the same deterministic evidence
as a local run, and nothing imports Ray without it.

Ray binds and dials the machine's own address and probes a public one to find it, so the Ray run happens in a
fresh network namespace with only loopback up: this file re-executes itself there (``unshare -n``, as root) as
the driver, and the test is skipped where namespaces are unavailable."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.cli import assert_one_line_error
from tests.helpers.netns import namespace_problem
from tests.helpers.same_seed import summarize

RECIPES = ["--recipe", "onnx", "--recipe", "prune(0.5) > onnx"]  # two first steps: two build tasks


def _driver(home: Path, out: Path) -> None:
    """Run the digits demo locally and then with ``--ray auto``; write what the test compares to ``out``."""
    import torch

    from modelyard.cli import main
    from modelyard.zoo.demos import load_demo

    torch.set_num_threads(1)
    load_demo("digits", home)  # trained once, outside both runs
    runs = []
    for extra in ([], ["--ray", "auto"]):
        before = set((home / "runs").glob("*")) if (home / "runs").exists() else set()
        rc = main(["demo", "digits", "--quick", *RECIPES, *extra])
        (run,) = set((home / "runs").glob("*")) - before
        runs.append({"rc": rc, "evidence": str(run / "evidence.json"), "ray_imported": "ray" in sys.modules})
    out.write_text(json.dumps(runs))


@pytest.mark.slow
def test_optimize_on_ray_matches_the_local_run(tmp_path: Path, zoo_home: Path) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    problem = namespace_problem()
    if problem:
        pytest.skip(problem)
    home, out = tmp_path / "home", tmp_path / "runs.json"
    trained = zoo_home / "zoo"
    if trained.exists():  # the session's digits demo, when another test trained it already
        shutil.copytree(trained, home / "zoo")
    env = {
        **os.environ,
        "MODELYARD_HOME": str(home),
        "MODELYARD_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "RAY_AUTH_MODE": "disabled",  # a private test cluster on loopback
        "RAY_USAGE_STATS_ENABLED": "0",
        "PYTHONPATH": str(Path(__file__).parent.parent),
    }
    cmd = f'ip link set lo up && exec "{sys.executable}" -m tests.test_ray_pipeline "{home}" "{out}"'
    proc = subprocess.run(
        ["unshare", "-n", "sh", "-c", cmd],
        cwd=Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local, on_ray = json.loads(out.read_text())
    assert local["rc"] == 0 and on_ray["rc"] == 0, proc.stderr[-3000:]
    assert not local["ray_imported"]  # a whole run without --ray never imports Ray
    assert on_ray["ray_imported"]
    a = json.loads(Path(local["evidence"]).read_text())
    b = json.loads(Path(on_ray["evidence"]).read_text())
    assert a["champion"] == b["champion"] == "onnx"  # the pruned ones fail a deterministic gate
    assert [c["name"] for c in a["candidates"]] == [c["name"] for c in b["candidates"]]
    assert len(a["candidates"]) == 4 and a["skipped"] == b["skipped"]
    # bit-identical: every deterministic measurement (value, interval, unit, status) and gate, compared with ==
    assert summarize(a) == summarize(b)
    for ca, cb in zip(a["candidates"], b["candidates"], strict=True):
        assert ca["artifact_sha256"] == cb["artifact_sha256"], ca["name"]
        assert ca["serving"] == cb["serving"], ca["name"]
    assert "executor" not in a["suite"]
    ex = b["suite"]["executor"]
    assert ex["kind"] == "ray" and ex["address"] == "auto" and ex["cpus_per_task"] == 1
    assert "driver" in ex["timing_checks_on"]
    # timing checks ran on the driver: every efficiency figure is there, measured
    ms = {c["name"]: c["measurements"] for c in b["candidates"]}
    assert ms["onnx"]["efficiency.throughput_best"]["status"] == "ok"
    assert ms["onnx"]["efficiency.throughput_best"]["value"] > 0


def test_nothing_imports_ray_without_the_flag() -> None:
    code = (
        "import sys\n"
        "import modelyard.pipeline, modelyard.scale, modelyard.cli.run\n"
        "from modelyard.cli import main\n"
        "try:\n"
        "    main(['optimize', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('ray' in sys.modules, any(m.startswith('ray.') for m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--ray" in proc.stdout  # the help lists the option
    assert proc.stdout.strip().splitlines()[-1] == "False False"


def test_bad_ray_address_is_one_line(
    home: Path, onnx_classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from modelyard.cli import main

    model, data = onnx_classifier
    code = main(["optimize", "--model", str(model), "--data", str(data), "--quick", "--ray", " "])
    assert_one_line_error(code, capsys.readouterr().err, "--ray needs 'auto' or a Ray cluster address")
    assert not (home / "runs").exists() or not any((home / "runs").iterdir())


if __name__ == "__main__":
    _driver(Path(sys.argv[1]), Path(sys.argv[2]))
