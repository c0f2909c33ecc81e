"""MLflow as the registry backend, against a real ``mlflow server`` (SQLite backend in a temporary folder,
127.0.0.1, a free port, polled ready with a deadline, stopped after): a run registered through the registry
is logged and registered in MLflow; promote and rollback move MLflow's alias as ours, and our audit log names
the MLflow versions."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelyard.config import Settings
from modelyard.errors import ConfigError, RegistryError
from modelyard.evaluate.schema import Measurement, Verdict, VersionEvidence
from modelyard.registry import Registry, VersionEntry
from modelyard.registry.mlflow_backend import MlflowRegistry, mlflow_note, open_registry

mlflow = pytest.importorskip(
    "mlflow", reason="mlflow is not installed (the optional modelyard[mlflow] extra)"
)

DEADLINE_S = 60.0
MODEL = "tiny"
NO_PHONE_HOME = {"MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def tracking_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    d = tmp_path_factory.mktemp("mlflow")
    port = _free_port()
    # the server's background job runner (a pool of worker processes) is not needed for tracking and registry
    env = {**os.environ, **NO_PHONE_HOME, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = (d / "server.log").open("wb")
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    proc = subprocess.Popen(
        [
            str(mlflow_bin),
            "server",
            "--backend-store-uri",
            f"sqlite:///{d / 'mlflow.db'}",
            "--artifacts-destination",
            str(d / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        cwd=d,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the server's worker processes stop with it
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + DEADLINE_S
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited with {proc.returncode}: {(d / 'server.log').read_text()[-2000:]}"
                )
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not ready after {DEADLINE_S:g} s: {(d / 'server.log').read_text()[-2000:]}"
                )
            with contextlib.suppress(
                subprocess.TimeoutExpired
            ):  # wait a little, or return at once if it died
                proc.wait(0.2)
        yield url
    finally:
        _stop_group(proc)
        log.close()


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the server's process group, SIGKILL to what is left after a grace period."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except ProcessLookupError:
        return
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@pytest.fixture(autouse=True)
def _no_telemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in NO_PHONE_HOME.items():
        monkeypatch.setenv(k, v)


def _entries(folder: Path, run: str) -> list[VersionEntry]:
    """A tiny run: a baseline and a candidate made from it, each with one file, lineage and evidence."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for name, parent, acc in (("baseline", None, 0.91), ("int8", "baseline", 0.90)):
        f = folder / f"{name}.onnx"
        f.write_bytes(f"{run}/{name}".encode())
        measurement = Measurement(
            name="quality.accuracy",
            value=acc,
            unit="fraction",
            interval=(acc - 0.02, acc + 0.02),
            status="ok",
            details={},
        )
        out.append(
            VersionEntry(
                name=name,
                files={"model.onnx": f},
                manifest={"name": name, "format": "onnx", "meta": {}},
                evidence=VersionEvidence(
                    run_id=run,
                    measurements={"quality.accuracy": measurement},
                    verdict=Verdict(passed=True, gates=[]),
                ),
                parent=parent,
                passes=[] if parent is None else [{"pass": "int8-dynamic", "config": {"per_channel": True}}],
                data_sha256="d" * 64,
                artifact_sha256=("a" if parent is None else "b") * 64,
            )
        )
    return out


def _mlflow_champion(reg: MlflowRegistry, model: str = MODEL) -> str:
    return str(reg.client.get_model_version_by_alias(model, "champion").version)


def _agree(reg: MlflowRegistry, model: str = MODEL) -> None:
    """MLflow's champion is the MLflow version of our champion, and our last audit entry names it."""
    _, ours = reg.resolve(f"{model}@champion")
    theirs = _mlflow_champion(reg, model)
    assert theirs == reg.mlflow_version(model, ours)
    mv = reg.client.get_model_version(model, theirs)
    assert mv.tags["modelyard.version"] == str(ours)
    last = reg.audit_log(model)[-1]
    assert last["to_version"] == ours and last["reason"].endswith(mlflow_note(model, theirs))


def test_settings_choose_the_backend(tmp_path: Path) -> None:
    s = Settings.from_env(
        {"MODELYARD_HOME": str(tmp_path), "MODELYARD_REGISTRY": "mlflow+http://127.0.0.1:5000"}
    )
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5000"
    reg = open_registry(s)
    assert isinstance(reg, MlflowRegistry) and reg.tracking_uri == "http://127.0.0.1:5000"
    assert type(open_registry(Settings.from_env({"MODELYARD_HOME": str(tmp_path)}))) is Registry
    assert Settings.from_env({"MODELYARD_REGISTRY": "sqlite"}).mlflow_tracking_uri is None
    for bad in ("mlflow", "mlflow+", "postgres+x", "http://127.0.0.1:5000"):
        with pytest.raises(ConfigError, match="MODELYARD_REGISTRY"):
            Settings.from_env({"MODELYARD_REGISTRY": bad})


