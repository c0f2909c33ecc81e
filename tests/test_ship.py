"""``modelyard ship``: the digits demo from one command to a monitored endpoint (a real process on 127.0.0.1
whose printed URLs are each hit, then stopped with SIGINT); a changed model shipped to that running server
starts a shadow rollout and leaves the champion alias alone; no champion: exit 1 and nothing served; bad
input: one line, exit 2, nothing registered."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.cli import main
from modelyard.cli.ship import _render_ship
from modelyard.config import Policy, RolloutPolicy, Settings
from modelyard.errors import ConfigError
from modelyard.registry import Registry
from modelyard.rollout import rollout_status
from modelyard.serve.settings import ServeSettings
from modelyard.ship import ShipResult, ship
from tests.helpers.cli import assert_one_line_error
from tests.helpers.serving import FAST, free_port

MODEL = "digits-cnn"
DEADLINE_S = 240.0  # a bound on waiting for the pipeline and the server, never a measured time
URL_LINE = re.compile(r"^(endpoint|metrics|dashboard):\s+(http://\S+)\s*$", re.MULTILINE)
NO_BACKDOOR_SCAN = Policy(waive=("backdoor_scan",))  # FAST skips the scan; its gate would fail closed
# the second ship's rollout must still run when the third ship is tried: margins its few requests cannot cross
# (a retrained model flips some answers, and a loaded test machine makes copies slow)
HOLD_ROLLOUT = Policy(waive=("backdoor_scan",), rollout=RolloutPolicy(max_flip_rate=0.9, max_slow_rate=0.99))


@contextlib.contextmanager
def ship_process(home: Path, port: int, *args: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    """``modelyard ship ARGS`` as a real process on 127.0.0.1:``port``; killed at the end if it still runs."""
    env = {**os.environ, "MODELYARD_HOME": str(home), "MODELYARD_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("MODELYARD_API_KEY", None)
    log = home.parent / f"ship-{port}.log"
    command = [sys.executable, "-m", "modelyard.cli", "ship", *args, "--home", str(home), "--port", str(port)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=Path(__file__).resolve().parents[1]
        )
    try:
        yield proc, log
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE_S)


def printed_urls(proc: subprocess.Popen[bytes], log: Path) -> dict[str, str]:
    """The endpoint, metrics and dashboard URLs once the process has printed all three (deadline-bound)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        text = log.read_text(errors="replace")
        urls = dict(URL_LINE.findall(text))
        if len(urls) == 3:
            return urls
        assert proc.poll() is None, f"ship exited with {proc.returncode}:\n{text[-3000:]}"
        assert time.monotonic() < deadline, f"no URLs before the deadline:\n{text[-3000:]}"
        with contextlib.suppress(subprocess.TimeoutExpired):  # wait a little, or return at once if it died
            proc.wait(0.1)


def pixels_body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "pixels", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}]
    }


def changed_model(baseline: Candidate, folder: Path) -> Candidate:
    """The demo's CNN with its weights nudged: a new artifact, as a retrained model would be."""
    import torch
    from safetensors.torch import load_file, save_file

    from modelyard.security import scan_file
    from modelyard.security.trust import FACTORY, trust_record

    state = load_file(str(baseline.path))
    generator = torch.Generator().manual_seed(1)
    state = {k: v + 1e-3 * torch.randn(v.shape, generator=generator) for k, v in state.items()}
    path = folder / "model.safetensors"
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    factory = baseline.meta["factory"]
    trust = trust_record(FACTORY, flag="modelyard demo", scan=scan_file(path), factory=factory)
    return replace(baseline, path=path, meta={**baseline.meta, "trust": trust})


def port_is_released(port: int) -> bool:
    """Nothing listens on ``port`` and a new server can bind it (as uvicorn does, past TIME_WAIT)."""
    with (
        contextlib.suppress(ConnectionRefusedError),
        socket.create_connection(("127.0.0.1", port), timeout=5),
    ):
        return False
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def champion_moves(registry: Registry) -> list[tuple[Any, Any]]:
    return [
        (e["from_version"], e["to_version"])
        for e in registry.audit_log(MODEL)
        if e["alias"] == "champion" and not e["action"].startswith("rollout-")
    ]


