"""The server as a real process: started from the command line, polled ready with a deadline; tritonclient
(binary and JSON) against the offline Runner; SIGTERM drains in-flight requests and exits 0; an alias
promotion under load swaps versions without a failed request."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from modelyard.candidate import Candidate
from modelyard.registry import Registry, VersionEntry
from modelyard.runtime.base import RunnerSpec, TensorSpec
from modelyard.runtime.preprocess import predict
from modelyard.security import scan_file
from modelyard.security.trust import FACTORY, trust_record
from modelyard.serve.model import ServedModel
from tests.helpers.models import make_blobs
from tests.helpers.serving import MODEL, build_blobs_registry

DEADLINE_S = 90.0
GATED = "gated"
POISON = 99.0


# ---------------------------------------------------------------------------------------------------
# a model whose forward waits for the test (imported by the server process through its factory)


def gated_net(port: int = 0) -> Any:
    """A Linear(6, 3) whose forward, on any input equal to 99, connects to the test on ``port`` and waits for
    one byte: the test decides when each such call finishes, without sleeping."""
    import torch

    class GatedNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(6, 3)

        def forward(self, x: Any) -> Any:
            if port and bool((x == POISON).any()):
                with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE_S) as conn:
                    conn.recv(1)
            return self.linear(x)

    return GatedNet()


def register_gated_model(registry: Registry, folder: Path, port: int) -> None:
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = folder / "gated.safetensors"
    save_file(gated_net().state_dict(), str(path))
    spec = RunnerSpec(
        inputs=(TensorSpec("features", "float32", (None, 6)),),
        outputs=(TensorSpec("logits", "float32", (None, 3)),),
        task="classification",
        num_classes=3,
    )
    factory = f"{__name__}:gated_net"
    meta = {
        "torch_kind": "safetensors",
        "factory": factory,
        "factory_kwargs": {"port": port},
        # a factory-built version is served only with the trust record registered with it
        "trust": trust_record(FACTORY, flag="--factory", scan=scan_file(path), factory=factory),
    }
    cand = Candidate(GATED, "torch", path, spec, meta=meta)
    registry.register_run(
        GATED,
        [VersionEntry(name="baseline", files={path.name: path}, manifest=cand.to_dict())],
        run_id="gated-run",
        champion="baseline",
        reason="test: a model the test can hold in flight",
    )


# ---------------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module")
def gate_listener() -> Iterator[socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(DEADLINE_S)
        yield listener


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, onnx_classifier: tuple[Path, Path], gate_listener: socket.socket
) -> Registry:
    reg = build_blobs_registry(tmp_path_factory.mktemp("process-home"), onnx_classifier)
    register_gated_model(reg, tmp_path_factory.mktemp("gated"), gate_listener.getsockname()[1])
    return reg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelyard.cli", "serve", *args]


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def running_server(registry: Registry, tmp_path: Path, *args: str) -> Iterator[Server]:
    """Start ``modelyard serve``, wait (deadline-bound) until /v2/health/ready is 200, stop it at the end."""
    port = free_port()
    env = {
        **os.environ,
        "MODELYARD_HOME": str(registry.home),
        "MODELYARD_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("MODELYARD_API_KEY", None)
    log = tmp_path / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            serve_command(*args, "--port", str(port), "--home", str(registry.home)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
        )
    server = Server(proc, f"http://127.0.0.1:{port}", log)
    try:
        wait_ready(server)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(DEADLINE_S)


def wait_ready(server: Server) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            if httpx.get(f"{server.url}/v2/health/ready", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"server not ready before the deadline:\n{server.output()}"
        with contextlib.suppress(subprocess.TimeoutExpired):  # wait a little, or return at once if it died
            server.proc.wait(0.05)
        assert server.proc.poll() is None, f"server exited with {server.proc.returncode}:\n{server.output()}"


def infer_json(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [
            {"name": "features", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}
        ]
    }


# ---------------------------------------------------------------------------------------------------
# tests


def test_tritonclient_binary_and_json_match_the_offline_runner(registry: Registry, tmp_path: Path) -> None:
    import tritonclient.http as triton

    offline = ServedModel.load(registry, f"{MODEL}:1", threads=1, workdir=tmp_path / "offline")
    x = make_blobs(n=16, seed=2)[0]
    expected = predict(offline.runner, offline.candidate.preprocessor(), x)
    with running_server(registry, tmp_path, f"{MODEL}:1", "--no-batching") as server:
        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        meta = client.get_model_metadata(MODEL)
        assert meta["inputs"][0]["name"] == "features" and meta["versions"] == ["1"]
        # Triton's listing calls: the repository index and the model configuration
        assert client.get_model_repository_index() == [
            {"name": MODEL, "version": "1", "state": "READY", "reason": ""}
        ]
        assert client.get_model_config(MODEL)["input"][0]["data_type"] == "TYPE_FP32"
        for binary in (True, False):
            inp = triton.InferInput("features", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            outs = [triton.InferRequestedOutput(n, binary_data=binary) for n in ("logits", "probabilities")]
            result = client.infer(MODEL, [inp], outputs=outs, request_id="r1")
            assert np.array_equal(result.as_numpy("logits"), expected), binary
            assert result.as_numpy("probabilities").shape == (16, 3)
            assert result.get_response()["model_version"] == "1"
        client.close()


def test_sigterm_drains_in_flight_requests_and_exits_0(
    registry: Registry, tmp_path: Path, gate_listener: socket.socket
) -> None:
    held = np.full((1, 6), POISON, np.float32)
    with running_server(registry, tmp_path, f"{GATED}@champion", "--no-batching") as server:
        url = f"{server.url}/v2/models/{GATED}/infer"
        with ThreadPoolExecutor(3) as pool:
            futures = [
                pool.submit(httpx.post, url, json=infer_json(held), timeout=DEADLINE_S) for _ in range(3)
            ]
            first, _ = gate_listener.accept()  # the first request is inside the model; the others queue
            wait_for_inflight(server, 3)
            server.proc.send_signal(signal.SIGTERM)
            first.sendall(b"x")
            first.close()
            for _ in range(2):
                conn, _ = gate_listener.accept()
                conn.sendall(b"x")
                conn.close()
            responses = [f.result(DEADLINE_S) for f in futures]
        assert [r.status_code for r in responses] == [200, 200, 200], [r.text for r in responses]
        assert server.proc.wait(DEADLINE_S) == 0, server.output()
        assert "Traceback" not in server.output()


def wait_for_inflight(server: Server, n: int) -> None:
    """Poll /metrics (deadline-bound) until ``n`` requests besides the poll itself are in flight."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        text = httpx.get(f"{server.url}/metrics", timeout=5).text
        line = next(ln for ln in text.splitlines() if ln.startswith("modelyard_inflight_requests "))
        if float(line.split()[1]) >= n + 1:
            return
        assert time.monotonic() < deadline, "requests not in flight before the deadline"
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(0.02)