def test_nothing_imports_mlflow_without_the_setting(tmp_path: Path) -> None:
    code = (
        "import sys, modelyard.cli, modelyard.registry.mlflow_backend as b; from modelyard.config import Settings; "
        f"b.open_registry(Settings(home={str(tmp_path)!r})).list_models(); "
        "assert 'mlflow' not in sys.modules, 'mlflow was imported'"
    )
    env = {k: v for k, v in os.environ.items() if k != "MODELYARD_REGISTRY"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_run_promote_rollback_agree_with_mlflow(tracking_uri: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(tmp_path / "home", tracking_uri)
    numbers = reg.register_run(
        MODEL, _entries(tmp_path / "r1", "run-1"), run_id="run-1", champion="baseline", reason="first run"
    )
    assert numbers == {"baseline": 1, "int8": 2}
    _agree(reg)

    # the runs: params from lineage, metrics from evidence, the files as artifacts
    client = reg.client
    meta = reg.get_version(MODEL, 2)["manifest"]["meta"]["mlflow"]
    run = client.get_run(meta["run_id"])
    assert run.data.params["candidate"] == "int8" and run.data.params["parent"] == "baseline"
    assert run.data.params["passes"] == "int8-dynamic"
    assert run.data.params["pass.0.int8-dynamic"] == '{"per_channel": true}'
    assert run.data.metrics["quality.accuracy"] == pytest.approx(0.90)
    assert run.data.metrics["verdict.passed"] == 1.0
    assert run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(meta["run_id"], "model")] == ["model/model.onnx"]

    # promote to the candidate, roll back: MLflow's alias follows, the audit log names its versions
    reg.promote(MODEL, 2, reason="int8 is cheaper")
    _agree(reg)
    assert _mlflow_champion(reg) == meta["model_version"]
    assert reg.rollback(MODEL, reason="canary regressed") == 1
    _agree(reg)
    assert [e["action"] for e in reg.audit_log(MODEL)] == ["register", "promote", "rollback"]

    # a second run moves the champion at registration; a plain Registry on the same home sees the same record
    reg.register_run(
        MODEL, _entries(tmp_path / "r2", "run-2"), run_id="run-2", champion="int8", reason="second run"
    )
    _agree(reg)
    assert Registry(tmp_path / "home").resolve(f"{MODEL}@champion") == (MODEL, 4)
    assert reg.sync_aliases(MODEL) == {"champion": _mlflow_champion(reg)}


def test_failed_registration_leaves_no_mlflow_version(tracking_uri: str, tmp_path: Path) -> None:
    reg = MlflowRegistry(tmp_path / "home", tracking_uri)
    model = "tiny-failed"
    reg.register_run(
        model, _entries(tmp_path / "r1", "f-1")[:1], run_id="f-1", champion="baseline", reason="first"
    )
    before = {mv.version for mv in reg.client.search_model_versions(f"name='{model}'")}
    bad = _entries(tmp_path / "r2", "f-2")
    bad[1].parent = "nobody"  # refused before MLflow sees anything
    with pytest.raises(RegistryError, match="nobody"):
        reg.register_run(model, bad, run_id="f-2", champion="baseline", reason="second")

    def crash(point: str) -> None:  # our transaction fails after MLflow logged the run
        if point == "after_artifacts":
            raise RegistryError("disk full (simulated)")

    with pytest.raises(RegistryError, match="simulated"):
        reg.register_run(
            model,
            _entries(tmp_path / "r3", "f-3"),
            run_id="f-3",
            champion="baseline",
            reason="third",
            checkpoint=crash,
        )
    after = {mv.version for mv in reg.client.search_model_versions(f"name='{model}'")}
    assert after == before
    assert Registry(tmp_path / "home").resolve(f"{model}@champion") == (model, 1)
    with pytest.raises(RegistryError, match="already registered"):
        reg.register_run(model, _entries(tmp_path / "r4", "f-1"), run_id="f-1", champion=None, reason="again")


def test_unreachable_mlflow_registers_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    reg = MlflowRegistry(tmp_path / "home", f"http://127.0.0.1:{_free_port()}")
    with pytest.raises(RegistryError, match=r"MLflow at http://127\.0\.0\.1"):
        reg.register_run(
            MODEL, _entries(tmp_path / "r", "u-1"), run_id="u-1", champion="baseline", reason="x"
        )
    assert Registry(tmp_path / "home").list_models() == []


def _artifact_paths(client: Any, run_id: str, folder: str) -> set[str]:
    """Every file under ``folder`` of an MLflow run, walked recursively."""
    out: set[str] = set()
    for a in client.list_artifacts(run_id, folder):
        out |= _artifact_paths(client, run_id, a.path) if a.is_dir else {a.path}
    return out


def test_pipeline_through_the_cli_agrees_with_mlflow(
    tracking_uri: str,
    home: Path,
    tmp_path: Path,
    onnx_classifier: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``optimize``, ``models promote`` and ``models rollback`` with MODELYARD_REGISTRY=mlflow+<uri>: every
    candidate is an MLflow run and version, and MLflow's champion follows ours, move by move."""
    from modelyard.cli import main

    monkeypatch.setenv("MODELYARD_REGISTRY", f"mlflow+{tracking_uri}")
    name = "cli-classifier"
    model, data = onnx_classifier
    policy = tmp_path / "policy.toml"  # an ONNX baseline cannot be attacked with gradients; no OOD set here
    policy.write_text('waive = ["adversarial_drop", "ood_auroc_drop"]\n')
    argv = ["optimize", "--model", str(model), "--data", str(data), "--quick", "--policy", str(policy)]
    recipe = "int8-dynamic(exclude_op_types=())"
    code = main([*argv, "--name", name, "--recipe", recipe])
    out = capsys.readouterr()
    assert code == 0, out.err

    reg = MlflowRegistry(home, tracking_uri)
    client = reg.client
    versions = [reg.get_version(name, int(v["version"])) for v in reg.list_versions(name)]
    (run_dir,) = [p for p in (home / "runs").iterdir() if not p.name.startswith(".")]
    candidates = json.loads((run_dir / "evidence.json").read_text())["candidates"]
    assert [v["candidate"] for v in versions] == [c["name"] for c in candidates] == ["baseline", recipe]
    exp = client.get_experiment_by_name(f"modelyard-{name}")
    assert len(client.search_runs([exp.experiment_id])) == len(versions)
    for v in versions:
        ids = v["manifest"]["meta"]["mlflow"]
        assert ids["tracking_uri"] == tracking_uri
        mv = client.get_model_version(name, ids["model_version"])
        assert mv.run_id == ids["run_id"] and mv.tags["modelyard.version"] == str(v["version"])
        run = client.get_run(ids["run_id"])
        assert run.info.status == "FINISHED"
        params = run.data.params
        assert params["modelyard.run_id"] == v["run_id"] == run_dir.name
        assert params["candidate"] == v["candidate"]
        assert params["parent"] == (v["parent_candidate"] or "")
        assert params["artifact_sha256"] == v["artifact_sha256"]
        assert params["data_sha256"] == v["data_sha256"]
        assert params["passes"] == (" > ".join(p["pass"] for p in v["passes"]) or "(baseline)")
        evidence = v["evidence"]
        measured = {k: float(m.value) for k, m in evidence.measurements.items() if m.value is not None}
        assert len(measured) > 5  # a real run's evidence, not a stub
        assert run.data.metrics == pytest.approx(
            {**measured, "verdict.passed": float(evidence.verdict.passed)}, nan_ok=True
        )
        assert _artifact_paths(client, ids["run_id"], "model") == {f"model/{f['path']}" for f in v["files"]}
        assert _artifact_paths(client, ids["run_id"], "run") == {
            "run/report.html",
            "run/MODEL_CARD.md",
            "run/evidence.json",
        }
    _agree(reg, name)

    # promote the other version by hand, then roll back: MLflow's alias follows each move
    _, first = reg.resolve(f"{name}@champion")
    other = next(v["version"] for v in versions if v["version"] != first)
    assert main(["models", "promote", name, str(other), "--reason", "cheaper by hand"]) == 0
    assert reg.resolve(f"{name}@champion") == (name, other)
    _agree(reg, name)
    assert main(["models", "rollback", name, "--reason", "canary regressed"]) == 0
    assert reg.resolve(f"{name}@champion") == (name, first)
    _agree(reg, name)

    log = reg.audit_log(name)
    assert [(e["action"], e["to_version"]) for e in log] == [
        ("register", first),
        ("promote", other),
        ("rollback", first),
    ]
    for e in log:  # every move names the MLflow version it pointed MLflow's alias at
        assert e["reason"].endswith(mlflow_note(name, reg.mlflow_version(name, e["to_version"])))
    capsys.readouterr()
    assert main(["models", "log", name]) == 0
    shown = capsys.readouterr().out
    assert "cheaper by hand" in shown and "canary regressed" in shown