# ---------------------------------------------------------------------------------------------------
# one command to a monitored endpoint, then a new model to the running server


def test_ship_serves_the_digits_demo_then_a_changed_model_starts_a_shadow_rollout(
    digits: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    zoo = digits.baseline.path.parent  # the demo trained once per session, not again in the process
    shutil.copytree(zoo, home / "zoo" / zoo.name)
    port = free_port()
    ds = digits.dataset
    with ship_process(home, port, "--demo", "digits", "--quick", "--recipe", "onnx") as (proc, log):
        urls = printed_urls(proc, log)
        base = f"http://127.0.0.1:{port}"
        assert urls["endpoint"] == f"{base}/v2/models/{MODEL}/infer"
        assert urls["metrics"] == f"{base}/metrics" and urls["dashboard"] == f"{base}/dashboard"

        registry = Registry(home)
        served = registry.resolve(f"{MODEL}@champion")[1]
        assert registry.get_version(MODEL, served)["candidate"] == "onnx"  # the measured cheaper variant

        x, y = ds.x_test[:16], ds.y_test[:16]
        answer = httpx.post(urls["endpoint"], json=pixels_body(x), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-request-id"]  # logged under this id (monitoring is on)
        body = answer.json()
        assert body["model_name"] == MODEL and body["model_version"] == str(served)
        logits = next(o for o in body["outputs"] if o["name"] == "logits")
        predicted = np.asarray(logits["data"]).reshape(logits["shape"]).argmax(1)
        assert np.sum(predicted == y) >= 14  # the demo is 97.5 % accurate on these test items

        metrics = httpx.get(urls["metrics"], timeout=30)
        assert metrics.status_code == 200
        assert f'model="{MODEL}"' in metrics.text
        dashboard = httpx.get(urls["dashboard"], timeout=30)
        assert dashboard.status_code == 200, dashboard.text[:300]
        assert "<html" in dashboard.text.lower()
        assert (home / "monitor.db").is_file()

        # a changed model shipped to the same address: registered, not swapped in; a shadow rollout starts
        moves = champion_moves(registry)
        second = ship(
            changed_model(digits.baseline, tmp_path / "changed"),
            ds,
            model_name=MODEL,
            model_source="the digits CNN, retrained",
            recipes=[],
            policy=HOLD_ROLLOUT,
            settings=Settings(home=home),
            serve=ServeSettings.from_env({}, home=home, port=port),
            options=FAST,
        )
        assert second.action == "rollout" and second.server == "running", second
        assert second.rollout is not None and second.rollout.mode == "shadow"
        assert second.rollout.champion == served and second.rollout.challenger == second.new_version
        assert second.new_version is not None and second.new_version > served
        assert registry.resolve(f"{MODEL}@champion")[1] == served == second.serving_version
        assert champion_moves(registry) == moves  # no alias move, only the rollout's own log rows
        running = rollout_status(registry, MODEL)[0]
        assert (running.state, running.challenger) == ("running", second.new_version)
        capsys.readouterr()
        _render_ship(second)  # what the command prints for it
        said = capsys.readouterr().out
        assert f"shadow rollout started: {MODEL} v{second.new_version}" in said
        assert f"follow it: modelyard rollout status {MODEL}" in said
        assert f"already served by the modelyard server at {base}" in said and urls["endpoint"] in said
        # the running server picks the rollout up: the champion keeps answering, the challenger gets copies
        deadline = time.monotonic() + DEADLINE_S
        while True:
            again = httpx.post(urls["endpoint"], json=pixels_body(x[:1]), timeout=30)
            assert again.status_code == 200 and again.json()["model_version"] == str(served)
            view = rollout_status(registry, MODEL)[0]
            if view.requests >= 1:
                break
            assert view.state == "running", view
            assert time.monotonic() < deadline, f"no shadowed request before the deadline: {view}"
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(0.1)

        # a third ship while that rollout runs is refused before any work: nothing new is registered
        versions = len(registry.list_versions(MODEL))
        with pytest.raises(ConfigError, match=f"rollout of {MODEL} v{second.new_version} .* still running"):
            ship(
                digits.baseline,
                ds,
                model_name=MODEL,
                model_source="digits demo",
                recipes=[],
                policy=NO_BACKDOOR_SCAN,
                settings=Settings(home=home),
                serve=None,
                options=FAST,
            )
        assert len(registry.list_versions(MODEL)) == versions

        proc.send_signal(signal.SIGINT)  # Ctrl-C: drain, then exit
        assert proc.wait(DEADLINE_S) == 0, log.read_text(errors="replace")[-3000:]
    assert port_is_released(port)
    out = log.read_text(errors="replace")
    assert "Traceback" not in out
    assert f"shipped: {MODEL} v{served} is the champion" in out


def test_shipping_the_serving_model_again_starts_nothing(digits: Any, tmp_path: Path) -> None:
    home = tmp_path / "home"

    def again() -> ShipResult:
        return ship(
            digits.baseline,
            digits.dataset,
            model_name=MODEL,
            model_source="digits demo",
            recipes=[],
            policy=NO_BACKDOOR_SCAN,
            settings=Settings(home=home),
            serve=None,
            options=FAST,
        )

    first = again()
    assert (first.action, first.new_version, first.serving_version) == ("champion", 1, 1)
    assert first.run.alias_moved and first.server is None and first.urls is None
    second = again()  # the very same weights: a new version, the same artifact
    assert (second.action, second.new_version, second.serving_version) == ("unchanged", 2, 1)
    assert second.rollout is None and not second.run.alias_moved
    registry = Registry(home)
    assert registry.resolve(f"{MODEL}@champion")[1] == 1
    assert rollout_status(registry, MODEL) == []
    assert [e["action"] for e in registry.audit_log(MODEL)] == ["register"]


# ---------------------------------------------------------------------------------------------------
# no champion, bad input


def test_no_champion_exits_1_with_the_gates_and_serves_nothing(
    home: Path,
    onnx_classifier: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    served: list[ShipResult] = []
    monkeypatch.setattr("modelyard.ship.serve_shipped", lambda result, **kw: served.append(result))
    model, data = onnx_classifier
    port = str(free_port())
    # the default policy fails closed on what an ONNX classifier without an OOD set cannot be measured on
    code = main(["ship", "--model", str(model), "--data", str(data), "--quick", "-r", "onnx", "--port", port])
    out = capsys.readouterr()
    assert code == 1, out.err
    assert "no champion" in out.err and "adversarial_drop" in out.err
    assert "failed" in out.out and "endpoint:" not in out.out
    assert served == []
    registry = Registry(home)
    assert "champion" not in registry.list_models()[0]["aliases"]  # the run is registered, nothing chosen


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--model", "{tmp}/missing.onnx", "--data", "{data}"], "missing.onnx"),
        (["--model", "{model}", "--data", "{tmp}/garbage.npz"], "garbage.npz"),
        ([], "give either --model FILE and --data FILE, or --demo NAME"),
        (
            ["--demo", "digits", "--model", "{model}"],
            "give either --model FILE and --data FILE, or --demo NAME",
        ),
        (["--model", "{model}"], "give both --model FILE and --data FILE"),
        (["--demo", "no-such-demo"], "unknown demo 'no-such-demo'"),
        (["--demo", "digits", "--policy", "{tmp}/nope.toml"], "nope.toml"),  # before the demo trains
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str],
    match: str,
    home: Path,
    tmp_path: Path,
    onnx_classifier: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    model, data = onnx_classifier
    (tmp_path / "garbage.npz").write_bytes(b"not an npz file")
    filled = [a.format(tmp=tmp_path, model=model, data=data) for a in args]
    code = main(["ship", *filled, "--port", str(free_port())])
    out = capsys.readouterr()
    assert_one_line_error(code, out.err, match)
    assert not (home / "registry.db").exists()


def test_an_address_taken_by_another_program_is_refused_before_any_work(
    home: Path, onnx_classifier: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    model, data = onnx_classifier
    with socket.create_server(("127.0.0.1", 0)) as taken:  # listens, answers no HTTP
        port = str(taken.getsockname()[1])
        code = main(["ship", "--model", str(model), "--data", str(data), "--port", port])
    out = capsys.readouterr()
    assert_one_line_error(code, out.err, f"127.0.0.1:{port} is in use by another program")
    assert not (home / "registry.db").exists()
    assert not (home / "runs").exists()