def test_champion_swap_under_load_drops_no_request(registry: Registry, tmp_path: Path) -> None:
    assert registry.resolve(f"{MODEL}@champion") == (MODEL, 1)
    x = make_blobs(n=4, seed=1)[0]
    seen: list[tuple[int, str]] = []
    stop = threading.Event()
    started = threading.Event()
    switched = threading.Event()

    def load_loop(url: str) -> None:
        with httpx.Client(timeout=DEADLINE_S) as client:
            after_switch = 0
            while not stop.is_set() and after_switch < 20:
                r = client.post(url, json=infer_json(x))
                version = r.json().get("model_version", "") if r.status_code == 200 else r.text
                seen.append((r.status_code, version))
                started.set()
                if version == "2":
                    switched.set()
                    after_switch += 1

    # no prediction log, so no champion watch: this load is one repeated input, which the watch may rightly
    # judge out of distribution for the new champion and roll back mid-test (that is test_rollout_watch's)
    with running_server(
        registry, tmp_path, f"{MODEL}@champion", "--reload-on-alias", "--no-monitor"
    ) as server:
        loop = threading.Thread(target=load_loop, args=(f"{server.url}/v2/models/{MODEL}/infer",))
        loop.start()
        try:
            assert started.wait(DEADLINE_S)
            registry.promote(MODEL, 2, reason="test: promote under load")
            assert switched.wait(DEADLINE_S), seen[-5:]
            loop.join(DEADLINE_S)  # it stops by itself 20 requests after the switch
        finally:
            stop.set()
            loop.join(DEADLINE_S)
        ready = httpx.get(f"{server.url}/v2/models/{MODEL}", timeout=5).json()
    failed = [s for s in seen if s[0] != 200]
    assert not failed, failed[:5]
    versions = [v for _, v in seen]
    assert versions[0] == "1" and versions[-1] == "2"
    assert versions == sorted(versions), "a request went back to the old version after the swap"
    assert ready["versions"] == ["2"]


def test_serve_after_the_digits_demo_matches_the_runner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's path: the demo registers a digits champion; `modelyard serve` serves it; tritonclient
    (binary on and off) and curl get exactly what the champion's Runner gives offline."""
    import shutil

    import tritonclient.http as triton

    from modelyard.cli import main
    from modelyard.zoo.demos import digits_dataset

    home = tmp_path / "demo-home"
    assert (
        main(["demo", "digits", "--quick", "--home", str(home), "-r", "onnx", "-r", "onnx > int8-static"])
        == 0
    )
    capsys.readouterr()
    reg = Registry(home)
    name, version = reg.resolve("digits-cnn@champion")
    offline = ServedModel.load(reg, f"{name}:{version}", threads=1, workdir=tmp_path / "offline")
    x = digits_dataset().x_test[:12]
    expected = predict(offline.runner, offline.candidate.preprocessor(), x)
    with running_server(reg, tmp_path, "digits-cnn@champion") as server:
        client = triton.InferenceServerClient(url=server.url.removeprefix("http://"))
        for binary in (True, False):
            inp = triton.InferInput("pixels", list(x.shape), "FP32")
            inp.set_data_from_numpy(x, binary_data=binary)
            out = triton.InferRequestedOutput("logits", binary_data=binary)
            result = client.infer("digits-cnn", [inp], outputs=[out])
            assert np.array_equal(result.as_numpy("logits"), expected), binary
            assert result.get_response()["model_version"] == str(version)
        client.close()
        curl = shutil.which("curl")
        if curl is not None:
            body = json.dumps(
                {
                    "inputs": [
                        {
                            "name": "pixels",
                            "shape": list(x.shape),
                            "datatype": "FP32",
                            "data": x.ravel().tolist(),
                        }
                    ]
                }
            )
            proc = subprocess.run(
                [
                    curl,
                    "-s",
                    "-H",
                    "content-type: application/json",
                    "-d",
                    body,
                    f"{server.url}/v2/models/digits-cnn/infer",
                ],
                capture_output=True,
                timeout=DEADLINE_S,
                check=True,
            )
            doc = json.loads(proc.stdout)
            logits = next(o for o in doc["outputs"] if o["name"] == "logits")
            got = np.asarray(logits["data"], dtype=np.float32).reshape(logits["shape"])
            assert np.array_equal(got, expected)
